// The tracing interceptors on the wire, around a small FxService: a server stream's SERVER
// span lasts until the stream ends (or the client goes away) and the handler's code runs
// inside it between messages; a CLIENT span does the same for the caller; and what the
// interceptors cost with no exporter configured (printed, not asserted).
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { SpanKind, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { createClient, type ConnectRouter, type HandlerContext, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FxService } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { createLogger } from "../../services/runtime/logger.js";
import { startServer, type RunningServer, type ServerOptions } from "../../services/runtime/server.js";
import { addSpanProcessor, flushTracing, rpcClientTracing, rpcServerTracing, tracingInfo, withSpan } from "../../services/runtime/tracing.js";
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

describe("overhead with no exporter configured (printed, not asserted)", () => {
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  /** Calls per second (wall clock) and CPU µs per call (this process: client and servers). */
  const measure = async (call: () => Promise<unknown>, n: number) => {
    const t0 = performance.now();
    const u0 = process.cpuUsage();
    for (let i = 0; i < n; i++) await call();
    const u = process.cpuUsage(u0);
    return { rate: n / ((performance.now() - t0) / 1000), cpu: (u.user + u.system) / n };
  };

  it("a two-hop unary call (client -> server -> upstream server) over gRPC, traced vs not", async () => {
    expect(tracingInfo()?.exporters ?? [], "no exporter in this process").toEqual([]);
    // Traced: SERVER spans on both servers, CLIENT spans on both calls (traceparent injected).
    const backTraced = await start({ metrics: false });
    const backClient = createClient(FxService, tracedTransport(backTraced.url));
    const frontTraced = await start({ metrics: false }, () => backClient);
    const traced = createClient(FxService, tracedTransport(frontTraced.url));
    // Untraced: the same servers and transports without the tracing interceptors.
    const backPlain = await start({ metrics: false, tracing: false });
    const backPlainClient = createClient(FxService, createGrpcTransport({ baseUrl: backPlain.url }));
    const frontPlain = await start({ metrics: false, tracing: false }, () => backPlainClient);
    const plain = createClient(FxService, createGrpcTransport({ baseUrl: frontPlain.url }));
    const req = { baseCurrency: "HOP", quoteCurrency: "EUR" };
    expect((await traced.getRate(req)).rate?.midRate).toBe("1.5");

    const N = 800;
    await measure(() => traced.getRate(req), N); // warm-up
    await measure(() => plain.getRate(req), N);
    type M = Awaited<ReturnType<typeof measure>>;
    const rounds: { with: M; without: M }[] = [];
    for (let r = 0; r < 4; r++) {
      if (r % 2 === 0) rounds.push({ without: await measure(() => plain.getRate(req), N), with: await measure(() => traced.getRate(req), N) });
      else rounds.push({ with: await measure(() => traced.getRate(req), N), without: await measure(() => plain.getRate(req), N) });
    }
    const w = median(rounds.map((r) => r.with.rate));
    const wo = median(rounds.map((r) => r.without.rate));
    const cw = median(rounds.map((r) => r.with.cpu));
    const cwo = median(rounds.map((r) => r.without.cpu));
    // Both run in this one process, so the "without" calls also pay for the AsyncLocalStorage
    // context propagation the traced ones switched on (Node 20: async hooks, process-wide).
    console.log(
      `[tracing overhead] sequential two-hop unary gRPC calls (4 spans per call when traced), ${N} calls per round, median of ${rounds.length} rounds: ` +
        `without ${wo.toFixed(0)} calls/s, with ${w.toFixed(0)} calls/s (${(((wo - w) / wo) * 100).toFixed(1)}% fewer, ${((1 / w - 1 / wo) * 1e6).toFixed(1)} µs per call); ` +
        `CPU per call without ${cwo.toFixed(0)} µs, with ${cw.toFixed(0)} µs; ` +
        `rounds without/with (calls/s): ${rounds.map((r) => `${r.without.rate.toFixed(0)}/${r.with.rate.toFixed(0)}`).join(", ")}`,
    );
    expect(w).toBeGreaterThan(0);
  });

  it("the interceptors alone, per call", async () => {
    const N = 20_000;
    const response = { stream: false as const, message: {}, header: new Headers(), trailer: new Headers() };
    const request = () =>
      ({
        stream: false,
        method: FxService.method.getRate,
        service: FxService,
        requestMethod: "POST",
        url: "http://127.0.0.1/paygate.fx.v1.FxService/GetRate",
        signal: new AbortController().signal,
        header: new Headers({ "content-type": "application/grpc", traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" }),
        contextValues: undefined,
        message: { baseCurrency: "USD" },
      }) as unknown as Parameters<ReturnType<Interceptor>>[0];
    const next = (() => Promise.resolve(response)) as unknown as Parameters<Interceptor>[0];
    const perCallNs = async (fn: typeof next) => {
      const reqs = Array.from({ length: N }, request);
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < N; i++) await fn(reqs[i]!);
      return Number(process.hrtime.bigint() - t0) / N;
    };
    const server = rpcServerTracing()(next);
    const client = rpcClientTracing("http://127.0.0.1:9092")(next);
    for (const f of [next, server, client]) await perCallNs(f); // warm-up
    const rounds = { bare: [] as number[], server: [] as number[], client: [] as number[] };
    for (let r = 0; r < 5; r++) {
      rounds.bare.push(await perCallNs(next));
      rounds.server.push(await perCallNs(server));
      rounds.client.push(await perCallNs(client));
    }
    const bare = median(rounds.bare);
    const us = (x: number[]) => ((median(x) - bare) / 1000).toFixed(2);
    console.log(`[tracing overhead] the interceptors alone (${N} unary calls, median of 5, no exporter): SERVER span ${us(rounds.server)} µs per call, CLIENT span + traceparent ${us(rounds.client)} µs per call`);
    expect(median(rounds.server)).toBeGreaterThan(0);
  });
});
