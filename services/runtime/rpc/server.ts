// The one server every Paygate service runs on.
//
// One cleartext port speaks gRPC (HTTP/2 h2c), gRPC-Web and Connect (JSON or binary, over
// HTTP/1.1 or HTTP/2). Node's http2 server does not serve HTTP/1.1 without TLS, so a small
// TCP router reads the first bytes of each connection: the HTTP/2 client preface goes to the
// http2 server, anything else to the http1 server; both run the same Connect handler.
// Beside it an admin port serves /healthz (liveness), /readyz (readiness) and /metrics
// (Prometheus); a server without an admin port serves them on its one port.
// Every RPC is traced (OpenTelemetry SERVER span, parent from its traceparent header), and so
// is every plain HTTP request the service's fallback answers (the gateway's REST routes).
import { setMaxListeners } from "node:events";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import { Code, ConnectError, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import type { DescService } from "@bufbuild/protobuf";
import { HealthStatus, registerHealth } from "./health.js";
import { rpcHandler } from "./handler.js";
import { unaryFastPath } from "./unary-fast-path.js";
import { registerReflection } from "./reflection.js";
import { cutOffAt, errorMapping, refuseWhileDraining, rpcLog } from "./interceptors.js";
import { metricsHandler, rpcServerMetrics } from "../observability/metrics.js";
import { textGuard } from "./text.js";
import { tracedHttpHandler } from "../observability/http-spans.js";
import { rpcServerTracing } from "../observability/rpc-spans.js";
import { flushTracing, initTracing, tracingInfo } from "../observability/tracing.js";
import { HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/health/v1/health_pb.js";
import type { Logger } from "../observability/logger.js";

const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
/**
 * At shutdown, the longest wait for an HTTP/2 client's PING answer (a Node.js client with no
 * call in flight closes on the GOAWAY without answering), and for a closed session to end.
 */
const SHUTDOWN_NOTICE_MS = 250;
/** The largest HTTP/2 stream id: a GOAWAY naming it refuses no stream. */
const MAX_STREAM_ID = 2 ** 31 - 1;

export interface ReadinessCheck {
  name: string;
  /** Resolves when the dependency is usable; rejects (with a short reason) when not. */
  check: () => Promise<void>;
}

export interface ServiceSpec {
  /** Short name, e.g. "fx": used in logs. */
  name: string;
  /** The Paygate services this process serves (health and reflection are added). */
  services: DescService[];
  /** Registers the implementations. `draining` aborts when shutdown begins: long streams end on it. */
  routes: (router: ConnectRouter, draining: AbortSignal) => void;
  /** What /readyz checks besides "not draining". */
  readiness?: ReadinessCheck[];
  /** Extra admin routes, path -> handler (/healthz, /readyz and /metrics are built in; a route given here for /metrics replaces the built-in one). */
  adminRoutes?: Record<string, http.RequestListener>;
  /** Interceptors run after the built-in ones. */
  interceptors?: Interceptor[];
  /** Plain HTTP routes on the RPC port for paths that are not RPCs (the gateway's REST routes). */
  fallback?: http.RequestListener;
  /**
   * Takes RPC requests before the Connect handler does (the gateway relays some calls as they
   * are); not consulted once the server drains.
   */
  relay?: RequestRelay;
  /** Releases the service's own resources (database, timers) after the servers close. */
  close?: () => Promise<void>;
}

/** Answers a request itself, or calls `next()` (at once or later) to leave it to the Connect handler. */
export type RequestRelay = (req: http.IncomingMessage, res: http.ServerResponse, next: () => void) => void;

export interface ServerOptions {
  host: string;
  port: number;
  /** Separate admin port; when undefined the admin routes are served on `port`. */
  adminPort?: number | undefined;
  maxRequestBytes: number;
  shutdownTimeoutMs: number;
  drainDelayMs: number;
  logger: Logger;
  /** RPC metrics (interceptor) and /metrics on the admin routes; on unless false (e.g. to measure their cost). */
  metrics?: boolean;
  /** Trace spans for RPCs and fallback routes; on unless false (e.g. to measure their cost). */
  tracing?: boolean;
  /** The unary fast path (unary-fast-path.ts); on unless false, which leaves every call to connect's handler (to measure it). */
  unaryFastPath?: boolean;
}

export interface RunningServer {
  /** Base URL of the RPC port, e.g. http://127.0.0.1:9092 */
  url: string;
  adminUrl: string;
  health: HealthStatus;
  /** Graceful stop: NOT_SERVING, refuse new work, let in-flight calls finish (bounded), close. */
  shutdown(): Promise<void>;
}

export async function startServer(spec: ServiceSpec, opts: ServerOptions): Promise<RunningServer> {
  const { logger } = opts;
  const draining = new AbortController();
  // Aborted only when in-flight calls overrun the shutdown bound: cuts them off.
  const hardStop = new AbortController();
  const health = new HealthStatus();
  // Many abort listeners at once on these two are normal, not a leak, so Node must not warn
  // (MaxListenersExceededWarning, past 10 by default): connect links every call's handler
  // context to hardStop (shutdownSignal below: one listener per call in flight, removed when
  // the call ends), cutOffAt adds one per unary call, and long streams (fx's rate ticks)
  // listen on draining. tests/wire/shutdown.wire.test.ts checks that none outlives its call.
  setMaxListeners(0, draining.signal, hardStop.signal);

  const metrics = opts.metrics !== false;
  const tracing = opts.tracing !== false;
  // Once per process (the first server names the resource); exports only what OTEL_* asks for.
  await initTracing(spec.name, logger);
  // The service's own HTTP routes get a SERVER span; health and metrics endpoints do not.
  const fallback = spec.fallback && tracing ? tracedHttpHandler(spec.fallback, (path) => ADMIN_PATHS.has(path)) : spec.fallback;
  const adminRoutes = adminHandler(spec, fallback, draining.signal, logger, metrics);
  // Tracing first: the span covers everything and everything (metrics, logs) runs inside it.
  // Then metrics: they time the whole chain and see the code the client gets (after errorMapping).
  const interceptors: Interceptor[] = [
    ...(tracing ? [rpcServerTracing()] : []),
    ...(metrics ? [rpcServerMetrics()] : []),
    rpcLog(logger),
    errorMapping(logger),
    refuseWhileDraining(draining.signal),
    cutOffAt(hardStop.signal),
    textGuard(),
    ...(spec.interceptors ?? []),
  ];
  const fastPath = opts.unaryFastPath === false ? undefined : unaryFastPath({ interceptors, shutdownSignal: hardStop.signal, readMaxBytes: opts.maxRequestBytes });
  const handler = rpcHandler({
    routes: (router) => {
      const recording = fastPath ? fastPath.recording(router) : router;
      spec.routes(recording, draining.signal);
      registerHealth(recording, health, { stopWatches: draining.signal });
      registerReflection(recording, spec.services);
    },
    interceptors,
    readMaxBytes: opts.maxRequestBytes,
    shutdownSignal: hardStop.signal,
    // A typo in a payment request should fail loudly, not be dropped.
    jsonOptions: { ignoreUnknownFields: false },
    // Non-RPC paths: the admin routes when they share the port, then the service's own.
    fallback: (opts.adminPort === undefined ? adminRoutes : fallback) ?? notFound,
    logger,
  });

  let inFlight = 0;
  let idle: (() => void) | undefined;
  /** Resolves true once no call is in flight, false after `ms`. */
  const untilIdle = (ms: number) =>
    inFlight === 0 ||
    new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      idle = () => {
        clearTimeout(timer);
        resolve(true);
      };
    });
  const tracked: http.RequestListener = (req, res) => {
    inFlight++;
    res.once("close", () => {
      if (--inFlight === 0) idle?.();
    });
    // HTTP/1.1 keep-alive connections close after their last response; HTTP/2 has GOAWAY.
    if (draining.signal.aborted && req.httpVersionMajor === 1) res.setHeader("Connection", "close");
    guarded(res, logger, () => {
      // Every handler builds the request's URL from its authority.
      if (!validAuthority(req)) return plainError(res, 400, "the request has no valid Host (or :authority)");
      if (spec.relay && !draining.signal.aborted) spec.relay(req, res, () => guarded(res, logger, () => fastPath?.handle(req, res) || handler(req, res)));
      else if (!fastPath?.handle(req, res)) handler(req, res);
    });
  };

  const h1 = http.createServer(tracked).on("connect", refuseTunnel);
  const h2 = http2.createServer({}, tracked as unknown as (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void);
  const sessions = new Set<http2.ServerHttp2Session>();
  h2.on("session", (s) => {
    sessions.add(s);
    s.once("close", () => sessions.delete(s));
  });
  const sockets = new Set<net.Socket>();
  const tcp = net.createServer((socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    socket.once("data", (first) => {
      socket.pause();
      const n = Math.min(first.length, HTTP2_PREFACE.length);
      if (first.subarray(0, n).equals(HTTP2_PREFACE.subarray(0, n))) {
        // The http2 session drains bytes already buffered on the socket when it starts.
        socket.unshift(first);
        h2.emit("connection", socket);
      } else {
        // The http1 parser reads the socket natively and would miss buffered bytes: hand it
        // the first chunk as a data event once it listens.
        h1.emit("connection", socket);
        socket.emit("data", first);
        socket.resume();
      }
    });
  });
  await listen(tcp, opts.port, opts.host);
  for (const s of spec.services) health.set(s.typeName, ServingStatus.SERVING);
  health.set("", ServingStatus.SERVING);

  const admin = opts.adminPort === undefined ? undefined : http.createServer(adminRoutes).on("connect", refuseTunnel);
  if (admin) await listen(admin, opts.adminPort!, opts.host);

  const url = `http://${hostForUrl(tcp)}`;
  const adminUrl = admin ? `http://${hostForUrl(admin)}` : url;
  logger.info({ url, adminUrl, traceExporters: tracingInfo()?.exporters ?? [] }, `${spec.name} listening`);

  let stopping: Promise<void> | undefined;
  const shutdown = () =>
    (stopping ??= (async () => {
      logger.info({ inFlight }, "shutting down: draining");
      health.setAll(ServingStatus.NOT_SERVING);
      // HTTP/2 clients are told to open no more streams before any call is refused: the ones
      // they opened before reading that are still served (see noticeShutdown).
      await Promise.all([...sessions].map((s) => noticeShutdown(s, SHUTDOWN_NOTICE_MS)));
      draining.abort();
      if (opts.drainDelayMs > 0) await sleep(opts.drainDelayMs);
      tcp.close();
      for (const s of sessions) s.close(); // the final GOAWAY: running streams finish, no new ones
      h1.closeIdleConnections();
      if (!(await untilIdle(opts.shutdownTimeoutMs))) {
        logger.warn({ inFlight }, "shutdown bound reached: cutting off in-flight calls");
        hardStop.abort(new ConnectError("server is shutting down", Code.Unavailable));
        await untilIdle(1_000); // cut-off calls answer UNAVAILABLE before their sockets close
      }
      // A closed HTTP/2 session ends its connection once its GOAWAY is written; destroying the
      // socket first could drop that frame, and the client would take its calls for failed.
      await untilClosed(sessions, SHUTDOWN_NOTICE_MS);
      for (const s of sockets) s.destroy();
      if (admin) {
        admin.closeAllConnections(); // first: a half-sent request would hold close() forever
        await new Promise<void>((r) => admin.close(() => r()));
      }
      await spec.close?.();
      // Spans of the last calls go out now, not at the next batch (bounded: a collector that is
      // down must not hold shutdown). The process's provider stays up for other servers in it.
      await flushTracing(2_000);
      logger.info("stopped");
      await new Promise<void>((r) => logger.flush(() => r()));
    })());

  return { url, adminUrl, health, shutdown };
}

/**
 * The first step of HTTP/2's graceful close: a GOAWAY that refuses no stream (the largest
 * stream id), then a PING. The client opens no new stream once it reads the GOAWAY, and it
 * answers the PING after reading it, so when the answer comes every stream it opened before
 * has arrived, and none of them is refused by the final GOAWAY (which names the last stream
 * that did). Resolves after the answer, or after `ms` for a client that does not answer.
 */
function noticeShutdown(s: http2.ServerHttp2Session, ms: number): Promise<void> {
  if (s.closed || s.destroyed) return Promise.resolve();
  s.goaway(http2.constants.NGHTTP2_NO_ERROR, MAX_STREAM_ID);
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    const answered = () => {
      clearTimeout(timer);
      resolve();
    };
    if (!s.ping(answered)) answered();
  });
}

