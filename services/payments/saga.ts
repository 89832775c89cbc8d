// The payment saga: risk and, when currencies differ, an fx quote (asked at once: neither
// needs the other) -> wallet hold -> capture. Risk's answer is read first, so a decline ends
// the payment whatever fx said; the quote fx made for it then stays used by a FAILED payment,
// and no money moved.
// Every step is idempotent on the payment id (risk scores a payment once, a quote is used
// once per reference, the hold id is the payment id), so the saga can be run again from the
// top after any interruption — a crash, a timeout — and money still moves exactly once.
// A step that fails for good ends the payment FAILED, undoing the hold if one was placed;
// one that fails for now (an upstream unreachable) leaves it for the recovery sweep.
//
// With automatic capture the wallet places and captures the hold in one transaction (one
// call, one commit) and the payment goes PENDING -> AUTHORIZED -> CAPTURED in one write with
// both events; with manual capture the hold stays until CapturePayment or CancelPayment.
// The risk decision and the fx quote's terms are written with the outcome: the quote is made
// and used for the payment in one fx call, and fx gives a resumed saga the same quote again,
// so the hold is always placed on the same terms.
//
// Traces: run() is a span "saga.run" (a child of the RPC that drives it, or the root of a
// trace of its own when the recovery sweep resumes a payment), each step a child span:
// saga.risk, saga.fx_quote,
// saga.wallet_reserve_capture (automatic capture),
// saga.wallet_reserve, saga.wallet_capture, saga.wallet_release (manual capture). All carry
// paygate.payment_id, paygate.merchant_id and paygate.currency (and
// paygate.settlement_currency when it differs), and so do the calls and database work done
// inside them. Never card data, keys or secrets.
import { Code, ConnectError, type CallOptions, type Client } from "@connectrpc/connect";
import { ErrorDetailSchema } from "../gen/paygate/common/v1/common_pb.js";
import type { FxService } from "../gen/paygate/fx/v1/fx_pb.js";
import { Outcome, type RiskService } from "../gen/paygate/risk/v1/risk_pb.js";
import { HoldStatus, type WalletService } from "../gen/paygate/wallet/v1/wallet_pb.js";
import { money } from "../runtime/money/money.js";
import { isTransient } from "../runtime/errors.js";
import type { Logger } from "../runtime/observability/logger.js";
import { withAttributes, withSpan, type PaygateAttributes } from "../runtime/observability/spans.js";
import type { PaymentRecord } from "./payment.js";
import type { AccountDirectory } from "./accounts.js";
import { endsRequest, type KeyCompletion, type PaymentPatch, type PaymentStore } from "./store.js";

export interface Upstreams {
  wallet: Client<typeof WalletService>;
  risk: Client<typeof RiskService>;
  fx: Client<typeof FxService>;
}


/** The stable reason of an upstream's refusal, from its ErrorDetail. */
export function reasonOf(err: ConnectError): string {
  return err.findDetails(ErrorDetailSchema)[0]?.reason || Code[err.code].toUpperCase();
}

/** The trace attributes of a payment. */
export function paymentAttributes(p: PaymentRecord): PaygateAttributes {
  return {
    "paygate.payment_id": p.id,
    "paygate.merchant_id": p.merchantId,
    "paygate.currency": p.currency,
    ...(p.settlementCurrency !== p.currency ? { "paygate.settlement_currency": p.settlementCurrency } : {}),
  };
}

/** The step's result, or the upstream's permanent refusal (a transient failure is thrown: the saga pauses). */
async function refusal<T extends object>(result: Promise<T>): Promise<T | { refused: ConnectError }> {
  try {
    return await result;
  } catch (err) {
    if (err instanceof ConnectError && !isTransient(err)) return { refused: err };
    throw err;
  }
}

/** Runs one saga step of `p` in a span `saga.<name>` carrying the payment's attributes. */
function step<T>(name: string, p: PaymentRecord, fn: () => Promise<T>): Promise<T> {
  const attrs = paymentAttributes(p);
  return withSpan(`saga.${name}`, { ...attrs }, () => withAttributes(attrs, fn));
}

/** The terms of a cross-currency hold. */
type FxTerms = { rate: string; quoteId: string; destinationAmount: ReturnType<typeof money> };

export class Saga {
  constructor(
    private readonly store: PaymentStore,
    private readonly up: Upstreams,
    private readonly accounts: AccountDirectory,
    private readonly logger: Logger,
  ) {}

