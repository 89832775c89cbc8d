// The gateway's relay (services/gateway/relay.ts) over real sockets: a server built like the
// gateway (startServer with the relay and a Connect handler of its own) in front of a
// test-only PaymentsService that reports what reached it. Checked: what is relayed and what
// the Connect handler answers instead, the headers passed on and those not, errors and
// trailers coming back unchanged, the deadline (the caller's or the default, as every client
// writes it, passed on as the time left of it), a caller going away, payments unreachable or
// stalling, and the gateway's RPC metrics for relayed calls.
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type ConnectRouter, type HandlerContext, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { codeFromString, parseConnectTimeout, parseGrpcTimeout } from "../../services/runtime/rpc/connect-protocol.js";
import { GetPaymentRequestSchema, PaymentsService, type GetPaymentRequest } from "../../services/gen/paygate/payments/v1/payments_pb.js";
import { authentication } from "../../services/gateway/public-api.js";
import { paymentsRelay } from "../../services/gateway/relay.js";
import type { Merchants } from "../../services/gateway/merchants.js";
import { notFound } from "../../services/runtime/errors.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { registry } from "../../services/runtime/observability/metrics.js";
import { startServer, type RunningServer, type ServerOptions } from "../../services/runtime/rpc/server.js";
import { MAX_TIMEOUT_MS } from "../../services/runtime/rpc/http2-upstream.js";
import { freePort } from "../support/ports.js";
import { outcomesDuring, REPLICA_HOSTS, startReplicas } from "../support/replicas.js";
import { findGrpcurl, hostPort, runTool, sleep, waitFor, within } from "../support/wire.js";

vi.setConfig({ testTimeout: 30_000, hookTimeout: 30_000 });

const logger = createLogger("relay-test", "silent");
const KEY = "pgk_acme_test";
/** Acme's too, checked only after AUTHENTICATION_MS (a key looked up in a slow database). */
const SLOW_KEY = "pgk_acme_slow";
const AUTHENTICATION_MS = 300;
const DEFAULT_TIMEOUT_MS = 4_000;

/** Knows two keys; an unknown one is refused as the real Merchants refuses it. */
const merchants = {
  authenticate: async (key: string | undefined) => {
    if (key === SLOW_KEY) await sleep(AUTHENTICATION_MS);
    if (key === KEY || key === SLOW_KEY) return { id: "acme", name: "Acme" };
    throw new ConnectError("the API key is not valid", Code.Unauthenticated);
  },
} as unknown as Merchants;

const options = (port: number): ServerOptions => ({ host: "127.0.0.1", port, maxRequestBytes: 1 << 20, shutdownTimeoutMs: 2_000, drainDelayMs: 0, logger });

/** What the test payments service saw of each call, by payment_id. */
const seen = new Map<string, { headers: Record<string, string>; merchantId: string; aborted?: string }>();

function upstreamRoutes(router: ConnectRouter) {
  router.service(PaymentsService, {
    async getPayment(req: GetPaymentRequest, ctx: HandlerContext) {
      const record = { headers: Object.fromEntries(ctx.requestHeader), merchantId: req.merchantId } as { headers: Record<string, string>; merchantId: string; aborted?: string };
      seen.set(req.paymentId, record);
      if (req.paymentId.startsWith("missing")) throw notFound("PAYMENT_NOT_FOUND", `payment_id: no payment ${JSON.stringify(req.paymentId)}`, "payment_id");
      if (req.paymentId.startsWith("hang")) {
        await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve(), { once: true }));
        record.aborted = String(ConnectError.from(ctx.signal.reason).code);
        throw ConnectError.from(ctx.signal.reason);
      }
      ctx.responseHeader.set("idempotent-replayed", "true");
      ctx.responseTrailer.set("x-upstream-trailer", "kept");
      return { payment: { id: req.paymentId, merchantId: ctx.requestHeader.get("paygate-merchant-id") ?? "" } };
    },
  });
}

