// Crashes around the wallet's reserve and capture. Payments runs as its own PROCESS (node
// --import tsx services/payments/main.ts) on ports picked in advance; fx, risk, wallet and
// the gateway run in this process. Payments reaches the wallet through a fault-injecting
// proxy (see tests/support/stack.ts) that holds one chosen wallet call; while it is held the
// test SIGKILLs the payments process, so the saga dies at a known point:
//   - automatic capture (one wallet Reserve that places and captures the hold): before the
//     wallet saw it (nothing moved), or after it committed (money moved, payments never
//     recorded it);
//   - manual capture, between reserve and capture: CapturePayment killed before the wallet's
//     Capture ran (hold placed, not captured), or after it posted (payments never recorded it).
// Payments is then started again on the same database. The payment must end CAPTURED with
// exactly one debit, the hold resolved once, and the ledger reconciling: no money created or
// lost. A client retrying the original request with its Idempotency-Key must get that same
// payment (and, with the recovery sweep off, the retry itself finishes it).
//
// Databases: on PostgreSQL the child uses the stack's database (schema "payments"); on PGlite
// it uses a temporary folder of its own (DATA_DIR), which survives the kill.
import { randomUUID } from "node:crypto";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { Code, ConnectError } from "@connectrpc/connect";
import { CaptureMethod, PaymentStatus, type Payment } from "../../services/gen/paygate/payments/v1/payments_pb.js";
import { EntryDirection, HoldStatus } from "../../services/gen/paygate/wallet/v1/wallet_pb.js";
import { storageBackends } from "../support/postgres.js";
import {
  ACME,
  balanceOf,
  expectedConversion,
  gatewayClients,
  GLOBEX,
  minor,
  spawnPayments,
  startStack,
  tempDir,
  waitFor,
  type ChildService,
  type GatewayClients,
  type Phase,
  type Stack,
} from "../support/stack.js";

vi.setConfig({ testTimeout: 180_000, hookTimeout: 180_000 });

/** Lease of the process that dies: long enough that it never takes over its own payment. */
const FIRST_LEASE_MS = "3000";

