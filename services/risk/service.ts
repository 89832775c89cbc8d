// RiskService: gathers the facts about a payment (amount in the base currency at a cached fx
// rate, the account's recent payments, its age), runs the rules and records the decision.
import { createHash } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { Client, ServiceImpl } from "@connectrpc/connect";
import type { FxService } from "../gen/paygate/fx/v1/fx_pb.js";
import { DecisionSchema, Outcome as OutcomeProto, RiskService, type Decision, type ScoreRequest } from "../gen/paygate/risk/v1/risk_pb.js";
import { DomainError, invalidArgument, notFound } from "../runtime/errors.js";
import { newId } from "../runtime/ids.js";
import { counter } from "../runtime/observability/metrics.js";
import { currencyInfo, money, readMoney, requirePositive } from "../runtime/money/money.js";
import { BaseRates } from "./rates.js";
import { evaluate, type Outcome, type RuleSet } from "./rules.js";
import type { DecisionRecord, DecisionStore } from "./store.js";

const decisionsMetric = counter("paygate_risk_decisions_total", "Risk decisions by enforced outcome.", ["outcome"]);
const reasonsMetric = counter("paygate_risk_reasons_total", "Risk rules that fired, by reason code and whether they ran in shadow.", ["reason", "shadow"]);

export interface RiskDeps {
  rules: RuleSet;
  store: DecisionStore;
  fx: Client<typeof FxService>;
  upstreamTimeoutMs: number;
  /** How long a cached fx rate is used (see rates.ts). */
  fxRateMaxAgeMs: number;
  now: () => Date;
}

const outcomes: Record<Outcome, OutcomeProto> = {
  APPROVE: OutcomeProto.APPROVE,
  REVIEW: OutcomeProto.REVIEW,
  DECLINE: OutcomeProto.DECLINE,
};

export function riskService(deps: RiskDeps): ServiceImpl<typeof RiskService> {
  const { rules, store } = deps;

  const rates = new BaseRates({ fx: deps.fx, baseCurrency: rules.baseCurrency, maxAgeMs: deps.fxRateMaxAgeMs, upstreamTimeoutMs: deps.upstreamTimeoutMs, now: deps.now });

  return {
    async score(req, ctx) {
      const input = validate(req);
      const requestHash = fingerprint(input);
      let base: bigint | undefined;
      try {
        base = await rates.baseAmount(input.currency, input.amountMinor, ctx);
      } catch (err) {
        // A payment scored already gets its decision (or PAYMENT_ALREADY_SCORED) whatever fx said.
        const earlier = await store.byPayment(input.paymentId);
        if (earlier) return { decision: toProto(sameRequest(earlier, requestHash)) };
        throw err;
      }
      const windows = (now: Date) => rules.velocity.map((r) => new Date(now.getTime() - r.windowMs));
      const { record: decision, isNew } = await store.score(input.paymentId, input.accountId, deps.now, windows, (facts, now) => {
        if (facts.earlier) return { record: sameRequest(facts.earlier, requestHash), isNew: false };
        // Risk sees the account now even when this caller says when it was opened: a later
        // payment without account_opened_at must not take the account for a new one.
        const openedAt = input.accountOpenedAt ?? facts.firstSeen;
        const result = evaluate(rules, {
          accountId: input.accountId,
          currency: input.currency,
          accountCurrency: input.accountCurrency,
          baseAmountMinor: base,
          accountAgeMs: now.getTime() - openedAt.getTime(),
          windows: facts.windows,
        });
        const record: DecisionRecord = {
          id: newId("rd"),
          ...input,
          baseCurrency: rules.baseCurrency,
          baseAmountMinor: base ?? null,
          ...result,
          rulesVersion: rules.version,
          requestHash,
          createdAt: now,
        };
        return { record, isNew: true };
      });
      if (isNew) {
        decisionsMetric.inc({ outcome: decision.outcome });
        for (const r of decision.reasons) reasonsMetric.inc({ reason: r.code, shadow: String(r.shadow) });
      }
      return { decision: toProto(decision) };
    },

    async getDecision(req) {
      let found: DecisionRecord | undefined;
      if (req.key.case === "decisionId" && req.key.value !== "") found = await store.byId(req.key.value);
      else if (req.key.case === "paymentId" && req.key.value !== "") found = await store.byPayment(req.key.value);
      else throw invalidArgument("MISSING_FIELD", "decision_id", "decision_id or payment_id is required");
      if (!found) throw notFound("DECISION_NOT_FOUND", `no risk decision for ${req.key.case === "decisionId" ? "decision_id" : "payment_id"} ${JSON.stringify(req.key.value)}`, req.key.case === "decisionId" ? "decision_id" : "payment_id");
      return { decision: toProto(found) };
    },
  };
}

interface ScoreInput {
  paymentId: string;
  merchantId: string;
  accountId: string;
  destinationAccountId: string;
  currency: string;
  amountMinor: bigint;
  accountCurrency: string;
  accountOpenedAt: Date | undefined;
}

function validate(req: ScoreRequest): ScoreInput {
  if (req.paymentId === "") throw invalidArgument("MISSING_FIELD", "payment_id", "payment_id is required");
  if (req.accountId === "") throw invalidArgument("MISSING_FIELD", "account_id", "account_id is required");
  const amount = readMoney(req.amount, "amount");
  requirePositive(amount.amountMinor, "amount");
  if (req.accountCurrency !== "") currencyInfo(req.accountCurrency, "account_currency");
  return {
    paymentId: req.paymentId,
    merchantId: req.merchantId,
    accountId: req.accountId,
    destinationAccountId: req.destinationAccountId,
    currency: amount.currency,
    amountMinor: amount.amountMinor,
    accountCurrency: req.accountCurrency,
    accountOpenedAt: req.accountOpenedAt ? timestampDate(req.accountOpenedAt) : undefined,
  };
}

function fingerprint(input: ScoreInput): string {
  const canonical = JSON.stringify({ ...input, amountMinor: input.amountMinor.toString(), accountOpenedAt: input.accountOpenedAt?.toISOString() ?? null });
  return createHash("sha256").update(canonical).digest("hex");
}

/** A payment is scored once: the same request gets the recorded decision, another is refused. */
function sameRequest(earlier: DecisionRecord, requestHash: string): DecisionRecord {
  if (earlier.requestHash !== requestHash) {
    throw new DomainError("already_exists", "PAYMENT_ALREADY_SCORED", `payment_id: payment ${earlier.paymentId} was already scored with different details`, "payment_id");
  }
  return earlier;
}

function toProto(d: DecisionRecord): Decision {
  return create(DecisionSchema, {
    id: d.id,
    paymentId: d.paymentId,
    merchantId: d.merchantId,
    accountId: d.accountId,
    amount: money(d.currency, d.amountMinor),
    baseAmount: d.baseAmountMinor === null ? undefined : money(d.baseCurrency, d.baseAmountMinor),
    score: d.score,
    outcome: outcomes[d.outcome],
    reasons: d.reasons,
    shadowScore: d.shadowScore,
    shadowOutcome: outcomes[d.shadowOutcome],
    rulesVersion: d.rulesVersion,
    createdAt: timestampFromDate(d.createdAt),
  });
}
