// End to end through the api-gateway (Connect JSON over HTTP/1.1, as curl speaks it): money
// moving between merchants' accounts in one currency and across currencies (0- and
// 3-decimal ones included), risk declines and insufficient funds with no ledger effect,
// manual capture (partial), cancel, refunds (partial, then the rest) at the original rate,
// and what is refused once a payment is final. Every test ends with the wallet's
// reconciliation check. Each test opens fresh accounts (through the wallet itself, as test
// fixtures) so balances are exact and risk velocity rules never see another test's payments.
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { Code } from "@connectrpc/connect";
import { QuoteStatus } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { CaptureMethod, PaymentStatus, type Payment } from "../../services/gen/paygate/payments/v1/payments_pb.js";
import { EntryDirection } from "../../services/gen/paygate/wallet/v1/wallet_pb.js";
import { storageBackends } from "../support/postgres.js";
import { ACME, balanceOf, expectedConversion, failure, gatewayClients, GLOBEX, minor, startStack, type GatewayClients, type Stack } from "../support/stack.js";

vi.setConfig({ testTimeout: 60_000, hookTimeout: 180_000 });

const money = (currency: string, value: string) => ({ currency, amountMinor: minor(value, currency) });

describe.each(storageBackends())("payments through the gateway ($name)", (backend) => {
  let stack: Stack;
  let acme: GatewayClients;
  let globex: GatewayClients;

  beforeAll(async () => {
    stack = await startStack({ backend, name: "payments" });
    acme = gatewayClients(stack.gatewayUrl, ACME.apiKey);
    globex = gatewayClients(stack.gatewayUrl, GLOBEX.apiKey);
  });
  afterAll(async () => {
    await stack?.stop();
  });
  afterEach(async () => {
    expect(await stack.reconcile(), "the ledger reconciles").toEqual([]);
  });

  /** An acme account holding `balance`, and an empty globex account in `to`. */
  async function accounts(from: string, balance: string, to: string) {
    return { src: await stack.fund(ACME.id, from, balance), dst: await stack.fund(GLOBEX.id, to, "0") };
  }

  async function entriesOf(clients: GatewayClients, accountId: string) {
    return (await clients.wallet.listEntries({ accountId, pageSize: 100 })).entries;
  }

  async function pay(src: string, dst: string, amount: { currency: string; amountMinor: bigint }, extra: { manual?: boolean; settlementCurrency?: string; reference?: string } = {}): Promise<Payment> {
    const { payment } = await acme.payments.createPayment({
      sourceAccountId: src,
      destinationAccountId: dst,
      amount,
      captureMethod: extra.manual ? CaptureMethod.MANUAL : CaptureMethod.AUTOMATIC,
      settlementCurrency: extra.settlementCurrency ?? "",
      merchantReference: extra.reference ?? "",
    });
    return payment!;
  }

  it("a same-currency payment (USD -> USD) is CAPTURED and moves exactly its amount", async () => {
    const { src, dst } = await accounts("USD", "500.00", "USD");
    const p = await pay(src, dst, money("USD", "123.45"), { reference: "order-1" });

    expect(PaymentStatus[p.status]).toBe("CAPTURED");
    expect(p.id).toMatch(/^pay_/);
    expect(p.merchantId).toBe(ACME.id);
    expect(p.merchantReference).toBe("order-1");
    expect(p.amount).toMatchObject({ currency: "USD", amountMinor: 12345n });
    expect(p.capturedAmount).toMatchObject({ currency: "USD", amountMinor: 12345n });
    expect(p.settlementAmount).toMatchObject({ currency: "USD", amountMinor: 12345n });
    expect(p.refundedAmount?.amountMinor).toBe(0n);
    expect(p.fxRate).toBe("");
    expect(p.fxQuoteId).toBe("");
    expect(p.riskDecisionId).not.toBe("");
    expect(p.failureReason).toBe("");

    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 50000n - 12345n, pending: 0n, available: 50000n - 12345n });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: 12345n, pending: 0n, available: 12345n });

    const srcEntries = await entriesOf(acme, src);
    const debits = srcEntries.filter((e) => e.direction === EntryDirection.DEBIT);
    expect(debits).toHaveLength(1);
    expect(debits[0]).toMatchObject({ transferId: `${p.id}:capture`, amount: { currency: "USD", amountMinor: 12345n } });
    const credits = (await entriesOf(globex, dst)).filter((e) => e.direction === EntryDirection.CREDIT);
    expect(credits.map((e) => [e.transferId, e.amount?.amountMinor])).toEqual([[`${p.id}:capture`, 12345n]]);

    const { payment: again } = await acme.payments.getPayment({ paymentId: p.id });
    expect(PaymentStatus[again!.status]).toBe("CAPTURED");
    expect(again!.capturedAmount?.amountMinor).toBe(12345n);
    const listed = await acme.payments.listPayments({ status: PaymentStatus.CAPTURED, pageSize: 100 });
    expect(listed.payments.map((x) => x.id)).toContain(p.id);
  });

  // Source amount, destination currency: 2 -> 2, 2 -> 0 (JPY), 2 -> 3 (KWD), 3 -> 2 decimals.
  it.each([
    { from: "USD", to: "IDR", balance: "1000.00", amount: "123.45", explicit: false },
    { from: "EUR", to: "JPY", balance: "1000.00", amount: "987.65", explicit: true },
    { from: "USD", to: "KWD", balance: "1000.00", amount: "250.01", explicit: false },
    { from: "KWD", to: "EUR", balance: "100.000", amount: "12.345", explicit: true },
  ])("a cross-currency payment $from -> $to settles at round_half_even(amount × quoted rate)", async ({ from, to, balance, amount, explicit }) => {
    const { src, dst } = await accounts(from, balance, to);
    const amountMinor = minor(amount, from);
    const p = await pay(src, dst, { currency: from, amountMinor }, explicit ? { settlementCurrency: to } : {});

    expect(PaymentStatus[p.status]).toBe("CAPTURED");
    expect(p.fxRate).toMatch(/^\d+(\.\d+)?$/);
    expect(p.fxQuoteId).toMatch(/^qt_/);
    const settlement = expectedConversion(amountMinor, from, p.fxRate, to);
    expect(settlement).toBeGreaterThan(0n);
    expect(p.settlementAmount).toMatchObject({ currency: to, amountMinor: settlement });

    // The quote that locked the rate, through the gateway's FxService: used, by this payment.
    const { quote } = await acme.fx.getQuote({ quoteId: p.fxQuoteId });
    expect(QuoteStatus[quote!.status]).toBe("USED");
    expect(quote!.usedReference).toBe(p.id);
    expect(quote!.rate).toBe(p.fxRate);
    expect(quote!.amount).toMatchObject({ currency: from, amountMinor });
    expect(quote!.converted).toMatchObject({ currency: to, amountMinor: settlement });
    expect(quote!.spreadBps).toBeGreaterThan(0);

    // The payer paid exactly the amount, the payee received exactly the settlement.
    const start = minor(balance, from);
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: start - amountMinor, pending: 0n, available: start - amountMinor });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: settlement, pending: 0n, available: settlement });
  });

  it("a risk decline (amount over the decline threshold) ends FAILED RISK_DECLINED with zero ledger effect", async () => {
    // Shipped rules: > 1000.00 USD +20, > 10000.00 USD +60, new account +10 -> 90 >= 80.
    const { src, dst } = await accounts("USD", "20000.00", "USD");
    const before = await balanceOf(acme.wallet, src);
    const p = await pay(src, dst, money("USD", "10000.01"));

    expect(PaymentStatus[p.status]).toBe("FAILED");
    expect(p.failureReason).toBe("RISK_DECLINED");
    expect(p.failureMessage).toContain("AMOUNT_OVER_THRESHOLD");
    expect(p.riskScore).toBeGreaterThanOrEqual(80);
    expect(p.riskDecisionId).toMatch(/^rd_/);
    expect(p.capturedAmount?.amountMinor).toBe(0n);

    expect(await balanceOf(acme.wallet, src)).toEqual(before);
    expect(before).toEqual({ posted: 2000000n, pending: 0n, available: 2000000n });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: 0n, pending: 0n, available: 0n });
    // Only the funding credit: no hold was placed, nothing posted.
    expect((await entriesOf(acme, src)).map((e) => e.transferId)).toEqual([`fund:${src}`]);
    expect(await entriesOf(globex, dst)).toEqual([]);
    const failed = await acme.payments.listPayments({ status: PaymentStatus.FAILED, pageSize: 100 });
    expect(failed.payments.find((x) => x.id === p.id)?.failureReason).toBe("RISK_DECLINED");
  });

  it("insufficient funds ends FAILED INSUFFICIENT_FUNDS with zero ledger effect", async () => {
    const { src, dst } = await accounts("USD", "50.00", "USD");
    const p = await pay(src, dst, money("USD", "50.01"));

    expect(PaymentStatus[p.status]).toBe("FAILED");
    expect(p.failureReason).toBe("INSUFFICIENT_FUNDS");
    expect(p.capturedAmount?.amountMinor).toBe(0n);
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 5000n, pending: 0n, available: 5000n });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: 0n, pending: 0n, available: 0n });
    expect((await entriesOf(acme, src)).map((e) => e.transferId)).toEqual([`fund:${src}`]);
    expect(await entriesOf(globex, dst)).toEqual([]);

    // The whole balance still goes through afterwards.
    const all = await pay(src, dst, money("USD", "50.00"));
    expect(PaymentStatus[all.status]).toBe("CAPTURED");
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 0n, pending: 0n, available: 0n });
  });

  it("insufficient funds across currencies also has no effect (the quote is used, no money moves)", async () => {
    const { src, dst } = await accounts("EUR", "10.00", "JPY");
    const p = await pay(src, dst, money("EUR", "10.01"));
    expect(PaymentStatus[p.status]).toBe("FAILED");
    expect(p.failureReason).toBe("INSUFFICIENT_FUNDS");
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 1000n, pending: 0n, available: 1000n });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: 0n, pending: 0n, available: 0n });
    expect(await entriesOf(globex, dst)).toEqual([]);
  });

  it("manual capture: AUTHORIZED with a hold, a partial capture posts part and releases the rest", async () => {
    const { src, dst } = await accounts("USD", "1000.00", "USD");
    const p = await pay(src, dst, money("USD", "300.00"), { manual: true });
    expect(PaymentStatus[p.status]).toBe("AUTHORIZED");
    expect(p.captureMethod).toBe(CaptureMethod.MANUAL);
    expect(p.capturedAmount?.amountMinor).toBe(0n);
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 100000n, pending: 30000n, available: 70000n });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: 0n, pending: 0n, available: 0n });

    // More than authorized is refused and changes nothing.
    const tooMuch = await failure(acme.payments.capturePayment({ paymentId: p.id, amount: money("USD", "300.01") }));
    expect(tooMuch.code).toBe(Code.FailedPrecondition);
    expect(tooMuch.reason).toBe("CAPTURE_EXCEEDS_AUTHORIZED");
    expect(PaymentStatus[(await acme.payments.getPayment({ paymentId: p.id })).payment!.status]).toBe("AUTHORIZED");
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 100000n, pending: 30000n, available: 70000n });

    const { payment: captured } = await acme.payments.capturePayment({ paymentId: p.id, amount: money("USD", "120.00") });
    expect(PaymentStatus[captured!.status]).toBe("CAPTURED");
    expect(captured!.capturedAmount?.amountMinor).toBe(12000n);
    expect(captured!.capturedAmount!.amountMinor).toBeLessThan(captured!.amount!.amountMinor);
    // 120.00 posted, the other 180.00 released.
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 88000n, pending: 0n, available: 88000n });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: 12000n, pending: 0n, available: 12000n });

    // Refunds are capped by what was captured, not by what was authorized.
    const over = await failure(acme.payments.refundPayment({ paymentId: p.id, amount: money("USD", "120.01") }));
    expect(over.code).toBe(Code.FailedPrecondition);
    expect(over.reason).toBe("REFUND_EXCEEDS_CAPTURED");
    expect(over.metadata.refundable_minor).toBe("12000");

    // Capturing or canceling again is refused.
    for (const attempt of [() => acme.payments.capturePayment({ paymentId: p.id }), () => acme.payments.cancelPayment({ paymentId: p.id })]) {
      expect((await failure(attempt())).code).toBe(Code.FailedPrecondition);
    }
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 88000n, pending: 0n, available: 88000n });
  });

  it("cancel: an authorized payment becomes CANCELED and its hold is released; nothing else is allowed after", async () => {
    const { src, dst } = await accounts("USD", "1000.00", "USD");
    const p = await pay(src, dst, money("USD", "200.00"), { manual: true });
    expect(PaymentStatus[p.status]).toBe("AUTHORIZED");
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 100000n, pending: 20000n, available: 80000n });

    const { payment: canceled } = await acme.payments.cancelPayment({ paymentId: p.id, reason: "customer changed their mind" });
    expect(PaymentStatus[canceled!.status]).toBe("CANCELED");
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 100000n, pending: 0n, available: 100000n });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: 0n, pending: 0n, available: 0n });
    expect((await entriesOf(acme, src)).map((e) => e.transferId)).toEqual([`fund:${src}`]);

    for (const attempt of [
      () => acme.payments.capturePayment({ paymentId: p.id }),
      () => acme.payments.cancelPayment({ paymentId: p.id }),
      () => acme.payments.refundPayment({ paymentId: p.id }),
    ]) {
      const f = await failure(attempt());
      expect(f.code).toBe(Code.FailedPrecondition);
      expect(f.reason).toBe("INVALID_PAYMENT_STATE");
    }
    expect(PaymentStatus[(await acme.payments.getPayment({ paymentId: p.id })).payment!.status]).toBe("CANCELED");
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 100000n, pending: 0n, available: 100000n });
  });

  it("refunds (same currency): partial then the rest -> PARTIALLY_REFUNDED then REFUNDED, balances back exactly", async () => {
    const { src, dst } = await accounts("USD", "500.00", "USD");
    const p = await pay(src, dst, money("USD", "100.00"));
    expect(PaymentStatus[p.status]).toBe("CAPTURED");

    const first = await acme.payments.refundPayment({ paymentId: p.id, amount: money("USD", "30.00"), reason: "one item returned" });
    expect(PaymentStatus[first.payment!.status]).toBe("PARTIALLY_REFUNDED");
    expect(first.payment!.refundedAmount?.amountMinor).toBe(3000n);
    expect(first.refund).toMatchObject({ paymentId: p.id, amount: { currency: "USD", amountMinor: 3000n }, settlementAmount: { currency: "USD", amountMinor: 3000n } });
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 43000n, pending: 0n, available: 43000n });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: 7000n, pending: 0n, available: 7000n });

    const over = await failure(acme.payments.refundPayment({ paymentId: p.id, amount: money("USD", "70.01") }));
    expect(over.code).toBe(Code.FailedPrecondition);
    expect(over.reason).toBe("REFUND_EXCEEDS_CAPTURED");

    const rest = await acme.payments.refundPayment({ paymentId: p.id });
    expect(PaymentStatus[rest.payment!.status]).toBe("REFUNDED");
    expect(rest.refund?.amount?.amountMinor).toBe(7000n);
    expect(rest.payment!.refundedAmount?.amountMinor).toBe(10000n);
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 50000n, pending: 0n, available: 50000n });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: 0n, pending: 0n, available: 0n });

    // REFUNDED is final.
    for (const attempt of [
      () => acme.payments.refundPayment({ paymentId: p.id, amount: money("USD", "0.01") }),
      () => acme.payments.capturePayment({ paymentId: p.id }),
      () => acme.payments.cancelPayment({ paymentId: p.id }),
    ]) {
      expect((await failure(attempt())).code).toBe(Code.FailedPrecondition);
    }
  });

  // Refunds use the payment's original rate: a partial refund takes round_half_even(part ×
  // rate) back from the payee; the last one takes exactly what is left, so in total the payer
  // gets back exactly what was paid and the payee gives back exactly what it received.
  it.each([
    { from: "USD", to: "IDR", amount: "100.00", part: "33.33" },
    { from: "EUR", to: "JPY", amount: "10.01", part: "3.37" },
    { from: "USD", to: "KWD", amount: "77.77", part: "0.01" },
  ])("refunds across currencies ($from -> $to) at the original rate return exactly what moved", async ({ from, to, amount, part }) => {
    const { src, dst } = await accounts(from, "500.00", to);
    const amountMinor = minor(amount, from);
    const partMinor = minor(part, from);
    const p = await pay(src, dst, { currency: from, amountMinor });
    expect(PaymentStatus[p.status]).toBe("CAPTURED");
    const settled = p.settlementAmount!.amountMinor;
    expect(await balanceOf(globex.wallet, dst)).toMatchObject({ posted: settled });

    const first = await acme.payments.refundPayment({ paymentId: p.id, amount: { currency: from, amountMinor: partMinor } });
    expect(PaymentStatus[first.payment!.status]).toBe("PARTIALLY_REFUNDED");
    const partSettlement = expectedConversion(partMinor, from, p.fxRate, to);
    expect(first.refund?.amount).toMatchObject({ currency: from, amountMinor: partMinor });
    expect(first.refund?.settlementAmount).toMatchObject({ currency: to, amountMinor: partSettlement });
    expect(await balanceOf(acme.wallet, src)).toMatchObject({ posted: minor("500.00", from) - amountMinor + partMinor });
    expect(await balanceOf(globex.wallet, dst)).toMatchObject({ posted: settled - partSettlement });

    const rest = await acme.payments.refundPayment({ paymentId: p.id });
    expect(PaymentStatus[rest.payment!.status]).toBe("REFUNDED");
    expect(rest.refund?.amount?.amountMinor).toBe(amountMinor - partMinor);
    expect(rest.refund?.settlementAmount?.amountMinor).toBe(settled - partSettlement);
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: minor("500.00", from), pending: 0n, available: minor("500.00", from) });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: 0n, pending: 0n, available: 0n });
  });

  it("a partial capture across currencies pays the captured part at the hold's rate; a full refund returns exactly that", async () => {
    const { src, dst } = await accounts("USD", "500.00", "JPY");
    const p = await pay(src, dst, money("USD", "100.00"), { manual: true });
    expect(PaymentStatus[p.status]).toBe("AUTHORIZED");
    expect(p.settlementAmount?.amountMinor).toBe(expectedConversion(10000n, "USD", p.fxRate, "JPY"));
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 50000n, pending: 10000n, available: 40000n });

    const { payment: captured } = await acme.payments.capturePayment({ paymentId: p.id, amount: money("USD", "40.01") });
    expect(PaymentStatus[captured!.status]).toBe("CAPTURED");
    expect(captured!.capturedAmount?.amountMinor).toBe(4001n);
    const received = expectedConversion(4001n, "USD", p.fxRate, "JPY");
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 50000n - 4001n, pending: 0n, available: 50000n - 4001n });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: received, pending: 0n, available: received });

    const refund = await acme.payments.refundPayment({ paymentId: p.id });
    expect(PaymentStatus[refund.payment!.status]).toBe("REFUNDED");
    expect(refund.refund?.amount?.amountMinor).toBe(4001n);
    expect(refund.refund?.settlementAmount?.amountMinor).toBe(received);
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 50000n, pending: 0n, available: 50000n });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: 0n, pending: 0n, available: 0n });
  });

  it("concurrent refunds never return more than was captured, and every refund that succeeded moved money once", async () => {
    const { src, dst } = await accounts("USD", "100.00", "USD");
    const p = await pay(src, dst, money("USD", "30.00"));
    const outcomes = await Promise.allSettled(Array.from({ length: 6 }, () => acme.payments.refundPayment({ paymentId: p.id, amount: money("USD", "10.00") })));
    const refunds = outcomes.flatMap((o) => (o.status === "fulfilled" ? [o.value.refund!] : []));
    for (const o of outcomes) {
      if (o.status === "rejected") expect([Code.Aborted, Code.FailedPrecondition, Code.AlreadyExists]).toContain((await failure(Promise.reject(o.reason))).code);
    }
    expect(refunds.length).toBeGreaterThanOrEqual(1);
    expect(new Set(refunds.map((r) => r.id)).size).toBe(refunds.length);
    const now = (await acme.payments.getPayment({ paymentId: p.id })).payment!;
    const refunded = BigInt(refunds.length) * 1000n;
    expect(now.refundedAmount?.amountMinor).toBe(refunded);
    expect(refunded).toBeLessThanOrEqual(3000n);
    expect(PaymentStatus[now.status]).toBe(refunded === 3000n ? "REFUNDED" : "PARTIALLY_REFUNDED");
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 7000n + refunded, pending: 0n, available: 7000n + refunded });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: 3000n - refunded, pending: 0n, available: 3000n - refunded });
  });

  it("a capture racing a cancel: exactly one wins, and the payment's state matches the ledger", async () => {
    for (let round = 0; round < 3; round++) {
      const { src, dst } = await accounts("USD", "100.00", "USD");
      const p = await pay(src, dst, money("USD", "25.00"), { manual: true });
      const [capture, cancel] = await Promise.allSettled([acme.payments.capturePayment({ paymentId: p.id }), acme.payments.cancelPayment({ paymentId: p.id })]);
      const final = (await acme.payments.getPayment({ paymentId: p.id })).payment!;
      const status = PaymentStatus[final.status];
      expect(["CAPTURED", "CANCELED"]).toContain(status);
      if (status === "CAPTURED") {
        expect(capture.status).toBe("fulfilled");
        expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 7500n, pending: 0n, available: 7500n });
        expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: 2500n, pending: 0n, available: 2500n });
      } else {
        expect(cancel.status === "fulfilled" || (capture.status === "fulfilled" && PaymentStatus[capture.value.payment!.status] === "CANCELED")).toBe(true);
        expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 10000n, pending: 0n, available: 10000n });
        expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: 0n, pending: 0n, available: 0n });
      }
    }
  });

  it("the demo accounts pay too: acme_usd -> globex_idr moves the amount and the quoted settlement", async () => {
    const srcBefore = await balanceOf(acme.wallet, "acme_usd");
    const dstBefore = await balanceOf(globex.wallet, "globex_idr");
    const p = await pay("acme_usd", "globex_idr", money("USD", "12.34"));
    expect(PaymentStatus[p.status]).toBe("CAPTURED");
    const settlement = expectedConversion(1234n, "USD", p.fxRate, "IDR");
    expect(p.settlementAmount?.amountMinor).toBe(settlement);
    expect((await balanceOf(acme.wallet, "acme_usd")).posted).toBe(srcBefore.posted - 1234n);
    expect((await balanceOf(globex.wallet, "globex_idr")).posted).toBe(dstBefore.posted + settlement);
  });
});
