// How money moves in the books: what the destination receives (the same amount, or the
// amount converted at the fx rate), the legs of a movement (through Paygate's per-currency
// liquidity accounts when currencies differ), and the one statement that writes a transfer,
// its entries and every running total together (optionally inserting a hold first, behind a
// funds check), so every transfer balances.
import { SQLSTATE, sqlState, type Queryable } from "../../runtime/db/database.js";
import { failedPrecondition, invalidArgument } from "../../runtime/errors.js";
import { formatDecimal, parseDecimal, type Decimal } from "../../runtime/money/decimal.js";
import { currencyInfo } from "../../runtime/money/money.js";
import { convertMinor } from "../../runtime/money/conversion.js";
import { reused } from "./checks.js";
import type { Hold } from "./records.js";

export interface FxTerms {
  rate: string;
  quoteId: string;
  /** What the destination receives, when the caller fixed it; otherwise amount × rate. */
  destinationMinor?: bigint | undefined;
  destinationCurrency?: string | undefined;
}

/** One leg of a posting: money leaves `from` and reaches `to`, same currency, same amount. */
interface Leg {
  from: string;
  to: string;
  currency: string;
  amountMinor: bigint;
  kind: string;
}

/** The accounts a one-statement write locks, and the one whose available balance must cover an amount. */
export interface FundsGate {
  lock: string[];
  funds: { accountId: string; amountMinor: bigint };
}

/** A movement to write: a transfer of `legs` (when it has an id) and a change to a pending total. */
export interface Posting {
  transferId?: string;
  kind?: string;
  hash?: string;
  legs: Leg[];
  pending?: { accountId: string; amountMinor: bigint };
}

/** Ids of Paygate's own accounts, one per currency and kind, created on first use. */
export const systemAccountId = (kind: "LIQUIDITY" | "EXTERNAL", currency: string) => `${kind.toLowerCase()}_${currency}`;

export const liquidity = (...currencies: string[]) => currencies.map((currency) => ({ kind: "LIQUIDITY" as const, currency }));

/** What the destination receives: the same amount, or the converted amount at the fx rate. */
export function settle(currency: string, destinationCurrency: string, amountMinor: bigint, fx: FxTerms | undefined, field: string): bigint {
  if (currency === destinationCurrency) {
    if (fx) throw invalidArgument("FX_NOT_EXPECTED", field, `${field}: both accounts are in ${currency}; no fx settlement applies`);
    return amountMinor;
  }
  if (fx?.destinationMinor !== undefined) {
    if (fx.destinationCurrency !== destinationCurrency) {
      throw invalidArgument("CURRENCY_MISMATCH", `${field}.destination_amount.currency`, `${field}.destination_amount.currency: the destination account holds ${destinationCurrency}, not ${fx.destinationCurrency}`);
    }
    if (fx.destinationMinor < 0n) throw invalidArgument("NON_POSITIVE_AMOUNT", `${field}.destination_amount`, `${field}.destination_amount: must not be negative`);
    return fx.destinationMinor;
  }
  if (!fx || fx.rate === "") throw invalidArgument("FX_REQUIRED", `${field}.rate`, `${field}.rate: accounts are in ${currency} and ${destinationCurrency}; a rate is required`);
  const rate: Decimal = parseDecimal(fx.rate, `${field}.rate`);
  if (rate.mantissa <= 0n) throw invalidArgument("INVALID_RATE", `${field}.rate`, `${field}.rate: must be positive, got ${formatDecimal(rate)}`);
  return convertMinor(amountMinor, currencyInfo(currency, "currency").minorUnits, rate, currencyInfo(destinationCurrency, "currency").minorUnits, "half_even").convertedMinor;
}

/** The legs moving money from a source to a destination, through liquidity when currencies differ. */
export function legs(from: string, to: string, currency: string, amountMinor: bigint, toCurrency: string, toMinor: bigint, kind: string): Leg[] {
  if (currency === toCurrency) return [{ from, to, currency, amountMinor, kind }];
  const out: Leg[] = [{ from, to: systemAccountId("LIQUIDITY", currency), currency, amountMinor, kind: `${kind}:fx` }];
  // A conversion that rounds to zero leaves nothing to pay out in the destination currency.
  if (toMinor > 0n) out.push({ from: systemAccountId("LIQUIDITY", toCurrency), to, currency: toCurrency, amountMinor: toMinor, kind: `${kind}:fx` });
  return out;
}

/**
 * The CTE inserting a new hold (parameters $13..$28), yielding no row when its id exists or
 * when `gate` (a CTE name) yields none.
 */
const holdInsert = (gate: string | undefined) => `hold AS (
  INSERT INTO holds (id, account_id, destination_account_id, currency, amount_minor, destination_currency, destination_minor,
    fx_rate, fx_quote_id, status, captured_minor, captured_destination_minor, request_hash, expires_at, created_at, resolved_at)
  SELECT $13::text, $14::text, $15::text, $16::text, $17::int8, $18::text, $19::int8, $20::numeric, $21::text, $22::text, $23::int8, $24::int8,
    $25::text, $26::timestamptz, $27::timestamptz, $28::timestamptz ${gate ? `FROM ${gate}` : ""}
  ON CONFLICT (id) DO NOTHING RETURNING id)`;

