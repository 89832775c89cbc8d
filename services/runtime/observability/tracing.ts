// OpenTelemetry traces for every Paygate process: one CreatePayment is one trace, from the
// gateway through payments, risk, fx and wallet, with the saga steps and the database
// transactions as child spans.
//
// Configuration: only the standard OTEL_* environment variables (read from process.env).
//   - A tracer provider, the W3C trace-context propagator (traceparent/tracestate) and an
//     AsyncLocalStorage context manager are always installed, so trace ids exist for logs
//     and travel on every hop even when nothing is exported.
//   - Nothing is exported unless asked for: an OTLP/HTTP exporter when
//     OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (or
//     OTEL_TRACES_EXPORTER=otlp, which then sends to the default http://localhost:4318);
//     OTEL_TRACES_EXPORTER=console prints spans; "none" turns exporting off.
//     OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL: http/protobuf (default) or http/json.
//     Headers, timeout, compression (OTEL_EXPORTER_OTLP_*), batching (OTEL_BSP_*), sampling
//     (OTEL_TRACES_SAMPLER[_ARG], default parentbased_always_on), span limits and the resource
//     (OTEL_SERVICE_NAME, default the service's name; OTEL_RESOURCE_ATTRIBUTES) are read by
//     the SDK itself. OTEL_SDK_DISABLED=true installs nothing. OTEL_LOG_LEVEL (default warn)
//     sets how much the SDK reports about itself, through the service's logger.
//   - With nothing to export and no OTEL_TRACES_SAMPLER, spans are not recorded (their ids
//     still reach logs and upstreams, marked not sampled) unless a span processor is added in
//     process (tests): recording spans nobody reads cost about 5% of a service's CPU.
//   - Several servers in one process (the end-to-end test stack) share one provider: the
//     first to start names the resource; spans tell the services apart by rpc.service.
//
// Spans (names and attributes; never card data, secrets, API keys or request headers):
//   SERVER  <package.Service>/<Method>    every RPC served (rpcServerTracing, in startServer)
//   CLIENT  <package.Service>/<Method>    every call to another service (rpcClientTracing, in
//           upstreamTransport); traceparent is injected into its request headers
//     rpc.system ("grpc" for gRPC and gRPC-Web, "connect_rpc" for the Connect protocol),
//     rpc.service, rpc.method, paygate.rpc.protocol (grpc|grpc-web|connect),
//     rpc.grpc.status_code (numeric code, every call), rpc.connect_rpc.error_code (on errors),
//     server.address/server.port (client), paygate.payment_id (from a request's payment_id)
//   SERVER  <METHOD> <route>             plain HTTP routes on an RPC port (the gateway's REST
//           routes; tracedHttpHandler): http.request.method, url.path, http.route,
//           http.response.status_code
//   INTERNAL saga.*, db.transaction        see services/payments/saga.ts and db.ts
// Health checks (grpc.health.v1.Health) are not traced: probes would bury the payments.
// There is no HTTP auto-instrumentation, so no duplicate HTTP server span exists.
import type http from "node:http";
import {
  context,
  createContextKey,
  diag,
  DiagLogLevel,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Span,
  type TextMapGetter,
  type TextMapSetter,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { defaultResource, detectResources, envDetector, resourceFromAttributes } from "@opentelemetry/resources";
import {
  BatchSpanProcessor,
  ConsoleSpanExporter,
  NodeTracerProvider,
  SamplingDecision,
  type ReadableSpan,
  type Sampler,
  type SamplingResult,
  type Span as SdkSpan,
  type SpanExporter,
  type SpanProcessor,
} from "@opentelemetry/sdk-trace-node";
import {
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_HTTP_ROUTE,
  ATTR_SERVER_ADDRESS,
  ATTR_SERVER_PORT,
  ATTR_SERVICE_NAME,
  ATTR_URL_PATH,
} from "@opentelemetry/semantic-conventions";
import { Code, ConnectError, type Interceptor, type StreamResponse } from "@connectrpc/connect";
import { ConfigError } from "../config.js";
import type { Logger } from "./logger.js";
import { codeName, protocolOf, serverAbortError, type Protocol } from "./metrics.js";

/** The tracer every Paygate span comes from (a no-op until initTracing registers the provider). */
export const tracer = trace.getTracer("paygate");

// ---------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------

/**
 * Span processors that can be added after start-up (tests add an in-memory exporter). With
 * none, an ended span goes nowhere: the cost of a span is its creation.
 */
class Processors implements SpanProcessor {
  readonly list: SpanProcessor[] = [];
  onStart(span: SdkSpan, parent: Context): void {
    for (const p of this.list) p.onStart(span, parent);
  }
  onEnd(span: ReadableSpan): void {
    for (const p of this.list) p.onEnd(span);
  }
  async forceFlush(): Promise<void> {
    await Promise.all(this.list.map((p) => p.forceFlush()));
  }
  async shutdown(): Promise<void> {
    await Promise.all(this.list.map((p) => p.shutdown()));
  }
}

interface TracingState {
  processors: Processors;
  /** Set once initTracing ran (whatever it found in the environment). */
  init?: Promise<void>;
  provider?: NodeTracerProvider;
  serviceName?: string;
  /** What exports spans: "otlp http/protobuf", "otlp http/json", "console". */
  exporters: string[];
}

// One state per process, even if this module is evaluated twice (the OpenTelemetry API's
// globals are per process too).
const STATE = Symbol.for("paygate.tracing");
const state: TracingState = ((globalThis as Record<symbol, unknown>)[STATE] ??= { processors: new Processors(), exporters: [] }) as TracingState;

/** The environment variable's value, with an empty string counting as unset. */
const envVar = (name: string): string | undefined => {
  const v = process.env[name]?.trim();
  return v === undefined || v === "" ? undefined : v;
};

/** The exporters the environment asks for; throws a ConfigError naming a bad value. */
export function exportersFromEnv(): { kind: "otlp" | "console"; protocol?: "http/protobuf" | "http/json" }[] {
  const raw = envVar("OTEL_TRACES_EXPORTER");
  const endpoint = envVar("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") ?? envVar("OTEL_EXPORTER_OTLP_ENDPOINT");
  // The specification's default is "otlp"; Paygate sends nothing until an endpoint (or the
  // exporter) is named.
  const names = raw === undefined ? (endpoint ? ["otlp"] : []) : raw.split(",").map((s) => s.trim().toLowerCase()).filter((s) => s !== "");
  if (names.includes("none")) return [];
  const out: ReturnType<typeof exportersFromEnv> = [];
  for (const name of new Set(names)) {
    if (name === "console") out.push({ kind: "console" });
    else if (name === "otlp") {
      const variable = envVar("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") !== undefined ? "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" : "OTEL_EXPORTER_OTLP_PROTOCOL";
      const protocol = envVar(variable) ?? "http/protobuf";
      if (protocol !== "http/protobuf" && protocol !== "http/json") {
        throw new ConfigError(`invalid configuration:\n  ${variable}: expected http/protobuf or http/json (OTLP over HTTP, port 4318), got ${JSON.stringify(protocol)}`);
      }
      out.push({ kind: "otlp", protocol });
    } else {
      throw new ConfigError(`invalid configuration:\n  OTEL_TRACES_EXPORTER: expected otlp, console or none, got ${JSON.stringify(raw)}`);
    }
  }
  return out;
}

const DIAG_LEVELS: Record<string, DiagLogLevel> = {
  none: DiagLogLevel.NONE,
  error: DiagLogLevel.ERROR,
  warn: DiagLogLevel.WARN,
  info: DiagLogLevel.INFO,
  debug: DiagLogLevel.DEBUG,
  verbose: DiagLogLevel.VERBOSE,
  all: DiagLogLevel.ALL,
};

/** The SDK's own complaints (an unreachable collector, a bad sampler name) as log lines. */
function diagnostics(logger: Logger): void {
  const level = DIAG_LEVELS[(envVar("OTEL_LOG_LEVEL") ?? "warn").toLowerCase()] ?? DiagLogLevel.WARN;
  // Arguments may be errors or response bodies: their messages only.
  const text = (msg: string, args: unknown[]) =>
    [msg, ...args.map((a) => (a instanceof Error ? a.message : typeof a === "string" ? a : ""))].filter((s) => s !== "").join(" ");
  const at = (fn: "error" | "warn" | "info" | "debug") => (msg: string, ...args: unknown[]) => logger[fn](`opentelemetry: ${text(msg, args)}`);
  diag.setLogger({ error: at("error"), warn: at("warn"), info: at("info"), debug: at("debug"), verbose: at("debug") }, { logLevel: level, suppressOverrideMessage: true });
}

/**
 * Installs OpenTelemetry in this process, once (later calls wait for the first and change
 * nothing). `serviceName` names the resource unless OTEL_SERVICE_NAME does. Throws a
 * ConfigError for an OTEL_* value it cannot honour.
 */
export function initTracing(serviceName: string, logger: Logger): Promise<void> {
  return (state.init ??= (async () => {
    if (envVar("OTEL_SDK_DISABLED")?.toLowerCase() === "true") return;
    const wanted = exportersFromEnv();
    diagnostics(logger);
    const exporters: { name: string; exporter: SpanExporter }[] = [];
    for (const e of wanted) {
      if (e.kind === "console") exporters.push({ name: "console", exporter: new ConsoleSpanExporter() });
      else if (e.protocol === "http/json") {
        // Loaded only when used: start-up stays small when nothing is exported.
        const { OTLPTraceExporter } = await import("@opentelemetry/exporter-trace-otlp-http");
        exporters.push({ name: "otlp http/json", exporter: new OTLPTraceExporter() });
      } else {
        const { OTLPTraceExporter } = await import("@opentelemetry/exporter-trace-otlp-proto");
        exporters.push({ name: "otlp http/protobuf", exporter: new OTLPTraceExporter() });
      }
    }
    for (const { exporter } of exporters) state.processors.list.push(new BatchSpanProcessor(exporter));
    const resource = defaultResource()
      .merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: serviceName, "service.namespace": "paygate" }))
      .merge(detectResources({ detectors: [envDetector] }));
    const observedOnly = exporters.length === 0 && envVar("OTEL_TRACES_SAMPLER") === undefined;
    const provider = new NodeTracerProvider({ resource, spanProcessors: [state.processors], ...(observedOnly ? { sampler: new RecordWhenObserved() } : {}) });
    // AsyncLocalStorage context manager (the default); W3C trace context only: baggage a
    // client sends is not carried into the internal services.
    provider.register({ propagator: new W3CTraceContextPropagator() });
    state.provider = provider;
    state.serviceName = serviceName;
    state.exporters = exporters.map((e) => e.name);
  })());
}