describe.each(storageBackends())("payments killed between reserve and capture ($name)", (backend) => {
  let stack: Stack;
  let acme: GatewayClients;
  let globex: GatewayClients;
  let dataDir: { dir: string; remove: () => void } | undefined;
  const children: ChildService[] = [];

  beforeAll(async () => {
    stack = await startStack({ backend, name: "crash", payments: "external", walletProxy: true });
    acme = gatewayClients(stack.gatewayUrl, ACME.apiKey);
    globex = gatewayClients(stack.gatewayUrl, GLOBEX.apiKey);
    if (!backend.url) dataDir = tempDir("paygate-e2e-payments-");
  });
  afterEach(async () => {
    stack.walletProxy?.release();
    for (const c of children.splice(0)) await c.kill("SIGKILL");
    expect(await stack.reconcile(), "the ledger reconciles").toEqual([]);
  });
  afterAll(async () => {
    for (const c of children.splice(0)) await c.kill("SIGKILL");
    await stack?.stop();
    dataDir?.remove();
  });

  async function startPaymentsProcess(extra: Record<string, string>): Promise<ChildService> {
    const env = stack.paymentsEnv({ ...(dataDir ? { DATA_DIR: dataDir.dir } : {}), ...extra });
    const child = await spawnPayments(env, stack.paymentsAdminPort);
    children.push(child);
    return child;
  }

  // finisher "recovery": the restarted process's sweep finishes the payment, then the client
  // retries. "retry": the sweep is off; the client's retry with its key finishes it.
  it.each([
    { phase: "after" as Phase, from: "USD", to: "USD", finisher: "recovery" },
    { phase: "before" as Phase, from: "USD", to: "USD", finisher: "recovery" },
    { phase: "after" as Phase, from: "USD", to: "JPY", finisher: "recovery" },
    { phase: "before" as Phase, from: "EUR", to: "KWD", finisher: "recovery" },
    { phase: "before" as Phase, from: "USD", to: "IDR", finisher: "retry" },
    { phase: "after" as Phase, from: "USD", to: "USD", finisher: "retry" },
  ])("automatic capture killed at Reserve ($phase the wallet ran it), $from -> $to, finished by $finisher: CAPTURED, one debit, books balance", async ({ phase, from, to, finisher }) => {
    const method = "Reserve";
    const proxy = stack.walletProxy!;
    const first = await startPaymentsProcess({ PAYMENTS_LEASE_MS: FIRST_LEASE_MS, PAYMENTS_RECOVERY_INTERVAL_MS: "200" });

    const src = await stack.fund(ACME.id, from, "100.00");
    const dst = await stack.fund(GLOBEX.id, to, "0");
    const amountMinor = minor("42.50", from);
    const key = `crash-${randomUUID()}`;
    const reference = `crash-${method}-${phase}-${randomUUID()}`;
    const request = { sourceAccountId: src, destinationAccountId: dst, amount: { currency: from, amountMinor }, merchantReference: reference };

    // The payment starts; the wallet call is held; payments dies meanwhile.
    const hit = proxy.arm(method, phase);
    const call = acme.payments.createPayment(request, { headers: { "idempotency-key": key } }).then(
      (res) => ({ ok: true as const, payment: res.payment }),
      (err: unknown) => ({ ok: false as const, err }),
    );
    await Promise.race([hit, call.then((r) => Promise.reject(new Error(`CreatePayment ended before the ${method} call was held: ${JSON.stringify(r, (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v))}`)))]);
    await first.kill("SIGKILL");
    expect(first.process.signalCode).toBe("SIGKILL");
    proxy.release();
    const outcome = await call;
    expect(outcome.ok, "the client sees the call fail when payments dies").toBe(false);
    if (!outcome.ok) expect(outcome.err).toBeInstanceOf(ConnectError);

    // What the crash left behind in the wallet: a hold, captured or not; nothing else.
    const left = await balanceOf(acme.wallet, src);
    if (phase === "after") expect(left).toEqual({ posted: 10000n - amountMinor, pending: 0n, available: 10000n - amountMinor });
    else expect(left).toEqual({ posted: 10000n, pending: 0n, available: 10000n });

    // Payments comes back on the same database (with its recovery sweep, or practically without).
    await startPaymentsProcess({ PAYMENTS_LEASE_MS: "500", PAYMENTS_RECOVERY_INTERVAL_MS: finisher === "recovery" ? "200" : "600000" });
    const found = await waitFor(async () => (await acme.payments.listPayments({ pageSize: 100 })).payments.find((p) => p.merchantReference === reference), "the payment to be listed", 30_000, 200);
    let payment: Payment;
    if (finisher === "recovery") {
      payment = await waitFor(
        async () => {
          const { payment: p } = await acme.payments.getPayment({ paymentId: found.id });
          return p && ["CAPTURED", "FAILED"].includes(PaymentStatus[p.status]) ? p : undefined;
        },
        "the payment to be finished by recovery",
        60_000,
        200,
      );
    } else {
      expect(PaymentStatus[found.status]).toBe("PENDING");
      payment = await retryUntilSettled(() => acme.payments.createPayment(request, { headers: { "idempotency-key": key } }));
      expect(payment.id).toBe(found.id);
    }
    expect(PaymentStatus[payment.status]).toBe("CAPTURED");
    expect(payment.capturedAmount?.amountMinor).toBe(amountMinor);

    // Exactly one debit of the amount; the hold resolved once; the payee got exactly the settlement.
    const settlement = from === to ? amountMinor : expectedConversion(amountMinor, from, payment.fxRate, to);
    expect(payment.settlementAmount?.amountMinor).toBe(settlement);
    await expectOneCapture(payment, src, dst, amountMinor, settlement);

    // The client retries the original request with its key: it must get this payment, not a new one.
    // (After "retry" this is a plain replay of the stored response.)
    const retried = await retryUntilSettled(() => acme.payments.createPayment(request, { headers: { "idempotency-key": key } }));
    expect(retried.id).toBe(payment.id);
    expect(PaymentStatus[retried.status]).toBe("CAPTURED");
    const mine = (await acme.payments.listPayments({ pageSize: 100 })).payments.filter((p) => p.merchantReference === reference);
    expect(mine.map((p) => p.id)).toEqual([payment.id]);
    await expectOneCapture(payment, src, dst, amountMinor, settlement);
  });

  it.each([
    { phase: "before" as Phase, from: "USD", to: "USD" },
    { phase: "after" as Phase, from: "EUR", to: "JPY" },
  ])("manual capture killed at Capture ($phase the wallet ran it), $from -> $to, finished by the client's retry: CAPTURED, one debit, books balance", async ({ phase, from, to }) => {
    const proxy = stack.walletProxy!;
    const first = await startPaymentsProcess({ PAYMENTS_LEASE_MS: FIRST_LEASE_MS, PAYMENTS_RECOVERY_INTERVAL_MS: "200" });
    const src = await stack.fund(ACME.id, from, "100.00");
    const dst = await stack.fund(GLOBEX.id, to, "0");
    const amountMinor = minor("42.50", from);
    const { payment: authorized } = await acme.payments.createPayment({ sourceAccountId: src, destinationAccountId: dst, amount: { currency: from, amountMinor }, captureMethod: CaptureMethod.MANUAL });
    expect(PaymentStatus[authorized!.status]).toBe("AUTHORIZED");
    const key = `crash-capture-${randomUUID()}`;
    const capture = () => acme.payments.capturePayment({ paymentId: authorized!.id }, { headers: { "idempotency-key": key } });

    const hit = proxy.arm("Capture", phase);
    const call = capture().then(
      () => ({ ok: true as const }),
      (err: unknown) => ({ ok: false as const, err }),
    );
    await Promise.race([hit, call.then((r) => Promise.reject(new Error(`CapturePayment ended before the wallet's Capture was held: ${String(r.ok)}`)))]);
    await first.kill("SIGKILL");
    proxy.release();
    expect((await call).ok, "the client sees the call fail when payments dies").toBe(false);

    const left = await balanceOf(acme.wallet, src);
    if (phase === "after") expect(left).toEqual({ posted: 10000n - amountMinor, pending: 0n, available: 10000n - amountMinor });
    else expect(left).toEqual({ posted: 10000n, pending: amountMinor, available: 10000n - amountMinor });

    // Manual payments are the client's to finish (the sweep leaves them): its retry, once the
    // dead attempt's key lock runs out.
    await startPaymentsProcess({ PAYMENTS_LEASE_MS: "500", PAYMENTS_RECOVERY_INTERVAL_MS: "200" });
    expect(PaymentStatus[(await acme.payments.getPayment({ paymentId: authorized!.id })).payment!.status]).toBe("AUTHORIZED");
    const payment = await retryUntilSettled(capture);
    expect(payment.id).toBe(authorized!.id);
    expect(PaymentStatus[payment.status]).toBe("CAPTURED");
    expect(payment.capturedAmount?.amountMinor).toBe(amountMinor);
    const settlement = from === to ? amountMinor : expectedConversion(amountMinor, from, payment.fxRate, to);
    expect(payment.settlementAmount?.amountMinor).toBe(settlement);
    await expectOneCapture(payment, src, dst, amountMinor, settlement);
  });

  async function expectOneCapture(payment: Payment, src: string, dst: string, amountMinor: bigint, settlement: bigint) {
    expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 10000n - amountMinor, pending: 0n, available: 10000n - amountMinor });
    expect(await balanceOf(globex.wallet, dst)).toEqual({ posted: settlement, pending: 0n, available: settlement });
    const debits = (await acme.wallet.listEntries({ accountId: src, pageSize: 100 })).entries.filter((e) => e.direction === EntryDirection.DEBIT);
    expect(debits.map((e) => [e.transferId, e.amount?.amountMinor])).toEqual([[`${payment.id}:capture`, amountMinor]]);
    const { hold } = await stack.internalWallet.getHold({ holdId: payment.id });
    expect(HoldStatus[hold!.status]).toBe("CAPTURED");
    expect(hold!.capturedAmount?.amountMinor).toBe(amountMinor);
  }
});

/** Calls `fn` until it stops answering ABORTED (a key still held by the dead process) or UNAVAILABLE. */
async function retryUntilSettled(fn: () => Promise<{ payment?: Payment | undefined }>): Promise<Payment> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      const { payment } = await fn();
      return payment!;
    } catch (err) {
      const retryable = err instanceof ConnectError && (err.code === Code.Aborted || err.code === Code.Unavailable);
      if (!retryable || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}
