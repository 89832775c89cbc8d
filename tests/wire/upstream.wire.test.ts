// The unary transport every service calls its upstreams with (services/runtime/rpc/upstream.ts),
// against a real server: answers with their headers and trailers, errors with their code,
// message and details, the deadline and the caller's cancellation reaching the server, an
// upstream that is not there, and one that comes back after a restart on the same port.
import http2 from "node:http2";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { Code, ConnectError, type Client, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { ErrorDetailSchema } from "../../services/gen/paygate/common/v1/common_pb.js";
import { FxService, type GetRateRequest } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { invalidArgument } from "../../services/runtime/errors.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { startServer, type RunningServer, type ServerOptions } from "../../services/runtime/rpc/server.js";
import { upstreamClient, upstreamTransport } from "../../services/runtime/rpc/upstream.js";
import { freePort } from "../support/ports.js";
import { outcomesDuring, REPLICA_HOSTS, startReplicas } from "../support/replicas.js";
import { waitFor } from "../support/wire.js";

vi.setConfig({ testTimeout: 30_000, hookTimeout: 30_000 });

const logger = createLogger("upstream-test", "silent");
const options = (port: number): ServerOptions => ({ host: "127.0.0.1", port, maxRequestBytes: 1 << 20, shutdownTimeoutMs: 2_000, drainDelayMs: 0, logger });

/** How each call of the test FxService ended at the server, by quote currency. */
const ended = new Map<string, string>();
/** The time each call had left when it reached the server (ctx.timeoutMs()), by quote currency. */
const timeLeft = new Map<string, number | undefined>();

function routes(router: ConnectRouter) {
  router.service(FxService, {
    async getRate(req: GetRateRequest, ctx: HandlerContext) {
      if (req.baseCurrency === "BAD") throw invalidArgument("UNKNOWN_CURRENCY", "base_currency", "base_currency: no currency \"BAD\"");
      if (req.baseCurrency === "WAIT") {
        timeLeft.set(req.quoteCurrency, ctx.timeoutMs());
        await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve(), { once: true }));
        ended.set(req.quoteCurrency, Code[ConnectError.from(ctx.signal.reason).code]);
        throw ConnectError.from(ctx.signal.reason);
      }
      ctx.responseHeader.set("x-seen-header", ctx.requestHeader.get("x-sent-header") ?? "");
      ctx.responseTrailer.set("x-trailer", "at the end");
      return { rate: { baseCurrency: req.baseCurrency, quoteCurrency: req.quoteCurrency, midRate: "1.5" } };
    },
  });
}

describe("upstreamTransport: unary calls", () => {
  let server: RunningServer;
  let port: number;

  beforeAll(async () => {
    port = await freePort();
    server = await startServer({ name: "fx-under-test", services: [FxService], routes }, options(port));
  });
  afterAll(async () => {
    await server?.shutdown();
  });

  it("sends the caller's headers and returns the answer with its headers and trailers", async () => {
    const fx = upstreamClient(FxService, upstreamTransport(server.url));
    let header: string | null = null;
    let trailer: string | null = null;
    const res = await fx.getRate(
      { baseCurrency: "USD", quoteCurrency: "EUR" },
      { headers: { "x-sent-header": "hello" }, onHeader: (h) => (header = h.get("x-seen-header")), onTrailer: (t) => (trailer = t.get("x-trailer")) },
    );
    expect(res.rate).toMatchObject({ baseCurrency: "USD", quoteCurrency: "EUR", midRate: "1.5" });
    expect({ header, trailer }).toEqual({ header: "hello", trailer: "at the end" });
  });

  it("an error keeps its code, message and details", async () => {
    const fx = upstreamClient(FxService, upstreamTransport(server.url));
    const err = ConnectError.from(await fx.getRate({ baseCurrency: "BAD" }).catch((e: unknown) => e));
    expect({ code: err.code, message: err.rawMessage }).toEqual({ code: Code.InvalidArgument, message: 'base_currency: no currency "BAD"' });
    expect(err.findDetails(ErrorDetailSchema)[0]).toMatchObject({ reason: "UNKNOWN_CURRENCY", field: "base_currency" });
  });

  it("the deadline goes to the server, and the call ends there too: DEADLINE_EXCEEDED for the caller", async () => {
    const fx = upstreamClient(FxService, upstreamTransport(server.url));
    const err = ConnectError.from(await fx.getRate({ baseCurrency: "WAIT", quoteCurrency: "deadline" }, { timeoutMs: 200 }).catch((e: unknown) => e));
    expect(err.code).toBe(Code.DeadlineExceeded);
    const left = timeLeft.get("deadline");
    expect(left !== undefined && left > 0 && left <= 200, `time left at the server: ${left}`).toBe(true);
    // Its own deadline, or the caller's reset when the caller's timer fired first.
    expect(["DeadlineExceeded", "Canceled"]).toContain(await waitFor(() => ended.get("deadline"), "the server saw the call end"));
  });

  it("a caller that cancels ends the call at the server: CANCELED on both sides", async () => {
    const fx = upstreamClient(FxService, upstreamTransport(server.url));
    const abort = new AbortController();
    const call = fx.getRate({ baseCurrency: "WAIT", quoteCurrency: "cancel" }, { signal: abort.signal }).catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 100));
    abort.abort();
    expect(ConnectError.from(await call).code).toBe(Code.Canceled);
    expect(await waitFor(() => ended.get("cancel"), "the server saw the call end")).toBe("Canceled");
  });

  it("no server there: UNAVAILABLE; once one listens on that port, the next call gets through", async () => {
    const where = await freePort();
    const fx = upstreamClient(FxService, upstreamTransport(`http://127.0.0.1:${where}`));
    const err = ConnectError.from(await fx.getRate({ baseCurrency: "USD" }).catch((e: unknown) => e));
    expect(err.code).toBe(Code.Unavailable);
    const late = await startServer({ name: "fx-late", services: [FxService], routes }, options(where));
    try {
      expect((await fx.getRate({ baseCurrency: "USD", quoteCurrency: "GBP" })).rate?.midRate).toBe("1.5");
    } finally {
      await late.shutdown();
    }
    // Shut down (GOAWAY, then closed): UNAVAILABLE again, not a hang.
    expect(ConnectError.from(await fx.getRate({ baseCurrency: "USD" }).catch((e: unknown) => e)).code).toBe(Code.Unavailable);
  });
});

