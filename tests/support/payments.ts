// A payment record as the payments store keeps it, for tests that drive the store or the saga
// directly: a PENDING automatic USD payment of 1.00 between two accounts, with a fresh id.
import type { PaymentRecord } from "../../services/payments/payment.js";

let seq = 0;

export function paymentRecord(over: Partial<PaymentRecord> = {}): PaymentRecord {
  const now = new Date();
  return {
    id: `pay_test_${process.pid}_${++seq}`,
    merchantId: "m_test",
    merchantReference: "",
    sourceAccountId: "src",
    destinationAccountId: "dst",
    currency: "USD",
    amountMinor: 1_00n,
    settlementCurrency: "USD",
    settlementMinor: 1_00n,
    fxRate: null,
    fxQuoteId: null,
    captureMethod: "AUTOMATIC",
    status: "PENDING",
    capturedMinor: 0n,
    settlementCapturedMinor: 0n,
    refundedMinor: 0n,
    settlementRefundedMinor: 0n,
    failureReason: "",
    failureMessage: "",
    riskDecisionId: "",
    riskScore: 0,
    metadata: {},
    version: 0n,
    createdAt: now,
    updatedAt: now,
    ...over,
  };
}
