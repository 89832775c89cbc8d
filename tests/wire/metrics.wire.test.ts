// Prometheus metrics of the shared runtime (services/runtime/observability/metrics.ts), over real sockets:
// a server started with startServer (a test-only FxService whose behaviour each request
// picks), called with Connect JSON (plain fetch), Connect binary, gRPC (connect-node and
// grpc-js), gRPC-Web, server streams that end, fail and are cancelled, and calls through
// upstreamTransport (the client interceptor). Every assertion reads /metrics as Prometheus
// would: the text exposition, parsed here, compared before and after (deltas), since the
// registry is process-wide.
import http2 from "node:http2";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { create, toBinary } from "@bufbuild/protobuf";
import type * as grpc from "@grpc/grpc-js";
import { Code, ConnectError, createClient, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { FxService, GetRateRequestSchema } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { invalidArgument } from "../../services/runtime/errors.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { LATENCY_BUCKETS } from "../../services/runtime/observability/metrics.js";
import { startServer, type RunningServer, type ServerOptions, type ServiceSpec } from "../../services/runtime/rpc/server.js";
import { downstream, upstreamClient, upstreamTransport } from "../../services/runtime/rpc/upstream.js";
import { FxGrpc, grpcClient, grpcUnary, rejectionOf, sleep, waitFor } from "../support/wire.js";

vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 });

const logger = createLogger("metrics-test", "silent");
const FX = "paygate.fx.v1.FxService";

// ---------------------------------------------------------------------------------------
// A tiny parser of the Prometheus text exposition format (version 0.0.4).
// ---------------------------------------------------------------------------------------

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
interface Exposition {
  types: Map<string, string>;
  samples: Sample[];
}

function parseExposition(text: string): Exposition {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const [i, line] of text.split("\n").entries()) {
    if (line === "") continue;
    if (line.startsWith("#")) {
      const m = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
      if (!m) throw new Error(`line ${i + 1}: bad comment ${line}`);
      if (m[1] === "TYPE") types.set(m[2]!, m[3]!);
      continue;
    }
    const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)?.[0];
    if (!name) throw new Error(`line ${i + 1}: no metric name: ${line}`);
    let pos = name.length;
    const labels: Record<string, string> = {};
    if (line[pos] === "{") {
      pos++;
      while (line[pos] !== "}") {
        const key = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(line.slice(pos))?.[0];
        if (!key || line[pos + key.length] !== "=" || line[pos + key.length + 1] !== '"') throw new Error(`line ${i + 1}: bad label at ${pos}: ${line}`);
        pos += key.length + 2;
        let value = "";
        for (;;) {
          const c = line[pos++];
          if (c === undefined) throw new Error(`line ${i + 1}: unterminated label value: ${line}`);
          if (c === '"') break;
          if (c === "\\") {
            const e = line[pos++];
            value += e === "n" ? "\n" : e;
          } else value += c;
        }
        if (key in labels) throw new Error(`line ${i + 1}: duplicate label ${key}`);
        labels[key] = value;
        if (line[pos] === ",") pos++;
      }
      pos++;
    }
    const rest = line.slice(pos).trim().split(/\s+/);
    if (line[pos] !== " " || rest.length < 1 || rest.length > 2) throw new Error(`line ${i + 1}: bad sample: ${line}`);
    const raw = rest[0]!;
    // prom-client writes NaN as "Nan" (an empty event-loop histogram's mean); Prometheus
    // parses floats case-insensitively, so both spellings are valid.
    const value = raw === "+Inf" ? Infinity : raw === "-Inf" ? -Infinity : /^nan$/i.test(raw) ? NaN : Number(raw);
    if (Number.isNaN(value) && !/^nan$/i.test(raw)) throw new Error(`line ${i + 1}: bad value ${raw}`);
    samples.push({ name, labels, value });
  }
  return { types, samples };
}

/** The one sample of `name` whose labels are exactly `labels` (0 when absent: a counter not yet touched). */
function value(e: Exposition, name: string, labels: Record<string, string> = {}): number {
  const want = Object.entries(labels);
  const found = e.samples.filter(
    (s) => s.name === name && Object.keys(s.labels).length === want.length && want.every(([k, v]) => s.labels[k] === v),
  );
  if (found.length > 1) throw new Error(`${found.length} samples of ${name}${JSON.stringify(labels)}`);
  return found[0]?.value ?? 0;
}

async function scrape(url: string): Promise<Exposition> {
  const res = await fetch(`${url}/metrics`);
  expect(res.status).toBe(200);
  return parseExposition(await res.text());
}

