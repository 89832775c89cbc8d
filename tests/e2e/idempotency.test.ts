// Idempotency-Key end to end through the gateway: the same key and request replay the first
// response (marked `idempotent-replayed: true`) with exactly one effect, failures included;
// the same key with another request is INVALID_ARGUMENT IDEMPOTENCY_KEY_REUSED; concurrent
// duplicates produce one effect (the others are replays or ABORTED IDEMPOTENCY_KEY_IN_USE);
// gRPC metadata works like the HTTP header; keys belong to one merchant. Every test ends
// with the wallet's reconciliation check.
import { randomUUID } from "node:crypto";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import pg from "pg";
import { Code } from "@connectrpc/connect";
import { ErrorDetailSchema } from "../../services/gen/paygate/common/v1/common_pb.js";
import { CaptureMethod, PaymentStatus, type Payment } from "../../services/gen/paygate/payments/v1/payments_pb.js";
import { EntryDirection } from "../../services/gen/paygate/wallet/v1/wallet_pb.js";
import { storageBackends } from "../support/postgres.js";
import { paymentsEnv } from "../../services/payments/main.js";
import { loadConfig } from "../../services/runtime/config.js";
import { ACME, balanceOf, connectError, failure, gatewayClients, GLOBEX, minor, startStack, waitFor, type GatewayClients, type Stack } from "../support/stack.js";

vi.setConfig({ testTimeout: 60_000, hookTimeout: 180_000 });

const key = () => `idem-${randomUUID()}`;