/** How many of `calls` calls each replica answered (each answers with its own address as the rate), by address. */
async function answeredBy(fx: Client<typeof FxService>, calls: number): Promise<Record<string, number>> {
  const counts = new Map<string, number>();
  for (let i = 0; i < calls; i++) {
    const { rate } = await fx.getRate({ baseCurrency: "USD", quoteCurrency: "EUR" }, { timeoutMs: 2_000 });
    counts.set(rate!.midRate, (counts.get(rate!.midRate) ?? 0) + 1);
  }
  return Object.fromEntries([...counts].sort());
}

describe("upstreamTransport: an upstream name with several addresses (a headless Service's replicas)", () => {
  const replicas = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
  let servers: RunningServer[] = [];
  let resolved = replicas;

  beforeAll(async () => {
    const port = await freePort();
    // Three replicas on one port, each answering with its own address as the rate.
    servers = await Promise.all(
      replicas.map((host) =>
        startServer(
          { name: `replica-${host}`, services: [FxService], routes: (router) => router.service(FxService, { getRate: async () => ({ rate: { midRate: host } }) }) },
          { ...options(port), host },
        ),
      ),
    );
  });
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.shutdown()));
  });

  it("every address takes a share of the calls; one that leaves the name gets none, one that joins gets its share", async () => {
    const port = new URL(servers[0]!.url).port;
    const transport = upstreamTransport(`http://replicas.paygate.test:${port}`, { resolve: async () => resolved, resolveEveryMs: 50 });
    const fx = upstreamClient(FxService, transport);
    const spread = (calls: number) => answeredBy(fx, calls);
    await waitFor(async () => Object.keys(await spread(6)).length === 3, "the name resolved to all three");
    expect(await spread(30)).toEqual({ "127.0.0.1": 10, "127.0.0.2": 10, "127.0.0.3": 10 });

    resolved = ["127.0.0.1", "127.0.0.3"];
    await waitFor(async () => !("127.0.0.2" in (await spread(4))), "127.0.0.2 left out");
    expect(await spread(20)).toEqual({ "127.0.0.1": 10, "127.0.0.3": 10 });

    resolved = replicas;
    await waitFor(async () => "127.0.0.2" in (await spread(6)), "127.0.0.2 back");
    expect(await spread(30)).toEqual({ "127.0.0.1": 10, "127.0.0.2": 10, "127.0.0.3": 10 });
  });

  it("calls made before the name first resolves are answered (their session by name is not cut when it does)", async () => {
    const port = new URL(servers[0]!.url).port;
    let answer: (addresses: string[]) => void = () => {};
    const resolution = new Promise<string[]>((r) => (answer = r));
    const fx = upstreamClient(FxService, upstreamTransport(`http://localhost:${port}`, { resolve: () => resolution, resolveEveryMs: 60_000 }));
    const first = fx.getRate({ baseCurrency: "USD", quoteCurrency: "EUR" }, { timeoutMs: 5_000 });
    // The name resolves while that call's session (by name) is still connecting.
    for (let i = 0; i < 10; i++) await null;
    answer(["127.0.0.2"]);
    expect((await first).rate?.midRate).toMatch(/^127\.0\.0\./);
    expect((await fx.getRate({ baseCurrency: "USD", quoteCurrency: "EUR" })).rate?.midRate).toBe("127.0.0.2");
  });

  it("while a connection is being made (a replica that may be gone), calls go to those that are up", async () => {
    const port = new URL(servers[0]!.url).port;
    // 127.0.0.2's connection never gets past its name lookup: like a SYN to an address that is gone.
    const connect = (address: string, p: number) => (address === "127.0.0.2" ? net.connect({ host: "pending.paygate.test", port: p, lookup: () => {} }) : net.connect({ host: address, port: p }));
    const fx = upstreamClient(FxService, upstreamTransport(`http://replicas.paygate.test:${port}`, { resolve: async () => replicas, connect }));
    const spread = (calls: number) => answeredBy(fx, calls);
    await new Promise((r) => setImmediate(r)); // the name resolves
    // Every call answered, none by the replica out of reach; the others share them evenly.
    expect(Object.keys(await spread(30))).toEqual(["127.0.0.1", "127.0.0.3"]);
    expect(await spread(30)).toEqual({ "127.0.0.1": 15, "127.0.0.3": 15 });
  });

  // Last: it shuts a replica down.
  it("a replica that shuts down while the name still lists it (cached DNS) gets no more calls, and none fails", async () => {
    const port = new URL(servers[0]!.url).port;
    resolved = replicas;
    const fx = upstreamClient(FxService, upstreamTransport(`http://replicas.paygate.test:${port}`, { resolve: async () => resolved, resolveEveryMs: 50 }));
    const spread = (calls: number) => answeredBy(fx, calls);
    await waitFor(async () => Object.keys(await spread(6)).length === 3, "the name resolved to all three");
    await servers[1]!.shutdown(); // GOAWAY, then no listener at 127.0.0.2
    expect(await spread(30)).toEqual({ "127.0.0.1": 15, "127.0.0.3": 15 });
  });
});