describe("the gateway's relay of PaymentsService calls", () => {
  let upstream: RunningServer;
  let gateway: RunningServer;
  let relay: ReturnType<typeof paymentsRelay>;

  beforeAll(async () => {
    upstream = await startServer({ name: "payments-under-relay", services: [PaymentsService], routes: upstreamRoutes }, options(0));
    relay = paymentsRelay({ upstreamUrl: upstream.url, merchants, defaultTimeoutMs: DEFAULT_TIMEOUT_MS, logger });
    gateway = await startServer(
      {
        name: "gateway-under-test",
        services: [PaymentsService],
        // What the gateway's Connect handler answers is marked, so a test can tell the paths apart.
        routes: (router) => router.service(PaymentsService, { getPayment: (req) => ({ payment: { id: req.paymentId, merchantId: "decoded-by-the-gateway" } }) }),
        interceptors: [authentication(merchants)],
        relay,
        close: async () => relay.close(),
      },
      options(0),
    );
  });
  afterAll(async () => {
    await gateway?.shutdown();
    await upstream?.shutdown();
  });

  const bearer = (key: string | undefined) => (key === undefined ? {} : { authorization: `Bearer ${key}` });
  const transports: Record<string, () => Transport> = {
    "gRPC": () => createGrpcTransport({ baseUrl: gateway.url }),
    "Connect binary over HTTP/2": () => createConnectTransport({ baseUrl: gateway.url, httpVersion: "2", useBinaryFormat: true }),
    "Connect JSON over HTTP/2": () => createConnectTransport({ baseUrl: gateway.url, httpVersion: "2" }),
  };

  describe.each(Object.entries(transports))("%s", (name, transport) => {
    const id = (what: string) => `${what}-${name.replace(/\W+/g, "-")}-${Math.random().toString(36).slice(2, 8)}`;

    it("is relayed: the merchant in a header, the caller's key and trace context not passed on, response headers and trailers back", async () => {
      const client = createClient(PaymentsService, transport());
      const paymentId = id("ok");
      let replayed: string | null = null;
      let trailer: string | null = null;
      const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
      const res = await client.getPayment(
        { paymentId },
        { headers: { ...bearer(KEY), "idempotency-key": "k-1", "paygate-merchant-id": "globex", traceparent }, onHeader: (h) => (replayed = h.get("idempotent-replayed")), onTrailer: (t) => (trailer = t.get("x-upstream-trailer")) },
      );
      expect(res.payment).toMatchObject({ id: paymentId, merchantId: "acme" });
      expect({ replayed, trailer }).toEqual({ replayed: "true", trailer: "kept" });
      const { headers, merchantId } = seen.get(paymentId)!;
      expect(merchantId, "the message is passed as it came").toBe("");
      expect(headers["paygate-merchant-id"], "set by the relay, never taken from the caller").toBe("acme");
      expect(headers["idempotency-key"]).toBe("k-1");
      expect(headers.authorization).toBeUndefined();
      expect(headers.traceparent, "the trace goes on under the gateway's own span").toMatch(/^00-0af7651916cd43dd8448eb211c80319c-(?!b7ad6b7169203331)[0-9a-f]{16}-0[01]$/);
      const timeoutMs = forwardedTimeoutMs(headers);
      expect(timeoutMs, "the time left of the default deadline when the caller sets none").toBeLessThanOrEqual(DEFAULT_TIMEOUT_MS);
      expect(timeoutMs).toBeGreaterThan(DEFAULT_TIMEOUT_MS - 1_000);
    });

    it("errors come back as payments sent them (code, message, details) and count in the gateway's metrics", async () => {
      const client = createClient(PaymentsService, transport());
      const protocol = name === "gRPC" ? "grpc" : "connect";
      const labels = { rpc_service: "paygate.payments.v1.PaymentsService", rpc_method: "GetPayment", protocol, code: "not_found" };
      const before = await counted(labels);
      const paymentId = id("missing");
      const err = ConnectError.from(await client.getPayment({ paymentId }, { headers: bearer(KEY) }).catch((e: unknown) => e));
      expect({ code: err.code, message: err.rawMessage }).toEqual({ code: Code.NotFound, message: `payment_id: no payment ${JSON.stringify(paymentId)}` });
      expect(err.details.length).toBe(1);
      // Both servers share this process's registry: the gateway's and payments' count each call.
      await waitFor(async () => (await counted(labels)) === before + 2, "two not_found calls counted (gateway and payments)");
    });

    it("the caller's deadline goes along; when payments does not answer in time the caller gets DEADLINE_EXCEEDED", async () => {
      const client = createClient(PaymentsService, transport());
      const paymentId = id("hang");
      const err = ConnectError.from(await client.getPayment({ paymentId }, { headers: bearer(KEY), timeoutMs: 300 }).catch((e: unknown) => e));
      expect(err.code).toBe(Code.DeadlineExceeded);
      const call = await waitFor(() => (seen.get(paymentId)?.aborted ? seen.get(paymentId) : undefined), "payments saw the call end");
      expect(forwardedTimeoutMs(call.headers)).toBeLessThanOrEqual(300);
    });

    it("a caller that goes away cancels the call at payments", async () => {
      const client = createClient(PaymentsService, transport());
      const paymentId = id("hang");
      const abort = new AbortController();
      const call = client.getPayment({ paymentId }, { headers: bearer(KEY), signal: abort.signal }).catch((e: unknown) => e);
      await waitFor(() => seen.get(paymentId), "payments got the call");
      abort.abort();
      expect(ConnectError.from(await call).code).toBe(Code.Canceled);
      const aborted = await waitFor(() => seen.get(paymentId)?.aborted, "payments saw the call cancelled");
      expect(Number(aborted)).toBe(Code.Canceled);
    });

    it("a caller that leaves while its key is checked: payments is not called, and the gateway serves on", async () => {
      const client = createClient(PaymentsService, transport());
      const paymentId = id("ok");
      const abort = new AbortController();
      const call = client.getPayment({ paymentId }, { headers: bearer(SLOW_KEY), signal: abort.signal }).catch((e: unknown) => e);
      await sleep(AUTHENTICATION_MS / 3);
      abort.abort();
      expect(ConnectError.from(await call).code).toBe(Code.Canceled);
      await sleep(AUTHENTICATION_MS + 200);
      expect(seen.has(paymentId)).toBe(false);
      const next = await client.getPayment({ paymentId: id("ok") }, { headers: bearer(KEY) });
      expect(next.payment?.merchantId).toBe("acme");
    });

    it("no key or an unknown one is answered by the Connect handler: UNAUTHENTICATED, nothing relayed", async () => {
      const client = createClient(PaymentsService, transport());
      for (const key of [undefined, "pgk_wrong"]) {
        const paymentId = id("unauthenticated");
        const err = ConnectError.from(await client.getPayment({ paymentId }, { headers: bearer(key) }).catch((e: unknown) => e));
        expect(err.code).toBe(Code.Unauthenticated);
        expect(seen.has(paymentId)).toBe(false);
      }
    });
  });

  it("HTTP/1.1 and gRPC-Web calls are not relayed: the gateway's Connect handler answers them", async () => {
    for (const transport of [
      createConnectTransport({ baseUrl: gateway.url, httpVersion: "1.1" }),
      (await import("@connectrpc/connect-node")).createGrpcWebTransport({ baseUrl: gateway.url, httpVersion: "2" }),
    ]) {
      const res = await createClient(PaymentsService, transport).getPayment({ paymentId: "decoded" }, { headers: bearer(KEY) });
      expect(res.payment?.merchantId).toBe("decoded-by-the-gateway");
    }
  });

  it("payments unreachable: UNAVAILABLE in the caller's protocol", async () => {
    const port = await freePort(); // nothing listens there
    const lonely = paymentsRelay({ upstreamUrl: `http://127.0.0.1:${port}`, merchants, defaultTimeoutMs: DEFAULT_TIMEOUT_MS, logger });
    const front = await startServer({ name: "gateway-alone", services: [PaymentsService], routes: () => {}, interceptors: [authentication(merchants)], relay: lonely, close: async () => lonely.close() }, options(0));
    try {
      for (const transport of [createGrpcTransport({ baseUrl: front.url }), createConnectTransport({ baseUrl: front.url, httpVersion: "2" })]) {
        const err = ConnectError.from(await createClient(PaymentsService, transport).getPayment({ paymentId: "x" }, { headers: bearer(KEY) }).catch((e: unknown) => e));
        expect({ code: Code[err.code], message: err.rawMessage }).toEqual({ code: "Unavailable", message: "payments is unavailable" });
      }
    } finally {
      await front.shutdown();
    }
  });

  it("payments replicas restarting under load (a rolling restart): no relayed call fails", async () => {
    const replicas = await startReplicas((host, port) => startServer({ name: `payments-${host}`, services: [PaymentsService], routes: upstreamRoutes }, { ...options(port), host }));
    const overReplicas = paymentsRelay({
      upstreamUrl: `http://replicas.paygate.test:${replicas.port}`,
      merchants,
      defaultTimeoutMs: DEFAULT_TIMEOUT_MS,
      logger,
      sessions: { resolve: async () => REPLICA_HOSTS },
    });
    const front = await startServer(
      { name: "gateway-over-replicas", services: [PaymentsService], routes: () => {}, interceptors: [authentication(merchants)], relay: overReplicas, close: async () => overReplicas.close() },
      options(0),
    );
    try {
      await new Promise((r) => setImmediate(r)); // the name resolves
      const payments = createClient(PaymentsService, createGrpcTransport({ baseUrl: front.url }));
      const call = () => payments.getPayment({ paymentId: "rolling" }, { headers: bearer(KEY) });
      const outcomes = await outcomesDuring(call, 16, replicas.restart(10));
      expect(Object.keys(outcomes)).toEqual(["ok"]);
      expect(outcomes.ok).toBeGreaterThan(100);
    } finally {
      await front.shutdown();
      await replicas.close();
    }
  });

  // Bare HTTP/2 requests with the deadline header exactly as the test writes it: connect's and
  // grpc-js's clients write their own, grpc-go's (grpcurl, k6) write fractions and other units.
  describe("deadlines as every client writes them", () => {
    const id = (what: string) => `${what}-raw-${Math.random().toString(36).slice(2, 8)}`;

    it("a grpc-go client's (grpcurl -max-time 30 sends 29842030u) is relayed, and payments gets a valid grpc-timeout of the time left", async () => {
      const paymentId = id("ok");
      const answer = await rawCall(gateway.url, { protocol: "grpc", paymentId, timeout: "29842030u", key: KEY });
      expect(answer.code).toBe("OK");
      const timeoutMs = forwardedTimeoutMs(seen.get(paymentId)!.headers);
      expect(timeoutMs).toBeLessThanOrEqual(29842.03);
      expect(timeoutMs).toBeGreaterThan(28842.03);
    });

    it("one longer than a timer holds (99999999H, connect-timeout-ms 9999999999) is answered, not expired at once, and passed on within bounds", async () => {
      for (const [protocol, timeout] of [["grpc", "99999999H"], ["connect", "9999999999"]] as const) {
        const paymentId = id("ok");
        const answer = await rawCall(gateway.url, { protocol, paymentId, timeout, key: KEY });
        expect({ protocol, code: answer.code }).toEqual({ protocol, code: "OK" });
        expect(forwardedTimeoutMs(seen.get(paymentId)!.headers)).toBe(MAX_TIMEOUT_MS);
      }
    });

    it("with no time left (0m, 1n, 1u; connect-timeout-ms 0) the call ends at once with DEADLINE_EXCEEDED, every time", async () => {
      const deadlines = [["grpc", "0m"], ["grpc", "1n"], ["grpc", "1u"], ["connect", "0"]] as const;
      for (let round = 0; round < 10; round++) {
        for (const [protocol, timeout] of deadlines) {
          // A payment payments never answers: only a deadline can end the call.
          const paymentId = id("hang");
          const answer = await rawCall(gateway.url, { protocol, paymentId, timeout, key: KEY });
          expect({ protocol, timeout, code: answer.code }).toEqual({ protocol, timeout, code: "DeadlineExceeded" });
          if (timeout === "0m" || timeout === "0") expect(seen.has(paymentId), "payments is not called with no time left").toBe(false);
        }
      }
    });

    it("passing after payments sent its headers: gRPC gets DEADLINE_EXCEEDED in the trailers; a Connect answer or a part of a message is reset, never ended as if whole", async () => {
      // A payments that answers with headers (and, asked for "partial", the start of a message), then nothing.
      const stalling = http2.createServer();
      stalling.on("stream", (s, h) => {
        s.on("error", () => {});
        s.resume();
        s.respond({ ":status": 200, "content-type": String(h["content-type"]) });
        if (h["x-stall"] === "partial") s.write(Buffer.from([0, 0, 0, 0, 9, 0x0a]));
      });
      await new Promise<void>((resolve) => stalling.listen(0, "127.0.0.1", resolve));
      const stallingRelay = paymentsRelay({ upstreamUrl: `http://127.0.0.1:${(stalling.address() as AddressInfo).port}`, merchants, defaultTimeoutMs: DEFAULT_TIMEOUT_MS, logger });
      const front = await startServer({ name: "gateway-before-stalling", services: [PaymentsService], routes: () => {}, interceptors: [authentication(merchants)], relay: stallingRelay, close: async () => stallingRelay.close() }, options(0));
      try {
        for (let round = 0; round < 3; round++) {
          const grpc = await rawCall(front.url, { protocol: "grpc", paymentId: "stall", timeout: "200m", key: KEY });
          expect(grpc).toEqual({ status: 200, code: "DeadlineExceeded", reset: false });
          const partial = await rawCall(front.url, { protocol: "grpc", paymentId: "stall", timeout: "200m", key: KEY, headers: { "x-stall": "partial" } });
          expect(partial.reset, "a message cut short is never passed off as a whole answer").toBe(true);
          const connect = await rawCall(front.url, { protocol: "connect", paymentId: "stall", timeout: "200", key: KEY });
          expect(connect.reset, "a 200 with no message after it would read as an empty answer").toBe(true);
        }
      } finally {
        await front.shutdown();
        await new Promise<void>((resolve) => stalling.close(() => resolve()));
      }
    });

    const grpcurl = findGrpcurl();
    it.runIf(grpcurl)("grpcurl -max-time through the gateway: relayed and answered", async () => {
      const paymentId = id("ok");
      const call = await runTool(grpcurl!, ["-max-time", "30", "-plaintext", "-H", `authorization: Bearer ${KEY}`, "-d", JSON.stringify({ payment_id: paymentId }), hostPort(gateway.url), "paygate.payments.v1.PaymentsService/GetPayment"]);
      expect(call.code, call.stderr).toBe(0);
      expect(JSON.parse(call.stdout)).toMatchObject({ payment: { id: paymentId, merchantId: "acme" } });
      expect(forwardedTimeoutMs(seen.get(paymentId)!.headers)).toBeLessThanOrEqual(30_000);
    });
  });
});