describe.each(storageBackends())("idempotency through the gateway ($name)", (backend) => {
  let stack: Stack;
  let acme: GatewayClients;
  let acmeGrpc: GatewayClients;
  let globex: GatewayClients;

  beforeAll(async () => {
    stack = await startStack({ backend, name: "idempotency", walletProxy: true, env: { payments: { PAYMENTS_RECOVERY_INTERVAL_MS: "200" } } });
    acme = gatewayClients(stack.gatewayUrl, ACME.apiKey);
    acmeGrpc = gatewayClients(stack.gatewayUrl, ACME.apiKey, "grpc");
    globex = gatewayClients(stack.gatewayUrl, GLOBEX.apiKey);
  });
  afterAll(async () => {
    await stack?.stop();
  });
  afterEach(async () => {
    expect(await stack.reconcile(), "the ledger reconciles").toEqual([]);
  });

  async function accounts(balance = "100.00") {
    return { src: await stack.fund(ACME.id, "USD", balance), dst: await stack.fund(GLOBEX.id, "USD", "0") };
  }

  /** Debit entries on the source account (payments post one each; funding is a credit). */
  async function debits(accountId: string) {
    return (await acme.wallet.listEntries({ accountId, pageSize: 100 })).entries.filter((e) => e.direction === EntryDirection.DEBIT);
  }

  /** Acme's payments carrying `reference`. */
  async function paymentsWithReference(reference: string): Promise<Payment[]> {
    const out: Payment[] = [];
    let pageToken = "";
    do {
      const page = await acme.payments.listPayments({ pageSize: 100, pageToken });
      out.push(...page.payments.filter((p) => p.merchantReference === reference));
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    return out;
  }

  /** A Connect JSON call with fetch, as curl would make it. */
  async function connectJson(method: string, body: unknown, headers: Record<string, string>) {
    const res = await fetch(`${stack.gatewayUrl}/paygate.payments.v1.PaymentsService/${method}`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${ACME.apiKey}`, ...headers },
      body: JSON.stringify(body),
    });
    return { status: res.status, replayed: res.headers.get("idempotent-replayed"), json: (await res.json()) as Record<string, any> };
  }

  it("Connect JSON: the same key and body replay the identical response, marked replayed, with one payment and one debit", async () => {
    const { src, dst } = await accounts();
    const k = key();
    const reference = `ref-${k}`;
    const body = { source_account_id: src, destination_account_id: dst, amount: { currency: "USD", amount_minor: "2500" }, merchant_reference: reference };

    const first = await connectJson("CreatePayment", body, { "idempotency-key": k });
    expect(first.status).toBe(200);
    expect(first.replayed).toBeNull();
    expect(first.json.payment.status).toBe("PAYMENT_STATUS_CAPTURED");

    const second = await connectJson("CreatePayment", body, { "Idempotency-Key": k });
    expect(second.status).toBe(200);
    expect(second.replayed).toBe("true");
    expect(second.json).toEqual(first.json);

    expect(await paymentsWithReference(reference)).toHaveLength(1);
    expect((await debits(src)).map((e) => e.amount?.amountMinor)).toEqual([2500n]);
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 7500n, pending: 0n, available: 7500n });
    expect(await balanceOf(globex.wallet, dst)).toMatchObject({ posted: 2500n });

    // The same key with another body is refused, and moves nothing.
    const other = await connectJson("CreatePayment", { ...body, amount: { currency: "USD", amount_minor: "2501" } }, { "idempotency-key": k });
    expect(other.status).toBe(400);
    expect(other.json.code).toBe("invalid_argument");
    const reused = await failure(acme.payments.createPayment({ sourceAccountId: src, destinationAccountId: dst, amount: { currency: "USD", amountMinor: 2501n }, merchantReference: reference }, { headers: { "idempotency-key": k } }));
    expect(reused.code).toBe(Code.InvalidArgument);
    expect(reused.reason).toBe("IDEMPOTENCY_KEY_REUSED");
    expect(reused.field).toBe("idempotency-key");
    expect(await paymentsWithReference(reference)).toHaveLength(1);
    expect((await debits(src)).map((e) => e.amount?.amountMinor)).toEqual([2500n]);
  });

  it("10 concurrent duplicates with one key: exactly one effect; the others are replays or ABORTED IDEMPOTENCY_KEY_IN_USE", async () => {
    const { src, dst } = await accounts();
    const k = key();
    const reference = `ref-${k}`;
    const outcomes = await Promise.all(
      Array.from({ length: 10 }, async () => {
        let replayed: string | null = null;
        try {
          const { payment } = await acme.payments.createPayment(
            { sourceAccountId: src, destinationAccountId: dst, amount: { currency: "USD", amountMinor: 1000n }, merchantReference: reference },
            { headers: { "idempotency-key": k }, onHeader: (h) => (replayed = h.get("idempotent-replayed")) },
          );
          return { ok: true as const, payment: payment!, replayed };
        } catch (err) {
          return { ok: false as const, failure: await failure(Promise.reject(err)) };
        }
      }),
    );
    const ok = outcomes.flatMap((o) => (o.ok ? [o] : []));
    const refused = outcomes.flatMap((o) => (o.ok ? [] : [o.failure]));
    expect(ok.length).toBeGreaterThanOrEqual(1);
    // One original, every other success a replay of it.
    expect(new Set(ok.map((o) => o.payment.id)).size).toBe(1);
    expect(ok.filter((o) => o.replayed !== "true")).toHaveLength(1);
    for (const o of ok) expect(PaymentStatus[o.payment.status]).toBe("CAPTURED");
    for (const f of refused) expect({ code: f.code, reason: f.reason }).toEqual({ code: Code.Aborted, reason: "IDEMPOTENCY_KEY_IN_USE" });

    expect(await paymentsWithReference(reference)).toHaveLength(1);
    expect((await debits(src)).map((e) => e.amount?.amountMinor)).toEqual([1000n]);
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 9000n, pending: 0n, available: 9000n });

    // Once settled, a retry replays the one payment.
    let replayed: string | null = null;
    const { payment } = await acme.payments.createPayment(
      { sourceAccountId: src, destinationAccountId: dst, amount: { currency: "USD", amountMinor: 1000n }, merchantReference: reference },
      { headers: { "idempotency-key": k }, onHeader: (h) => (replayed = h.get("idempotent-replayed")) },
    );
    expect(replayed).toBe("true");
    expect(payment!.id).toBe(ok[0]!.payment.id);
  });

  it("gRPC metadata `idempotency-key` works the same (replay, mismatch), and the key is shared with Connect", async () => {
    const { src, dst } = await accounts();
    const k = key();
    const request = { sourceAccountId: src, destinationAccountId: dst, amount: { currency: "USD", amountMinor: 4200n }, merchantReference: `ref-${k}` };
    const seen: (string | null)[] = [];
    const call = (client: GatewayClients, req = request) => client.payments.createPayment(req, { headers: { "idempotency-key": k }, onHeader: (h) => seen.push(h.get("idempotent-replayed")) });

    const first = (await call(acmeGrpc)).payment!;
    const second = (await call(acmeGrpc)).payment!;
    const viaConnect = (await call(acme)).payment!;
    expect(PaymentStatus[first.status]).toBe("CAPTURED");
    expect(second).toEqual(first);
    expect(viaConnect).toEqual(first);
    expect(seen).toEqual([null, "true", "true"]);

    const mismatch = await failure(call(acmeGrpc, { ...request, destinationAccountId: await stack.fund(GLOBEX.id, "USD", "0") }));
    expect(mismatch.code).toBe(Code.InvalidArgument);
    expect(mismatch.reason).toBe("IDEMPOTENCY_KEY_REUSED");
    expect((await debits(src)).map((e) => e.amount?.amountMinor)).toEqual([4200n]);
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 5800n, pending: 0n, available: 5800n });
  });

  it("a payment cut off by the client's deadline keeps no answer under its key: a retry after it settled gets it CAPTURED, then replays that", async () => {
    const { src, dst } = await accounts();
    const k = key();
    const reference = `ref-${k}`;
    const body = { source_account_id: src, destination_account_id: dst, amount: { currency: "USD", amount_minor: "1500" }, merchant_reference: reference };
    // The wallet does not answer until the client's 300 ms deadline has passed.
    const held = stack.walletProxy!.arm("Reserve", "before");
    const cutOff = connectJson("CreatePayment", body, { "idempotency-key": k, "connect-timeout-ms": "300" });
    await held;
    expect((await cutOff).status).toBe(504);
    stack.walletProxy!.release();

    // The recovery sweep finishes it.
    const settled = await waitFor(async () => (await paymentsWithReference(reference)).find((p) => PaymentStatus[p.status] === "CAPTURED"), "the payment captured by the sweep");
    const retry = await connectJson("CreatePayment", body, { "idempotency-key": k });
    expect(retry.status).toBe(200);
    expect(retry.json.payment.status).toBe("PAYMENT_STATUS_CAPTURED");
    expect(retry.json.payment.id).toBe(settled.id);
    // That final answer is the one kept from now on.
    const again = await connectJson("CreatePayment", body, { "idempotency-key": k });
    expect(again.replayed).toBe("true");
    expect(again.json).toEqual(retry.json);
    expect((await debits(src)).map((e) => e.amount?.amountMinor)).toEqual([1500n]);
  });

  it("a payment paused by an upstream failure answers PENDING without keeping it: a retry resumes it to its end", async () => {
    const { src, dst } = await accounts("10.00");
    const k = key();
    const body = { source_account_id: src, destination_account_id: dst, amount: { currency: "USD", amount_minor: "2500" }, merchant_reference: `ref-${k}` };
    const held = stack.walletProxy!.arm("Reserve", "before");
    const paused = connectJson("CreatePayment", body, { "idempotency-key": k });
    await held;
    stack.walletProxy!.release(); // the wallet is "down": UNAVAILABLE
    const first = await paused;
    expect(first.status).toBe(200);
    expect(first.json.payment.status).toBe("PAYMENT_STATUS_PENDING");

    // Not enough money: the payment ends FAILED, and the retry says so, not PENDING.
    const retry = await waitFor(async () => {
      const r = await connectJson("CreatePayment", body, { "idempotency-key": k });
      return r.json.payment?.status === "PAYMENT_STATUS_FAILED" ? r : undefined;
    }, "the retry to report the payment FAILED");
    expect(retry.json.payment.id).toBe(first.json.payment.id);
    expect(retry.json.payment.failureReason).toBe("INSUFFICIENT_FUNDS");
    expect(await debits(src)).toEqual([]);
  });

  it("a failure is replayed too: INSUFFICIENT_FUNDS stays the same FAILED payment even after a top-up", async () => {
    const { src, dst } = await accounts("10.00");
    const k = key();
    const request = { sourceAccountId: src, destinationAccountId: dst, amount: { currency: "USD", amountMinor: 1500n }, merchantReference: `ref-${k}` };
    const first = (await acme.payments.createPayment(request, { headers: { "idempotency-key": k } })).payment!;
    expect(PaymentStatus[first.status]).toBe("FAILED");
    expect(first.failureReason).toBe("INSUFFICIENT_FUNDS");

    // Enough money now: a replay must still not pay.
    await stack.internalWallet.credit({ transferId: `topup:${src}`, accountId: src, amount: { currency: "USD", amountMinor: 10000n } });
    let replayed: string | null = null;
    const again = (await acme.payments.createPayment(request, { headers: { "idempotency-key": k }, onHeader: (h) => (replayed = h.get("idempotent-replayed")) })).payment!;
    expect(replayed).toBe("true");
    expect(again).toEqual(first);
    expect(await debits(src)).toEqual([]);
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 11000n, pending: 0n, available: 11000n });
    expect(await paymentsWithReference(`ref-${k}`)).toHaveLength(1);

    // A new key is a new payment, which now succeeds.
    const fresh = (await acme.payments.createPayment(request, { headers: { "idempotency-key": key() } })).payment!;
    expect(PaymentStatus[fresh.status]).toBe("CAPTURED");
    expect(fresh.id).not.toBe(first.id);
  });

  it.each([
    ["Connect over HTTP/1.1 (decoded by the gateway)", "connect"],
    ["gRPC (relayed by the gateway)", "grpc"],
  ] as const)("a refusal is replayed too, marked replayed: a refund refused before capture stays refused after it (%s)", async (_name, protocol) => {
    const client = protocol === "grpc" ? acmeGrpc : acme;
    const { src, dst } = await accounts();
    const p = (await client.payments.createPayment({ sourceAccountId: src, destinationAccountId: dst, amount: { currency: "USD", amountMinor: 3000n }, captureMethod: CaptureMethod.MANUAL })).payment!;
    const k = key();
    const refund = () => connectError(client.payments.refundPayment({ paymentId: p.id, amount: { currency: "USD", amountMinor: 1000n } }, { headers: { "idempotency-key": k } }));
    const refused = await refund();
    expect([Code[refused.code], refused.findDetails(ErrorDetailSchema)[0]?.reason]).toEqual(["FailedPrecondition", "INVALID_PAYMENT_STATE"]);
    expect(refused.metadata.get("idempotent-replayed")).toBeNull();

    // Captured now, so the same refund would succeed if it ran again; a retry must not run it.
    await client.payments.capturePayment({ paymentId: p.id });
    const again = await refund();
    expect(again.code).toBe(refused.code);
    expect(again.rawMessage).toBe(refused.rawMessage);
    expect(again.findDetails(ErrorDetailSchema)).toEqual(refused.findDetails(ErrorDetailSchema));
    expect(again.metadata.get("idempotent-replayed")).toBe("true");
    const now = (await client.payments.getPayment({ paymentId: p.id })).payment!;
    expect([PaymentStatus[now.status], now.refundedAmount?.amountMinor ?? 0n]).toEqual(["CAPTURED", 0n]);
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 7000n, pending: 0n, available: 7000n });
  });

  it("a refund under an Idempotency-Key is made once however often it is retried", async () => {
    const { src, dst } = await accounts();
    const p = (await acme.payments.createPayment({ sourceAccountId: src, destinationAccountId: dst, amount: { currency: "USD", amountMinor: 6000n } })).payment!;
    const k = key();
    const refunds = [];
    for (let i = 0; i < 3; i++) refunds.push(await acme.payments.refundPayment({ paymentId: p.id, amount: { currency: "USD", amountMinor: 1000n } }, { headers: { "idempotency-key": k } }));
    expect(new Set(refunds.map((r) => r.refund!.id)).size).toBe(1);
    const now = (await acme.payments.getPayment({ paymentId: p.id })).payment!;
    expect(PaymentStatus[now.status]).toBe("PARTIALLY_REFUNDED");
    expect(now.refundedAmount?.amountMinor).toBe(1000n);
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 5000n, pending: 0n, available: 5000n });
    expect(await balanceOf(globex.wallet, dst)).toMatchObject({ posted: 5000n });
  });

  it("keys belong to one merchant: globex may use acme's key for its own payment", async () => {
    const a = await accounts();
    const gSrc = await stack.fund(GLOBEX.id, "USD", "100.00");
    const gDst = await stack.fund(ACME.id, "USD", "0");
    const k = key();
    const pa = (await acme.payments.createPayment({ sourceAccountId: a.src, destinationAccountId: a.dst, amount: { currency: "USD", amountMinor: 100n } }, { headers: { "idempotency-key": k } })).payment!;
    const pg = (await globex.payments.createPayment({ sourceAccountId: gSrc, destinationAccountId: gDst, amount: { currency: "USD", amountMinor: 200n } }, { headers: { "idempotency-key": k } })).payment!;
    expect(pg.id).not.toBe(pa.id);
    expect(pg.merchantId).toBe(GLOBEX.id);
    expect(PaymentStatus[pg.status]).toBe("CAPTURED");
    expect(await balanceOf(globex.wallet, gSrc)).toMatchObject({ posted: 9800n });
  });

  it("REST POST /payments is idempotent by its payment id: a retry returns the same payment, marked replayed; another body is refused", async () => {
    const { src, dst } = await accounts();
    const id = `order-${randomUUID()}`;
    const post = (amount: unknown) =>
      fetch(`${stack.gatewayUrl}/payments`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${ACME.apiKey}` },
        body: JSON.stringify({ id, currency: "USD", amount, source_account: src, destination_account: dst }),
      }).then(async (r) => ({ status: r.status, replayed: r.headers.get("idempotent-replayed"), json: (await r.json()) as Record<string, any> }));
    const first = await post(12.5);
    expect(first.status).toBe(200);
    expect(first.json).toMatchObject({ status: "CAPTURED", amount: "12.50", reference: id });
    expect(first.replayed).toBeNull();
    const second = await post("12.50");
    expect(second).toEqual({ ...first, replayed: "true" });
    const other = await post(12.51);
    expect(other.status).toBe(400);
    expect(other.json.error).toMatchObject({ code: "invalid_argument", reason: "IDEMPOTENCY_KEY_REUSED" });
    expect((await debits(src)).map((e) => e.amount?.amountMinor)).toEqual([minor("12.50", "USD")]);
  });

  it("REST POST /payments replays a refusal under its payment id too, marked replayed", async () => {
    const { src } = await accounts();
    const body = JSON.stringify({ id: `order-${randomUUID()}`, currency: "USD", amount: "5.00", source_account: src, destination_account: `missing-${randomUUID()}` });
    const post = () =>
      fetch(`${stack.gatewayUrl}/payments`, { method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${ACME.apiKey}` }, body }).then(async (r) => ({
        status: r.status,
        replayed: r.headers.get("idempotent-replayed"),
        json: (await r.json()) as Record<string, any>,
      }));
    const first = await post();
    expect(first.status).toBe(404);
    expect(first.json.error).toMatchObject({ code: "not_found", reason: "ACCOUNT_NOT_FOUND", field: "destination_account_id" });
    expect(first.replayed).toBeNull();
    expect(await post()).toEqual({ ...first, replayed: "true" });
    expect(await debits(src)).toEqual([]);
  });
});

describe.each(storageBackends().filter((b) => b.url !== undefined))("idempotency keys as the payments service keeps them ($name)", (backend) => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ backend, name: "idemretain", env: { payments: { PAYMENTS_IDEMPOTENCY_RETENTION_HOURS: "36" } } });
  });
  afterAll(async () => {
    await stack?.stop();
  });

  it("a key is kept for PAYMENTS_IDEMPOTENCY_RETENTION_HOURS, and fewer than 24 is refused at start-up", async () => {
    const acme = gatewayClients(stack.gatewayUrl, ACME.apiKey);
    const src = await stack.fund(ACME.id, "USD", "10.00");
    const dst = await stack.fund(GLOBEX.id, "USD", "0");
    const k = key();
    await acme.payments.createPayment({ sourceAccountId: src, destinationAccountId: dst, amount: { currency: "USD", amountMinor: 100n } }, { headers: { "idempotency-key": k } });
    const client = new pg.Client({ connectionString: stack.databaseUrl });
    await client.connect();
    try {
      const { rows } = await client.query<{ kept: string }>("SELECT extract(epoch FROM expires_at - created_at)::int8::text AS kept FROM payments.idempotency_keys WHERE key = $1", [k]);
      expect(rows).toEqual([{ kept: String(36 * 3600) }]);
    } finally {
      await client.end();
    }
    expect(() => loadConfig(paymentsEnv, { PAYMENTS_IDEMPOTENCY_RETENTION_HOURS: "23" })).toThrow(/PAYMENTS_IDEMPOTENCY_RETENTION_HOURS: .*24/);
  });
});
