// Server interceptors every service runs. Kept in a list so later concerns (metrics,
// tracing) plug in beside them without touching the services.
import { Code, ConnectError, type Interceptor, type StreamResponse } from "@connectrpc/connect";
import { performance } from "node:perf_hooks";
import { clipped, DomainError, toConnectError } from "../errors.js";
import type { Logger } from "../observability/logger.js";
import { codeName } from "../observability/metrics.js";

/**
 * Maps every error leaving a handler to what a client may see: domain errors to their code
 * and typed detail, Connect errors as they are, anything else to a bare INTERNAL (logged in
 * full here, never sent: no stack traces or SQL text reach a client). An error that only
 * says the client went away (e.g. a stream's request ending in ERR_STREAM_PREMATURE_CLOSE
 * when a client closes its connection mid-stream) is no fault of the service: CANCELED,
 * logged at debug level.
 */
export function errorMapping(logger: Logger): Interceptor {
  const map = (err: unknown, procedure: string, signal: AbortSignal): ConnectError => {
    if (err instanceof DomainError) return toConnectError(err);
    if (err instanceof ConnectError) return clipped(err);
    if (clientGone(signal)) {
      logger.debug({ err, procedure }, "the client went away");
      return new ConnectError("the client went away", Code.Canceled, undefined, undefined, err);
    }
    logger.error({ err, procedure }, "unexpected error");
    return new ConnectError("internal error", Code.Internal);
  };
  return (next) => async (req) => {
    const procedure = req.method.parent.typeName + "/" + req.method.name;
    try {
      const res = await next(req);
      if (!res.stream) return res;
      return { ...res, message: mapStream(res.message, (err) => map(err, procedure, req.signal)) } as StreamResponse;
    } catch (err) {
      throw map(err, procedure, req.signal);
    }
  };
}

/**
 * Whether the call's signal says its client went away: connect-node aborts it with CANCELED
 * when the client resets the stream or closes the connection (ABORTED for an HTTP/1.1
 * connection reset). A passed deadline (DEADLINE_EXCEEDED) or the server's cut-off
 * (UNAVAILABLE) is not the client leaving: errors after those stay logged.
 */
function clientGone(signal: AbortSignal): boolean {
  if (!signal.aborted) return false;
  const { code } = ConnectError.from(signal.reason, Code.Canceled);
  return code === Code.Canceled || code === Code.Aborted;
}

async function* mapStream<T>(messages: AsyncIterable<T>, map: (err: unknown) => ConnectError): AsyncIterable<T> {
  try {
    yield* messages;
  } catch (err) {
    throw map(err);
  }
}

/**
 * One debug line per RPC (health checks excepted): procedure, code and duration in ms (for
 * streams: until the response stream started). Inside the tracing interceptor, so the
 * line carries the call's trace_id and span_id. Costs one level check when debug is off.
 */
export function rpcLog(logger: Logger): Interceptor {
  return (next) => async (req) => {
    if (!logger.isLevelEnabled("debug") || req.method.parent.typeName === "grpc.health.v1.Health") return next(req);
    const procedure = req.method.parent.typeName + "/" + req.method.name;
    const t0 = performance.now();
    const line = (code: string) => ({ procedure, stream: req.stream || undefined, code, ms: Math.round((performance.now() - t0) * 10) / 10 });
    try {
      const res = await next(req);
      logger.debug(line("ok"), "rpc");
      return res;
    } catch (err) {
      logger.debug(line(codeName(ConnectError.from(err).code)), "rpc");
      throw err;
    }
  };
}

/** Refuses new calls once the server drains, except health checks, which report NOT_SERVING. */
export function refuseWhileDraining(draining: AbortSignal): Interceptor {
  return (next) => async (req) => {
    if (draining.aborted && req.method.parent.typeName !== "grpc.health.v1.Health") {
      throw new ConnectError("server is shutting down", Code.Unavailable);
    }
    return next(req);
  };
}

/**
 * Ends a unary call with the shutdown reason (UNAVAILABLE) when `hardStop` aborts, even if
 * its handler ignores its signal, so a client cut off at the shutdown bound learns why.
 */
export function cutOffAt(hardStop: AbortSignal): Interceptor {
  return (next) => async (req) => {
    if (req.stream) return next(req);
    let onAbort: (() => void) | undefined;
    const cutOff = new Promise<never>((_, reject) => {
      onAbort = () => reject(hardStop.reason);
      hardStop.addEventListener("abort", onAbort, { once: true });
    });
    try {
      return await Promise.race([next(req), cutOff]);
    } finally {
      hardStop.removeEventListener("abort", onAbort!);
    }
  };
}