/** The first scrape of the test server's /metrics for which `ok` holds (polling). */
async function scrapeWhen(ok: (e: Exposition) => boolean, what: string): Promise<Exposition> {
  let last: Exposition | undefined;
  await waitFor(async () => ok((last = await scrape(server.adminUrl))), what);
  return last!;
}

/** Differences between two scrapes. */
const delta = (before: Exposition, after: Exposition) => (name: string, labels: Record<string, string> = {}) =>
  value(after, name, labels) - value(before, name, labels);

// Label values that would be ids: uuids, ULIDs, prefixed ids (pay_..., acct_...), long
// digit or hex runs. Bounded label values (names, codes, buckets) never look like this.
const ID_LIKE = [
  /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/i,
  /\b[0-9A-HJKMNP-TV-Z]{26}\b/,
  /^(pay|acct|acc|quote|qt|hold|txn|tx|ref|req|cus|mch|key|idem)_/i,
  /\d{6,}/,
  /[0-9a-f]{12,}/i,
];
const idLike = (v: string) => ID_LIKE.some((re) => re.test(v));

const CODE_NAMES = new Set([
  "ok",
  "canceled",
  "unknown",
  "invalid_argument",
  "deadline_exceeded",
  "not_found",
  "already_exists",
  "permission_denied",
  "resource_exhausted",
  "failed_precondition",
  "aborted",
  "out_of_range",
  "unimplemented",
  "internal",
  "unavailable",
  "data_loss",
  "unauthenticated",
]);

// ---------------------------------------------------------------------------------------
// A test-only FxService. GetRate's base_currency picks the behaviour:
//   OK            answers
//   BAD           invalid argument (a DomainError, mapped by errorMapping)
//   CRASH         an unexpected Error (errorMapping makes it INTERNAL)
//   SLEEP:<ms>    sleeps, then answers
//   SIGNAL        waits for its signal to abort, then throws the reason
// StreamRates' base_currency:
//   GATE          one message, then waits for the test's gate, two more, ends
//   FAIL          one message, then UNAVAILABLE
//   HOLD          one message, then waits for its signal, then returns normally
//   DEAF          one message, then waits for the test's deaf gate, ignoring its signal
//                 (a handler stuck on something else), then one more message
// ---------------------------------------------------------------------------------------

class Gate {
  private open!: () => void;
  readonly opened = new Promise<void>((r) => (this.open = r));
  release = () => this.open();
}

function testRoutes(gates: { stream: Gate; deaf: Gate }, counts: { signalStarted: number; holdEnded: number; deafResumed: number; deafEnded: number }) {
  const rate = (base: string, quote: string) => ({ rate: { baseCurrency: base, quoteCurrency: quote, midRate: "1.25" } });
  const untilAborted = (ctx: HandlerContext) =>
    new Promise<void>((resolve) => (ctx.signal.aborted ? resolve() : ctx.signal.addEventListener("abort", () => resolve(), { once: true })));
  return (router: ConnectRouter) =>
    router.service(FxService, {
      getRate: async (req, ctx) => {
        const [mode = "", arg = ""] = req.baseCurrency.split(":");
        switch (mode) {
          case "OK":
            return rate(req.baseCurrency, req.quoteCurrency);
          case "BAD":
            throw invalidArgument("bad_currency", `unsupported currency ${req.quoteCurrency}`, "quote_currency");
          case "CRASH":
            throw new Error(`db exploded for ${req.quoteCurrency}`);
          case "SLEEP":
            await sleep(Number(arg));
            return rate(req.baseCurrency, req.quoteCurrency);
          case "SIGNAL":
            counts.signalStarted++;
            await untilAborted(ctx);
            throw ctx.signal.reason;
          default:
            throw new ConnectError(`unknown mode ${mode}`, Code.InvalidArgument);
        }
      },
      streamRates: async function* (req, ctx) {
        const msg = { rates: [rate(req.baseCurrency, "EUR").rate] };
        yield msg;
        switch (req.baseCurrency) {
          case "GATE":
            await gates.stream.opened;
            yield msg;
            yield msg;
            return;
          case "FAIL":
            throw new ConnectError("market closed", Code.Unavailable);
          case "HOLD":
            await untilAborted(ctx);
            counts.holdEnded++;
            return;
          case "DEAF":
            try {
              await gates.deaf.opened;
              counts.deafResumed++;
              yield msg;
              return;
            } finally {
              counts.deafEnded++;
            }
          default:
            throw new ConnectError("unknown mode", Code.InvalidArgument);
        }
      },
    });
}

