// Prometheus metrics for every Paygate process: one registry, served as /metrics on the
// admin port (and on the gateway's one port), holding
//   - process and Node.js runtime metrics (prom-client's default collectors),
//   - RED metrics of every RPC served (rpcServerMetrics, an interceptor startServer adds),
//   - RED metrics of every call to another service (rpcClientMetrics, in upstreamTransport),
//   - database metrics (db.ts),
//   - business metrics the services register with counter() / gauge() / histogram().
//
// The registry is prom-client's global one, so even a metric created with a bare
// `new Counter(...)` lands on /metrics: there is never a second registry by accident.
//
// No default (constant) labels. Prometheus attaches `job` and `instance` to every series it
// scrapes, which already say which process a series came from, and a registry-wide label
// cannot name the server anyway when several servers share one process (the end-to-end test
// stack). RPC labels are `rpc_service` and `rpc_method` (as OpenTelemetry names them), not
// `service`, which a Kubernetes ServiceMonitor sets to the Service's name.
//
// Labels are of bounded cardinality: rpc_service and rpc_method come from the registered service
// descriptors (unknown paths never reach an interceptor), protocol and code from fixed sets.
// Never put ids, amounts, merchants' free text or anything a client chooses in a label.
import { codeToString } from "../rpc/connect-protocol.js";
import type http from "node:http";
import { performance } from "node:perf_hooks";
import { Code, ConnectError, type Interceptor, type StreamResponse } from "@connectrpc/connect";
import { collectDefaultMetrics, Counter, Gauge, Histogram, register, type Registry } from "prom-client";

/** The process-wide registry; /metrics serves it. */
export const registry: Registry = register;

// Registered once per registry, even if this module is evaluated twice in one process.
if (registry.getSingleMetric("process_cpu_seconds_total") === undefined) collectDefaultMetrics({ register: registry });

/**
 * Latency buckets (seconds) for a payment API: 1 ms to 10 s. Dense around 100 ms - 1 s,
 * where latency SLO thresholds sit (0.25, 0.5 and 1 are boundaries, so an SLO on any of
 * them is exact, not interpolated).
 */
export const LATENCY_BUCKETS: readonly number[] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

type MetricType = "counter" | "gauge" | "histogram";

/** The metric registered under `name`, if it is of the same kind and labels; throws if it is not. */
function existing<M>(name: string, type: MetricType, labelNames: readonly string[]): M | undefined {
  const m = registry.getSingleMetric(name) as unknown as { type?: string; labelNames?: string[] } | undefined;
  if (m === undefined) return undefined;
  const same = m.type === type && [...(m.labelNames ?? [])].sort().join() === [...labelNames].sort().join();
  if (!same) throw new Error(`metric ${name} is already registered as a ${m.type} with labels [${(m.labelNames ?? []).join(", ")}]`);
  return m as M;
}

/**
 * A counter in the process registry (the same one when called again with the same name,
 * kind and labels). Name it `<namespace>_<what>_total`, e.g. payments_created_total.
 */
export function counter<L extends string>(name: string, help: string, labelNames: readonly L[] = []): Counter<L> {
  return existing<Counter<L>>(name, "counter", labelNames) ?? new Counter({ name, help, labelNames, registers: [registry] });
}

/**
 * A gauge in the process registry. `collect` (optional) runs on every scrape to set the
 * current value(s), e.g. from a pool's counters or a cheap SQL count.
 */
export function gauge<L extends string>(
  name: string,
  help: string,
  labelNames: readonly L[] = [],
  collect?: (this: Gauge<L>) => void | Promise<void>,
): Gauge<L> {
  return (
    existing<Gauge<L>>(name, "gauge", labelNames) ??
    new Gauge({ name, help, labelNames, registers: [registry], ...(collect ? { collect } : {}) })
  );
}

/** A histogram in the process registry; seconds with LATENCY_BUCKETS unless told otherwise. */
export function histogram<L extends string>(
  name: string,
  help: string,
  labelNames: readonly L[] = [],
  buckets: readonly number[] = LATENCY_BUCKETS,
): Histogram<L> {
  return existing<Histogram<L>>(name, "histogram", labelNames) ?? new Histogram({ name, help, labelNames, buckets: [...buckets], registers: [registry] });
}

