// The unary fast path (services/runtime/rpc/unary-fast-path.ts): which requests it takes, and
// that what it answers is what connect's own handler answers for the same call. The same
// request bytes go over HTTP/2 (taken by the fast path) and over HTTP/1.1 (always connect's
// handler) to one server, and the two answers are compared: status, body and headers.
import http from "node:http";
import http2 from "node:http2";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createConnectRouter, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { FxService, GetRateRequestSchema, type GetRateRequest } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { invalidArgument } from "../../services/runtime/errors.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { startServer, type RunningServer } from "../../services/runtime/rpc/server.js";
import { unaryFastPath } from "../../services/runtime/rpc/unary-fast-path.js";

vi.setConfig({ testTimeout: 30_000, hookTimeout: 30_000 });

const logger = createLogger("fast-path-test", "silent");
const MAX_BYTES = 256;
const PATH = "/paygate.fx.v1.FxService/GetRate";

function routes(router: ConnectRouter) {
  router.service(FxService, {
    async getRate(req: GetRateRequest, ctx: HandlerContext) {
      ctx.responseHeader.set("x-echo", ctx.requestHeader.get("x-sent") ?? "none");
      if (req.baseCurrency === "BAD") throw invalidArgument("UNKNOWN_CURRENCY", "base_currency", "base_currency: no currency \"BAD\"");
      if (req.baseCurrency === "META") throw new ConnectError("refused with metadata", Code.FailedPrecondition, { "x-why": "because" });
      if (req.baseCurrency === "WAIT") {
        await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve(), { once: true }));
        throw ConnectError.from(ctx.signal.reason);
      }
      ctx.responseTrailer.set("x-trailer", "last");
      return { rate: { baseCurrency: req.baseCurrency, quoteCurrency: req.quoteCurrency, midRate: "1.25" } };
    },
  });
}

interface Answer {
  status: number;
  body: string;
  headers: Record<string, string>;
}

/** Headers both answers must agree on (date and connection details differ by transport). */
const compared = (h: Record<string, string | string[] | number | undefined>) =>
  Object.fromEntries(
    Object.entries(h)
      .filter(([k]) => !k.startsWith(":") && !["date", "connection", "keep-alive", "transfer-encoding"].includes(k))
      .map(([k, v]) => [k, String(v)]),
  );

function overHttp2(url: string, headers: Record<string, string>, body: Uint8Array): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(url);
    session.on("error", reject);
    const stream = session.request({ ":method": "POST", ":path": PATH, ...headers });
    const chunks: Buffer[] = [];
    let head: http2.IncomingHttpHeaders = {};
    stream.on("response", (h) => (head = h));
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("end", () => {
      session.close();
      resolve({ status: Number(head[":status"]), body: Buffer.concat(chunks).toString("latin1"), headers: compared(head) });
    });
    stream.on("error", reject);
    stream.end(body);
  });
}

function overHttp1(url: string, headers: Record<string, string>, body: Uint8Array): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${url}${PATH}`, { method: "POST", headers: { ...headers, "content-length": String(body.byteLength) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString("latin1"), headers: compared(res.headers) }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

describe("the unary fast path answers as connect's handler does", () => {
  let server: RunningServer;

  beforeAll(async () => {
    server = await startServer({ name: "fast-path", services: [FxService], routes }, { host: "127.0.0.1", port: 0, maxRequestBytes: MAX_BYTES, shutdownTimeoutMs: 2_000, drainDelayMs: 0, logger });
  });
  afterAll(async () => {
    await server?.shutdown();
  });

  const message = (baseCurrency: string) => toBinary(GetRateRequestSchema, create(GetRateRequestSchema, { baseCurrency, quoteCurrency: "EUR" }));
  const proto = { "content-type": "application/proto", "connect-protocol-version": "1", "x-sent": "hi" };

  it.each([
    ["an answer, with a response header and a trailer", proto, message("USD"), 200],
    ["a domain error with its details", proto, message("BAD"), 400],
    ["an error whose metadata becomes response headers", proto, message("META"), 400],
    ["the deadline passing in the handler", { ...proto, "connect-timeout-ms": "50" }, message("WAIT"), 504],
    ["a message larger than the server reads", proto, message("X".repeat(MAX_BYTES)), 429],
    ["bytes that are not the message", proto, Uint8Array.from([0xff, 0xff, 0xff]), 400],
  ])("%s", async (_what, headers, body, status) => {
    const [fast, connect] = await Promise.all([overHttp2(server.url, headers, body), overHttp1(server.url, headers, body)]);
    expect(fast.status).toBe(status);
    expect(fast).toEqual(connect);
  });
});

describe("which requests the fast path takes", () => {
  const fast = unaryFastPath({ interceptors: [], shutdownSignal: new AbortController().signal, readMaxBytes: 1024 });
  fast.recording(createConnectRouter()).service(FxService, {});
  /** A request as node:http2's compatibility API presents it; nothing is read unless taken. */
  type Over = Partial<{ httpVersionMajor: number; method: string; url: string; headers: Record<string, string> }>;
  const request = (over: Over) => {
    const req = new http.IncomingMessage(null as never);
    Object.assign(req, { httpVersionMajor: 2, method: "POST", url: PATH, ...over, headers: { "content-type": "application/proto", ...over.headers } });
    return req;
  };
  const res = { stream: {} } as unknown as http.ServerResponse;

  it("takes a unary Connect call with a binary message over HTTP/2", () => {
    expect(fast.handle(request({}), res)).toBe(true);
    expect(fast.handle(request({ headers: { "connect-timeout-ms": "2500" } }), res)).toBe(true);
  });

  it("leaves everything else to connect's handler", () => {
    const others: Over[] = [
      { httpVersionMajor: 1 },
      { method: "GET" },
      { headers: { "content-type": "application/json" } },
      { headers: { "content-type": "application/grpc" } },
      { headers: { "content-type": "application/connect+proto" } },
      { headers: { "content-encoding": "gzip" } },
      { headers: { "connect-timeout-ms": "soon" } },
      { url: "/paygate.fx.v1.FxService/StreamRates" },
      { url: "/paygate.fx.v1.FxService/NoSuchMethod" },
    ];
    for (const other of others) {
      expect(fast.handle(request(other), res), JSON.stringify(other)).toBe(false);
    }
  });
});