  /** Drives a payment as far as it can go now; returns it as it then stands. */
  async run(p: PaymentRecord, call: CallOptions): Promise<PaymentRecord> {
    return (await this.drive(p, call, undefined)).payment;
  }

  /**
   * run() for the request that created `p`: the write that ends the run also stores the
   * request's response under `complete`'s key (see transition). `kept` says whether one did:
   * not when the run paused, nor when another process moved the payment first.
   */
  async runForRequest(p: PaymentRecord, call: CallOptions, complete: KeyCompletion | undefined): Promise<{ payment: PaymentRecord; kept: boolean }> {
    return this.drive(p, call, complete);
  }

  private async drive(p: PaymentRecord, call: CallOptions, complete: KeyCompletion | undefined): Promise<{ payment: PaymentRecord; kept: boolean }> {
    const entered = p;
    return withAttributes(paymentAttributes(p), () =>
      withSpan("saga.run", {}, async (span) => {
        try {
          if (p.status === "PENDING") p = await this.authorize(p, call, complete);
          if (p.status === "AUTHORIZED" && p.captureMethod === "AUTOMATIC") p = await this.capture(p, undefined, call, complete);
          span.setAttribute("paygate.payment_status", p.status);
          this.logger.info({ paymentId: p.id, merchantId: p.merchantId, status: p.status, ...(p.failureReason ? { failureReason: p.failureReason } : {}) }, "payment processed");
          // Each step ends in this run's own write; the one that ends the request keeps the response.
          return { payment: p, kept: complete !== undefined && p !== entered && endsRequest(p) };
        } catch (err) {
          if (isTransient(err)) {
            this.logger.warn({ paymentId: p.id, err: err instanceof Error ? err.message : String(err) }, "payment paused: will resume");
            span.setAttribute("paygate.payment_status", "PAUSED");
            return { payment: await this.store.get(p.id), kept: false };
          }
          throw err;
        }
      }),
    );
  }

  private async authorize(p: PaymentRecord, call: CallOptions, complete: KeyCompletion | undefined): Promise<PaymentRecord> {
    // Risk and the fx quote do not depend on each other: both are asked at once, and risk's
    // answer is read first (a decline or refusal ends the payment whatever fx said).
    const [scoring, quoting] = await Promise.allSettled([
      p.riskDecisionId === "" ? this.score(p, call) : undefined,
      p.settlementCurrency !== p.currency ? this.quote(p, call) : undefined,
    ]);
    let facts: PaymentPatch = {};
    if (scoring.status === "rejected") throw scoring.reason;
    const scored = scoring.value;
    if (scored !== undefined) {
      if ("refused" in scored) return this.refused(p, scored.refused, facts, complete);
      const { decision } = scored;
      facts = { riskDecisionId: decision!.id, riskScore: decision!.score };
      if (decision!.outcome === Outcome.DECLINE) {
        const reasons = decision!.reasons.filter((r) => !r.shadow).map((r) => r.code).join(", ");
        return this.fail(p, "RISK_DECLINED", `declined by risk (score ${decision!.score}: ${reasons})`, facts, complete);
      }
    }
    if (quoting.status === "rejected") throw quoting.reason;
    const quoted = quoting.value;
    if (quoted !== undefined && "refused" in quoted) return this.refused(p, quoted.refused, facts, complete);
    if (quoted) facts = { ...facts, ...quoted.facts };
    const fx = quoted?.fx;

    const automatic = p.captureMethod === "AUTOMATIC";
    const reserved = await refusal(step(automatic ? "wallet_reserve_capture" : "wallet_reserve", p, () =>
      this.up.wallet.reserve(
        { holdId: p.id, accountId: p.sourceAccountId, destinationAccountId: p.destinationAccountId, amount: money(p.currency, p.amountMinor), fx, capture: automatic },
        call,
      ),
    ));
    if ("refused" in reserved) return this.refused(p, reserved.refused, facts, complete);
    const { hold } = reserved;
    const authorized = { to: "AUTHORIZED" as const, event: "payment.authorized", patch: facts };
    // Only a hold the wallet says it captured makes the payment CAPTURED; one left pending
    // (a wallet that did not capture it) is captured by run() as a step of its own.
    if (!automatic || hold?.status !== HoldStatus.CAPTURED) return this.store.transition(p, authorized, { complete });
    const captured = { capturedMinor: p.amountMinor, settlementCapturedMinor: hold.capturedDestinationAmount!.amountMinor };
    return this.store.transition(p, [authorized, { to: "CAPTURED", event: "payment.captured", patch: captured }], { complete });
  }