/** GET /metrics: the registry in the Prometheus text format. */
export function metricsHandler(onError?: (err: unknown) => void): http.RequestListener {
  return (req, res) => {
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" });
      res.end("method not allowed\n");
      return;
    }
    registry.metrics().then(
      (text) => {
        res.writeHead(200, { "content-type": registry.contentType, "cache-control": "no-store" });
        res.end(req.method === "HEAD" ? undefined : text);
      },
      (err: unknown) => {
        onError?.(err);
        res.writeHead(500, { "content-type": "text/plain" });
        res.end("metrics collection failed\n");
      },
    );
  };
}

// ---------------------------------------------------------------------------------------
// RPC metrics
// ---------------------------------------------------------------------------------------

export type Protocol = "grpc" | "grpc-web" | "connect";

/**
 * The protocol of a request, from its content type: application/grpc[+proto|+json] is gRPC,
 * application/grpc-web[-text][+...] gRPC-Web, anything else Connect (application/json,
 * application/proto, application/connect+..., and Connect GET requests, which have none).
 */
export function protocolOf(header: Headers): Protocol {
  const type = header.get("content-type")?.toLowerCase() ?? "";
  if (type.startsWith("application/grpc-web")) return "grpc-web";
  if (type.startsWith("application/grpc")) return "grpc";
  return "connect";
}

/** The Connect/gRPC code name of an outcome, e.g. "ok", "invalid_argument", "deadline_exceeded". */
export function codeName(outcome: Code | "ok"): string {
  return outcome === "ok" ? "ok" : Code[outcome] === undefined ? "unknown" : codeToString(outcome);
}

/** The code a caller sees for `err` (ConnectError.from maps an AbortError to canceled). */
const codeOfError = (err: unknown): string => codeName(ConnectError.from(err).code);

/**
 * Why a server call's signal aborted: the client went away (canceled), the deadline passed
 * (deadline_exceeded), the server cut it off (unavailable). A client's HTTP/2 stream reset
 * reaches connect as INTERNAL (connect-node's client resets with INTERNAL_ERROR, e.g. when its
 * own deadline fires first); for the server that is the client going away, not a failure of
 * its own, so it counts as canceled (as gRPC servers report a client's RST_STREAM).
 */
export function serverAbortError(signal: AbortSignal): ConnectError {
  const err = ConnectError.from(signal.reason ?? new ConnectError("canceled", Code.Canceled));
  return err.code === Code.Internal ? new ConnectError(err.rawMessage, Code.Canceled) : err;
}

const rpcServerRequests = counter(
  "rpc_server_requests_total",
  "RPCs completed by this server, by gRPC service, method, protocol and status code. Streams count when they end.",
  ["rpc_service", "rpc_method", "protocol", "code"],
);
const rpcServerDuration = histogram(
  "rpc_server_request_duration_seconds",
  "Time from the start of an RPC to its end (for streams: until the response stream ended), in seconds.",
  ["rpc_service", "rpc_method", "protocol"],
);
const rpcServerInFlight = gauge("rpc_server_requests_in_flight", "RPCs being served right now (open streams included).", ["rpc_service", "rpc_method"]);

const rpcClientRequests = counter(
  "rpc_client_requests_total",
  "RPCs this process made to other services, by gRPC service, method and status code.",
  ["rpc_service", "rpc_method", "code"],
);
const rpcClientDuration = histogram(
  "rpc_client_request_duration_seconds",
  "Time from the start of an outgoing RPC to its end (for streams: until the response stream ended), in seconds.",
  ["rpc_service", "rpc_method"],
);

/**
 * Measures one call: `finish(code)` records it exactly once, however many paths reach it.
 * Streaming responses are wrapped so the call ends when the stream does.
 */
export interface Measurement {
  finish(code: string): void;
}

async function* measuredStream<T>(messages: AsyncIterable<T>, m: Measurement, okCode: () => string): AsyncGenerator<T> {
  let code = "canceled"; // the consumer stopped early (client went away, or return() was called)
  try {
    yield* messages;
    code = okCode();
  } catch (err) {
    code = codeOfError(err);
    throw err;
  } finally {
    m.finish(code);
  }
}

