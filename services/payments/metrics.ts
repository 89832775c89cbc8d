// Business metrics of payments: outcomes and volumes by currency (amounts in minor units, so
// sums stay exact integers per currency), and idempotent replays.
import { counter } from "../runtime/observability/metrics.js";
import type { PaymentRecord } from "./payment.js";

const payments = counter("paygate_payments_total", "Payments reaching each status, by status and currency.", ["status", "currency"]);
const captured = counter("paygate_payments_captured_minor_total", "Captured volume in minor units of the payment currency.", ["currency"]);
const refunded = counter("paygate_payments_refunded_minor_total", "Refunded volume in minor units of the payment currency.", ["currency"]);
const failures = counter("paygate_payments_failed_total", "Failed payments by stable failure reason.", ["reason"]);
const replays = counter("paygate_idempotent_replays_total", "Requests answered from an earlier request with the same Idempotency-Key.", ["operation"]);

/** Records a payment that just reached `p.status`; `refundedBefore` when a refund moved it. */
export function recordStatus(p: PaymentRecord, refundedBefore?: bigint): void {
  payments.inc({ status: p.status, currency: p.currency });
  if (p.status === "CAPTURED") captured.inc({ currency: p.currency }, Number(p.capturedMinor));
  if (p.status === "FAILED") failures.inc({ reason: p.failureReason || "UNKNOWN" });
  if (refundedBefore !== undefined && p.refundedMinor > refundedBefore) refunded.inc({ currency: p.currency }, Number(p.refundedMinor - refundedBefore));
}

export function recordReplay(operation: string): void {
  replays.inc({ operation });
}
