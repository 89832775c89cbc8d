// Graceful shutdown and deadlines of the shared server (services/runtime/rpc/server.ts), with a
// test-only FxService whose GetRate timing the tests control, and the real fx process
// stopped with SIGTERM. Timing bounds are generous (2-core CI): phases are told apart by
// state (polling), not by tight sleeps.
import type { ChildProcess } from "node:child_process";
import { spawnService } from "../../scripts/service-process.js";
import http2 from "node:http2";
import net from "node:net";
import { afterEach, describe, expect, it, onTestFinished, vi } from "vitest";
import type * as grpc from "@grpc/grpc-js";
import { Code, ConnectError, createClient, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { create, toBinary } from "@bufbuild/protobuf";
import { FxService, GetRateRequestSchema } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { startServer, type RunningServer, type ServerOptions, type ServiceSpec } from "../../services/runtime/rpc/server.js";
import { downstream, upstreamClient, upstreamTransport } from "../../services/runtime/rpc/upstream.js";
import { freePort } from "../support/ports.js";
import {
  FxGrpc,
  grpcClient,
  grpcServerStream,
  grpcUnary,
  HealthGrpc,
  isServiceError,
  rejectionOf,
  repoRoot,
  sleep,
  waitFor,
  within,
} from "../support/wire.js";

vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 });

const logger = createLogger("shutdown-test", "silent");

// ---------------------------------------------------------------------------------------
// A test-only FxService: GetRate's base_currency says how to behave.
//   "GATE"        waits until the test opens the gate
//   "STUCK"       never finishes and ignores its signal
//   "SIGNAL"      waits until its signal aborts, then throws the abort reason
//   "SLEEP:<ms>"  sleeps, ignoring its signal
//   "FAST"        answers at once
// Every call is recorded with its context, so tests can see deadlines and aborts.
// ---------------------------------------------------------------------------------------

interface CallRecord {
  mode: string;
  quote: string;
  startedAt: number;
  timeoutMs: number | undefined;
  signal: AbortSignal;
  abortedAt?: number;
  abortReason?: unknown;
  /** The handler got to its end (returned or threw). */
  done: boolean;
  /** Its signal aborted while it was still running (not the routine abort after it ended). */
  abortedWhileRunning?: boolean;
}

class Behaviour {
  readonly calls: CallRecord[] = [];
  private openGate!: () => void;
  private gate = new Promise<void>((r) => (this.openGate = r));
  /** Extra modes, e.g. calls to another server. */
  readonly extra = new Map<string, (ctx: HandlerContext) => Promise<string>>();

  release(): void {
    this.openGate();
  }

  started(mode: string): CallRecord[] {
    return this.calls.filter((c) => c.mode === mode);
  }

  routes = (router: ConnectRouter) =>
    router.service(FxService, {
      getRate: async (req, ctx) => {
        const [mode = "", arg = ""] = req.baseCurrency.split(":");
        const record: CallRecord = { mode, quote: req.quoteCurrency, startedAt: Date.now(), timeoutMs: ctx.timeoutMs(), signal: ctx.signal, done: false };
        ctx.signal.addEventListener("abort", () => {
          record.abortedAt = Date.now();
          record.abortReason = ctx.signal.reason;
          record.abortedWhileRunning = !record.done;
        });
        this.calls.push(record);
        try {
          return { rate: { baseCurrency: req.baseCurrency, quoteCurrency: req.quoteCurrency, midRate: await this.behave(mode, arg, ctx) } };
        } finally {
          record.done = true;
        }
      },
    });

  private async behave(mode: string, arg: string, ctx: HandlerContext): Promise<string> {
    let midRate = "1.5";
    switch (mode) {
      case "GATE":
        await this.gate;
        break;
      case "STUCK":
        await new Promise<never>(() => {});
        break;
      case "SIGNAL":
        await new Promise<never>((_, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason)));
        break;
      case "SLEEP":
        await sleep(Number(arg));
        break;
      case "FAST":
        break;
      default: {
        const fn = this.extra.get(mode);
        if (!fn) throw new ConnectError(`unknown test mode ${mode}`, Code.InvalidArgument);
        midRate = await fn(ctx);
      }
    }
    return midRate;
  }
}

