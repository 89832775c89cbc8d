// SERVER spans for plain HTTP routes on an RPC port (the gateway's REST compatibility API),
// named by a route template of bounded cardinality. Names and attributes: see spans.ts.
import type http from "node:http";
import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { ATTR_HTTP_REQUEST_METHOD, ATTR_HTTP_RESPONSE_STATUS_CODE, ATTR_HTTP_ROUTE, ATTR_URL_PATH } from "@opentelemetry/semantic-conventions";
import { tracer } from "./spans.js";

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