const servers: RunningServer[] = [];
const grpcClients: grpc.Client[] = [];
const gates = { stream: new Gate(), deaf: new Gate() };
const counts = { signalStarted: 0, holdEnded: 0, deafResumed: 0, deafEnded: 0 };

async function start(opts: Partial<ServerOptions> = {}, spec: Partial<ServiceSpec> = {}): Promise<RunningServer> {
  const server = await startServer(
    { name: "metrics-test", services: [FxService], routes: testRoutes(gates, counts), ...spec },
    { host: "127.0.0.1", port: 0, adminPort: 0, maxRequestBytes: 1024 * 1024, shutdownTimeoutMs: 5_000, drainDelayMs: 0, logger, ...opts },
  );
  servers.push(server);
  return server;
}

let server: RunningServer;

beforeAll(async () => {
  server = await start();
});

afterAll(async () => {
  gates.stream.release();
  gates.deaf.release();
  for (const c of grpcClients) c.close();
  await Promise.all(servers.map((s) => s.shutdown()));
});

/** POST a Connect unary JSON request with plain fetch (HTTP/1.1). */
async function connectJson(method: string, body: object): Promise<number> {
  const res = await fetch(`${server.url}/${FX}/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  await res.text();
  return res.status;
}

const fxOver = (kind: "grpc" | "grpc-web" | "connect-binary" | "connect-json-h2") => {
  const baseUrl = server.url;
  const transport =
    kind === "grpc"
      ? createGrpcTransport({ baseUrl })
      : kind === "grpc-web"
        ? createGrpcWebTransport({ baseUrl, httpVersion: "1.1" })
        : kind === "connect-binary"
          ? createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: true })
          : createConnectTransport({ baseUrl, httpVersion: "2" });
  return createClient(FxService, transport);
};

const codeOf = (err: unknown) => ConnectError.from(err).code;

// ---------------------------------------------------------------------------------------

describe("/metrics", () => {
  it("serves the registry on the admin port: Prometheus text, process and runtime metrics, RPC metric families", async () => {
    const res = await fetch(`${server.adminUrl}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
    const e = parseExposition(await res.text());
    // Process and Node.js runtime metrics, with values.
    for (const [name, type] of [
      ["process_cpu_seconds_total", "counter"],
      ["process_resident_memory_bytes", "gauge"],
      ["process_start_time_seconds", "gauge"],
      ["nodejs_eventloop_lag_seconds", "gauge"],
      ["nodejs_eventloop_lag_p99_seconds", "gauge"],
      ["nodejs_heap_size_used_bytes", "gauge"],
      ["nodejs_gc_duration_seconds", "histogram"],
    ] as const) {
      expect(e.types.get(name), name).toBe(type);
    }
    expect(value(e, "process_cpu_seconds_total")).toBeGreaterThan(0);
    expect(value(e, "process_resident_memory_bytes")).toBeGreaterThan(1_000_000);
    expect(value(e, "process_start_time_seconds")).toBeGreaterThan(1_600_000_000);
    // The runtime's own families, declared even before any call.
    expect(e.types.get("rpc_server_requests_total")).toBe("counter");
    expect(e.types.get("rpc_server_request_duration_seconds")).toBe("histogram");
    expect(e.types.get("rpc_server_requests_in_flight")).toBe("gauge");
    expect(e.types.get("rpc_client_requests_total")).toBe("counter");
    expect(e.types.get("rpc_client_request_duration_seconds")).toBe("histogram");
    // (db_* families appear in processes that open a database: tests/unit/metrics-db.test.ts.)

    // Only GET and HEAD; the RPC port of a server with an admin port does not serve it.
    const head = await fetch(`${server.adminUrl}/metrics`, { method: "HEAD" });
    expect(head.status).toBe(200);
    const post = await fetch(`${server.adminUrl}/metrics`, { method: "POST" });
    expect(post.status).toBe(405);
    await post.body?.cancel();
    const onRpcPort = await fetch(`${server.url}/metrics`);
    expect(onRpcPort.status).not.toBe(200);
    await onRpcPort.body?.cancel();
  });

  it("is served on the one port of a server without an admin port (the gateway), beside /healthz and the fallback", async () => {
    const one = await start(
      { adminPort: undefined },
      {
        fallback: (_req, res) => {
          res.writeHead(418, { "content-type": "text/plain" });
          res.end("teapot");
        },
      },
    );
    const client = createClient(FxService, createConnectTransport({ baseUrl: one.url, httpVersion: "1.1" }));
    const before = await scrape(one.url);
    await client.getRate({ baseCurrency: "OK" });
    const after = await scrape(one.url);
    expect(delta(before, after)("rpc_server_requests_total", { rpc_service: FX, rpc_method: "GetRate", protocol: "connect", code: "ok" })).toBe(1);
    expect((await fetch(`${one.url}/healthz`)).status).toBe(200);
    const other = await fetch(`${one.url}/v1/something`);
    expect(other.status).toBe(418);
    expect(await other.text()).toBe("teapot");
  });

  it("is absent, and calls are not counted, when metrics are switched off", async () => {
    const off = await start({ metrics: false });
    const res = await fetch(`${off.adminUrl}/metrics`);
    expect(res.status).toBe(404);
    await res.body?.cancel();
    const before = await scrape(server.adminUrl);
    await createClient(FxService, createConnectTransport({ baseUrl: off.url, httpVersion: "1.1" })).getRate({ baseCurrency: "OK" });
    const after = await scrape(server.adminUrl);
    expect(delta(before, after)("rpc_server_request_duration_seconds_count", { rpc_service: FX, rpc_method: "GetRate", protocol: "connect" })).toBe(0);
  });
});