/** Resolves once every session in `sessions` has closed (they leave the set), or after `ms`. */
async function untilClosed(sessions: Set<http2.ServerHttp2Session>, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (sessions.size > 0 && Date.now() < until) await sleep(10);
}

/** Admin paths: never traced (probes and scrapes would bury the payments). */
const ADMIN_PATHS = new Set(["/healthz", "/readyz", "/metrics"]);

function adminHandler(spec: ServiceSpec, fallback: http.RequestListener | undefined, draining: AbortSignal, logger: Logger, metrics: boolean): http.RequestListener {
  const routes: Record<string, http.RequestListener> = {
    ...(metrics ? { "/metrics": metricsHandler((err) => logger.error({ err }, "metrics collection failed")) } : {}),
    ...spec.adminRoutes,
  };
  const json = (res: http.ServerResponse, status: number, body: unknown) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
  return (req, res) => guarded(res, logger, () => {
    const path = (req.url ?? "/").split("?")[0] ?? "/";
    if (path === "/healthz") return json(res, 200, { status: "ok" });
    if (path === "/readyz") {
      void readiness(spec.readiness ?? [], draining).then(({ ready, checks }) => {
        if (!ready) logger.debug({ checks }, "not ready");
        json(res, ready ? 200 : 503, { status: ready ? "ready" : "not ready", checks });
      });
      return;
    }
    const extra = Object.hasOwn(routes, path) ? routes[path] : undefined;
    if (extra) return extra(req, res);
    if (fallback) return fallback(req, res);
    json(res, 404, { error: `no route ${path}` });
  });
}