const servers: RunningServer[] = [];
const behaviours: Behaviour[] = [];
const grpcClients: grpc.Client[] = [];
const sockets: net.Socket[] = [];
const children: ChildProcess[] = [];

async function start(opts: Partial<ServerOptions> = {}, spec: Partial<ServiceSpec> = {}): Promise<{ server: RunningServer; behaviour: Behaviour }> {
  const behaviour = new Behaviour();
  behaviours.push(behaviour);
  const server = await startServer(
    { name: "shutdown-test", services: [FxService], routes: behaviour.routes, ...spec },
    {
      host: "127.0.0.1",
      port: 0,
      adminPort: 0,
      maxRequestBytes: 1024 * 1024,
      shutdownTimeoutMs: 10_000,
      drainDelayMs: 0,
      logger,
      ...opts,
    },
  );
  servers.push(server);
  return { server, behaviour };
}

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const b of behaviours.splice(0)) b.release();
  for (const c of grpcClients.splice(0)) c.close();
  for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  await Promise.all(servers.splice(0).map((s) => within(s.shutdown(), 30_000, "shutdown in afterEach")));
});

function grpcJs(ctor: grpc.ServiceClientConstructor, url: string): grpc.Client {
  const c = grpcClient(ctor, url);
  grpcClients.push(c);
  return c;
}

const grpcFx = (url: string) => createClient(FxService, createGrpcTransport({ baseUrl: url }));
const connectH1Fx = (url: string) => createClient(FxService, createConnectTransport({ baseUrl: url, httpVersion: "1.1" }));

