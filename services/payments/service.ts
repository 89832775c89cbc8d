// PaymentsService: validation, idempotency, the saga, and the payment streams.
import { createHash } from "node:crypto";
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  CancelPaymentResponseSchema,
  CaptureMethod,
  CapturePaymentResponseSchema,
  CreatePaymentResponseSchema,
  type CreatePaymentRequest,
  type CreatePaymentResponse,
  PaymentSchema,
  PaymentsService,
  RefundPaymentResponseSchema,
  RefundSchema,
  type Payment,
} from "../gen/paygate/payments/v1/payments_pb.js";
import type { Account as WalletAccount, WalletService } from "../gen/paygate/wallet/v1/wallet_pb.js";
import { DomainError, failedPrecondition, invalidArgument, notFound } from "../runtime/errors.js";
import { newId } from "../runtime/ids.js";
import { money, readMoney, requirePositive } from "../runtime/money/money.js";
import { parseDecimal } from "../runtime/money/decimal.js";
import { downstream } from "../runtime/rpc/upstream.js";
import { convertMinor } from "../runtime/money/conversion.js";
import { currencyInfo } from "../runtime/money/money.js";
import type { EventFeed } from "./events.js";
import { IDEMPOTENCY_HEADER, MERCHANT_HEADER, REPLAYED_HEADER } from "../runtime/rpc/headers.js";
import type { Answer, Attempt, ClaimWrite, HeldKey, IdempotencyKeys, RunOptions } from "./idempotency.js";
import { recordReplay } from "./metrics.js";
import type { AccountDirectory } from "./accounts.js";
import { isFinal, paymentMessage, resumable, statusFromProto, type PaymentRecord } from "./payment.js";
import { reasonOf, type Saga } from "./saga.js";
import { endsRequest, type KeyCompletion, type PaymentStore } from "./store.js";

export interface PaymentsDeps {
  store: PaymentStore;
  saga: Saga;
  keys: IdempotencyKeys;
  feed: EventFeed;
  wallet: Client<typeof WalletService>;
  accounts: AccountDirectory;
  upstreamTimeoutMs: number;
  /** This process's name on the leases it takes. */
  instanceId: string;
  leaseMs: number;
  now: () => Date;
  /** Aborts when the server drains: streams end. */
  draining: AbortSignal;
}

const MAX_METADATA = 20;

/** A CreatePayment request, checked: the payment asked for, before its accounts are looked up. */
interface PaymentOrder {
  merchantId: string;
  sourceAccountId: string;
  destinationAccountId: string;
  amount: { currency: string; amountMinor: bigint };
  settlementCurrency: string;
  manual: boolean;
  merchantReference: string;
  /** Sorted by key. */
  metadata: [string, string][];
  /** What identifies the request under an Idempotency-Key. */
  fingerprint: unknown[];
}

/** A payment's two accounts, as the wallet describes them. */
interface PaymentAccounts {
  source: WalletAccount;
  destination: WalletAccount;
}

/** Whether `check` returns without throwing. */
function passes(check: () => void): boolean {
  try {
    check();
    return true;
  } catch {
    return false;
  }
}

/** Checks what can be checked of a CreatePayment request without asking anyone. */
function checkOrder(req: CreatePaymentRequest, merchantId: string): PaymentOrder {
  const amount = readMoney(req.amount, "amount");
  requirePositive(amount.amountMinor, "amount");
  if (req.sourceAccountId !== "" && req.sourceAccountId === req.destinationAccountId) {
    throw invalidArgument("SAME_ACCOUNT", "destination_account_id", "destination_account_id: must differ from source_account_id");
  }
  if (req.settlementCurrency !== "") currencyInfo(req.settlementCurrency, "settlement_currency");
  const metadata = Object.entries(req.metadata).sort(([a], [b]) => (a < b ? -1 : 1));
  if (metadata.length > MAX_METADATA) throw invalidArgument("TOO_MUCH_METADATA", "metadata", `metadata: at most ${MAX_METADATA} keys, got ${metadata.length}`);
  if (req.merchantReference.length > 255) throw invalidArgument("REFERENCE_TOO_LONG", "merchant_reference", "merchant_reference: at most 255 characters");
  const manual = req.captureMethod === CaptureMethod.MANUAL;
  return {
    merchantId,
    sourceAccountId: req.sourceAccountId,
    destinationAccountId: req.destinationAccountId,
    amount,
    settlementCurrency: req.settlementCurrency,
    manual,
    merchantReference: req.merchantReference,
    metadata,
    fingerprint: ["create", req.sourceAccountId, req.destinationAccountId, amount, req.settlementCurrency, manual, req.merchantReference, metadata],
  };
}

