// The deadline headers Paygate writes on its hops (services/runtime/rpc/http2-upstream.ts: the
// gateway's relay and the unary transport between services) and the downstream deadline a
// handler passes on (downstream()): always what connect's parsers accept (grpc-timeout at
// most 8 digits and a unit, connect-timeout-ms at most 10 digits), rounded up so time left is
// never sent as none, and never longer than a Node.js timer holds.
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { parseConnectTimeout, parseGrpcTimeout } from "../../services/runtime/rpc/connect-protocol.js";
import { FxService } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { connectTimeout, grpcTimeout, MAX_TIMEOUT_MS } from "../../services/runtime/rpc/http2-upstream.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { startServer, type RunningServer } from "../../services/runtime/rpc/server.js";
import { downstream, upstreamClient, upstreamTransport } from "../../services/runtime/rpc/upstream.js";

vi.setConfig({ testTimeout: 30_000, hookTimeout: 30_000 });

const grpcMs = (header: string) => {
  const parsed = parseGrpcTimeout(header, Number.MAX_SAFE_INTEGER);
  if (parsed.error || parsed.timeoutMs === undefined) throw new Error(`not a valid grpc-timeout: ${header}`);
  return parsed.timeoutMs;
};

describe("grpcTimeout", () => {
  it("writes the finest unit that fits 8 digits, as grpc-go clients do", () => {
    expect(grpcTimeout(29842.03)).toBe("29842030u");
    expect(grpcTimeout(4000)).toBe("4000000u");
    expect(grpcTimeout(99_999.999)).toBe("99999999u");
    expect(grpcTimeout(100_000)).toBe("100000m");
    expect(grpcTimeout(0.0004)).toBe("400n");
    expect(grpcTimeout(1)).toBe("1000000n");
  });

  it("rounds up: time left is never sent as none, nor as less than it is", () => {
    expect(grpcTimeout(1e-9)).toBe("1n");
    expect(grpcTimeout(0.0000015)).toBe("2n");
    expect(grpcTimeout(100_000.0000001)).toBe("100001m");
    expect(grpcTimeout(9 * 0.001), "9u as connect parses it (0.009000000000000001 ms): float noise is no nanosecond more").toBe("9000n");
  });

  it("stops at MAX_TIMEOUT_MS, below the longest timer Node.js keeps", () => {
    expect(MAX_TIMEOUT_MS).toBeLessThan(2 ** 31 - 1);
    for (const ms of [MAX_TIMEOUT_MS, 2 ** 31, 99_999_999 * 3_600_000, Number.MAX_SAFE_INTEGER]) expect(grpcTimeout(ms)).toBe("2000000S");
  });

  it("is what connect's parser reads back, never less, for any deadline a client may send", () => {
    const units = { n: 1e-6, u: 1e-3, m: 1, S: 1e3, M: 6e4, H: 3.6e6 };
    for (const [unit, ms] of Object.entries(units)) {
      for (const value of [1, 7, 999, 29_842_030, 99_999_999]) {
        const sent = Math.min(value * ms, MAX_TIMEOUT_MS);
        const header = grpcTimeout(sent);
        expect(header, `${value}${unit}`).toMatch(/^\d{1,8}[HMSmun]$/);
        // Within a femtosecond: the parser's own float products are not exact.
        expect(grpcMs(header), `${value}${unit} as ${header}`).toBeGreaterThanOrEqual(sent - 1e-12);
        expect(grpcMs(header) - sent, `${value}${unit} as ${header}`).toBeLessThanOrEqual(Math.max(sent * 1e-6, 1e-6));
      }
    }
  });
});

describe("connectTimeout", () => {
  it("writes whole ms (at most 10 digits), rounded up, at least 1, at most MAX_TIMEOUT_MS", () => {
    expect(connectTimeout(29842.03)).toBe("29843");
    expect(connectTimeout(4000)).toBe("4000");
    expect(connectTimeout(0.001)).toBe("1");
    expect(connectTimeout(9_999_999_999)).toBe(String(MAX_TIMEOUT_MS));
    for (const ms of [0.5, 1, 1234.5678, 2 ** 40]) expect(parseConnectTimeout(connectTimeout(ms), Number.MAX_SAFE_INTEGER).error).toBeUndefined();
  });
});

describe("downstream", () => {
  const ctx = (timeLeft: number | undefined) => ({ timeoutMs: () => timeLeft, signal: new AbortController().signal }) as unknown as HandlerContext;

  it("passes on the caller's time left in whole ms, at least 1, at most MAX_TIMEOUT_MS; the default without one", () => {
    expect(downstream(ctx(1500), 5_000).timeoutMs).toBe(1500);
    expect(downstream(ctx(1499.2), 5_000).timeoutMs).toBe(1500);
    expect(downstream(ctx(-3), 5_000).timeoutMs).toBe(1);
    expect(downstream(ctx(99_999_999 * 3_600_000), 5_000).timeoutMs).toBe(MAX_TIMEOUT_MS);
    expect(downstream(ctx(undefined), 5_000).timeoutMs).toBe(5_000);
  });
});

describe("the unary transport between services", () => {
  const logger = createLogger("deadlines-test", "silent");
  const timeLeft: (number | undefined)[] = [];
  let server: RunningServer;

  beforeAll(async () => {
    const routes = (router: ConnectRouter) =>
      router.service(FxService, {
        getRate(req, ctx) {
          timeLeft.push(ctx.timeoutMs());
          return { rate: { baseCurrency: req.baseCurrency, quoteCurrency: req.quoteCurrency, midRate: "1" } };
        },
      });
    server = await startServer({ name: "fx-under-test", services: [FxService], routes }, { host: "127.0.0.1", port: 0, maxRequestBytes: 1 << 20, shutdownTimeoutMs: 2_000, drainDelayMs: 0, logger });
  });
  afterAll(async () => {
    await server?.shutdown();
  });

  it("sends a deadline with a fraction of a ms as whole ms: the call is answered, not refused", async () => {
    const fx = upstreamClient(FxService, upstreamTransport(server.url));
    const res = await fx.getRate({ baseCurrency: "USD", quoteCurrency: "EUR" }, { timeoutMs: 1500.25 });
    expect(res.rate?.midRate).toBe("1");
    expect(timeLeft.at(-1)).toBeLessThanOrEqual(1501);
  });

  it("with no time left does not call the upstream at all", async () => {
    const fx = upstreamClient(FxService, upstreamTransport(server.url));
    const calls = timeLeft.length;
    const err = ConnectError.from(await fx.getRate({ baseCurrency: "USD", quoteCurrency: "EUR" }, { timeoutMs: 0 }).catch((e: unknown) => e));
    expect(err.code).toBe(Code.DeadlineExceeded);
    expect(timeLeft.length).toBe(calls);
  });
});
