// The server side of the calls Paygate's services make to each other: a unary call in the
// Connect protocol with a binary message over HTTP/2 (what upstream.ts sends) is answered
// straight from the HTTP/2 stream. It runs the same implementation through connect's own
// invokeUnaryImplementation with the server's interceptors, in a handler context made by
// connect's createHandlerContext, and answers as connect's handler does (the message, or the
// error as Connect JSON with its HTTP status; headers, and trailers as "trailer-" headers).
// What it leaves out is connect-node's per-request adaptation (web Headers and an
// async-iterable pipeline for the body, a serialization lookup per call): measured by
// scripts/bench-transport.ts (a loopback FxService/GetRate at concurrency 8, medians of one run
// of 5 rounds, either client), 253-272 µs of server CPU per call instead of 407-470 µs.
// Anything else — JSON, compression, GET, gRPC, gRPC-Web, HTTP/1.1, streams, a malformed
// timeout — goes to connect's handler.
import type http from "node:http";
import type http2 from "node:http2";
import { toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createHandlerContext, createServiceImplSpec, type ConnectRouter, type Interceptor, type MethodImplSpec } from "@connectrpc/connect";
import { codeToHttpStatus, errorToJsonBytes, invokeUnaryImplementation, mergeNonProtocolHeaders } from "./connect-protocol.js";
import { MAX_TIMEOUT_MS } from "./http2-upstream.js";
import { parseBinaryRequest } from "./request-check.js";

type UnarySpec = Extract<MethodImplSpec, { kind: "unary" }>;

/** The reason a finished call's signal is aborted with (connect aborts it to release its listeners). */
const CALL_ENDED = new ConnectError("the call ended", Code.Canceled);

export interface UnaryFastPath {
  /** The router to register services on: it registers them with connect and records their unary methods. */
  recording(router: ConnectRouter): ConnectRouter;
  /** Answers the request if it is such a call; false leaves it to connect's handler. */
  handle(req: http.IncomingMessage, res: http.ServerResponse): boolean;
}

export function unaryFastPath(opts: { interceptors: Interceptor[]; shutdownSignal: AbortSignal; readMaxBytes: number }): UnaryFastPath {
  const specs = new Map<string, UnarySpec>();

  const recording = (router: ConnectRouter): ConnectRouter =>
    Object.assign(Object.create(router) as ConnectRouter, {
      service: ((service, implementation, options) => {
        for (const spec of Object.values(createServiceImplSpec(service, implementation).methods)) {
          if (spec.kind === "unary") specs.set(`/${service.typeName}/${spec.method.name}`, spec as UnarySpec);
        }
        return router.service(service, implementation, options);
      }) as ConnectRouter["service"],
    });

  const handle = (req: http.IncomingMessage, res: http.ServerResponse): boolean => {
    if (req.httpVersionMajor !== 2 || req.method !== "POST" || req.headers["content-type"] !== "application/proto" || req.headers["content-encoding"] !== undefined) return false;
    const spec = specs.get(req.url ?? "");
    if (!spec) return false;
    const timeout = req.headers["connect-timeout-ms"];
    if (timeout !== undefined && (typeof timeout !== "string" || !/^\d{1,10}$/.test(timeout))) return false;
    const stream = (res as unknown as http2.Http2ServerResponse).stream;
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size <= opts.readMaxBytes) chunks.push(chunk);
    });
    // serve() answers every outcome itself; a failure to write the answer can only leave the stream to be reset.
    req.once("end", () => void serve(req, stream, spec, timeout === undefined ? undefined : Math.min(Number(timeout), MAX_TIMEOUT_MS), chunks, size).catch(() => stream.destroy()));
    return true;
  };

  async function serve(req: http.IncomingMessage, stream: http2.ServerHttp2Stream, spec: UnarySpec, timeoutMs: number | undefined, chunks: Buffer[], size: number) {
    const requestEnded = new AbortController();
    const onClose = () => requestEnded.abort(new ConnectError("the client went away", Code.Canceled));
    stream.once("close", onClose);
    const header = new Headers();
    for (const [name, value] of Object.entries(req.headers)) {
      if (name[0] === ":" || value === undefined) continue;
      if (Array.isArray(value)) for (const v of value) header.append(name, v);
      else header.set(name, value);
    }
    const context = createHandlerContext({
      service: spec.method.parent,
      method: spec.method,
      protocolName: "connect",
      requestMethod: "POST",
      url: `http://${req.headers[":authority"] ?? "localhost"}${req.url}`,
      timeoutMs,
      shutdownSignal: opts.shutdownSignal,
      requestSignal: requestEnded.signal,
      requestHeader: header,
      responseHeader: { "content-type": "application/proto" },
    });
    let status = 200;
    let body: Uint8Array;
    try {
      if (size > opts.readMaxBytes) throw new ConnectError(`message size ${size} is larger than configured readMaxBytes ${opts.readMaxBytes}`, Code.ResourceExhausted);
      const input = parseBinaryRequest(spec.method.input, chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks));
      body = toBinary(spec.method.output, await invokeUnaryImplementation(spec, context, input, opts.interceptors));
    } catch (e) {
      context.abort(e);
      const error = e instanceof ConnectError ? e : new ConnectError("internal error", Code.Internal, undefined, undefined, e);
      status = codeToHttpStatus(error.code);
      context.responseHeader.set("content-type", "application/json");
      if (!error.isWireError) mergeNonProtocolHeaders(context.responseHeader, error.metadata);
      body = errorToJsonBytes(error, {});
    } finally {
      context.abort(CALL_ENDED);
      stream.off("close", onClose);
    }
    if (stream.destroyed || stream.closed) return;
    const out: http2.OutgoingHttpHeaders = { ":status": status, "content-length": body.byteLength };
    context.responseHeader.forEach((value, name) => (out[name] = value));
    context.responseTrailer.forEach((value, name) => (out[`trailer-${name}`] = value));
    stream.respond(out);
    stream.end(body);
  }

  return { recording, handle };
}
