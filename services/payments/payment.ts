// A payment and its state machine: which transitions are legal, and how a payment looks on
// the wire.
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { CaptureMethod, PaymentSchema, PaymentStatus, type Payment } from "../gen/paygate/payments/v1/payments_pb.js";
import { money } from "../runtime/money/money.js";

export type Status = "PENDING" | "AUTHORIZED" | "CAPTURED" | "PARTIALLY_REFUNDED" | "REFUNDED" | "CANCELED" | "FAILED";

/** From each state, the states a payment may move to. Anything else is refused. */
export const TRANSITIONS: Record<Status, readonly Status[]> = {
  PENDING: ["AUTHORIZED", "FAILED"],
  AUTHORIZED: ["CAPTURED", "CANCELED", "FAILED"],
  CAPTURED: ["PARTIALLY_REFUNDED", "REFUNDED"],
  PARTIALLY_REFUNDED: ["PARTIALLY_REFUNDED", "REFUNDED"],
  REFUNDED: [],
  CANCELED: [],
  FAILED: [],
};

export const isFinal = (s: Status) => TRANSITIONS[s].length === 0;

/** A payment whose saga has more to do: the recovery sweep resumes it when its lease runs out. */
export const resumable = (p: Pick<PaymentRecord, "status" | "captureMethod">) => p.status === "PENDING" || (p.status === "AUTHORIZED" && p.captureMethod === "AUTOMATIC");

export interface PaymentRecord {
  id: string;
  merchantId: string;
  merchantReference: string;
  sourceAccountId: string;
  destinationAccountId: string;
  currency: string;
  amountMinor: bigint;
  settlementCurrency: string;
  settlementMinor: bigint | null;
  fxRate: string | null;
  fxQuoteId: string | null;
  captureMethod: "AUTOMATIC" | "MANUAL";
  status: Status;
  capturedMinor: bigint;
  settlementCapturedMinor: bigint;
  refundedMinor: bigint;
  settlementRefundedMinor: bigint;
  failureReason: string;
  failureMessage: string;
  riskDecisionId: string;
  riskScore: number;
  metadata: Record<string, string>;
  /** Bumped by every write: a write names the version it read (optimistic concurrency). */
  version: bigint;
  createdAt: Date;
  updatedAt: Date;
}

const statuses: Record<Status, PaymentStatus> = {
  PENDING: PaymentStatus.PENDING,
  AUTHORIZED: PaymentStatus.AUTHORIZED,
  CAPTURED: PaymentStatus.CAPTURED,
  PARTIALLY_REFUNDED: PaymentStatus.PARTIALLY_REFUNDED,
  REFUNDED: PaymentStatus.REFUNDED,
  CANCELED: PaymentStatus.CANCELED,
  FAILED: PaymentStatus.FAILED,
};

export const statusFromProto = (p: PaymentStatus): Status | undefined => (Object.keys(statuses) as Status[]).find((k) => statuses[k] === p);

export function paymentMessage(p: PaymentRecord): Payment {
  return create(PaymentSchema, {
    id: p.id,
    merchantId: p.merchantId,
    merchantReference: p.merchantReference,
    sourceAccountId: p.sourceAccountId,
    destinationAccountId: p.destinationAccountId,
    amount: money(p.currency, p.amountMinor),
    settlementAmount: p.settlementMinor === null ? undefined : money(p.settlementCurrency, p.settlementMinor),
    fxRate: p.fxRate ?? "",
    fxQuoteId: p.fxQuoteId ?? "",
    captureMethod: p.captureMethod === "MANUAL" ? CaptureMethod.MANUAL : CaptureMethod.AUTOMATIC,
    status: statuses[p.status],
    capturedAmount: money(p.currency, p.capturedMinor),
    refundedAmount: money(p.currency, p.refundedMinor),
    failureReason: p.failureReason,
    failureMessage: p.failureMessage,
    riskDecisionId: p.riskDecisionId,
    riskScore: p.riskScore,
    metadata: p.metadata,
    createdAt: timestampFromDate(p.createdAt),
    updatedAt: timestampFromDate(p.updatedAt),
  });
}