describe("RPC server metrics", () => {
  it("count unary calls by protocol and code, time them, and return in-flight to 0", async () => {
    const before = await scrape(server.adminUrl);
    // Connect JSON with fetch: 3 ok, 1 invalid_argument (a domain error), 1 internal (a crash).
    for (let i = 0; i < 3; i++) expect(await connectJson("GetRate", { baseCurrency: "OK", quoteCurrency: "EUR" })).toBe(200);
    expect(await connectJson("GetRate", { baseCurrency: "BAD", quoteCurrency: "EUR" })).toBe(400);
    expect(await connectJson("GetRate", { baseCurrency: "CRASH", quoteCurrency: "EUR" })).toBe(500);
    // Connect binary (HTTP/1.1) and Connect JSON over HTTP/2: 1 ok each.
    await fxOver("connect-binary").getRate({ baseCurrency: "OK" });
    await fxOver("connect-json-h2").getRate({ baseCurrency: "OK" });
    // gRPC with connect-node: 2 ok, 1 invalid_argument; with grpc-js: 1 ok.
    const g = fxOver("grpc");
    await g.getRate({ baseCurrency: "OK" });
    await g.getRate({ baseCurrency: "OK" });
    expect(codeOf(await rejectionOf(g.getRate({ baseCurrency: "BAD" })))).toBe(Code.InvalidArgument);
    const gjs = grpcClient(FxGrpc, server.url);
    grpcClients.push(gjs);
    await grpcUnary(gjs, "GetRate", { base_currency: "OK", quote_currency: "EUR" }, 10_000);
    // gRPC-Web: 1 ok, 1 invalid_argument.
    const w = fxOver("grpc-web");
    await w.getRate({ baseCurrency: "OK" });
    expect(codeOf(await rejectionOf(w.getRate({ baseCurrency: "BAD" })))).toBe(Code.InvalidArgument);
    // A method the test service does not implement.
    expect(codeOf(await rejectionOf(g.listCurrencies({})))).toBe(Code.Unimplemented);
    const after = await scrape(server.adminUrl);
    const d = delta(before, after);

    const req = (protocol: string, code: string, method = "GetRate") => d("rpc_server_requests_total", { rpc_service: FX, rpc_method: method, protocol, code });
    expect({
      connectOk: req("connect", "ok"),
      connectInvalid: req("connect", "invalid_argument"),
      connectInternal: req("connect", "internal"),
      grpcOk: req("grpc", "ok"),
      grpcInvalid: req("grpc", "invalid_argument"),
      webOk: req("grpc-web", "ok"),
      webInvalid: req("grpc-web", "invalid_argument"),
      grpcInternal: req("grpc", "internal"),
      unimplemented: req("grpc", "unimplemented", "ListCurrencies"),
    }).toEqual({
      connectOk: 5,
      connectInvalid: 1,
      connectInternal: 1,
      grpcOk: 3,
      grpcInvalid: 1,
      webOk: 1,
      webInvalid: 1,
      grpcInternal: 0,
      unimplemented: 1,
    });

    // The histogram: one observation per call, per protocol; a sum; cumulative buckets.
    for (const [protocol, n] of [
      ["connect", 7],
      ["grpc", 4],
      ["grpc-web", 2],
    ] as const) {
      const labels = { rpc_service: FX, rpc_method: "GetRate", protocol };
      expect(d("rpc_server_request_duration_seconds_count", labels), protocol).toBe(n);
      expect(d("rpc_server_request_duration_seconds_sum", labels), protocol).toBeGreaterThan(0);
      expect(d("rpc_server_request_duration_seconds_bucket", { ...labels, le: "+Inf" }), protocol).toBe(n);
      const buckets = after.samples.filter((s) => s.name === "rpc_server_request_duration_seconds_bucket" && s.labels.protocol === protocol && s.labels.rpc_method === "GetRate");
      expect(buckets.map((s) => s.labels.le)).toEqual([...LATENCY_BUCKETS.map(String), "+Inf"]);
      const values = buckets.map((s) => s.value);
      expect(values, "buckets are cumulative").toEqual([...values].sort((a, b) => a - b));
    }
    // Nothing is left in flight.
    expect(value(after, "rpc_server_requests_in_flight", { rpc_service: FX, rpc_method: "GetRate" })).toBe(0);
    expect(value(after, "rpc_server_requests_in_flight", { rpc_service: FX, rpc_method: "ListCurrencies" })).toBe(0);
  });

  it("time a call from start to end: a 300 ms call lands above the 0.25 s bucket, and is in flight while it runs", async () => {
    const labels = { rpc_service: FX, rpc_method: "GetRate", protocol: "grpc" };
    const before = await scrape(server.adminUrl);
    const slow = fxOver("grpc").getRate({ baseCurrency: "SLEEP:300" });
    await waitFor(async () => value(await scrape(server.adminUrl), "rpc_server_requests_in_flight", { rpc_service: FX, rpc_method: "GetRate" }) === 1, "the call to be in flight");
    await slow;
    const after = await scrape(server.adminUrl);
    const d = delta(before, after);
    expect(d("rpc_server_request_duration_seconds_count", labels)).toBe(1);
    expect(d("rpc_server_request_duration_seconds_sum", labels)).toBeGreaterThanOrEqual(0.29);
    expect(d("rpc_server_request_duration_seconds_bucket", { ...labels, le: "0.25" })).toBe(0);
    expect(d("rpc_server_request_duration_seconds_bucket", { ...labels, le: "+Inf" })).toBe(1);
    expect(value(after, "rpc_server_requests_in_flight", { rpc_service: FX, rpc_method: "GetRate" })).toBe(0);
  });

  it("count a server stream once, when it ends, with its whole duration", async () => {
    const labels = { rpc_service: FX, rpc_method: "StreamRates", protocol: "grpc" };
    const before = await scrape(server.adminUrl);
    const it = fxOver("grpc").streamRates({ baseCurrency: "GATE" })[Symbol.asyncIterator]();
    expect((await it.next()).done).toBe(false);
    // Open: in flight, not yet counted.
    const during = await scrape(server.adminUrl);
    expect(value(during, "rpc_server_requests_in_flight", { rpc_service: FX, rpc_method: "StreamRates" })).toBe(1);
    expect(delta(before, during)("rpc_server_requests_total", { ...labels, code: "ok" })).toBe(0);
    expect(delta(before, during)("rpc_server_request_duration_seconds_count", labels)).toBe(0);
    await sleep(300);
    gates.stream.release();
    let rest = 0;
    for (let r = await it.next(); !r.done; r = await it.next()) rest++;
    expect(rest).toBe(2);
    const after = await scrapeWhen((e) => value(e, "rpc_server_requests_in_flight", { rpc_service: FX, rpc_method: "StreamRates" }) === 0, "the stream to leave in-flight");
    const d = delta(before, after);
    expect(d("rpc_server_requests_total", { ...labels, code: "ok" })).toBe(1);
    expect(d("rpc_server_request_duration_seconds_count", labels)).toBe(1);
    expect(d("rpc_server_request_duration_seconds_sum", labels)).toBeGreaterThanOrEqual(0.29);
    // Scraped again later: still once.
    await sleep(100);
    expect(delta(before, await scrape(server.adminUrl))("rpc_server_requests_total", { ...labels, code: "ok" })).toBe(1);
  });

  it("count a failing stream with its code and a cancelled one as canceled, leaving nothing in flight", async () => {
    const before = await scrape(server.adminUrl);
    // Fails after one message, over the Connect protocol (HTTP/1.1 server stream).
    const failing = fxOver("connect-binary").streamRates({ baseCurrency: "FAIL" });
    const seen: unknown[] = [];
    const err = await rejectionOf(
      (async () => {
        for await (const m of failing) seen.push(m);
      })(),
    );
    expect(seen).toHaveLength(1);
    expect(codeOf(err)).toBe(Code.Unavailable);
    // The client cancels after one message; the handler then returns normally.
    const ac = new AbortController();
    const held = fxOver("grpc").streamRates({ baseCurrency: "HOLD" }, { signal: ac.signal })[Symbol.asyncIterator]();
    expect((await held.next()).done).toBe(false);
    const holdEnded = counts.holdEnded;
    ac.abort();
    await held.next().catch(() => {});
    await waitFor(() => counts.holdEnded > holdEnded, "the held stream's handler to end");
    const after = await scrapeWhen((e) => value(e, "rpc_server_requests_in_flight", { rpc_service: FX, rpc_method: "StreamRates" }) === 0, "the streams to leave in-flight");
    const d = delta(before, after);
    expect(d("rpc_server_requests_total", { rpc_service: FX, rpc_method: "StreamRates", protocol: "connect", code: "unavailable" })).toBe(1);
    expect(d("rpc_server_requests_total", { rpc_service: FX, rpc_method: "StreamRates", protocol: "grpc", code: "canceled" })).toBe(1);
    expect(d("rpc_server_requests_total", { rpc_service: FX, rpc_method: "StreamRates", protocol: "grpc", code: "ok" })).toBe(0);
  });

  it("count a stream the client abandons mid-stream as canceled when it aborts, even while its handler ignores the signal", async () => {
    const streams = { rpc_service: FX, rpc_method: "StreamRates" };
    const inFlight = (e: Exposition) => value(e, "rpc_server_requests_in_flight", streams);
    const before = await scrapeWhen((e) => inFlight(e) === 0, "no stream in flight before the test");
    /** StreamRates calls over `protocol` counted since `before`, by code (every code, so a second count under any code shows). */
    const byCode = (e: Exposition, protocol: string) =>
      Object.fromEntries(
        e.samples
          .filter((s) => s.name === "rpc_server_requests_total" && s.labels.rpc_method === "StreamRates" && s.labels.protocol === protocol)
          .map((s) => [s.labels.code!, s.value - value(before, "rpc_server_requests_total", s.labels)])
          .filter(([, n]) => n !== 0),
      );
    const { deafResumed, deafEnded } = counts;
    // Over gRPC (HTTP/2: the client resets the stream) and Connect (HTTP/1.1: the client
    // closes the connection), each after reading one message.
    const open = async (kind: "grpc" | "connect-binary") => {
      const ac = new AbortController();
      const it = fxOver(kind).streamRates({ baseCurrency: "DEAF" }, { signal: ac.signal })[Symbol.asyncIterator]();
      expect((await it.next()).done).toBe(false);
      return ac;
    };
    const calls = [await open("grpc"), await open("connect-binary")];
    expect(inFlight(await scrape(server.adminUrl))).toBe(2);
    for (const ac of calls) ac.abort();
    // Counted when the call is aborted, while both handlers are still stuck.
    const after = await scrapeWhen((e) => inFlight(e) === 0, "the abandoned streams to leave in-flight");
    expect(counts.deafResumed).toBe(deafResumed);
    expect({ grpc: byCode(after, "grpc"), connect: byCode(after, "connect") }).toEqual({ grpc: { canceled: 1 }, connect: { canceled: 1 } });
    expect(delta(before, after)("rpc_server_request_duration_seconds_count", { ...streams, protocol: "grpc" })).toBe(1);
    expect(delta(before, after)("rpc_server_request_duration_seconds_count", { ...streams, protocol: "connect" })).toBe(1);
    // The handlers go on and end later (their next write fails): the calls are not counted again.
    gates.deaf.release();
    await waitFor(() => counts.deafEnded === deafEnded + 2, "the abandoned handlers to end");
    const later = await scrape(server.adminUrl);
    expect(inFlight(later)).toBe(0);
    expect({ grpc: byCode(later, "grpc"), connect: byCode(later, "connect") }).toEqual({ grpc: { canceled: 1 }, connect: { canceled: 1 } });
    expect(delta(before, later)("rpc_server_request_duration_seconds_count", { ...streams, protocol: "grpc" })).toBe(1);
    expect(delta(before, later)("rpc_server_request_duration_seconds_count", { ...streams, protocol: "connect" })).toBe(1);
  });
});

