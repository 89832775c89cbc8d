// The ledger's records as its code sees them (accounts, holds, entries), the rows they are
// read from, the reads every part of the ledger shares, and the books every part works on.
import type { Database, Queryable } from "../../runtime/db/database.js";
import { invalidArgument, notFound } from "../../runtime/errors.js";
import { formatDecimal, parseDecimal } from "../../runtime/money/decimal.js";

export type AccountKind = "USER" | "LIQUIDITY" | "EXTERNAL";
export type HoldStatus = "PENDING" | "CAPTURED" | "RELEASED" | "EXPIRED";

export interface Account {
  id: string;
  ownerId: string;
  currency: string;
  kind: AccountKind;
  postedMinor: bigint;
  pendingMinor: bigint;
  createdAt: Date;
}

export interface Hold {
  id: string;
  accountId: string;
  destinationAccountId: string;
  currency: string;
  amountMinor: bigint;
  destinationCurrency: string;
  destinationMinor: bigint;
  fxRate: string | null;
  fxQuoteId: string | null;
  status: HoldStatus;
  capturedMinor: bigint | null;
  capturedDestinationMinor: bigint | null;
  expiresAt: Date;
  createdAt: Date;
  resolvedAt: Date | null;
}

export interface Entry {
  id: bigint;
  transferId: string;
  accountId: string;
  direction: "DEBIT" | "CREDIT";
  currency: string;
  amountMinor: bigint;
  kind: string;
  createdAt: Date;
}

/** Account facts that never change, kept once read. */
export type AccountFacts = Pick<Account, "id" | "ownerId" | "currency" | "kind">;

/** What every part of the ledger works on: its database, its clock and the account facts read so far. */
export interface Books {
  readonly db: Database;
  readonly now: () => Date;
  readonly facts: Map<string, AccountFacts>;
}

export interface AccountRow {
  id: string;
  owner_id: string;
  currency: string;
  kind: AccountKind;
  posted_minor: bigint;
  pending_minor: bigint;
  created_at: Date;
}

export const accountFromRow = (r: AccountRow): Account => ({
  id: r.id,
  ownerId: r.owner_id,
  currency: r.currency,
  kind: r.kind,
  postedMinor: r.posted_minor,
  pendingMinor: r.pending_minor,
  createdAt: r.created_at,
});

export async function accountWhere(q: Queryable, where: string, params: unknown[]): Promise<Account | undefined> {
  const { rows } = await q.query<AccountRow>(`SELECT * FROM accounts WHERE ${where}`, params);
  return rows[0] && accountFromRow(rows[0]);
}

export async function accountOrFail(q: Queryable, id: string, field: string): Promise<Account> {
  if (id === "") throw invalidArgument("MISSING_FIELD", field, `${field} is required`);
  const found = await accountWhere(q, "id = $1", [id]);
  if (!found) throw notFound("ACCOUNT_NOT_FOUND", `${field}: no account ${JSON.stringify(id)}`, field);
  return found;
}

export interface HoldRow {
  id: string;
  account_id: string;
  destination_account_id: string;
  currency: string;
  amount_minor: bigint;
  destination_currency: string;
  destination_minor: bigint;
  fx_rate: string | null;
  fx_quote_id: string | null;
  status: HoldStatus;
  captured_minor: bigint | null;
  captured_destination_minor: bigint | null;
  request_hash: string;
  expires_at: Date;
  created_at: Date;
  resolved_at: Date | null;
}

export const holdFromRow = (r: HoldRow): Hold => ({
  id: r.id,
  accountId: r.account_id,
  destinationAccountId: r.destination_account_id,
  currency: r.currency,
  amountMinor: r.amount_minor,
  destinationCurrency: r.destination_currency,
  destinationMinor: r.destination_minor,
  fxRate: r.fx_rate === null ? null : formatDecimal(parseDecimal(r.fx_rate, "fx_rate")),
  fxQuoteId: r.fx_quote_id,
  status: r.status,
  capturedMinor: r.captured_minor,
  capturedDestinationMinor: r.captured_destination_minor,
  expiresAt: r.expires_at,
  createdAt: r.created_at,
  resolvedAt: r.resolved_at,
});

export async function holdById(q: Queryable, id: string): Promise<{ hold: Hold; requestHash: string } | undefined> {
  const { rows } = await q.query<HoldRow>("SELECT * FROM holds WHERE id = $1", [id]);
  return rows[0] && { hold: holdFromRow(rows[0]), requestHash: rows[0].request_hash };
}

export interface EntryRow {
  id: bigint;
  transfer_id: string;
  account_id: string;
  direction: "DEBIT" | "CREDIT";
  currency: string;
  amount_minor: bigint;
  kind: string;
  created_at: Date;
}

export const entryFromRow = (r: EntryRow): Entry => ({
  id: r.id,
  transferId: r.transfer_id,
  accountId: r.account_id,
  direction: r.direction,
  currency: r.currency,
  amountMinor: r.amount_minor,
  kind: r.kind,
  createdAt: r.created_at,
});
