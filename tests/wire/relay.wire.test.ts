// The gateway's relay (services/gateway/relay.ts) over real sockets: a server built like the
// gateway (startServer with the relay and a Connect handler of its own) in front of a
// test-only PaymentsService that reports what reached it. Checked: what is relayed and what
// the Connect handler answers instead, the headers passed on and those not, errors and
// trailers coming back unchanged, the deadline (the caller's or the default), a caller going
// away, payments unreachable, and the gateway's RPC metrics for relayed calls.
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Code, ConnectError, createClient, type ConnectRouter, type HandlerContext, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { PaymentsService, type GetPaymentRequest } from "../../services/gen/paygate/payments/v1/payments_pb.js";
import { authentication } from "../../services/gateway/public-api.js";
import { paymentsRelay } from "../../services/gateway/relay.js";
import type { Merchants } from "../../services/gateway/merchants.js";
import { notFound } from "../../services/runtime/errors.js";
import { createLogger } from "../../services/runtime/logger.js";
import { registry } from "../../services/runtime/metrics.js";
import { startServer, type RunningServer, type ServerOptions } from "../../services/runtime/server.js";
import { freePort } from "../support/ports.js";
import { waitFor } from "../support/wire.js";

vi.setConfig({ testTimeout: 30_000, hookTimeout: 30_000 });

const logger = createLogger("relay-test", "silent");
const KEY = "pgk_acme_test";
const DEFAULT_TIMEOUT_MS = 4_000;

/** Knows one key; an unknown one is refused as the real Merchants refuses it. */
const merchants = {
  authenticate: async (key: string | undefined) => {
    if (key === KEY) return { id: "acme", name: "Acme" };
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
      const timeout = name === "gRPC" ? headers["grpc-timeout"] : headers["connect-timeout-ms"];
      expect(timeout, "the default deadline when the caller sets none").toBe(name === "gRPC" ? `${DEFAULT_TIMEOUT_MS}m` : String(DEFAULT_TIMEOUT_MS));
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
      expect(Number(call.headers["grpc-timeout"]?.replace(/m$/, "") ?? call.headers["connect-timeout-ms"])).toBeLessThanOrEqual(300);
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
});

/** rpc_server_requests_total with exactly these labels, from the process registry. */
async function counted(labels: Record<string, string>): Promise<number> {
  const metric = await registry.getSingleMetric("rpc_server_requests_total")!.get();
  const want = Object.entries(labels);
  const found = metric.values.find((v) => Object.keys(v.labels).length === want.length && want.every(([k, x]) => v.labels[k] === x));
  return found?.value ?? 0;
}