/**
 * CTEs that row-lock accounts $29 in id order (as lockAccounts does) and yield one row only
 * when all of them exist and account $30, if a user account, shows $31 available: the first
 * funds check of a one-statement placement. The balance read here may predate a movement
 * that committed while the statement waited for the lock; the last word is the accounts'
 * no-overdraft CHECK, applied to the updated totals, which fails the whole statement.
 */
const FUNDS_GATE = `locked AS (SELECT id, kind, posted_minor, pending_minor FROM accounts WHERE id = ANY($29::text[]) ORDER BY id FOR NO KEY UPDATE),
       gate AS (SELECT 1 WHERE (SELECT count(*) FROM locked) = cardinality($29::text[])
         AND NOT EXISTS (SELECT 1 FROM locked WHERE id = $30 AND kind = 'USER' AND posted_minor - pending_minor < $31::int8))`;

/**
 * One statement: records a transfer with the entries of its legs (when it has an id) and
 * moves the running totals of every account touched, `pending` adding to a pending total.
 * With `place`, it first inserts that hold and writes the rest only when the hold is new;
 * false when a hold with its id exists (nothing written). The caller has locked the accounts,
 * or `gate` locks them in this statement and lets the hold in only when the funds are there.
 */
export async function write(tx: Queryable, now: () => Date, posting: Posting, place?: { hold: Hold; hash: string; gate?: FundsGate }): Promise<boolean> {
  const entries = posting.legs.flatMap((l) => [
    { account: l.from, direction: "DEBIT", leg: l },
    { account: l.to, direction: "CREDIT", leg: l },
  ]);
  const totals = new Map<string, { posted: bigint; pending: bigint }>();
  const change = (id: string) => totals.get(id) ?? totals.set(id, { posted: 0n, pending: 0n }).get(id)!;
  for (const leg of posting.legs) {
    change(leg.from).posted -= leg.amountMinor;
    change(leg.to).posted += leg.amountMinor;
  }
  if (posting.pending) change(posting.pending.accountId).pending += posting.pending.amountMinor;
  const ids = [...totals.keys()];
  const h = place?.hold;
  const gate = place?.gate;
  const sql = `WITH ${gate ? `${FUNDS_GATE},` : ""} ${h ? holdInsert(gate && "gate") : "hold AS (SELECT 1)"},
       transfer AS (INSERT INTO transfers (id, kind, request_hash, created_at) SELECT $1, $2, $3, $4 FROM hold WHERE $1::text IS NOT NULL),
       entries AS (
         INSERT INTO entries (transfer_id, account_id, direction, currency, amount_minor, kind, created_at)
         SELECT $1, e.account_id, e.direction, e.currency, e.amount_minor, e.kind, $4
         FROM hold, unnest($5::text[], $6::text[], $7::text[], $8::int8[], $9::text[]) WITH ORDINALITY AS e(account_id, direction, currency, amount_minor, kind, n)
         ORDER BY e.n),
       totals AS (
         UPDATE accounts a SET posted_minor = a.posted_minor + d.posted, pending_minor = a.pending_minor + d.pending
         FROM hold, unnest($10::text[], $11::int8[], $12::int8[]) AS d(id, posted, pending) WHERE a.id = d.id)
       SELECT 1 FROM hold`;
  const params = [
    posting.transferId ?? null, posting.kind ?? null, posting.hash ?? null, now(),
    entries.map((e) => e.account), entries.map((e) => e.direction), entries.map((e) => e.leg.currency), entries.map((e) => e.leg.amountMinor), entries.map((e) => e.leg.kind),
    ids, ids.map((id) => totals.get(id)!.posted), ids.map((id) => totals.get(id)!.pending),
    ...(h ? [h.id, h.accountId, h.destinationAccountId, h.currency, h.amountMinor, h.destinationCurrency, h.destinationMinor, h.fxRate, h.fxQuoteId,
      h.status, h.capturedMinor, h.capturedDestinationMinor, place.hash, h.expiresAt, h.createdAt, h.resolvedAt] : []),
    ...(gate ? [gate.lock, gate.funds.accountId, gate.funds.amountMinor] : []),
  ];
  const { rowCount } = await tx.query(sql, params).catch(refuseOutOfRange);
  return rowCount > 0;
}

/** True when transfer `id` exists for the same request (a retry); ID_REUSED when for another. */
export async function replayed(tx: Queryable, id: string, hash: string): Promise<boolean> {
  const { rows } = await tx.query<{ request_hash: string }>("SELECT request_hash FROM transfers WHERE id = $1", [id]);
  if (!rows[0]) return false;
  if (rows[0].request_hash !== hash) throw reused("transfer_id", id, "a different movement");
  return true;
}

/** A running total pushed past int64 (SQLSTATE 22003): the movement is refused (and rolled back). */
function refuseOutOfRange(err: unknown): never {
  if (sqlState(err) === SQLSTATE.numericValueOutOfRange) throw failedPrecondition("BALANCE_OUT_OF_RANGE", "amount: the movement would take a balance past the largest amount an account can hold", "amount");
  throw err;
}