/** rpc_server_requests_total with exactly these labels, from the process registry. */
async function counted(labels: Record<string, string>): Promise<number> {
  const metric = await registry.getSingleMetric("rpc_server_requests_total")!.get();
  const want = Object.entries(labels);
  const found = metric.values.find((v) => Object.keys(v.labels).length === want.length && want.every(([k, x]) => v.labels[k] === x));
  return found?.value ?? 0;
}

/** The deadline payments got (grpc-timeout or connect-timeout-ms), in ms; fails on a malformed one. */
function forwardedTimeoutMs(headers: Record<string, string>): number {
  const grpc = headers["grpc-timeout"] !== undefined;
  const parsed = grpc ? parseGrpcTimeout(headers["grpc-timeout"]!, Number.MAX_SAFE_INTEGER) : parseConnectTimeout(headers["connect-timeout-ms"] ?? null, Number.MAX_SAFE_INTEGER);
  if (parsed.error || parsed.timeoutMs === undefined) throw new Error(`payments got no valid deadline: ${JSON.stringify(headers)}`);
  return parsed.timeoutMs;
}

interface RawAnswer {
  status: number;
  /** The call's code name (gRPC status, or a Connect error body's code), "OK" when it succeeded. */
  code: string;
  /** The stream was reset instead of ended. */
  reset: boolean;
}

