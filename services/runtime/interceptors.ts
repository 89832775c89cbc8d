// Server interceptors every service runs. Kept in a list so later concerns (metrics,
// tracing) plug in beside them without touching the services.
import { Code, ConnectError, type Interceptor, type StreamResponse } from "@connectrpc/connect";
import { DomainError, toConnectError } from "./errors.js";
import type { Logger } from "./logger.js";

/**
 * Maps every error leaving a handler to what a client may see: domain errors to their code
 * and typed detail, Connect errors as they are, anything else to a bare INTERNAL (logged in
 * full here, never sent: no stack traces or SQL text reach a client).
 */
export function errorMapping(logger: Logger): Interceptor {
  const map = (err: unknown, procedure: string): ConnectError => {
    if (err instanceof DomainError) return toConnectError(err);
    if (err instanceof ConnectError) return err;
    logger.error({ err, procedure }, "unexpected error");
    return new ConnectError("internal error", Code.Internal);
  };
  return (next) => async (req) => {
    const procedure = req.method.parent.typeName + "/" + req.method.name;
    try {
      const res = await next(req);
      if (!res.stream) return res;
      return { ...res, message: mapStream(res.message, (err) => map(err, procedure)) } as StreamResponse;
    } catch (err) {
      throw map(err, procedure);
    }
  };
}

async function* mapStream<T>(messages: AsyncIterable<T>, map: (err: unknown) => ConnectError): AsyncIterable<T> {
  try {
    yield* messages;
  } catch (err) {
    throw map(err);
  }
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