/** Whether a TCP connection to `url`'s port is accepted. */
function accepts(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const s = net.connect({ host: hostname, port: Number(port) });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

const codeOf = (err: unknown) => Code[ConnectError.from(err).code];

/** Watches grpc.health.v1 with grpc-js, recording statuses and how the stream ended. */
function watchHealth(url: string) {
  const call = grpcServerStream<{ status: string }>(grpcJs(HealthGrpc, url), "Watch", { service: "" });
  const state = { statuses: [] as string[], ended: undefined as undefined | { how: "end" } | { how: "error"; code: number } };
  call.on("data", (m: { status: string }) => state.statuses.push(m.status));
  call.on("end", () => (state.ended ??= { how: "end" }));
  call.on("error", (e: grpc.ServiceError) => (state.ended ??= { how: "error", code: e.code }));
  return state;
}

// ---------------------------------------------------------------------------------------

describe("graceful shutdown", () => {
  // First in the file on purpose: Node warns about a given header misuse once per process.
  it("draining answers HTTP/2 calls without a connection-specific header (HTTP/2 forbids them)", async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`);
    process.on("warning", onWarning);
    onTestFinished(() => void process.off("warning", onWarning));
    const { server } = await start({ drainDelayMs: 2_000 });
    await grpcFx(server.url).getRate({ baseCurrency: "FAST" });
    const stopping = server.shutdown();
    await waitFor(async () => {
      const readyz = await fetch(`${server.adminUrl}/readyz`);
      await readyz.body?.cancel();
      return readyz.status === 503;
    }, "the server to drain");
    // A new connection (the open one was told to take no new call): its call is refused.
    expect(codeOf(await rejectionOf(grpcFx(server.url).getRate({ baseCurrency: "FAST" })))).toBe("Unavailable");
    await within(stopping, 10_000, "shutdown");
    await sleep(50); // process warnings are emitted on the next tick
    expect(warnings.filter((w) => /connection header/i.test(w))).toEqual([]);
  });

  it("goes NOT_SERVING, refuses new calls, lets in-flight calls finish, then stops", async () => {
    const DRAIN_DELAY_MS = 4_000;
    const { server, behaviour } = await start({ drainDelayMs: DRAIN_DELAY_MS, shutdownTimeoutMs: 30_000 });
    const health = grpcJs(HealthGrpc, server.url);
    expect(await grpcUnary(health, "Check", { service: "" }, 10_000)).toEqual({ status: "SERVING" });
    const h2 = grpcFx(server.url);
    const h1 = connectH1Fx(server.url);

    // Two slow calls in flight, one over HTTP/2 (gRPC), one over HTTP/1.1 (Connect).
    const slowH2 = h2.getRate({ baseCurrency: "GATE", quoteCurrency: "via-h2" });
    const slowH1 = h1.getRate({ baseCurrency: "GATE", quoteCurrency: "via-h1" });
    slowH2.catch(() => {});
    slowH1.catch(() => {});
    await waitFor(() => behaviour.started("GATE").length === 2, "both slow calls to reach the handler");
    const watch = watchHealth(server.url);
    await waitFor(() => watch.statuses.length === 1, "the health watch to report");
    expect(watch.statuses).toEqual(["SERVING"]);

    let stopped = false;
    const t0 = Date.now();
    const stopping = server.shutdown().then(() => {
      stopped = true;
    });

    // Drain delay: still listening, but NOT_SERVING and refusing new work.
    expect(await grpcUnary(health, "Check", { service: "" }, 5_000)).toEqual({ status: "NOT_SERVING" });
    expect(await grpcUnary(health, "Check", { service: "paygate.fx.v1.FxService" }, 5_000)).toEqual({ status: "NOT_SERVING" });
    expect(codeOf(await rejectionOf(h2.getRate({ baseCurrency: "FAST" })))).toBe("Unavailable");
    expect(codeOf(await rejectionOf(h1.getRate({ baseCurrency: "FAST" })))).toBe("Unavailable");
    const readyz = await fetch(`${server.adminUrl}/readyz`);
    expect(readyz.status).toBe(503);
    expect(await readyz.json()).toMatchObject({ status: "not ready", checks: { server: "draining" } });
    const healthz = await fetch(`${server.adminUrl}/healthz`);
    expect(healthz.status).toBe(200);
    await healthz.body?.cancel();
    // The watch saw NOT_SERVING and its stream ended cleanly (it must not hold the drain open).
    await waitFor(() => watch.ended, "the health watch to end");
    expect(watch.statuses).toEqual(["SERVING", "NOT_SERVING"]);
    expect(watch.ended).toEqual({ how: "end" });
    expect(Date.now() - t0, "checks ran inside the drain delay").toBeLessThan(DRAIN_DELAY_MS);
    expect(behaviour.started("FAST")).toHaveLength(0);

    // After the delay the port stops accepting connections; a new client is refused.
    await waitFor(async () => !(await accepts(server.url)), "the RPC port to stop accepting connections", 20_000);
    expect(codeOf(await rejectionOf(connectH1Fx(server.url).getRate({ baseCurrency: "FAST" })))).toBe("Unavailable");
    expect(codeOf(await rejectionOf(grpcFx(server.url).getRate({ baseCurrency: "FAST" })))).toBe("Unavailable");
    await sleep(200);
    expect(stopped, "shutdown waits for in-flight calls").toBe(false);

    // The in-flight calls finish successfully, then shutdown completes.
    behaviour.release();
    const [a, b] = await within(Promise.all([slowH2, slowH1]), 10_000, "in-flight calls");
    expect(a.rate).toMatchObject({ quoteCurrency: "via-h2", midRate: "1.5" });
    expect(b.rate).toMatchObject({ quoteCurrency: "via-h1", midRate: "1.5" });
    await within(stopping, 10_000, "shutdown after the in-flight calls finished");
    expect(await accepts(server.adminUrl)).toBe(false);
  });

  it("an HTTP/2 client calling without pause: every call it sent is answered, or refused unseen (REFUSED_STREAM, safe to send again), none cut off", async () => {
    const outcomes = new Map<string, number>();
    const body = toBinary(GetRateRequestSchema, create(GetRateRequestSchema, { baseCurrency: "FAST" }));
    for (let round = 0; round < 5; round++) {
      const { server } = await start();
      const session = http2.connect(server.url);
      session.on("error", () => {});
      onTestFinished(() => void session.destroy());
      await new Promise((r) => session.once("connect", r));
      const calls: Promise<void>[] = [];
      const call = () =>
        new Promise<void>((resolve) => {
          const stream = session.request({ ":method": "POST", ":path": "/paygate.fx.v1.FxService/GetRate", "content-type": "application/proto" });
          let status = 0;
          stream.once("response", (h) => (status = Number(h[":status"])));
          stream.resume();
          stream.on("error", () => {});
          stream.once("close", () => {
            const outcome = status === 200 ? "answered" : stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM ? "refused unseen" : `status ${status}, RST_STREAM ${stream.rstCode}`;
            outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
            resolve();
          });
          stream.end(body);
        });
      // Three calls every turn of the event loop, until the client reads the GOAWAY.
      const sending = setInterval(() => {
        for (let i = 0; i < 3 && !session.closed; i++) calls.push(call());
      }, 0);
      await sleep(30);
      await within(server.shutdown(), 10_000, "shutdown");
      clearInterval(sending);
      await within(Promise.all(calls), 10_000, "every call to end");
    }
    expect([...outcomes.keys()].filter((o) => o !== "answered" && o !== "refused unseen")).toEqual([]);
    expect(outcomes.get("answered")).toBeGreaterThan(50);
  });

  it("with nothing in flight, shutdown is quick even with an open health Watch and idle keep-alive connections", async () => {
    const { server } = await start({ shutdownTimeoutMs: 20_000 });
    const watch = watchHealth(server.url);
    await waitFor(() => watch.statuses.length === 1, "the health watch to report");
    // Idle keep-alive connections: HTTP/1.1 (Connect) and HTTP/2 (gRPC).
    await connectH1Fx(server.url).getRate({ baseCurrency: "FAST" });
    await grpcFx(server.url).getRate({ baseCurrency: "FAST" });
    const t0 = Date.now();
    await within(server.shutdown(), 10_000, "shutdown");
    expect(Date.now() - t0).toBeLessThan(5_000);
    await waitFor(() => watch.ended, "the health watch to end");
    expect(watch.statuses).toEqual(["SERVING", "NOT_SERVING"]);
    expect(watch.ended).toEqual({ how: "end" });
  });

  it("is bounded: a handler that honours its signal is cut off with UNAVAILABLE after shutdownTimeoutMs", async () => {
    const BOUND = 1_000;
    const { server, behaviour } = await start({ shutdownTimeoutMs: BOUND });
    const calls = [grpcFx(server.url).getRate({ baseCurrency: "SIGNAL" }), connectH1Fx(server.url).getRate({ baseCurrency: "SIGNAL" })].map((p) =>
      rejectionOf(p),
    );
    await waitFor(() => behaviour.started("SIGNAL").length === 2, "both calls to reach the handler");
    const t0 = Date.now();
    await within(server.shutdown(), BOUND + 10_000, "bounded shutdown");
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(BOUND - 50);
    expect(took).toBeLessThan(BOUND + 5_000);
    const errors = await within(Promise.all(calls), 5_000, "the cut-off calls to end");
    for (const err of errors) {
      expect(codeOf(err)).toBe("Unavailable");
      expect(ConnectError.from(err).rawMessage).toContain("shutting down");
    }
    for (const c of behaviour.started("SIGNAL")) expect(c.abortedAt).toBeGreaterThanOrEqual(t0 + BOUND - 50);
  });

  it("is bounded: a handler that never finishes (ignores its signal) does not hold shutdown, and its caller gets UNAVAILABLE", async () => {
    const BOUND = 1_000;
    const { server, behaviour } = await start({ shutdownTimeoutMs: BOUND });
    const stuck = [grpcFx(server.url).getRate({ baseCurrency: "STUCK" }), connectH1Fx(server.url).getRate({ baseCurrency: "STUCK" })].map((p) =>
      rejectionOf(p),
    );
    await waitFor(() => behaviour.started("STUCK").length === 2, "both calls to reach the handler");
    const t0 = Date.now();
    await within(server.shutdown(), BOUND + 10_000, "bounded shutdown");
    expect(Date.now() - t0).toBeLessThan(BOUND + 5_000);
    const errors = await within(Promise.all(stuck), 5_000, "the stuck calls to end");
    // Retry policies key on UNAVAILABLE: a cut-off call must say so, not CANCELED or ABORTED.
    expect(errors.map(codeOf)).toEqual(["Unavailable", "Unavailable"]);
  });

  it("a client holding an admin connection open does not hold shutdown", async () => {
    const { server } = await start({ shutdownTimeoutMs: 1_000 });
    const { hostname, port } = new URL(server.adminUrl);
    // A probe that connected but has not sent (all of) its request yet.
    for (const payload of ["", "GET /healthz HTTP/1.1\r\n"]) {
      const s = net.connect({ host: hostname, port: Number(port) });
      s.on("error", () => {});
      sockets.push(s);
      await new Promise((r) => s.once("connect", r));
      if (payload) s.write(payload);
    }
    await sleep(100);
    const t0 = Date.now();
    await within(server.shutdown(), 10_000, "shutdown with an open admin connection");
    expect(Date.now() - t0).toBeLessThan(6_000);
  });

  it("a raw connection to the RPC port that never sends does not hold shutdown", async () => {
    const { server } = await start({ shutdownTimeoutMs: 1_000 });
    const { hostname, port } = new URL(server.url);
    const s = net.connect({ host: hostname, port: Number(port) });
    s.on("error", () => {});
    sockets.push(s);
    await new Promise((r) => s.once("connect", r));
    const t0 = Date.now();
    await within(server.shutdown(), 10_000, "shutdown with a silent RPC connection");
    expect(Date.now() - t0).toBeLessThan(6_000);
  });
});

// ---------------------------------------------------------------------------------------

/**
 * Tracks the abort listeners of every AbortSignal from now until the test ends (by wrapping
 * EventTarget's addEventListener / removeEventListener): how many each signal holds now and
 * the most it held at once. Listeners an aborted signal dropped by itself are not seen, so
 * only signals that are still live (not aborted) count as holding listeners.
 */
function trackAbortListeners() {
  const live = new Map<AbortSignal, Set<unknown>>();
  const peak = new Map<AbortSignal, number>();
  const proto = EventTarget.prototype;
  const { addEventListener: add, removeEventListener: remove } = proto;
  proto.addEventListener = function (this: EventTarget, ...args: Parameters<EventTarget["addEventListener"]>) {
    const [type, listener] = args;
    if (type === "abort" && this instanceof AbortSignal && listener && !this.aborted) {
      let set = live.get(this);
      if (!set) live.set(this, (set = new Set()));
      set.add(listener);
      peak.set(this, Math.max(peak.get(this) ?? 0, set.size));
    }
    return add.apply(this, args);
  };
  proto.removeEventListener = function (this: EventTarget, ...args: Parameters<EventTarget["removeEventListener"]>) {
    const [type, listener] = args;
    if (type === "abort" && this instanceof AbortSignal) live.get(this)?.delete(listener);
    return remove.apply(this, args);
  };
  onTestFinished(() => {
    proto.addEventListener = add;
    proto.removeEventListener = remove;
  });
  return {
    /** Live signals holding abort listeners now, with how many. */
    held: () => new Map([...live].filter(([signal, set]) => !signal.aborted && set.size > 0).map(([signal, set]) => [signal, set.size])),
    /** The signal that held the most listeners at once, and how many. */
    busiest: () => [...peak].reduce<[AbortSignal | undefined, number]>((best, [signal, n]) => (n > best[1] ? [signal, n] : best), [undefined, 0]),
  };
}

describe("abort listeners", () => {
  // connect links every call's handler context to the server's shutdown signal (one listener
  // per call in flight, removed when the call ends), and cutOffAt adds one per unary call:
  // under load one signal holds many listeners at once, which is normal. Node warns
  // (MaxListenersExceededWarning) past 10 unless told otherwise, and a listener that outlives
  // its call would be a real leak.
  it("50 concurrent calls: no MaxListenersExceededWarning, and no listener outlives its call", async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => void (w.name === "MaxListenersExceededWarning" && warnings.push(w.message));
    process.on("warning", onWarning);
    onTestFinished(() => void process.off("warning", onWarning));
    const listeners = trackAbortListeners();
    const { server, behaviour } = await start();
    const h2 = grpcFx(server.url);
    const h1 = connectH1Fx(server.url);
    await h2.getRate({ baseCurrency: "FAST" });
    await h1.getRate({ baseCurrency: "FAST" });
    const before = listeners.held();
    /** Live signals holding more listeners than before the calls (a leak once the calls are over). */
    const grown = () => [...listeners.held()].filter(([signal, n]) => n > (before.get(signal) ?? 0)).map(([, n]) => n);

    // 50 calls in flight at once, half over HTTP/2 (gRPC), half over HTTP/1.1 (Connect).
    const N = 50;
    const calls = Array.from({ length: N }, (_, i) => (i % 2 === 0 ? h2 : h1).getRate({ baseCurrency: "GATE" }));
    await waitFor(() => behaviour.started("GATE").length === N, "all calls to reach the handler", 20_000);
    const [, most] = listeners.busiest();
    expect(most, "one signal (the shutdown signal) has a listener per call in flight").toBeGreaterThanOrEqual(N);
    behaviour.release();
    await within(Promise.all(calls), 20_000, "the calls to finish");
    await waitFor(() => grown().length === 0, "the calls' listeners to be removed", 5_000).catch(() => {
      throw new Error(`listeners left behind after the calls ended: ${JSON.stringify(grown())}`);
    });

    // Calls that end otherwise: failing, cancelled by the client, past their deadline.
    const ended = await Promise.allSettled([
      ...Array.from({ length: 10 }, () => h2.getRate({ baseCurrency: "NO_SUCH_MODE" })),
      ...Array.from({ length: 10 }, (_, i) => {
        const ac = new AbortController();
        setTimeout(() => ac.abort(), 50);
        return (i % 2 === 0 ? h2 : h1).getRate({ baseCurrency: "SIGNAL" }, { signal: ac.signal });
      }),
      ...Array.from({ length: 10 }, (_, i) => (i % 2 === 0 ? h2 : h1).getRate({ baseCurrency: "SLEEP:300" }, { timeoutMs: 50 })),
    ]);
    expect(ended.every((r) => r.status === "rejected")).toBe(true);
    await waitFor(() => behaviour.calls.every((c) => c.done) && grown().length === 0, "the ended calls' listeners to be removed", 10_000).catch(() => {
      throw new Error(`listeners left behind after the calls ended: ${JSON.stringify(grown())}`);
    });
    expect(warnings).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------

describe("deadlines", () => {
  /**
   * Calls a 1 s handler with a 100 ms budget until one attempt reaches the handler (on a
   * loaded machine the client may give up before the request is even dispatched), and
   * returns that handler's record. Every attempt must fail with DEADLINE_EXCEEDED.
   */
  async function deadlineExceeded(behaviour: Behaviour, call: () => Promise<unknown>, codeOfErr: (err: unknown) => string): Promise<CallRecord> {
    for (let attempt = 1; attempt <= 5; attempt++) {
      const before = behaviour.started("SLEEP").length;
      expect(codeOfErr(await rejectionOf(call()))).toBe("DeadlineExceeded");
      const entered = await waitFor(() => behaviour.started("SLEEP").length > before, "handler entry", 1_000).catch(() => false);
      if (entered) return behaviour.started("SLEEP")[before]!;
    }
    throw new Error("no attempt reached the handler");
  }

  function expectHandlerCutOff(call: CallRecord) {
    // The handler saw the caller's budget...
    expect(call.timeoutMs).toBeDefined();
    expect(call.timeoutMs!).toBeLessThanOrEqual(100);
    // ...and its signal aborted while it was still sleeping.
    expect(call.signal.aborted).toBe(true);
    expect(call.abortedWhileRunning).toBe(true);
    // The reason is the server's own deadline or the client's cancel, whichever lands first.
    expect(["DeadlineExceeded", "Canceled", "Internal"]).toContain(Code[ConnectError.from(call.abortReason).code]);
  }

  it.each([
    ["gRPC (connect-node)", grpcFx],
    ["Connect over HTTP/1.1", connectH1Fx],
  ])("%s: timeoutMs 100 against a 1 s handler is DEADLINE_EXCEEDED and aborts the handler's signal", async (_name, makeClient) => {
    const { server, behaviour } = await start();
    const client = makeClient(server.url);
    await client.getRate({ baseCurrency: "FAST" }); // connection up, code warm
    const call = await deadlineExceeded(behaviour, () => client.getRate({ baseCurrency: "SLEEP:1000" }, { timeoutMs: 100 }), codeOf);
    await waitFor(() => call.abortedAt !== undefined, "the handler's signal to abort", 5_000);
    expectHandlerCutOff(call);
  });

  it("grpc-js: a 100 ms deadline against a 1 s handler is DEADLINE_EXCEEDED", async () => {
    const { server, behaviour } = await start();
    const fx = grpcJs(FxGrpc, server.url);
    await grpcUnary(fx, "GetRate", { base_currency: "FAST" }, 10_000);
    const grpcCode = (err: unknown) => (isServiceError(err) && err.code === 4 ? "DeadlineExceeded" : `grpc code ${String((err as { code?: unknown }).code)}`);
    const call = await deadlineExceeded(behaviour, () => grpcUnary(fx, "GetRate", { base_currency: "SLEEP:1000" }, 100), grpcCode);
    await waitFor(() => call.abortedAt !== undefined, "the handler's signal to abort", 5_000);
    expectHandlerCutOff(call);
  });

  describe("downstream() carries the caller's remaining time and cancellation", () => {
    async function chain() {
      const inner = await start();
      const outer = await start();
      const innerClient = upstreamClient(FxService, upstreamTransport(inner.server.url));
      outer.behaviour.extra.set("CALL_INNER", async (ctx) => {
        const res = await innerClient.getRate({ baseCurrency: "FAST", quoteCurrency: "inner" }, downstream(ctx, 5_000));
        return res.rate!.midRate;
      });
      outer.behaviour.extra.set("CALL_INNER_SLOW", async (ctx) => {
        const res = await innerClient.getRate({ baseCurrency: "SIGNAL", quoteCurrency: "inner" }, downstream(ctx, 5_000));
        return res.rate!.midRate;
      });
      return { inner, outer, client: grpcFx(outer.server.url) };
    }

    it("the inner handler's budget is at most the outer caller's", async () => {
      const { inner, client } = await chain();
      const res = await client.getRate({ baseCurrency: "CALL_INNER" }, { timeoutMs: 2_000 });
      expect(res.rate?.midRate).toBe("1.5");
      const seen = inner.behaviour.started("FAST")[0]?.timeoutMs;
      expect(seen).toBeDefined();
      expect(seen!).toBeLessThanOrEqual(2_000);
      expect(seen!).toBeGreaterThan(500);
    });

    it("without a caller deadline the inner call gets the default", async () => {
      const { inner, client } = await chain();
      await client.getRate({ baseCurrency: "CALL_INNER" });
      const seen = inner.behaviour.started("FAST")[0]?.timeoutMs;
      expect(seen).toBeDefined();
      expect(seen!).toBeLessThanOrEqual(5_000);
      expect(seen!).toBeGreaterThan(3_000);
    });

    it("the caller's deadline expiring aborts the inner call too", async () => {
      const { inner, client } = await chain();
      const err = await rejectionOf(client.getRate({ baseCurrency: "CALL_INNER_SLOW" }, { timeoutMs: 1_500 }));
      expect(codeOf(err)).toBe("DeadlineExceeded");
      await waitFor(() => inner.behaviour.started("SIGNAL")[0]?.abortedAt !== undefined, "the inner handler's signal to abort", 5_000);
      const innerCall = inner.behaviour.started("SIGNAL")[0]!;
      expect(innerCall.timeoutMs).toBeLessThanOrEqual(1_500);
      expect(innerCall.abortedWhileRunning).toBe(true);
    });

    it("the caller cancelling aborts the inner call", async () => {
      const { inner, client } = await chain();
      const abort = new AbortController();
      const call = rejectionOf(client.getRate({ baseCurrency: "CALL_INNER_SLOW" }, { signal: abort.signal }));
      await waitFor(() => inner.behaviour.started("SIGNAL").length === 1, "the inner call to start");
      abort.abort();
      expect(codeOf(await call)).toBe("Canceled");
      await waitFor(() => inner.behaviour.started("SIGNAL")[0]?.abortedAt !== undefined, "the inner handler's signal to abort", 5_000);
    });
  });
});

// ---------------------------------------------------------------------------------------

describe("the fx process", () => {
  function spawnFx(env: Record<string, string>) {
    const out = { stdout: "", stderr: "" };
    const { child, exited } = spawnService("services/fx/main.ts", {
      cwd: repoRoot,
      env: { ...process.env, LOG_LEVEL: "info", DATA_DIR: "memory://", FX_MARKET_TICK_MS: "100", ...env },
      onLine: (line, stream) => (out[stream] += `${line}\n`),
    });
    children.push(child);
    const logLines = () =>
      out.stdout
        .split("\n")
        .filter((l) => l.trim() !== "")
        .map((l) => {
          try {
            return JSON.parse(l) as Record<string, unknown>;
          } catch {
            return { unparsed: l };
          }
        });
    return { child, out, exited, logLines };
  }

  it("starts, serves, and on SIGTERM drains, logs 'stopped' and exits 0", async () => {
    const [port, adminPort] = [await freePort(), await freePort()];
    const fx = spawnFx({ FX_PORT: String(port), FX_ADMIN_PORT: String(adminPort) });
    await waitFor(() => fx.logLines().some((l) => l.msg === "fx listening") || fx.child.exitCode !== null, "the fx process to listen", 60_000, 100);
    expect(fx.child.exitCode, fx.out.stderr).toBeNull();
    const listening = fx.logLines().find((l) => l.msg === "fx listening")!;
    expect(listening).toMatchObject({ level: "info", service: "fx", url: `http://127.0.0.1:${port}`, adminUrl: `http://127.0.0.1:${adminPort}` });

    const readyz = await fetch(`http://127.0.0.1:${adminPort}/readyz`);
    expect(readyz.status).toBe(200);
    await readyz.body?.cancel();
    const convert = await fetch(`http://127.0.0.1:${port}/paygate.fx.v1.FxService/Convert`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ amount: { currency: "USD", amountMinor: "100" }, toCurrency: "JPY" }),
    });
    expect(convert.status).toBe(200);
    await convert.body?.cancel();

    fx.child.kill("SIGTERM");
    const exit = await within(fx.exited, 30_000, "the fx process to exit after SIGTERM");
    expect(exit, fx.out.stderr).toEqual({ code: 0, signal: null });
    // Only "stopped" is asserted: pino's async destination may reorder (or drop) the line
    // still being written when the process exits (see the report on runMain).
    expect(fx.logLines().find((l) => l.msg === "stopped"), fx.out.stdout).toMatchObject({ service: "fx", level: "info" });
  });

  it("a configuration error exits 2 with a message naming the variable and no stack trace", async () => {
    const fx = spawnFx({ FX_PORT: "abc", FX_SPREAD_BPS: "10000" });
    const exit = await within(fx.exited, 30_000, "the fx process to exit");
    expect(exit).toEqual({ code: 2, signal: null });
    expect(fx.out.stderr).toContain("FX_PORT");
    expect(fx.out.stderr).toContain('"abc"');
    expect(fx.out.stderr).toContain("FX_SPREAD_BPS");
    expect(fx.out.stderr).not.toMatch(/\n\s+at\s/);
    expect(fx.out.stdout).not.toContain("listening");
  });
});