/**
 * GetPayment on a bare HTTP/2 stream with `timeout` as the deadline header, exactly as given.
 * Rejects when the stream neither ends nor is reset within 5 s.
 */
function rawCall(url: string, call: { protocol: "grpc" | "connect"; paymentId: string; timeout: string; key: string; headers?: Record<string, string> }): Promise<RawAnswer> {
  const message = toBinary(GetPaymentRequestSchema, create(GetPaymentRequestSchema, { paymentId: call.paymentId }));
  const grpc = call.protocol === "grpc";
  const headers: http2.OutgoingHttpHeaders = {
    ":method": "POST",
    ":path": "/paygate.payments.v1.PaymentsService/GetPayment",
    "content-type": grpc ? "application/grpc" : "application/proto",
    authorization: `Bearer ${call.key}`,
    [grpc ? "grpc-timeout" : "connect-timeout-ms"]: call.timeout,
    ...(grpc ? { te: "trailers" } : { "connect-protocol-version": "1" }),
    ...call.headers,
  };
  const body = grpc ? Buffer.concat([Buffer.from([0, 0, 0, 0, message.length]), message]) : message;
  const session = http2.connect(url);
  session.on("error", () => {});
  const answer = new Promise<RawAnswer>((resolve) => {
    const stream = session.request(headers);
    let responseHeaders: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    let ended = false;
    stream.on("response", (h) => (responseHeaders = h));
    stream.on("trailers", (t) => (trailers = t));
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    stream.on("end", () => (ended = true));
    stream.on("error", () => {});
    stream.on("close", () => {
      const status = Number(responseHeaders[":status"] ?? 0);
      const reset = !ended || stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR;
      const code = grpc ? Number(trailers["grpc-status"] ?? responseHeaders["grpc-status"] ?? Code.Unknown) : status === 200 ? 0 : connectErrorCode(Buffer.concat(chunks));
      resolve({ status, code: code === 0 ? "OK" : (Code[code] ?? "Unknown"), reset });
    });
    stream.end(body);
  });
  return within(answer, 5_000, `the relayed call (${call.protocol}, deadline ${call.timeout})`).finally(() => session.destroy());
}

/** The code of a Connect error body ({"code": "deadline_exceeded", ...}). */
function connectErrorCode(body: Buffer): Code {
  try {
    return codeFromString(String((JSON.parse(body.toString("utf8")) as { code?: unknown }).code)) ?? Code.Unknown;
  } catch {
    return Code.Unknown;
  }
}