/**
 * Runs a request's handler; an error it throws is logged and answered 500 (or the stream
 * reset, when the answer had begun): one bad request must never end the process.
 */
function guarded(res: http.ServerResponse, logger: Logger, handle: () => void): void {
  try {
    handle();
  } catch (err) {
    logger.error({ err }, "request handler failed");
    if (res.headersSent) res.destroy();
    else plainError(res, 500, "internal error");
  }
}

/** A CONNECT request (a tunnel) is answered 405; unanswered, Node would drop the connection without a word. */
function refuseTunnel(_req: http.IncomingMessage, socket: Duplex): void {
  socket.end("HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

const notFound: http.RequestListener = (_req, res) => plainError(res, 404, "not found");

function plainError(res: http.ServerResponse, status: number, message: string): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify({ error: message }));
}

/** Whether the request names a host a URL can be built on (HTTP/1.0 may send none; anything may be sent). */
function validAuthority(req: http.IncomingMessage): boolean {
  const authority = req.httpVersionMajor === 2 ? (req as unknown as http2.Http2ServerRequest).authority : req.headers.host;
  return typeof authority === "string" && authority !== "" && URL.canParse(`http://${authority}/`);
}

async function readiness(checks: ReadinessCheck[], draining: AbortSignal) {
  const results: Record<string, string> = { server: draining.aborted ? "draining" : "ok" };
  await Promise.all(
    checks.map(async (c) => {
      try {
        await c.check();
        results[c.name] = "ok";
      } catch (err) {
        results[c.name] = err instanceof Error ? err.message : String(err);
      }
    }),
  );
  return { ready: Object.values(results).every((v) => v === "ok"), checks: results };
}

function listen(server: net.Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
}

function hostForUrl(server: net.Server): string {
  const a = server.address() as AddressInfo;
  return a.family === "IPv6" ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