/** Another merchant's account is reported exactly like a missing one. */
function requireOwned(order: PaymentOrder, source: WalletAccount): void {
  if (source.ownerId !== order.merchantId) throw notFound("ACCOUNT_NOT_FOUND", `source_account_id: no account ${JSON.stringify(source.id)}`, "source_account_id");
}

function requireCurrencies(order: PaymentOrder, { source, destination }: PaymentAccounts): void {
  if (source.currency !== order.amount.currency) {
    throw invalidArgument("CURRENCY_MISMATCH", "amount.currency", `amount.currency: source account ${source.id} holds ${source.currency}, not ${order.amount.currency}`);
  }
  if (order.settlementCurrency !== "" && order.settlementCurrency !== destination.currency) {
    throw invalidArgument("CURRENCY_MISMATCH", "settlement_currency", `settlement_currency: destination account ${destination.id} holds ${destination.currency}, not ${order.settlementCurrency}`);
  }
}

/**
 * The id of the payment made under a key's `scope` (a new one without a key): a retry taking
 * over from an attempt whose process died finds that attempt's payment and finishes it,
 * instead of paying a second time.
 */
function paymentIdIn(scope: string | undefined): string {
  return scope === undefined ? newId("pay") : `pay_${createHash("sha256").update(scope).digest("hex").slice(0, 32)}`;
}

/** The PENDING payment `order` asks for, between `accounts`. */
function newPayment(order: PaymentOrder, id: string, { source, destination }: PaymentAccounts, now: Date): PaymentRecord {
  return {
    id,
    merchantId: order.merchantId,
    merchantReference: order.merchantReference,
    sourceAccountId: source.id,
    destinationAccountId: destination.id,
    currency: order.amount.currency,
    amountMinor: order.amount.amountMinor,
    settlementCurrency: destination.currency,
    settlementMinor: destination.currency === order.amount.currency ? order.amount.amountMinor : null,
    fxRate: null,
    fxQuoteId: null,
    captureMethod: order.manual ? "MANUAL" : "AUTOMATIC",
    status: "PENDING",
    capturedMinor: 0n,
    settlementCapturedMinor: 0n,
    refundedMinor: 0n,
    settlementRefundedMinor: 0n,
    failureReason: "",
    failureMessage: "",
    riskDecisionId: "",
    riskScore: 0,
    metadata: Object.fromEntries(order.metadata),
    version: 0n,
    createdAt: now,
    updatedAt: now,
  };
}

const createResponse = (p: PaymentRecord): CreatePaymentResponse => create(CreatePaymentResponseSchema, { payment: paymentMessage(p) });

/**
 * The answer of a request whose last write left the payment as `moved`: that write kept it
 * under the key when one is held and the write ended the request's work (see transition).
 */
function answerAfterWrite<R>(attempt: Attempt<unknown>, moved: PaymentRecord, response: R): Answer<R> {
  return { response, kept: attempt.key !== undefined && endsRequest(moved) };
}

