// RPC spans: the Connect interceptors that make a SERVER span for every RPC served and a
// CLIENT span for every call to another service (both on connect's handlers and on the
// unary fast path, which runs the same interceptors), and the pair of spans of a call the
// gateway relays without decoding it. Names and attributes: see spans.ts.
import type http from "node:http";
import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Attributes, type Context, type Span, type TextMapGetter, type TextMapSetter } from "@opentelemetry/api";
import { ATTR_SERVER_ADDRESS, ATTR_SERVER_PORT } from "@opentelemetry/semantic-conventions";
import { Code, ConnectError, type Interceptor, type StreamResponse } from "@connectrpc/connect";
import { codeName, protocolOf, serverAbortError, type Protocol } from "./metrics.js";
import { contextAttributes, setContextAttributes, tracer } from "./spans.js";

const headerGetter: TextMapGetter<Headers> = {
  get: (h, key) => h.get(key) ?? undefined,
  keys: (h) => [...h.keys()],
};
const headerSetter: TextMapSetter<Headers> = { set: (h, key, value) => h.set(key, value) };

/** Not traced: health checks (Kubernetes probes and readiness polls would bury the payments). */
const UNTRACED = new Set(["grpc.health.v1.Health"]);

/** Codes that make a SERVER span an error (the OpenTelemetry RPC conventions); for CLIENT spans any code but OK does. */
const SERVER_ERRORS = new Set([Code.Unknown, Code.DeadlineExceeded, Code.Unimplemented, Code.Internal, Code.Unavailable, Code.DataLoss]);

const MAX_ID_LENGTH = 128;

/** Ends an RPC span with its outcome: `err` undefined means OK. */
function endRpcSpan(span: Span, err: unknown, server: boolean): void {
  endRpcSpanWithCode(span, err === undefined ? undefined : ConnectError.from(err).code, server);
}

function endRpcSpanWithCode(span: Span, code: Code | undefined, server: boolean): void {
  if (code === undefined) {
    span.setAttribute("rpc.grpc.status_code", 0);
  } else {
    span.setAttribute("rpc.grpc.status_code", code);
    span.setAttribute("rpc.connect_rpc.error_code", codeName(code));
    if (!server || SERVER_ERRORS.has(code)) {
      span.setAttribute("error.type", codeName(code));
      span.setStatus({ code: SpanStatusCode.ERROR, message: codeName(code) });
    }
  }
  span.end();
}

/**
 * Runs one call (`next(req)`) in `ctx` and ends `span` when it is over: when a unary call
 * settles, when a response stream ends (its messages are produced inside `ctx` too), or, for
 * a stream never read, when the call's signal aborts. A server call whose handler returned
 * after its signal aborted (the client went away, the deadline passed) ends with the
 * abort's code. The unary path allocates no closures: it runs on every hop.
 */
async function tracedCall<Q extends { signal: AbortSignal }, R extends { stream: boolean; message: unknown }>(
  span: Span,
  ctx: Context,
  server: boolean,
  next: (req: Q) => Promise<R>,
  req: Q,
): Promise<R> {
  let res: R;
  try {
    res = await context.with(ctx, next, undefined, req);
  } catch (err) {
    endRpcSpan(span, err, server);
    throw err;
  }
  if (res.stream) return tracedStream(span, ctx, req.signal, server, res);
  endRpcSpan(span, server && req.signal.aborted ? serverAbortError(req.signal) : undefined, server);
  return res;
}

/**
 * Ends `span` when the response stream ends, fails, or is left (return()), or when the call's
 * signal aborts, whichever comes first: a Connect client hides return() from its caller, so a
 * caller that stops reading ends its call (and the span) only by aborting the signal.
 */
function tracedStream<R extends { stream: boolean; message: unknown }>(span: Span, ctx: Context, signal: AbortSignal, server: boolean, res: R): R {
  let ended = false;
  const end = (err: unknown) => {
    if (ended) return;
    ended = true;
    signal.removeEventListener("abort", onAbort);
    endRpcSpan(span, err, server);
  };
  const onAbort = () => end(server ? serverAbortError(signal) : (signal.reason ?? new ConnectError("canceled", Code.Canceled)));
  if (signal.aborted) onAbort();
  else signal.addEventListener("abort", onAbort, { once: true });
  const messages = (res as unknown as StreamResponse).message as AsyncIterable<unknown>;
  async function* inContext(): AsyncGenerator<unknown> {
    const it = messages[Symbol.asyncIterator]();
    let outcome: unknown = new ConnectError("canceled", Code.Canceled); // the consumer stopped early
    try {
      for (;;) {
        const r = await context.with(ctx, () => it.next());
        if (r.done) break;
        yield r.value;
      }
      outcome = server && signal.aborted ? serverAbortError(signal) : undefined;
    } catch (err) {
      outcome = err;
      throw err;
    } finally {
      if (outcome !== undefined && it.return) await context.with(ctx, () => it.return!()).catch(() => {});
      end(outcome);
    }
  }
  return { ...res, message: inContext() };
}