/**
 * Wraps a call: runs `next`, finishes `m` when a unary call settles, or when a response
 * stream ends, fails, or is left (return()), or when the call's signal aborts, whichever
 * comes first. The signal matters for streams: a client that goes away mid-stream (resets
 * the stream, closes the connection, aborts its own call) ends the call at once, with the
 * abort's code (canceled, deadline_exceeded, unavailable at the shutdown cut-off), even when
 * nothing reads the stream any more: a handler that waits on something else, a write that
 * waits for a window the client will never open, a client that stops reading after its abort
 * (connect's client never pulls from an aborted call again). Connect also aborts the signal
 * routinely, but only after the interceptors saw the end of the call, so a call that ended
 * on its own is not counted again.
 *
 * Server side (`server`): a handler that returns normally although its call's signal had
 * already aborted (the client went away, the deadline passed, the server cut it off) counts
 * with the abort's code, e.g. canceled or deadline_exceeded, not ok: the client did not get
 * that answer.
 */
async function measure<R extends { stream: boolean; message: unknown }>(
  signal: AbortSignal,
  m: Measurement,
  server: boolean,
  call: () => Promise<R>,
): Promise<R> {
  // A server call whose signal aborted ends with the abort's code, whatever its handler did.
  const abortCode = () => (server ? codeName(serverAbortError(signal).code) : codeOfError(signal.reason));
  const okCode = () => (server && signal.aborted ? abortCode() : "ok");
  let res: R;
  try {
    res = await call();
  } catch (err) {
    m.finish(server && signal.aborted ? abortCode() : codeOfError(err));
    throw err;
  }
  if (!res.stream) {
    m.finish(okCode());
    return res;
  }
  const onAbort = () => ended.finish(abortCode());
  const ended: Measurement = {
    finish(code) {
      signal.removeEventListener("abort", onAbort);
      m.finish(code);
    },
  };
  if (signal.aborted) onAbort();
  else signal.addEventListener("abort", onAbort, { once: true });
  return { ...res, message: measuredStream((res as unknown as StreamResponse).message as AsyncIterable<unknown>, ended, okCode) };
}

/**
 * Server RED metrics: rpc_server_requests_total, rpc_server_request_duration_seconds and
 * rpc_server_requests_in_flight. Put it first in the interceptor list, so it sees the code
 * the client gets (after error mapping) and times every other interceptor too.
 *
 * Not seen (connect answers them before any interceptor runs): requests for unknown
 * methods, unsupported content types, and unary requests whose message fails to parse.
 */
export function rpcServerMetrics(): Interceptor {
  return (next) => (req) => measure(req.signal, serverRpcMeasurement(req.method.parent.typeName, req.method.name, protocolOf(req.header)), true, () => next(req));
}

/**
 * Starts measuring one RPC served (in flight from now): `finish(code)` records it, once. For
 * calls served outside the Connect handler (the gateway's relay); rpcServerMetrics uses it too.
 */
export function serverRpcMeasurement(rpc_service: string, rpc_method: string, protocol: Protocol): Measurement {
  const t0 = performance.now();
  const inFlight = { rpc_service, rpc_method };
  rpcServerInFlight.inc(inFlight);
  let done = false;
  return {
    finish(code) {
      if (done) return;
      done = true;
      rpcServerInFlight.dec(inFlight);
      rpcServerRequests.inc({ rpc_service, rpc_method, protocol, code });
      rpcServerDuration.observe({ rpc_service, rpc_method, protocol }, (performance.now() - t0) / 1000);
    },
  };
}

/**
 * Client RED metrics for calls to other services: rpc_client_requests_total and
 * rpc_client_request_duration_seconds. Add it to the transport's interceptors (first, so
 * it times the others too); upstreamTransport does.
 */
export function rpcClientMetrics(): Interceptor {
  return (next) => (req) => measure(req.signal, clientRpcMeasurement(req.method.parent.typeName, req.method.name), false, () => next(req));
}

/** Starts measuring one call to another service: `finish(code)` records it, once. */
export function clientRpcMeasurement(rpc_service: string, rpc_method: string): Measurement {
  const t0 = performance.now();
  let done = false;
  return {
    finish(code) {
      if (done) return;
      done = true;
      rpcClientRequests.inc({ rpc_service, rpc_method, code });
      rpcClientDuration.observe({ rpc_service, rpc_method }, (performance.now() - t0) / 1000);
    },
  };
}