export function paymentsService(deps: PaymentsDeps): ServiceImpl<typeof PaymentsService> {
  const { store, saga, keys, feed } = deps;
  const call = (ctx: HandlerContext) => downstream(ctx, deps.upstreamTimeoutMs);

  /** Runs a write under the request's Idempotency-Key, marking replays (answers and stored failures) with a header. */
  async function idempotent<S extends DescMessage, T = never>(
    ctx: HandlerContext,
    merchantId: string,
    request: unknown,
    schema: S,
    work: (attempt: Attempt<T>) => Promise<Answer<MessageShape<S>>>,
    opts?: RunOptions<MessageShape<S>, T>,
  ): Promise<MessageShape<S>> {
    const key = ctx.requestHeader.get(IDEMPOTENCY_HEADER) ?? "";
    const { response, replayed } = await keys.run(merchantId, key, request, schema, work, opts).catch((err: unknown) => {
      if (err instanceof ConnectError && err.metadata.get(REPLAYED_HEADER) === "true") recordReplay(ctx.method.name);
      throw err;
    });
    if (replayed) {
      ctx.responseHeader.set(REPLAYED_HEADER, "true");
      recordReplay(ctx.method.name);
    }
    return response;
  }

  /** Lets the write that ends a request store its response under the request's key (see PaymentStore.transition). */
  function completion<S extends DescMessage>(key: HeldKey | undefined, schema: S, response: (moved: PaymentRecord) => MessageShape<S>): KeyCompletion | undefined {
    return key && { key, response: (moved) => toBinary(schema, response(moved)) };
  }

  /** An account from the wallet, as a payment sees it (the field named is the payment's). */
  async function account(id: string, field: string, ctx: HandlerContext) {
    if (id === "") throw invalidArgument("MISSING_FIELD", field, `${field} is required`);
    try {
      return await deps.accounts.get(id, ctx.signal);
    } catch (err) {
      if (err instanceof ConnectError && err.code === Code.NotFound) throw notFound("ACCOUNT_NOT_FOUND", `${field}: no account ${JSON.stringify(id)}`, field);
      throw err;
    }
  }

  /** The order's accounts from the wallet, each checked as soon as it is known. */
  async function resolveAccounts(order: PaymentOrder, ctx: HandlerContext): Promise<PaymentAccounts> {
    const source = await account(order.sourceAccountId, "source_account_id", ctx);
    requireOwned(order, source);
    const accounts = { source, destination: await account(order.destinationAccountId, "destination_account_id", ctx) };
    requireCurrencies(order, accounts);
    return accounts;
  }

  /**
   * With both accounts already known and the order fine with them, a new payment is inserted
   * in the statement that claims a new key; otherwise undefined, and createOrResume() inserts it.
   */
  function createWithClaim(order: PaymentOrder): ClaimWrite<PaymentRecord> | undefined {
    const source = deps.accounts.peek(order.sourceAccountId);
    const destination = deps.accounts.peek(order.destinationAccountId);
    if (!source || !destination) return undefined;
    const accounts = { source, destination };
    if (!passes(() => (requireOwned(order, source), requireCurrencies(order, accounts)))) return undefined;
    return (scope, newKey) => store.creationWithClaim(newPayment(order, paymentIdIn(scope), accounts, deps.now()), deps.instanceId, deps.leaseMs, newKey);
  }

  /**
   * The payment this attempt created (with the key's claim, or now), for the saga to run; or,
   * when an earlier attempt under the same key created it, that payment driven on.
   */
  async function createOrResume(order: PaymentOrder, attempt: Attempt<PaymentRecord>, ctx: HandlerContext): Promise<{ created: PaymentRecord } | { resumed: PaymentRecord }> {
    if (attempt.writtenWithClaim) {
      store.created(attempt.writtenWithClaim);
      return { created: attempt.writtenWithClaim };
    }
    const fresh = newPayment(order, paymentIdIn(attempt.scope), await resolveAccounts(order, ctx), deps.now());
    const created = await store.create(fresh, deps.instanceId, deps.leaseMs);
    // Only under a key can the id exist already: an earlier attempt's payment.
    return created ? { created } : { resumed: await resume(await store.get(fresh.id), ctx) };
  }

  /**
   * Runs the saga on a payment this request created and answers with it; the run's last write
   * keeps the response under `key` when it ends the payment's run (`kept` says whether one
   * did). A payment left resumable gives up its lease.
   */
  async function runSaga(created: PaymentRecord, key: HeldKey | undefined, ctx: HandlerContext): Promise<Answer<CreatePaymentResponse>> {
    let p = created;
    try {
      const run = await saga.runForRequest(p, call(ctx), completion(key, CreatePaymentResponseSchema, createResponse));
      p = run.payment;
      return { response: createResponse(p), kept: run.kept };
    } finally {
      // A payment that left the resumable states dropped its lease as it moved.
      if (resumable(p)) await store.releaseLease(p.id, deps.instanceId);
    }
  }

  /**
   * Drives on the payment an earlier attempt under the same key created (its process died).
   * While another process holds its lease (the dead one's, or a recovery sweep's) this waits
   * for the lease, within the call's deadline; then ABORTED, and the client retries.
   */
  async function resume(p: PaymentRecord, ctx: HandlerContext): Promise<PaymentRecord> {
    if (!resumable(p)) return p;
    const waitUntil = Date.now() + Math.min(ctx.timeoutMs() ?? deps.upstreamTimeoutMs, deps.leaseMs + 1_000);
    for (;;) {
      const claimed = await store.claim(p.id, deps.instanceId, deps.leaseMs);
      if (claimed) {
        try {
          return await saga.run(claimed, call(ctx));
        } finally {
          await store.releaseLease(p.id, deps.instanceId);
        }
      }
      if (Date.now() >= waitUntil || ctx.signal.aborted) {
        throw new DomainError("aborted", "PAYMENT_IN_PROGRESS", `payment ${p.id} is being processed; retry the request`, IDEMPOTENCY_HEADER);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  return {
    async createPayment(req, ctx) {
      const order = checkOrder(req, merchantOf(req.merchantId, ctx));
      return idempotent(
        ctx,
        order.merchantId,
        order.fingerprint,
        CreatePaymentResponseSchema,
        async (attempt: Attempt<PaymentRecord>) => {
          const started = await createOrResume(order, attempt, ctx);
          // A resumed payment's answer is kept by the key's own write (the saga ran without the key).
          if ("resumed" in started) return { response: createResponse(started.resumed), kept: false };
          return runSaga(started.created, attempt.key, ctx);
        },
        {
          withClaim: createWithClaim(order),
          // A payment paused half-way (an upstream down, the deadline passed) is not an answer
          // to keep: a retry resumes it or reports how it stands then.
          final: (r) => !unfinished(r.payment!),
        },
      );
    },

    async getPayment(req, ctx) {
      return { payment: paymentMessage(await store.get(requirePaymentId(req.paymentId), merchantOf(req.merchantId, ctx))) };
    },

    async listPayments(req, ctx) {
      const merchantId = merchantOf(req.merchantId, ctx);
      const status = req.status === 0 ? undefined : statusFromProto(req.status);
      if (req.status !== 0 && !status) throw invalidArgument("INVALID_STATUS", "status", `status: unknown status ${req.status}`);
      const page = await store.list(merchantId, status, req.pageSize, req.pageToken);
      return { payments: page.payments.map(paymentMessage), nextPageToken: page.nextPageToken };
    },

    async capturePayment(req, ctx) {
      const merchantId = merchantOf(req.merchantId, ctx);
      const id = requirePaymentId(req.paymentId);
      const requested = req.amount ? readMoney(req.amount, "amount") : undefined;
      if (requested) requirePositive(requested.amountMinor, "amount");
      return idempotent(ctx, merchantId, ["capture", id, requested], CapturePaymentResponseSchema, async (attempt) => {
        const p = await store.get(id, merchantId);
        requireStatus(p, ["AUTHORIZED"], "captured");
        if (requested && requested.currency !== p.currency) throw invalidArgument("CURRENCY_MISMATCH", "amount.currency", `amount.currency: payment ${p.id} is in ${p.currency}, not ${requested.currency}`);
        if (requested && requested.amountMinor > p.amountMinor) {
          throw failedPrecondition("CAPTURE_EXCEEDS_AUTHORIZED", `amount: ${requested.amountMinor} is more than the ${p.amountMinor} minor units authorized`, "amount");
        }
        const response = (moved: PaymentRecord) => create(CapturePaymentResponseSchema, { payment: paymentMessage(moved) });
        const captured = await saga.capture(p, requested?.amountMinor, call(ctx), completion(attempt.key, CapturePaymentResponseSchema, response));
        return answerAfterWrite(attempt, captured, response(captured));
      });
    },

    async cancelPayment(req, ctx) {
      const merchantId = merchantOf(req.merchantId, ctx);
      const id = requirePaymentId(req.paymentId);
      return idempotent(ctx, merchantId, ["cancel", id, req.reason], CancelPaymentResponseSchema, async (attempt) => {
        const p = await store.get(id, merchantId);
        requireStatus(p, ["AUTHORIZED"], "canceled");
        try {
          await deps.wallet.release({ holdId: p.id }, call(ctx));
        } catch (err) {
          // An expired hold is already released: canceling finishes what expiry began.
          if (!(err instanceof ConnectError) || reasonOf(err) !== "HOLD_EXPIRED") throw err;
        }
        const response = (moved: PaymentRecord) => create(CancelPaymentResponseSchema, { payment: paymentMessage(moved) });
        const complete = completion(attempt.key, CancelPaymentResponseSchema, response);
        const canceled = await store.transition(p, { to: "CANCELED", event: "payment.canceled", patch: { failureMessage: req.reason } }, { complete });
        return answerAfterWrite(attempt, canceled, response(canceled));
      });
    },

    async refundPayment(req, ctx) {
      const merchantId = merchantOf(req.merchantId, ctx);
      const id = requirePaymentId(req.paymentId);
      const requested = req.amount ? readMoney(req.amount, "amount") : undefined;
      if (requested) requirePositive(requested.amountMinor, "amount");
      return idempotent(ctx, merchantId, ["refund", id, requested, req.reason], RefundPaymentResponseSchema, async (attempt) => {
        const p = await store.get(id, merchantId);
        requireStatus(p, ["CAPTURED", "PARTIALLY_REFUNDED"], "refunded");
        if (requested && requested.currency !== p.currency) throw invalidArgument("CURRENCY_MISMATCH", "amount.currency", `amount.currency: payment ${p.id} is in ${p.currency}, not ${requested.currency}`);
        const refundable = p.capturedMinor - p.refundedMinor;
        const amountMinor = requested?.amountMinor ?? refundable;
        if (amountMinor > refundable) {
          throw failedPrecondition("REFUND_EXCEEDS_CAPTURED", `amount: ${amountMinor} is more than the ${refundable} minor units still refundable`, "amount", { refundable_minor: refundable.toString() });
        }
        const settlementMinor = refundSettlement(p, amountMinor);
        // Derived from the payment's refund state: a retry after a crash finds the same transfer.
        const refundId = `rf_${p.id.slice(4)}_${p.refundedMinor}`;
        await deps.wallet.transfer(
          {
            transferId: refundId,
            fromAccountId: p.destinationAccountId,
            toAccountId: p.sourceAccountId,
            amount: money(p.settlementCurrency, settlementMinor),
            fx: p.settlementCurrency === p.currency ? undefined : { rate: p.fxRate ?? "", quoteId: p.fxQuoteId ?? "", destinationAmount: money(p.currency, amountMinor) },
          },
          call(ctx),
        );
        const refund = { id: refundId, paymentId: p.id, amountMinor, settlementMinor, reason: req.reason, createdAt: deps.now() };
        const response = (moved: PaymentRecord) =>
          create(RefundPaymentResponseSchema, {
            payment: paymentMessage(moved),
            refund: create(RefundSchema, {
              id: refund.id,
              paymentId: p.id,
              amount: money(p.currency, amountMinor),
              settlementAmount: money(p.settlementCurrency, settlementMinor),
              reason: refund.reason,
              createdAt: timestampFromDate(refund.createdAt),
            }),
          });
        // At the version read above: a concurrent refund in between makes this one ABORTED.
        const refunded = await store.transition(
          p,
          {
            to: amountMinor === refundable ? "REFUNDED" : "PARTIALLY_REFUNDED",
            event: "payment.refunded",
            patch: { refundedMinor: p.refundedMinor + amountMinor, settlementRefundedMinor: p.settlementRefundedMinor + settlementMinor },
          },
          { also: (tx) => store.insertRefund(tx, refund), complete: completion(attempt.key, RefundPaymentResponseSchema, response) },
        );
        return answerAfterWrite(attempt, refunded, response(refunded));
      });
    },

    async *watchPayment(req, ctx) {
      const p = await store.get(requirePaymentId(req.paymentId), merchantOf(req.merchantId, ctx));
      const since = await store.lastEventSeq();
      yield { payment: paymentMessage(await store.get(p.id)) };
      if (isFinal(p.status)) return;
      for await (const e of feed.follow({ paymentId: p.id }, since, anySignal(ctx.signal, deps.draining))) {
        const payment = fromBinary(PaymentSchema, e.payment);
        yield { payment };
        if (isFinalMessage(payment)) return;
      }
    },

    async *streamPaymentEvents(req, ctx) {
      const merchantId = merchantOf(req.merchantId, ctx);
      const after = req.afterSequence > 0n ? req.afterSequence : await store.lastEventSeq();
      for await (const e of feed.follow({ merchantId }, after, anySignal(ctx.signal, deps.draining))) {
        yield {
          event: { id: e.id, sequence: e.seq, type: e.type, payment: fromBinary(PaymentSchema, e.payment), occurredAt: timestampFromDate(e.occurredAt) },
        };
      }
    },
  };
}

/**
 * What a refund takes back from the destination, in its currency. Refunds use the payment's
 * original rate, so the payer gets back exactly what was paid: a partial refund converts at
 * that rate (half-even) and the refund that completes the payment takes exactly what is
 * left, so all refunds together return exactly the settled amount.
 */
export function refundSettlement(p: PaymentRecord, amountMinor: bigint): bigint {
  const remaining = p.settlementCapturedMinor - p.settlementRefundedMinor;
  if (amountMinor === p.capturedMinor - p.refundedMinor) return remaining;
  if (p.settlementCurrency === p.currency) return amountMinor;
  const rate = parseDecimal(p.fxRate ?? "", "fx_rate");
  const converted = convertMinor(amountMinor, currencyInfo(p.currency, "currency").minorUnits, rate, currencyInfo(p.settlementCurrency, "currency").minorUnits, "half_even").convertedMinor;
  return converted < remaining ? converted : remaining;
}

/**
 * The merchant a call is for: the one the gateway authenticated (its paygate-merchant-id
 * header), with which the request's own merchant_id must then agree when set; without the
 * header (an internal caller), the request's merchant_id.
 */
function merchantOf(requested: string, ctx: HandlerContext): string {
  const authenticated = ctx.requestHeader.get(MERCHANT_HEADER) ?? "";
  if (authenticated === "") {
    if (requested === "") throw invalidArgument("MISSING_FIELD", "merchant_id", "merchant_id is required");
    return requested;
  }
  if (requested !== "" && requested !== authenticated) {
    throw new DomainError("permission_denied", "MERCHANT_MISMATCH", "merchant_id: names another merchant than the API key's (leave it empty)", "merchant_id");
  }
  return authenticated;
}

function requirePaymentId(id: string): string {
  if (id === "") throw invalidArgument("MISSING_FIELD", "payment_id", "payment_id is required");
  return id;
}

function requireStatus(p: PaymentRecord, allowed: PaymentRecord["status"][], verb: string): void {
  if (!allowed.includes(p.status)) {
    throw new DomainError("failed_precondition", "INVALID_PAYMENT_STATE", `payment ${p.id} is ${p.status} and cannot be ${verb}`, "payment_id", { status: p.status });
  }
}

/** Whether a payment message shows a saga with more to do (see resumable). */
function unfinished(p: Payment): boolean {
  const status = statusFromProto(p.status);
  return status !== undefined && resumable({ status, captureMethod: p.captureMethod === CaptureMethod.MANUAL ? "MANUAL" : "AUTOMATIC" });
}

function isFinalMessage(p: Payment): boolean {
  const status = statusFromProto(p.status);
  return status !== undefined && isFinal(status);
}

function anySignal(...signals: AbortSignal[]): AbortSignal {
  return AbortSignal.any(signals);
}