/** The payment a request is about, when its message has a payment_id. */
function paymentIdOf(message: unknown): string | undefined {
  const id = (message as { paymentId?: unknown } | undefined)?.paymentId;
  return typeof id === "string" && id !== "" ? id.slice(0, MAX_ID_LENGTH) : undefined;
}

/**
 * SERVER spans for every RPC: the parent comes from the request's traceparent/tracestate
 * (only from there), the handler and everything it calls run inside the span (downstream
 * calls, database transactions and log lines see it), and the span ends when the call does
 * (for streams: when the response stream ends). Put it first, so it sees the code the
 * client gets and covers the other interceptors.
 */
export function rpcServerTracing(): Interceptor {
  return (next) => (req) => {
    const service = req.method.parent.typeName;
    if (UNTRACED.has(service)) return next(req);
    const parent = propagation.extract(ROOT_CONTEXT, req.header, headerGetter);
    const attributes = serverAttributes(service, req.method.name, protocolOf(req.header));
    let ctx = parent;
    const paymentId = req.stream ? undefined : paymentIdOf(req.message);
    if (paymentId !== undefined) {
      attributes["paygate.payment_id"] = paymentId;
      ctx = setContextAttributes(ctx, { "paygate.payment_id": paymentId });
    }
    const span = tracer.startSpan(`${service}/${req.method.name}`, { kind: SpanKind.SERVER, attributes }, parent);
    return tracedCall(span, trace.setSpan(ctx, span), true, next, req);
  };
}

/**
 * CLIENT spans for calls to another service, a child of the active span, whose context goes
 * out in the request's traceparent header. `baseUrl` names the server (server.address/port).
 */
export function rpcClientTracing(baseUrl: string): Interceptor {
  const server = serverAddress(baseUrl);
  return (next) => (req) => {
    const service = req.method.parent.typeName;
    if (UNTRACED.has(service)) return next(req);
    const parent = context.active();
    const span = startClientSpan(service, req.method.name, server, parent);
    const ctx = trace.setSpan(parent, span);
    propagation.inject(ctx, req.header, headerSetter);
    return tracedCall(span, ctx, false, next, req);
  };
}

function serverAttributes(service: string, method: string, protocol: Protocol): Attributes {
  return {
    "rpc.system": protocol === "connect" ? "connect_rpc" : "grpc",
    "rpc.service": service,
    "rpc.method": method,
    "paygate.rpc.protocol": protocol,
  };
}

/** server.address and server.port of a base URL. */
function serverAddress(baseUrl: string): Attributes {
  const url = new URL(baseUrl);
  return {
    [ATTR_SERVER_ADDRESS]: url.hostname.replace(/^\[(.*)\]$/, "$1"),
    [ATTR_SERVER_PORT]: Number(url.port || (url.protocol === "https:" ? 443 : 80)),
  };
}

function startClientSpan(service: string, method: string, server: Attributes, parent: Context): Span {
  return tracer.startSpan(
    `${service}/${method}`,
    { kind: SpanKind.CLIENT, attributes: { ...contextAttributes(parent), "rpc.system": "grpc", "rpc.service": service, "rpc.method": method, ...server } },
    parent,
  );
}

/**
 * The spans of a call the gateway relays without decoding it (see services/gateway/relay.ts):
 * a SERVER span whose parent comes from the request's traceparent and a CLIENT span under it,
 * as for a call served and forwarded; `upstreamHeaders` carry the CLIENT span's context on,
 * `context` is the SERVER span's (for log lines). `end(code)` ends both (undefined: OK). The
 * request's message is not read, so the spans have no paygate.payment_id; the upstream's
 * SERVER span has it.
 */
export function relaySpans(service: string, method: string, protocol: Protocol, incoming: http.IncomingHttpHeaders, upstreamUrl: string) {
  const parent = propagation.extract(ROOT_CONTEXT, incoming);
  const server = tracer.startSpan(`${service}/${method}`, { kind: SpanKind.SERVER, attributes: serverAttributes(service, method, protocol) }, parent);
  const client = startClientSpan(service, method, serverAddress(upstreamUrl), trace.setSpan(parent, server));
  const upstreamHeaders: Record<string, string> = {};
  propagation.inject(trace.setSpan(parent, client), upstreamHeaders);
  return {
    upstreamHeaders,
    context: trace.setSpan(parent, server),
    end(code: Code | undefined) {
      endRpcSpanWithCode(client, code, false);
      endRpcSpanWithCode(server, code, true);
    },
  };
}