describe("upstreamTransport: replicas restarting under load (a rolling restart)", () => {
  it("no call fails: one that crossed its replica's GOAWAY, refused before the replica saw it, goes to the next", async () => {
    const replicas = await startReplicas((host, port) => startServer({ name: `fx-${host}`, services: [FxService], routes }, { ...options(port), host }));
    try {
      const fx = upstreamClient(FxService, upstreamTransport(`http://replicas.paygate.test:${replicas.port}`, { resolve: async () => REPLICA_HOSTS }));
      await new Promise((r) => setImmediate(r)); // the name resolves
      const call = () => fx.getRate({ baseCurrency: "USD", quoteCurrency: "EUR" }, { timeoutMs: 5_000 });
      const outcomes = await outcomesDuring(call, 16, replicas.restart(10));
      expect(Object.keys(outcomes)).toEqual(["ok"]);
      expect(outcomes.ok).toBeGreaterThan(100);
    } finally {
      await replicas.close();
    }
  });
});

describe("upstreamTransport: keep-alive", () => {
  it("a connection whose peer stops answering (no FIN, no RST) is ended by an unanswered PING, and the next call gets through on a new one", async () => {
    const server = http2.createServer(connectNodeAdapter({ routes: (router) => router.service(FxService, { getRate: async () => ({ rate: { midRate: "1" } }) }) }));
    const serverPort = await freePort();
    await new Promise<void>((r) => server.listen(serverPort, "127.0.0.1", r));
    // A TCP relay in front of the server that can go silent on the connections it has.
    const relayed: { client: net.Socket; upstream: net.Socket }[] = [];
    const relay = net.createServer((client) => {
      const upstream = net.connect(serverPort, "127.0.0.1");
      client.pipe(upstream).pipe(client);
      relayed.push({ client, upstream });
    });
    const port = await freePort();
    await new Promise<void>((r) => relay.listen(port, "127.0.0.1", r));
    try {
      const fx = upstreamClient(FxService, upstreamTransport(`http://127.0.0.1:${port}`, { pingEveryMs: 50, pingTimeoutMs: 150 }));
      expect((await fx.getRate({ baseCurrency: "USD" })).rate?.midRate).toBe("1");
      // The peer goes silent on that connection (a vanished host): nothing passes either way.
      for (const { client, upstream } of relayed) {
        client.unpipe(upstream);
        upstream.unpipe(client);
      }
      await new Promise((r) => setTimeout(r, 400));
      expect((await fx.getRate({ baseCurrency: "USD" }, { timeoutMs: 3_000 })).rate?.midRate).toBe("1");
      expect(relayed.length).toBe(2);
    } finally {
      for (const { client, upstream } of relayed) client.destroy(), upstream.destroy();
      await new Promise((r) => relay.close(r));
      await new Promise((r) => server.close(r));
    }
  });
});