/** Records (and samples) spans only while a span processor is attached: nothing else reads them. */
class RecordWhenObserved implements Sampler {
  shouldSample(): SamplingResult {
    return { decision: state.processors.list.length > 0 ? SamplingDecision.RECORD_AND_SAMPLED : SamplingDecision.NOT_RECORD };
  }
  toString(): string {
    return "RecordWhenObserved";
  }
}

/** What initTracing set up (undefined before it ran or when OTEL_SDK_DISABLED=true). */
export function tracingInfo(): { serviceName: string; exporters: readonly string[] } | undefined {
  return state.provider ? { serviceName: state.serviceName!, exporters: [...state.exporters] } : undefined;
}

/**
 * Adds a span processor (e.g. a SimpleSpanProcessor over an InMemorySpanExporter, in tests);
 * returns a function that removes it again.
 */
export function addSpanProcessor(processor: SpanProcessor): () => void {
  state.processors.list.push(processor);
  return () => {
    const i = state.processors.list.indexOf(processor);
    if (i >= 0) state.processors.list.splice(i, 1);
  };
}

/** Sends the spans ended so far (bounded by `timeoutMs`; never throws). */
export async function flushTracing(timeoutMs = 5_000): Promise<void> {
  if (!state.provider) return;
  await bounded(state.provider.forceFlush(), timeoutMs);
}

