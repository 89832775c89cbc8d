// The tracing interceptors on the wire, around a small FxService: a server stream's SERVER
// span lasts until the stream ends (or the client goes away) and the handler's code runs
// inside it between messages; a CLIENT span does the same for the caller.
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { SpanKind, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { createClient, type ConnectRouter, type HandlerContext, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FxService } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { startServer, type RunningServer, type ServerOptions } from "../../services/runtime/rpc/server.js";
import { rpcClientTracing } from "../../services/runtime/observability/rpc-spans.js";
import { withSpan } from "../../services/runtime/observability/spans.js";
import { addSpanProcessor, flushTracing } from "../../services/runtime/observability/tracing.js";
import { sleep, waitFor } from "../support/stack.js";

vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 });

const FX = "paygate.fx.v1.FxService";
const logger = createLogger("tracing-test", "silent");
const servers: RunningServer[] = [];
afterAll(async () => {
  await Promise.all(servers.map((s) => s.shutdown()));
});

/** What the handlers saw: the active span at each point of a stream. */
const seen: { at: string; spanId: string | undefined }[] = [];
const activeSpanId = () => trace.getActiveSpan()?.spanContext().spanId;

function routes(downstream?: () => ReturnType<typeof createClient<typeof FxService>>) {
  return (router: ConnectRouter) =>
    router.service(FxService, {
      getRate: async (req) => {
        if (downstream && req.baseCurrency === "HOP") return downstream().getRate({ baseCurrency: "USD", quoteCurrency: req.quoteCurrency });
        return { rate: { baseCurrency: req.baseCurrency, quoteCurrency: req.quoteCurrency, midRate: "1.5", source: "test" } };
      },
      async *streamRates(req, ctx: HandlerContext) {
        const n = req.quoteCurrencies.length || 3;
        for (let i = 0; i < n; i++) {
          await sleep(20);
          seen.push({ at: `message ${i}`, spanId: activeSpanId() });
          if (ctx.signal.aborted) return;
          yield { rates: [{ baseCurrency: "USD", quoteCurrency: "EUR", midRate: String(i), source: "test" }] };
        }
        seen.push({ at: "end", spanId: activeSpanId() });
      },
    });
}

async function start(opts: Partial<ServerOptions> = {}, downstream?: () => ReturnType<typeof createClient<typeof FxService>>): Promise<RunningServer> {
  const server = await startServer(
    { name: "tracing-test", services: [FxService], routes: routes(downstream) },
    { host: "127.0.0.1", port: 0, adminPort: 0, maxRequestBytes: 1 << 20, shutdownTimeoutMs: 2_000, drainDelayMs: 0, logger, ...opts },
  );
  servers.push(server);
  return server;
}

const tracedTransport = (url: string): Transport => createGrpcTransport({ baseUrl: url, interceptors: [rpcClientTracing(url)] });

describe("streams", () => {
  const exporter = new InMemorySpanExporter();
  let remove: () => void;
  beforeAll(() => {
    remove = addSpanProcessor(new SimpleSpanProcessor(exporter));
  });
  afterAll(() => remove());

  it("a server stream's SERVER span ends when the stream does, and the handler runs inside it between messages", async () => {
    const server = await start({ metrics: false });
    const client = createClient(FxService, tracedTransport(server.url));
    seen.length = 0;
    const received: number[] = [];
    await withSpan("test.caller", {}, async () => {
      for await (const m of client.streamRates({ quoteCurrencies: ["A", "B", "C"] })) received.push(performance.timeOrigin + performance.now());
    });
    await flushTracing();
    const spans = await waitFor(() => {
      const s = exporter.getFinishedSpans().filter((x) => x.name === `${FX}/StreamRates`);
      return s.length === 2 ? s : undefined;
    }, "the StreamRates spans");
    const serverSpan = spans.find((s) => s.kind === SpanKind.SERVER)!;
    const clientSpan = spans.find((s) => s.kind === SpanKind.CLIENT)!;
    expect(serverSpan.parentSpanContext?.spanId).toBe(clientSpan.spanContext().spanId);
    expect(serverSpan.attributes["rpc.grpc.status_code"]).toBe(0);
    expect(clientSpan.attributes["rpc.grpc.status_code"]).toBe(0);
    // Every step of the handler (after awaits, between yields) saw the SERVER span as active.
    expect(seen.map((s) => s.at)).toEqual(["message 0", "message 1", "message 2", "end"]);
    expect(new Set(seen.map((s) => s.spanId))).toEqual(new Set([serverSpan.spanContext().spanId]));
    // The spans lasted the whole stream (about 3 x 20 ms), not just until it started.
    const ms = (t: [number, number]) => t[0] * 1e3 + t[1] / 1e6;
    expect(ms(serverSpan.duration)).toBeGreaterThanOrEqual(50);
    expect(ms(clientSpan.endTime)).toBeGreaterThanOrEqual(received.at(-1)! - 5);
  });

  it("a stream the client leaves early ends its spans as canceled", async () => {
    exporter.reset();
    const server = await start({ metrics: false });
    const client = createClient(FxService, tracedTransport(server.url));
    const abort = new AbortController();
    await withSpan("test.caller", {}, async () => {
      for await (const _ of client.streamRates({ quoteCurrencies: ["A", "B", "C", "D", "E", "F", "G", "H"] }, { signal: abort.signal })) {
        abort.abort();
        break;
      }
    });
    const spans = await waitFor(() => {
      const s = exporter.getFinishedSpans().filter((x) => x.name === `${FX}/StreamRates`);
      return s.length === 2 ? s : undefined;
    }, "both StreamRates spans to end");
    for (const s of spans) expect(s.attributes["rpc.connect_rpc.error_code"], SpanKind[s.kind]).toBe("canceled");
  });
});
