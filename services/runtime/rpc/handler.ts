// The Connect handler every service runs: connect-node's adapter (routes to universal
// handlers, one per RPC and protocol), with each request's body checked before connect reads
// it (request-check.ts), and a failure outside any RPC logged instead of printed.
import type http from "node:http";
import { Code, ConnectError, createConnectRouter, type ConnectRouter, type ConnectRouterOptions } from "@connectrpc/connect";
import { universalRequestFromNodeRequest, universalResponseToNodeResponse } from "@connectrpc/connect-node";
import { parseConnectTimeout, parseGrpcTimeout } from "./connect-protocol.js";
import { connectTimeout, grpcTimeout, MAX_TIMEOUT_MS } from "./http2-upstream.js";
import type { Logger } from "../observability/logger.js";
import { ACCEPTED_COMPRESSION, checkedBody } from "./request-check.js";

export interface RpcHandlerOptions extends ConnectRouterOptions {
  routes: (router: ConnectRouter) => void;
  readMaxBytes: number;
  /** Requests for paths that are not RPCs. */
  fallback: http.RequestListener;
  logger: Logger;
}

export function rpcHandler(opts: RpcHandlerOptions): http.RequestListener {
  const router = createConnectRouter({ acceptCompression: ACCEPTED_COMPRESSION, ...opts });
  opts.routes(router);
  const handlers = new Map(router.handlers.map((h) => [h.requestPath, h]));
  return (req, res) => {
    const handler = handlers.get(req.url?.split("?", 1)[0] ?? "");
    if (!handler) return opts.fallback(req, res);
    const uReq = universalRequestFromNodeRequest(req, res, undefined, undefined);
    holdDeadline(uReq.header);
    // Calls with one request message (unary, server streams) have it checked as a whole.
    const kind = handler.method.methodKind;
    if (req.method === "POST" && (kind === "unary" || kind === "server_streaming") && typeof uReq.body === "object" && uReq.body !== null && Symbol.asyncIterator in uReq.body) {
      uReq.body = checkedBody(uReq.body as AsyncIterable<Uint8Array>, handler.method, uReq.header, opts.readMaxBytes);
    }
    handler(uReq)
      .then((uRes) => universalResponseToNodeResponse(uRes, res))
      .catch((err: unknown) => {
        // ABORTED: the client went away while the answer was written.
        if (ConnectError.from(err).code !== Code.Aborted) opts.logger.error({ err, procedure: `${handler.service.typeName}/${handler.method.name}` }, "writing the answer failed");
      });
  };
}

/**
 * A deadline longer than a Node.js timer can wait (about 24.8 days) would expire at once:
 * it is held to the longest one that works instead.
 */
function holdDeadline(header: Headers): void {
  const grpc = header.get("grpc-timeout");
  if (grpc !== null && (parseGrpcTimeout(grpc, Number.MAX_SAFE_INTEGER).timeoutMs ?? 0) > MAX_TIMEOUT_MS) header.set("grpc-timeout", grpcTimeout(MAX_TIMEOUT_MS));
  const connect = header.get("connect-timeout-ms");
  if (connect !== null && (parseConnectTimeout(connect, Number.MAX_SAFE_INTEGER).timeoutMs ?? 0) > MAX_TIMEOUT_MS) header.set("connect-timeout-ms", connectTimeout(MAX_TIMEOUT_MS));
}