/** Flushes and stops the exporters: for the very end of a process. */
export async function shutdownTracing(timeoutMs = 5_000): Promise<void> {
  if (!state.provider) return;
  await bounded(state.provider.shutdown(), timeoutMs);
}

async function bounded(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p.catch(() => {}), new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}

// ---------------------------------------------------------------------------------------
// Paygate attributes carried by the context
// ---------------------------------------------------------------------------------------

/** Business attributes (paygate.payment_id, paygate.merchant_id, paygate.currency). */
export interface PaygateAttributes {
  "paygate.payment_id"?: string;
  "paygate.merchant_id"?: string;
  "paygate.currency"?: string;
  "paygate.settlement_currency"?: string;
}

const ATTRIBUTES = createContextKey("paygate.attributes");
const NONE: Attributes = Object.freeze({});

/** The Paygate attributes set by the enclosing code (withAttributes), for spans started inside. */
export function contextAttributes(ctx: Context = context.active()): Attributes {
  return (ctx.getValue(ATTRIBUTES) as Attributes | undefined) ?? NONE;
}

/** Runs `fn` with `attrs` added to every span the runtime starts inside it (client calls, database transactions). */
export function withAttributes<T>(attrs: PaygateAttributes, fn: () => T): T {
  const ctx = context.active();
  return context.with(ctx.setValue(ATTRIBUTES, { ...contextAttributes(ctx), ...attrs }), fn);
}