describe("RPC client metrics (upstreamTransport)", () => {
  it("count outgoing calls by service, method and code, and time them", async () => {
    const fx = upstreamClient(FxService, upstreamTransport(server.url));
    const before = await scrape(server.adminUrl);
    const { signalStarted } = counts;
    await fx.getRate({ baseCurrency: "OK" });
    await fx.getRate({ baseCurrency: "OK" });
    expect(codeOf(await rejectionOf(fx.getRate({ baseCurrency: "BAD" })))).toBe(Code.InvalidArgument);
    // The caller's deadline, carried downstream, runs out.
    expect(codeOf(await rejectionOf(fx.getRate({ baseCurrency: "SIGNAL" }, downstream(undefined, 150))))).toBe(Code.DeadlineExceeded);
    let messages = 0;
    gates.stream.release();
    for await (const _ of fx.streamRates({ baseCurrency: "GATE" })) messages++;
    expect(messages).toBe(3);
    const after = await scrapeWhen((e) => value(e, "rpc_server_requests_in_flight", { rpc_service: FX, rpc_method: "GetRate" }) === 0, "the server side to finish");
    const d = delta(before, after);
    const client = (method: string, code: string) => d("rpc_client_requests_total", { rpc_service: FX, rpc_method: method, code });
    expect({
      ok: client("GetRate", "ok"),
      invalid: client("GetRate", "invalid_argument"),
      deadline: client("GetRate", "deadline_exceeded"),
      stream: client("StreamRates", "ok"),
    }).toEqual({ ok: 2, invalid: 1, deadline: 1, stream: 1 });
    expect(d("rpc_client_request_duration_seconds_count", { rpc_service: FX, rpc_method: "GetRate" })).toBe(4);
    expect(d("rpc_client_request_duration_seconds_sum", { rpc_service: FX, rpc_method: "GetRate" })).toBeGreaterThanOrEqual(0.14);
    expect(d("rpc_client_request_duration_seconds_count", { rpc_service: FX, rpc_method: "StreamRates" })).toBe(1);
    // The server saw the same calls (over whichever protocol upstreamTransport speaks). The
    // deadline one ends there as deadline_exceeded when the server's own timer fires first, or,
    // when the client's timer wins and resets the HTTP/2 stream first, as canceled (the client
    // went away; see the next test). It does not reach the server's interceptors at all
    // when the reset comes before the server has read the request: connect reads a unary
    // request's message before any interceptor runs. Client and server share this process's
    // event loop, and on a loaded machine a stall past the 150 ms makes the client's timer win.
    const served = (code: string) =>
      after.samples
        .filter((s) => s.name === "rpc_server_requests_total" && s.labels.rpc_method === "GetRate" && s.labels.code === code)
        .reduce((n, s) => n + s.value - value(before, s.name, s.labels), 0);
    const reached = counts.signalStarted - signalStarted;
    expect(reached).toBeLessThanOrEqual(1);
    expect(served("deadline_exceeded") + served("canceled")).toBe(reached);
    expect(served("internal")).toBe(0);
    expect(served("ok")).toBe(2);
    expect(served("invalid_argument")).toBe(1);
  });

  it("count a call the client resets mid-way (HTTP/2 RST_STREAM with INTERNAL_ERROR) as canceled on the server, not internal", async () => {
    const labels = { rpc_service: FX, rpc_method: "GetRate", protocol: "grpc" };
    const before = await scrapeWhen((e) => value(e, "rpc_server_requests_in_flight", { rpc_service: FX, rpc_method: "GetRate" }) === 0, "nothing in flight before");
    const started = counts.signalStarted;
    const session = http2.connect(server.url);
    try {
      const message = toBinary(GetRateRequestSchema, create(GetRateRequestSchema, { baseCurrency: "SIGNAL", quoteCurrency: "EUR" }));
      const frame = Buffer.alloc(5 + message.length);
      frame.writeUInt32BE(message.length, 1);
      frame.set(message, 5);
      const stream = session.request({ ":method": "POST", ":path": `/${FX}/GetRate`, "content-type": "application/grpc", te: "trailers" });
      stream.on("error", () => {});
      stream.end(frame);
      await waitFor(() => (counts.signalStarted > started ? true : undefined), "the handler to start");
      stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      const after = await scrapeWhen((e) => value(e, "rpc_server_requests_in_flight", { rpc_service: FX, rpc_method: "GetRate" }) === 0, "the reset call to finish");
      const d = delta(before, after);
      expect({ canceled: d("rpc_server_requests_total", { ...labels, code: "canceled" }), internal: d("rpc_server_requests_total", { ...labels, code: "internal" }) }).toEqual({ canceled: 1, internal: 0 });
    } finally {
      session.close();
    }
  });

  it("count an outgoing stream the caller abandons mid-stream as canceled, when it aborts", async () => {
    const fx = upstreamClient(FxService, upstreamTransport(server.url));
    const labels = { rpc_service: FX, rpc_method: "StreamRates" };
    const serverInFlight = (e: Exposition) => value(e, "rpc_server_requests_in_flight", labels);
    const before = await scrapeWhen((e) => serverInFlight(e) === 0, "no stream in flight before the test");
    const ac = new AbortController();
    const it = fx.streamRates({ baseCurrency: "HOLD" }, { signal: ac.signal })[Symbol.asyncIterator]();
    expect((await it.next()).done).toBe(false);
    // The caller aborts and never reads again (connect's client would not pull from the call anyway).
    ac.abort();
    const after = await scrapeWhen(
      (e) => delta(before, e)("rpc_client_request_duration_seconds_count", labels) === 1 && serverInFlight(e) === 0,
      "the abandoned stream to be counted on both sides",
    );
    const d = delta(before, after);
    // The server's count, over whichever protocol upstreamTransport speaks.
    const servedCanceled = (e: Exposition) =>
      e.samples.filter((s) => s.name === "rpc_server_requests_total" && s.labels.rpc_method === "StreamRates" && s.labels.code === "canceled").reduce((n, s) => n + s.value, 0);
    expect({
      canceled: d("rpc_client_requests_total", { ...labels, code: "canceled" }),
      ok: d("rpc_client_requests_total", { ...labels, code: "ok" }),
      served: servedCanceled(after) - servedCanceled(before),
    }).toEqual({ canceled: 1, ok: 0, served: 1 });
  });
});

