// Paygate's spans: the tracer they all come from, the business attributes a context carries
// into the spans started inside it, INTERNAL spans around a piece of work, and the safe
// description of an error every span uses. One CreatePayment is one trace, from the gateway
// through payments, risk, fx and wallet, with the saga steps and the database transactions
// as child spans. How spans are exported: tracing.ts.
//
// Spans (names and attributes; never card data, secrets, API keys or request headers):
//   SERVER  <package.Service>/<Method>    every RPC served (rpcServerTracing, in startServer;
//           rpc-spans.ts)
//   CLIENT  <package.Service>/<Method>    every call to another service (rpcClientTracing, in
//           upstreamTransport); traceparent is injected into its request headers
//   SERVER + CLIENT <package.Service>/<Method>   a call the gateway relays (relaySpans)
//     rpc.system ("grpc" for gRPC and gRPC-Web, "connect_rpc" for the Connect protocol),
//     rpc.service, rpc.method, paygate.rpc.protocol (grpc|grpc-web|connect),
//     rpc.grpc.status_code (numeric code, every call), rpc.connect_rpc.error_code (on errors),
//     server.address/server.port (client), paygate.payment_id (from a request's payment_id)
//   SERVER  <METHOD> <route>             plain HTTP routes on an RPC port (the gateway's REST
//           routes; tracedHttpHandler, http-spans.ts): http.request.method, url.path,
//           http.route, http.response.status_code
//   INTERNAL saga.*, db.transaction        see services/payments/saga.ts and db/database.ts
// Health checks (grpc.health.v1.Health) are not traced: probes would bury the payments.
import { context, createContextKey, SpanStatusCode, trace, type Attributes, type Context, type Span } from "@opentelemetry/api";
import { ConnectError } from "@connectrpc/connect";
import { codeName } from "./metrics.js";

/** The tracer every Paygate span comes from (a no-op until initTracing registers the provider). */
export const tracer = trace.getTracer("paygate");

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

/** `ctx` with `attrs` as its Paygate attributes (in place of any it had). */
export function setContextAttributes(ctx: Context, attrs: Attributes): Context {
  return ctx.setValue(ATTRIBUTES, attrs);
}

/** Runs `fn` with `attrs` added to every span the runtime starts inside it (client calls, database transactions). */
export function withAttributes<T>(attrs: PaygateAttributes, fn: () => T): T {
  const ctx = context.active();
  return context.with(setContextAttributes(ctx, { ...contextAttributes(ctx), ...attrs }), fn);
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