/**
 * Runs `fn` in a new INTERNAL span `name` (a child of the active span, or a new trace), with
 * `attrs` and the context's Paygate attributes. A throw marks the span ERROR (with the
 * error's class and code, never its text) and is rethrown.
 */
export async function withSpan<T>(name: string, attrs: Attributes, fn: (span: Span) => Promise<T>): Promise<T> {
  const parent = context.active();
  const span = tracer.startSpan(name, { attributes: { ...contextAttributes(parent), ...attrs } }, parent);
  try {
    return await context.with(trace.setSpan(parent, span), () => fn(span));
  } catch (err) {
    span.setStatus({ code: SpanStatusCode.ERROR, message: errorType(err) });
    span.setAttribute("error.type", errorType(err));
    throw err;
  } finally {
    span.end();
  }
}

/** A short, safe description of an error: its Connect code, SQLSTATE or class, never its message. */
export function errorType(err: unknown): string {
  if (err instanceof ConnectError) return codeName(err.code);
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === "string" && /^[0-9A-Z]{5}$/.test(code)) return `sqlstate ${code}`;
  return err instanceof Error ? err.name : typeof err;
}

// ---------------------------------------------------------------------------------------
// RPC spans (Connect interceptors)
// ---------------------------------------------------------------------------------------

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
      ctx = ctx.setValue(ATTRIBUTES, { "paygate.payment_id": paymentId });
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
 * `context` is the SERVER span's (for log lines). `end(code)` ends both (undefined: OK). The request's message is not read, so the spans have
 * no paygate.payment_id; the upstream's SERVER span has it.
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

// ---------------------------------------------------------------------------------------
// Plain HTTP routes (the gateway's REST compatibility API)
// ---------------------------------------------------------------------------------------

const METHODS = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);

/**
 * `/payments/pay_123` -> `/payments/{id}`: a route template of bounded cardinality for a
 * path the handler answered (Paygate's REST routes are `/<resource>[/<id>]`).
 */
function routeOf(path: string): string {
  const segments = path.split("/").filter((s) => s !== "");
  if (segments.length === 0) return "/";
  return "/" + [segments[0], ...segments.slice(1).map(() => "{id}")].join("/");
}

/**
 * Wraps a plain HTTP handler (not an RPC) in a SERVER span: parent from the request's
 * traceparent, the handler run inside it, ended when the response closes. Named
 * `<METHOD> <route>` once answered (just `<METHOD>` for a 404). `skip(path)` leaves paths
 * untraced (health and metrics endpoints).
 */
export function tracedHttpHandler(handler: http.RequestListener, skip: (path: string) => boolean = () => false): http.RequestListener {
  // The same handler serves HTTP/1.1 and (through the server's cast) HTTP/2 compatibility
  // requests: only what both have is used here.
  return (req, res) => {
    const path = (req.url ?? "/").split("?")[0] ?? "/";
    if (skip(path)) return handler(req, res);
    const method = METHODS.has(req.method ?? "") ? req.method! : "_OTHER";
    const parent = propagation.extract(ROOT_CONTEXT, req.headers);
    const span = tracer.startSpan(method, { kind: SpanKind.SERVER, attributes: { [ATTR_HTTP_REQUEST_METHOD]: method, [ATTR_URL_PATH]: path } }, parent);
    res.once("close", () => {
      const status = res.statusCode;
      span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, status);
      if (status !== 404) {
        const route = routeOf(path);
        span.setAttribute(ATTR_HTTP_ROUTE, route);
        span.updateName(`${method} ${route}`);
      }
      if (status >= 500) {
        span.setAttribute("error.type", String(status));
        span.setStatus({ code: SpanStatusCode.ERROR, message: String(status) });
      } else if (!res.writableEnded) {
        span.setAttribute("error.type", "aborted");
      }
      span.end();
    });
    context.with(trace.setSpan(parent, span), () => handler(req, res));
  };
}
