// What a ledger request must be, the refusals the ledger gives, and the fingerprints that
// make every write idempotent by its caller's id (same id, same fingerprint: a retry).
import { createHash } from "node:crypto";
import { DomainError, failedPrecondition, invalidArgument } from "../../runtime/errors.js";
import { formatMinor } from "../../runtime/money/money.js";
import type { AccountFacts } from "./records.js";

/** A caller's transfer id: present, and not one the ledger derives for itself (`<hold id>:capture`). */
export function requireCallerTransferId(id: string): void {
  requireId(id, "transfer_id");
  if (id.endsWith(":capture")) throw invalidArgument("RESERVED_ID", "transfer_id", `transfer_id: ids ending in ":capture" name the captures of holds`);
}

export function requireId(id: string, field: string): void {
  if (id === "") throw invalidArgument("MISSING_FIELD", field, `${field} is required`);
}

export function requirePositive(amountMinor: bigint, field: string): void {
  if (amountMinor <= 0n) throw invalidArgument("NON_POSITIVE_AMOUNT", field, `${field}: amount must be greater than zero, got ${amountMinor} minor units`);
}

export function requireCurrency(account: AccountFacts, currency: string, field: string): void {
  if (account.currency !== currency) {
    throw invalidArgument("CURRENCY_MISMATCH", field, `${field}: account ${account.id} holds ${account.currency}, not ${currency}`);
  }
}

export function insufficientFunds(accountId: string, currency: string, wanted: bigint, available: bigint): DomainError {
  return failedPrecondition(
    "INSUFFICIENT_FUNDS",
    `account ${accountId} has ${formatMinor(available, currency)} ${currency} available, ${formatMinor(wanted, currency)} ${currency} needed`,
    "amount",
    { available_minor: available.toString() },
  );
}

export function reused(field: string, id: string, what: string): DomainError {
  return new DomainError("already_exists", "ID_REUSED", `${field}: ${JSON.stringify(id)} was already used for ${what}`, field);
}

export function fingerprint(parts: (string | bigint)[]): string {
  return createHash("sha256").update(parts.map(String).join("\u0000")).digest("hex");
}