describe("labels", () => {
  it("the id detector flags ids (so the check below can fail)", () => {
    for (const v of ["pay_01HZX4", "3f2b8c1e-9a7d-4c2e-8b1a-0d9e8f7a6b5c", "01J9Z3K6X8QW5E2R7T4Y6V8H0P", "1234567", "deadbeefcafe0042"]) expect(idLike(v), v).toBe(true);
    for (const v of ["ok", "invalid_argument", FX, "GetRate", "grpc-web", "0.25", "+Inf", "v20.20.2", "new_space"]) expect(idLike(v), v).toBe(false);
  });

  it("carry no ids, only bounded values, even when requests carry ids", async () => {
    const ids = ["pay_01HZX4Q7R2M9", "3f2b8c1e-9a7d-4c2e-8b1a-0d9e8f7a6b5c", "acct_9f8e7d6c5b4a"];
    for (const id of ids) {
      await connectJson("GetRate", { baseCurrency: "OK", quoteCurrency: id });
      await connectJson("GetRate", { baseCurrency: "BAD", quoteCurrency: id });
      await fxOver("grpc").getRate({ baseCurrency: "OK", quoteCurrency: id }, { headers: { "x-request-id": id, "idempotency-key": id } });
    }
    const text = await (await fetch(`${server.adminUrl}/metrics`)).text();
    for (const id of ids) expect(text).not.toContain(id);
    const e = parseExposition(text);
    const offenders = e.samples.flatMap((s) =>
      Object.entries(s.labels)
        .filter(([k, v]) => k !== "le" && k !== "quantile" && idLike(v))
        .map(([k, v]) => `${s.name}{${k}="${v}"}`),
    );
    expect(offenders).toEqual([]);
    // The runtime's own metrics use fixed label sets with values from fixed sets.
    for (const s of e.samples.filter((x) => /^(rpc|db)_/.test(x.name))) {
      const { rpc_service: service, rpc_method: method, protocol, code, operation, outcome, state } = s.labels;
      if (service !== undefined) expect(service).toMatch(/^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\.[A-Z][A-Za-z0-9]*$/);
      if (method !== undefined) expect(method).toMatch(/^[A-Z][A-Za-z0-9]*$/);
      if (protocol !== undefined) expect(["grpc", "grpc-web", "connect"]).toContain(protocol);
      if (code !== undefined) expect(CODE_NAMES.has(code), code).toBe(true);
      if (operation !== undefined) expect(["query", "transaction"]).toContain(operation);
      if (outcome !== undefined) expect(["commit", "rollback", "retry"]).toContain(outcome);
      if (state !== undefined) expect(["total", "idle", "waiting"]).toContain(state);
    }
    // Label names per family.
    const labelNames = (prefix: string) => new Set(e.samples.filter((s) => s.name.startsWith(prefix)).flatMap((s) => Object.keys(s.labels)));
    expect([...labelNames("rpc_server_requests_total")].sort()).toEqual(["code", "protocol", "rpc_method", "rpc_service"]);
    expect([...labelNames("rpc_server_request_duration_seconds")].sort()).toEqual(["le", "protocol", "rpc_method", "rpc_service"]);
    expect([...labelNames("rpc_server_requests_in_flight")].sort()).toEqual(["rpc_method", "rpc_service"]);
    expect([...labelNames("rpc_client_requests_total")].sort()).toEqual(["code", "rpc_method", "rpc_service"]);
    expect([...labelNames("rpc_client_request_duration_seconds")].sort()).toEqual(["le", "rpc_method", "rpc_service"]);
  });
});