  /** Risk's decision on the payment, or its permanent refusal. */
  private async score(p: PaymentRecord, call: CallOptions) {
    const source = await this.accounts.get(p.sourceAccountId, call.signal);
    return refusal(step("risk", p, () =>
      this.up.risk.score(
        {
          paymentId: p.id,
          accountId: p.sourceAccountId,
          destinationAccountId: p.destinationAccountId,
          amount: money(p.currency, p.amountMinor),
          accountCurrency: source.currency,
          accountOpenedAt: source.createdAt,
          merchantId: p.merchantId,
        },
        call,
      ),
    ));
  }

  /**
   * The fx terms the hold is placed on and the facts to store, or fx's permanent refusal: a
   * quote made and used for this payment in one call. Asked again (a resumed saga), fx returns
   * the same quote, so the hold is placed on the same terms; the terms are stored with the
   * payment's outcome.
   */
  private async quote(p: PaymentRecord, call: CallOptions): Promise<{ fx: FxTerms; facts: PaymentPatch } | { refused: ConnectError }> {
    const quoted = await refusal(step("fx_quote", p, () =>
      this.up.fx.createQuote({ source: { case: "amount", value: money(p.currency, p.amountMinor) }, toCurrency: p.settlementCurrency, useReference: p.id }, call),
    ));
    if ("refused" in quoted) return quoted;
    const { quote } = quoted;
    return {
      fx: { rate: quote!.rate, quoteId: quote!.id, destinationAmount: quote!.converted! },
      facts: { fxQuoteId: quote!.id, fxRate: quote!.rate, settlementMinor: quote!.converted!.amountMinor },
    };
  }

  /** Captures `amountMinor` (all when undefined) of an authorized payment; the rest of the hold is released. */
  async capture(p: PaymentRecord, amountMinor: bigint | undefined, call: CallOptions, complete?: KeyCompletion): Promise<PaymentRecord> {
    const captured = amountMinor ?? p.amountMinor;
    let hold;
    try {
      ({ hold } = await step("wallet_capture", p, () => this.up.wallet.capture({ holdId: p.id, amount: amountMinor === undefined ? undefined : money(p.currency, amountMinor) }, call)));
    } catch (err) {
      if (!(err instanceof ConnectError) || isTransient(err)) throw err;
      const reason = reasonOf(err);
      // The hold is gone (expired or released): nothing to undo, the authorization lapsed.
      if (reason === "HOLD_EXPIRED" || reason === "HOLD_RELEASED") {
        return this.store.transition(p, { to: "CANCELED", event: "payment.canceled", patch: { failureReason: "AUTHORIZATION_EXPIRED", failureMessage: err.rawMessage } }, { complete });
      }
      if (p.captureMethod === "MANUAL") throw err; // e.g. more than authorized: the caller's mistake, payment unchanged
      await step("wallet_release", p, () => this.up.wallet.release({ holdId: p.id }, call));
      return this.store.transition(p, { to: "FAILED", event: "payment.failed", patch: { failureReason: reason, failureMessage: err.rawMessage } }, { complete });
    }
    const settlementCaptured = hold!.capturedDestinationAmount?.amountMinor ?? 0n;
    return this.store.transition(p, { to: "CAPTURED", event: "payment.captured", patch: { capturedMinor: captured, settlementCapturedMinor: settlementCaptured } }, { complete });
  }

  /** Ends a payment FAILED for an upstream's permanent refusal, before any money moved. */
  private refused(p: PaymentRecord, err: ConnectError, facts: PaymentPatch, complete: KeyCompletion | undefined): Promise<PaymentRecord> {
    return this.fail(p, reasonOf(err), err.rawMessage, facts, complete);
  }

  /** Ends a payment FAILED before any hold was placed (nothing to undo), with the saga facts gathered so far. */
  private async fail(p: PaymentRecord, reason: string, message: string, facts: PaymentPatch, complete: KeyCompletion | undefined): Promise<PaymentRecord> {
    return this.store.transition(p, { to: "FAILED", event: "payment.failed", patch: { ...facts, failureReason: reason, failureMessage: message } }, { complete });
  }
}
