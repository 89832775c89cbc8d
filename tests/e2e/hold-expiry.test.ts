// Hold expiry end to end: the wallet runs with a 1 s hold TTL swept every 100 ms, so a
// manual-capture payment's authorization lapses while it waits. The money becomes available
// again by itself; capturing afterwards ends the payment CANCELED with AUTHORIZATION_EXPIRED
// and moves nothing. Every test ends with the wallet's reconciliation check.
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { Code } from "@connectrpc/connect";
import { CaptureMethod, PaymentStatus, type Payment } from "../../services/gen/paygate/payments/v1/payments_pb.js";
import { HoldStatus } from "../../services/gen/paygate/wallet/v1/wallet_pb.js";
import { storageBackends } from "../support/postgres.js";
import { ACME, balanceOf, failure, gatewayClients, GLOBEX, minor, startStack, waitFor, type GatewayClients, type Stack } from "../support/stack.js";

vi.setConfig({ testTimeout: 60_000, hookTimeout: 180_000 });

describe.each(storageBackends())("hold expiry through the gateway ($name)", (backend) => {
  let stack: Stack;
  let acme: GatewayClients;
  let globex: GatewayClients;

  beforeAll(async () => {
    stack = await startStack({ backend, name: "hold_expiry", env: { wallet: { WALLET_HOLD_TTL_SECONDS: "1", WALLET_HOLD_SWEEP_MS: "100" } } });
    acme = gatewayClients(stack.gatewayUrl, ACME.apiKey);
    globex = gatewayClients(stack.gatewayUrl, GLOBEX.apiKey);
  });
  afterAll(async () => {
    await stack?.stop();
  });
  afterEach(async () => {
    expect(await stack.reconcile(), "the ledger reconciles").toEqual([]);
  });

  /** A manual-capture payment of `amount` from a fresh acme account holding `balance`, authorized. */
  async function authorized(currency: string, balance: string, amount: string, to = currency) {
    const src = await stack.fund(ACME.id, currency, balance);
    const dst = await stack.fund(GLOBEX.id, to, "0");
    const p = (await acme.payments.createPayment({ sourceAccountId: src, destinationAccountId: dst, amount: { currency, amountMinor: minor(amount, currency) }, captureMethod: CaptureMethod.MANUAL }))
      .payment!;
    expect(PaymentStatus[p.status]).toBe("AUTHORIZED");
    return { src, dst, p };
  }

  /** Waits until the sweeper has expired the payment's hold: nothing pending on `src` any more. */
  async function expired(src: string, p: Payment) {
    await waitFor(async () => (await balanceOf(acme.wallet, src)).pending === 0n, "the hold to expire", 20_000, 100);
    const { hold } = await stack.internalWallet.getHold({ holdId: p.id });
    expect(HoldStatus[hold!.status]).toBe("EXPIRED");
  }

  it("the hold expires by itself: available balance restored; CapturePayment then ends CANCELED AUTHORIZATION_EXPIRED", async () => {
    const { src, dst, p } = await authorized("USD", "100.00", "60.00");
    // Right after authorization the money is held (unless the machine was slow enough for it to expire already).
    const held = await balanceOf(acme.wallet, src);
    expect([6000n, 0n]).toContain(held.pending);

    await expired(src, p);
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 10000n, pending: 0n, available: 10000n });
    // Payments is not told: the payment is still AUTHORIZED until someone acts on it.
    expect(PaymentStatus[(await acme.payments.getPayment({ paymentId: p.id })).payment!.status]).toBe("AUTHORIZED");

    const { payment } = await acme.payments.capturePayment({ paymentId: p.id });
    expect(PaymentStatus[payment!.status]).toBe("CANCELED");
    expect(payment!.failureReason).toBe("AUTHORIZATION_EXPIRED");
    expect(payment!.capturedAmount?.amountMinor).toBe(0n);
    expect((await acme.payments.getPayment({ paymentId: p.id })).payment!.failureReason).toBe("AUTHORIZATION_EXPIRED");

    // Nothing moved; the payment is final.
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 10000n, pending: 0n, available: 10000n });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: 0n, pending: 0n, available: 0n });
    expect((await acme.wallet.listEntries({ accountId: src })).entries.map((e) => e.transferId)).toEqual([`fund:${src}`]);
    for (const attempt of [() => acme.payments.capturePayment({ paymentId: p.id }), () => acme.payments.cancelPayment({ paymentId: p.id })]) {
      expect((await failure(attempt())).code).toBe(Code.FailedPrecondition);
    }

    // The released money is spendable: the whole balance goes through.
    const all = (await acme.payments.createPayment({ sourceAccountId: src, destinationAccountId: dst, amount: { currency: "USD", amountMinor: 10000n } })).payment!;
    expect(PaymentStatus[all.status]).toBe("CAPTURED");
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 0n, pending: 0n, available: 0n });
  });

  it("a partial capture after expiry also ends CANCELED AUTHORIZATION_EXPIRED (cross-currency, quote used, nothing moves)", async () => {
    const { src, dst, p } = await authorized("EUR", "50.00", "40.00", "JPY");
    expect(p.fxQuoteId).toMatch(/^qt_/);
    await expired(src, p);
    const { payment } = await acme.payments.capturePayment({ paymentId: p.id, amount: { currency: "EUR", amountMinor: 1000n } });
    expect(PaymentStatus[payment!.status]).toBe("CANCELED");
    expect(payment!.failureReason).toBe("AUTHORIZATION_EXPIRED");
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 5000n, pending: 0n, available: 5000n });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: 0n, pending: 0n, available: 0n });
  });

  it("CancelPayment after expiry finishes what expiry began: CANCELED, nothing moves", async () => {
    const { src, p } = await authorized("KWD", "10.000", "1.234");
    await expired(src, p);
    const { payment } = await acme.payments.cancelPayment({ paymentId: p.id, reason: "too late" });
    expect(PaymentStatus[payment!.status]).toBe("CANCELED");
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 10000n, pending: 0n, available: 10000n });
  });
});
