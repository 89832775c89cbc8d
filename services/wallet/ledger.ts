// The double-entry ledger: accounts, two-phase transfers (hold -> capture or release or
// expiry), immediate transfers, cross-currency settlement through per-currency liquidity
// accounts, and the reconciliation check. Every write runs in one database transaction and
// is idempotent by the caller's id.
import { createHash } from "node:crypto";
import { SQLSTATE, sqlState, type Database, type Queryable } from "../runtime/db/database.js";
import { DomainError, failedPrecondition, invalidArgument, notFound } from "../runtime/errors.js";
import { newId } from "../runtime/ids.js";
import { formatDecimal, parseDecimal, type Decimal } from "../runtime/money/decimal.js";
import { currencyInfo, formatMinor } from "../runtime/money/money.js";
import { convertMinor } from "../runtime/money/conversion.js";

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

/** What reserve() is asked. */
interface ReserveRequest {
  holdId: string;
  accountId: string;
  destinationAccountId: string;
  currency: string;
  amountMinor: bigint;
  fx: FxTerms | undefined;
  ttlMs: number;
  capture?: boolean;
}

/** The accounts a one-statement write locks, and the one whose available balance must cover an amount. */
interface FundsGate {
  lock: string[];
  funds: { accountId: string; amountMinor: bigint };
}

/** A movement to write: a transfer of `legs` (when it has an id) and a change to a pending total. */
interface Posting {
  transferId?: string;
  kind?: string;
  hash?: string;
  legs: Leg[];
  pending?: { accountId: string; amountMinor: bigint };
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

/** Account facts that never change, kept once read. */
type AccountFacts = Pick<Account, "id" | "ownerId" | "currency" | "kind">;
/** How many account facts a ledger keeps before starting afresh. */
const FACTS_KEPT = 100_000;

/** Ids of Paygate's own accounts, one per currency and kind, created on first use. */
export const systemAccountId = (kind: "LIQUIDITY" | "EXTERNAL", currency: string) => `${kind.toLowerCase()}_${currency}`;

export class Ledger {
  private readonly facts = new Map<string, AccountFacts>();

  constructor(
    private readonly db: Database,
    private readonly now: () => Date = () => new Date(),
  ) {}

  async openAccount(req: { requestId: string; ownerId: string; currency: string; accountId?: string }): Promise<Account> {
    if (req.ownerId === "") throw invalidArgument("MISSING_FIELD", "owner_id", "owner_id is required");
    currencyInfo(req.currency, "currency");
    const chosen = req.accountId ?? "";
    if (chosen !== "" && !/^[A-Za-z0-9_-]{1,64}$/.test(chosen)) {
      throw invalidArgument("INVALID_ACCOUNT_ID", "account_id", "account_id: 1 to 64 letters, digits, '_' or '-'");
    }
    return this.db.transaction(async (tx) => {
      if (chosen !== "") {
        await lockKey(tx, `account:${chosen}`);
        const existing = await accountWhere(tx, "id = $1", [chosen]);
        if (existing) {
          if (existing.ownerId !== req.ownerId || existing.currency !== req.currency || existing.kind !== "USER") throw reused("account_id", chosen, "another account");
          return existing;
        }
      }
      if (req.requestId !== "") {
        // A concurrent duplicate waits here, then finds the first one's account.
        await lockKey(tx, `account:${req.requestId}`);
        const existing = await accountWhere(tx, "request_id = $1", [req.requestId]);
        if (existing) {
          if (existing.ownerId !== req.ownerId || existing.currency !== req.currency) {
            throw reused("request_id", req.requestId, "an account for another owner or currency");
          }
          return existing;
        }
      }
      const { rows } = await tx.query<AccountRow>(
        `INSERT INTO accounts (id, owner_id, currency, kind, request_id, created_at) VALUES ($1, $2, $3, 'USER', $4, $5) RETURNING *`,
        [chosen || newId("acc"), req.ownerId, req.currency, req.requestId || null, this.now()],
      );
      return accountFromRow(rows[0]!);
    });
  }

  async account(id: string): Promise<Account> {
    const found = await accountWhere(this.db, "id = $1", [id]);
    if (!found) throw notFound("ACCOUNT_NOT_FOUND", `account_id: no account ${JSON.stringify(id)}`, "account_id");
    return found;
  }

  async accountsOf(ownerId: string): Promise<Account[]> {
    const { rows } = await this.db.query<AccountRow>("SELECT * FROM accounts WHERE owner_id = $1 AND kind = 'USER' ORDER BY created_at, id", [ownerId]);
    return rows.map(accountFromRow);
  }

  /** Money from outside Paygate into a user account (the world account is debited). */
  async credit(req: { transferId: string; accountId: string; currency: string; amountMinor: bigint }): Promise<Account> {
    requireCallerTransferId(req.transferId);
    requirePositive(req.amountMinor, "amount");
    return this.db.transaction(async (tx) => {
      await lockKey(tx, `transfer:${req.transferId}`);
      const account = await accountOrFail(tx, req.accountId, "account_id");
      requireCurrency(account, req.currency, "amount.currency");
      const hash = fingerprint(["credit", req.accountId, req.currency, req.amountMinor]);
      if (await this.replayed(tx, req.transferId, hash)) return account;
      const locked = await this.lock(tx, [account.id], [{ kind: "EXTERNAL", currency: req.currency }]);
      await this.write(tx, { transferId: req.transferId, kind: "credit", hash, legs: [{ from: systemAccountId("EXTERNAL", req.currency), to: account.id, currency: req.currency, amountMinor: req.amountMinor, kind: "credit" }] });
      const before = locked.get(account.id)!;
      return { ...before, postedMinor: before.postedMinor + req.amountMinor };
    });
  }

  /**
   * Places a hold: the amount stops being available on the source account (which must have
   * it, pending holds included) until it is captured, released or expires. With `capture`
   * the hold is placed and captured whole in the same transaction (automatic capture).
   */
  async reserve(req: ReserveRequest): Promise<Hold> {
    requireId(req.holdId, "hold_id");
    requirePositive(req.amountMinor, "amount");
    // Not the capture flag: a retry with it captures a hold placed without it (same hold).
    const hash = fingerprint(["reserve", req.accountId, req.destinationAccountId, req.currency, req.amountMinor, req.fx?.rate ?? "", req.fx?.quoteId ?? "", req.fx?.destinationMinor ?? ""]);
    const atOnce = await this.placeAtOnce(req, hash);
    if (atOnce) return atOnce;
    const placed = await this.db.transaction(async (tx): Promise<Hold | { capture: bigint }> => {
      // Capturing changes both sides (and the liquidity accounts between two currencies);
      // a plain hold only the source's pending total. Locking the source also queues
      // concurrent duplicates of this hold: the second one then finds the first's.
      let locked;
      if (req.capture) {
        const destinationCurrency = req.fx ? (req.fx.destinationCurrency ?? (await accountOrFail(tx, req.destinationAccountId, "destination_account_id")).currency) : req.currency;
        locked = await this.lock(tx, [req.accountId, req.destinationAccountId], destinationCurrency === req.currency ? [] : liquidity(req.currency, destinationCurrency));
      } else {
        locked = await lockAccounts(tx, [req.accountId]);
      }
      const source = locked.get(req.accountId);
      if (!source) throw notFound("ACCOUNT_NOT_FOUND", `account_id: no account ${JSON.stringify(req.accountId)}`, "account_id");
      const destination = locked.get(req.destinationAccountId) ?? (await accountOrFail(tx, req.destinationAccountId, "destination_account_id"));
      const { hold, posting } = this.placement(req, hash, source, destination);
      const available = source.postedMinor - source.pendingMinor;
      if (source.kind === "USER" && available < req.amountMinor) {
        // Too little for a new hold; a retry of one placed earlier still gets it.
        if (await holdById(tx, req.holdId)) return this.repeatReserve(tx, req.holdId, hash, hold.status === "CAPTURED");
        throw insufficientFunds(source.id, req.currency, req.amountMinor, available);
      }
      // The hold, and its posting or pending total, in one statement; nothing when the id exists.
      return (await this.write(tx, posting, { hold, hash })) ? hold : this.repeatReserve(tx, req.holdId, hash, hold.status === "CAPTURED");
    });
    return "capture" in placed ? this.capture(req.holdId, placed.capture) : placed;
  }

  /**
   * The common reserve in one statement and no explicit transaction: lock the accounts it
   * changes, check the funds (see FUNDS_GATE), insert the hold and write its posting or
   * pending total. Undefined when that statement wrote nothing (an existing hold id, too
   * little money, a missing account, a deadlock, the accounts' no-overdraft check) or a check
   * fails: then reserve() takes its transactional path, which finds the reason and says it.
   */
  private async placeAtOnce(req: ReserveRequest, hash: string): Promise<Hold | undefined> {
    const [source, destination] = await Promise.all([this.accountFacts(req.accountId), this.accountFacts(req.destinationAccountId)]);
    if (!source || !destination || source.currency !== req.currency || source.id === destination.id) return undefined;
    const { hold, posting } = this.placement(req, hash, source, destination);
    const ids = posting.legs.length > 0 ? [...new Set(posting.legs.flatMap((l) => [l.from, l.to]))] : [source.id];
    const gate = { lock: ids, funds: { accountId: source.id, amountMinor: req.amountMinor } };
    const placed = await this.write(this.db, posting, { hold, hash, gate }).catch((err: unknown) => {
      // A deadlock, or the schema's no-overdraft check refusing the new pending total (its
      // account moved while this statement waited for it): the statement wrote nothing.
      const code = sqlState(err);
      if (code === SQLSTATE.deadlockDetected || code === SQLSTATE.checkViolation) return false;
      throw err;
    });
    return placed ? hold : undefined;
  }

  /** A new hold for `req` between these accounts, and what placing it writes. */
  private placement(req: ReserveRequest, hash: string, source: AccountFacts, destination: AccountFacts): { hold: Hold; posting: Posting } {
    requireCurrency(source, req.currency, "amount.currency");
    if (source.id === destination.id) throw invalidArgument("SAME_ACCOUNT", "destination_account_id", "destination_account_id: must differ from account_id");
    const destinationMinor = settle(source.currency, destination.currency, req.amountMinor, req.fx, "fx");
    const captured = req.capture === true;
    const now = this.now();
    const hold = {
      id: req.holdId, accountId: source.id, destinationAccountId: destination.id, currency: source.currency, amountMinor: req.amountMinor,
      destinationCurrency: destination.currency, destinationMinor, fxRate: req.fx?.rate ? formatDecimal(parseDecimal(req.fx.rate, "fx.rate")) : null, fxQuoteId: req.fx?.quoteId || null,
      status: captured ? "CAPTURED" : "PENDING", capturedMinor: captured ? req.amountMinor : null, capturedDestinationMinor: captured ? destinationMinor : null,
      expiresAt: new Date(now.getTime() + req.ttlMs), createdAt: now, resolvedAt: captured ? now : null,
    } satisfies Hold;
    const posting: Posting = captured
      ? { transferId: `${req.holdId}:capture`, kind: "capture", hash: fingerprint(["capture", req.holdId, req.amountMinor]), legs: this.legs(source.id, destination.id, source.currency, req.amountMinor, destination.currency, destinationMinor, "capture") }
      : { legs: [], pending: { accountId: source.id, amountMinor: req.amountMinor } };
    return { hold, posting };
  }

  /** An account's owner, currency and kind (they never change), read once; undefined when there is none. */
  private async accountFacts(id: string): Promise<AccountFacts | undefined> {
    const kept = this.facts.get(id);
    if (kept || id === "") return kept;
    const found = await accountWhere(this.db, "id = $1", [id]);
    if (!found) return undefined;
    if (this.facts.size >= FACTS_KEPT) this.facts.clear();
    const facts = { id: found.id, ownerId: found.ownerId, currency: found.currency, kind: found.kind };
    this.facts.set(id, facts);
    return facts;
  }

  /**
   * Posts `amountMinor` of a pending hold (all of it when undefined) to its destination and
   * releases the rest. Capturing a captured hold again with the same amount returns it.
   */
  async capture(holdId: string, amountMinor: bigint | undefined): Promise<Hold> {
    requireId(holdId, "hold_id");
    if (amountMinor !== undefined) requirePositive(amountMinor, "amount");
    return this.db.transaction(async (tx) => {
      const hold = await this.lockedPendingHold(tx, holdId, (h) => h.status === "CAPTURED" && (amountMinor === undefined || h.capturedMinor === amountMinor));
      if (hold.status !== "PENDING") return hold;
      const captured = amountMinor ?? hold.amountMinor;
      if (captured > hold.amountMinor) {
        throw failedPrecondition("CAPTURE_EXCEEDS_HOLD", `amount: ${formatMinor(captured, hold.currency)} ${hold.currency} is more than the ${formatMinor(hold.amountMinor, hold.currency)} held`, "amount");
      }
      return this.captureHold(tx, hold, captured);
    });
  }

  /** Voids a pending hold. Releasing a released or expired hold returns it unchanged. */
  async release(holdId: string): Promise<Hold> {
    requireId(holdId, "hold_id");
    return this.db.transaction(async (tx) => {
      const hold = await this.lockedPendingHold(tx, holdId, (h) => h.status === "RELEASED" || h.status === "EXPIRED");
      if (hold.status !== "PENDING") return hold;
      await tx.query("UPDATE accounts SET pending_minor = pending_minor - $2 WHERE id = $1", [hold.accountId, hold.amountMinor]);
      return this.resolve(tx, holdId, "RELEASED", null);
    });
  }

  async hold(holdId: string): Promise<Hold> {
    const found = await holdById(this.db, holdId);
    if (!found) throw notFound("HOLD_NOT_FOUND", `hold_id: no hold ${JSON.stringify(holdId)}`, "hold_id");
    return found.hold;
  }

  /** Open holds per currency: how many, how much, and how many are past their expiry. */
  async holdStats(): Promise<{ currency: string; open: number; heldMinor: bigint; overdue: number }[]> {
    const { rows } = await this.db.query<{ currency: string; open: bigint; held: bigint; overdue: bigint }>(
      `SELECT currency, count(*)::int8 AS open, sum(amount_minor)::int8 AS held, count(*) FILTER (WHERE expires_at < $1)::int8 AS overdue
       FROM holds WHERE status = 'PENDING' GROUP BY currency`,
      [this.now()],
    );
    return rows.map((r) => ({ currency: r.currency, open: Number(r.open), heldMinor: r.held, overdue: Number(r.overdue) }));
  }

  /** Expires every pending hold past its time; returns how many. Runs on a timer. */
  async expireHolds(): Promise<number> {
    return this.db.transaction(async (tx) => {
      const { rows } = await tx.query<{ id: string; account_id: string; amount_minor: bigint }>(
        `UPDATE holds SET status = 'EXPIRED', resolved_at = $1 WHERE status = 'PENDING' AND expires_at <= $1 RETURNING id, account_id, amount_minor`,
        [this.now()],
      );
      for (const r of [...rows].sort((a, b) => (a.account_id < b.account_id ? -1 : 1))) {
        await tx.query("UPDATE accounts SET pending_minor = pending_minor - $2 WHERE id = $1", [r.account_id, r.amount_minor]);
      }
      return rows.length;
    });
  }

  /** Posts a movement at once (refunds), with the same no-overdraft rule as holds. */
  async transfer(req: { transferId: string; fromAccountId: string; toAccountId: string; currency: string; amountMinor: bigint; fx: FxTerms | undefined }): Promise<{ amountMinor: bigint; destinationCurrency: string; destinationMinor: bigint }> {
    requireCallerTransferId(req.transferId);
    requirePositive(req.amountMinor, "amount");
    return this.db.transaction(async (tx) => {
      await lockKey(tx, `transfer:${req.transferId}`);
      const destination = await accountOrFail(tx, req.toAccountId, "to_account_id");
      requireId(req.fromAccountId, "from_account_id");
      const locked = await this.lock(tx, [req.fromAccountId, destination.id], destination.currency === req.currency ? [] : liquidity(req.currency, destination.currency));
      const source = locked.get(req.fromAccountId);
      if (!source) throw notFound("ACCOUNT_NOT_FOUND", `from_account_id: no account ${JSON.stringify(req.fromAccountId)}`, "from_account_id");
      requireCurrency(source, req.currency, "amount.currency");
      if (source.id === destination.id) throw invalidArgument("SAME_ACCOUNT", "to_account_id", "to_account_id: must differ from from_account_id");
      const destinationMinor = settle(source.currency, destination.currency, req.amountMinor, req.fx, "fx");
      const result = { amountMinor: req.amountMinor, destinationCurrency: destination.currency, destinationMinor };
      const hash = fingerprint(["transfer", source.id, destination.id, req.currency, req.amountMinor, req.fx?.rate ?? "", req.fx?.destinationMinor ?? ""]);
      if (await this.replayed(tx, req.transferId, hash)) return result;
      const available = source.postedMinor - source.pendingMinor;
      if (source.kind === "USER" && available < req.amountMinor) throw insufficientFunds(source.id, source.currency, req.amountMinor, available);
      await this.write(tx, { transferId: req.transferId, kind: "transfer", hash, legs: this.legs(source.id, destination.id, source.currency, req.amountMinor, destination.currency, destinationMinor, "transfer") });
      return result;
    });
  }

  async entries(accountId: string, pageSize: number, pageToken: string): Promise<{ entries: Entry[]; nextPageToken: string }> {
    await this.account(accountId);
    const size = Math.min(Math.max(pageSize || 50, 1), 500);
    let before: bigint | undefined;
    if (pageToken !== "") {
      if (!/^\d+$/.test(pageToken)) throw invalidArgument("INVALID_PAGE_TOKEN", "page_token", "page_token: not a token this service issued");
      before = BigInt(pageToken);
    }
    const { rows } = await this.db.query<EntryRow>(
      `SELECT * FROM entries WHERE account_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3`,
      [accountId, before ?? null, size + 1],
    );
    const page = rows.slice(0, size).map(entryFromRow);
    return { entries: page, nextPageToken: rows.length > size ? String(page[page.length - 1]!.id) : "" };
  }

  /**
   * The reconciliation check: every account's posted total equals its entries, every pending
   * total equals its open holds, every transfer balances, and every currency sums to zero.
   * Returns the problems found (none when the books are right).
   */
  async reconcile(): Promise<string[]> {
    const problems: string[] = [];
    const posted = await this.db.query<{ id: string; posted_minor: bigint; sum: bigint }>(
      `SELECT a.id, a.posted_minor, coalesce(sum(CASE e.direction WHEN 'CREDIT' THEN e.amount_minor ELSE -e.amount_minor END), 0)::int8 AS sum
       FROM accounts a LEFT JOIN entries e ON e.account_id = a.id GROUP BY a.id, a.posted_minor HAVING a.posted_minor <> coalesce(sum(CASE e.direction WHEN 'CREDIT' THEN e.amount_minor ELSE -e.amount_minor END), 0)`,
    );
    for (const r of posted.rows) problems.push(`account ${r.id}: posted ${r.posted_minor} but entries sum to ${r.sum}`);
    const pending = await this.db.query<{ id: string; pending_minor: bigint; sum: bigint }>(
      `SELECT a.id, a.pending_minor, coalesce(sum(h.amount_minor), 0)::int8 AS sum
       FROM accounts a LEFT JOIN holds h ON h.account_id = a.id AND h.status = 'PENDING' GROUP BY a.id, a.pending_minor HAVING a.pending_minor <> coalesce(sum(h.amount_minor), 0)`,
    );
    for (const r of pending.rows) problems.push(`account ${r.id}: pending ${r.pending_minor} but open holds sum to ${r.sum}`);
    const currencies = await this.db.query<{ currency: string; sum: bigint }>(
      `SELECT currency, sum(posted_minor)::int8 AS sum FROM accounts GROUP BY currency HAVING sum(posted_minor) <> 0`,
    );
    for (const r of currencies.rows) problems.push(`currency ${r.currency}: balances sum to ${r.sum}, not 0`);
    const transfers = await this.db.query<{ transfer_id: string; currency: string }>(
      `SELECT transfer_id, currency FROM entries GROUP BY transfer_id, currency
       HAVING sum(CASE direction WHEN 'CREDIT' THEN amount_minor ELSE -amount_minor END) <> 0`,
    );
    for (const r of transfers.rows) problems.push(`transfer ${r.transfer_id}: ${r.currency} debits and credits differ`);
    const overdrawn = await this.db.query<{ id: string }>(`SELECT id FROM accounts WHERE kind = 'USER' AND posted_minor - pending_minor < 0`);
    for (const r of overdrawn.rows) problems.push(`account ${r.id}: overdrawn`);
    return problems;
  }

  /** Posts `captured` of a locked pending hold and releases all of it from the source's pending total. */
  private async captureHold(tx: Queryable, hold: Hold, captured: bigint): Promise<Hold> {
    // A partial capture of a cross-currency hold converts the captured part at the hold's rate.
    const destinationMinor = captured === hold.amountMinor ? hold.destinationMinor : settle(hold.currency, hold.destinationCurrency, captured, hold.fxRate ? { rate: hold.fxRate, quoteId: "" } : undefined, "fx");
    await this.lock(tx, [hold.accountId, hold.destinationAccountId], hold.currency === hold.destinationCurrency ? [] : liquidity(hold.currency, hold.destinationCurrency));
    const legs = this.legs(hold.accountId, hold.destinationAccountId, hold.currency, captured, hold.destinationCurrency, destinationMinor, "capture");
    await this.write(tx, { transferId: `${hold.id}:capture`, kind: "capture", hash: fingerprint(["capture", hold.id, captured]), legs, pending: { accountId: hold.accountId, amountMinor: -hold.amountMinor } });
    return this.resolve(tx, hold.id, "CAPTURED", captured, destinationMinor);
  }

  /** A reserve whose hold id exists: the same request gets its hold (captured now if asked); another is ID_REUSED. */
  /**
   * A reserve whose hold id exists: the same request gets its hold, another is ID_REUSED.
   * Asked to capture a hold that is not captured whole, it says so (`capture`): that is done
   * by capture() in a transaction of its own, which locks the hold before the accounts as
   * every capture, release and expiry does.
   */
  private async repeatReserve(tx: Queryable, holdId: string, hash: string, capture: boolean): Promise<Hold | { capture: bigint }> {
    const earlier = await holdById(tx, holdId);
    if (!earlier || earlier.requestHash !== hash) throw reused("hold_id", holdId, "a different hold");
    const { hold } = earlier;
    if (!capture || (hold.status === "CAPTURED" && hold.capturedMinor === hold.amountMinor)) return hold;
    return { capture: hold.amountMinor };
  }

  /** The legs moving money from a source to a destination, through liquidity when currencies differ. */
  private legs(from: string, to: string, currency: string, amountMinor: bigint, toCurrency: string, toMinor: bigint, kind: string): Leg[] {
    if (currency === toCurrency) return [{ from, to, currency, amountMinor, kind }];
    const legs: Leg[] = [{ from, to: systemAccountId("LIQUIDITY", currency), currency, amountMinor, kind: `${kind}:fx` }];
    // A conversion that rounds to zero leaves nothing to pay out in the destination currency.
    if (toMinor > 0n) legs.push({ from: systemAccountId("LIQUIDITY", toCurrency), to, currency: toCurrency, amountMinor: toMinor, kind: `${kind}:fx` });
    return legs;
  }

  /**
   * One statement: records a transfer with the entries of its legs (when it has an id) and
   * moves the running totals of every account touched, `pending` adding to a pending total.
   * With `place`, it first inserts that hold and writes the rest only when the hold is new;
   * false when a hold with its id exists (nothing written). The caller has locked the accounts,
   * or `gate` locks them in this statement and lets the hold in only when the funds are there.
   */
  private async write(tx: Queryable, posting: Posting, place?: { hold: Hold; hash: string; gate?: FundsGate }): Promise<boolean> {
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
      posting.transferId ?? null, posting.kind ?? null, posting.hash ?? null, this.now(),
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
  private async replayed(tx: Queryable, id: string, hash: string): Promise<boolean> {
    const { rows } = await tx.query<{ request_hash: string }>("SELECT request_hash FROM transfers WHERE id = $1", [id]);
    if (!rows[0]) return false;
    if (rows[0].request_hash !== hash) throw reused("transfer_id", id, "a different movement");
    return true;
  }

  /**
   * Row-locks the accounts a write changes (`system`: Paygate's own among them, created on
   * first use) and returns them by id. See lockAccounts.
   */
  private async lock(tx: Queryable, ids: string[], system: { kind: "LIQUIDITY" | "EXTERNAL"; currency: string }[] = []): Promise<Map<string, Account>> {
    const all = [...ids, ...system.map((a) => systemAccountId(a.kind, a.currency))];
    const locked = await lockAccounts(tx, all);
    // Created in id order too: two first uses of a currency pair from either side must not deadlock.
    const missing = system.filter((a) => !locked.has(systemAccountId(a.kind, a.currency))).sort((a, b) => (systemAccountId(a.kind, a.currency) < systemAccountId(b.kind, b.currency) ? -1 : 1));
    if (missing.length === 0) return locked;
    for (const a of missing) {
      await tx.query(`INSERT INTO accounts (id, owner_id, currency, kind, created_at) VALUES ($1, 'paygate', $2, $3, $4) ON CONFLICT (id) DO NOTHING`, [
        systemAccountId(a.kind, a.currency),
        a.currency,
        a.kind,
        this.now(),
      ]);
    }
    return lockAccounts(tx, all);
  }

  /**
   * Locks a hold. A pending hold past its expiry is expired first. Returns a resolved hold
   * when `isRetry` says this call repeats the one that resolved it; otherwise a resolved
   * hold is a FAILED_PRECONDITION naming its state.
   */
  private async lockedPendingHold(tx: Queryable, holdId: string, isRetry: (h: Hold) => boolean): Promise<Hold> {
    const { rows } = await tx.query<HoldRow>("SELECT * FROM holds WHERE id = $1 FOR UPDATE", [holdId]);
    if (!rows[0]) throw notFound("HOLD_NOT_FOUND", `hold_id: no hold ${JSON.stringify(holdId)}`, "hold_id");
    let hold = holdFromRow(rows[0]);
    if (hold.status === "PENDING" && hold.expiresAt <= this.now()) {
      await tx.query("UPDATE accounts SET pending_minor = pending_minor - $2 WHERE id = $1", [hold.accountId, hold.amountMinor]);
      hold = await this.resolve(tx, holdId, "EXPIRED", null);
    }
    if (hold.status === "PENDING" || isRetry(hold)) return hold;
    throw failedPrecondition(`HOLD_${hold.status}`, `hold_id: hold ${holdId} is already ${hold.status.toLowerCase()}`, "hold_id", { status: hold.status });
  }

  private async resolve(tx: Queryable, holdId: string, status: HoldStatus, capturedMinor: bigint | null, capturedDestinationMinor: bigint | null = null): Promise<Hold> {
    const { rows } = await tx.query<HoldRow>(
      "UPDATE holds SET status = $2, captured_minor = $3, captured_destination_minor = $4, resolved_at = $5 WHERE id = $1 RETURNING *",
      [holdId, status, capturedMinor, capturedDestinationMinor, this.now()],
    );
    return holdFromRow(rows[0]!);
  }
}

/** What the destination receives: the same amount, or the converted amount at the fx rate. */
function settle(currency: string, destinationCurrency: string, amountMinor: bigint, fx: FxTerms | undefined, field: string): bigint {
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

const liquidity = (...currencies: string[]) => currencies.map((currency) => ({ kind: "LIQUIDITY" as const, currency }));

/**
 * Row-locks accounts in id order and returns them by id (missing ids are skipped). Every
 * write locks all the accounts it changes up front, in this one order, so transactions
 * touching the same accounts queue instead of deadlocking, and reads their balances under
 * the lock. NO KEY UPDATE (what an UPDATE takes) leaves the foreign-key checks of concurrent
 * inserts (KEY SHARE) unblocked.
 */
async function lockAccounts(tx: Queryable, ids: string[]): Promise<Map<string, Account>> {
  const { rows } = await tx.query<AccountRow>("SELECT * FROM accounts WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE", [ids]);
  return new Map(rows.map((r) => [r.id, accountFromRow(r)]));
}

/** Serialises writes that share a caller id, so a concurrent retry sees the first one's result. */
async function lockKey(tx: Queryable, key: string): Promise<void> {
  await tx.query("SELECT pg_advisory_xact_lock(hashtext($1))", [key]);
}

/** A caller's transfer id: present, and not one the ledger derives for itself (`<hold id>:capture`). */
function requireCallerTransferId(id: string): void {
  requireId(id, "transfer_id");
  if (id.endsWith(":capture")) throw invalidArgument("RESERVED_ID", "transfer_id", `transfer_id: ids ending in ":capture" name the captures of holds`);
}

function requireId(id: string, field: string): void {
  if (id === "") throw invalidArgument("MISSING_FIELD", field, `${field} is required`);
}

function requirePositive(amountMinor: bigint, field: string): void {
  if (amountMinor <= 0n) throw invalidArgument("NON_POSITIVE_AMOUNT", field, `${field}: amount must be greater than zero, got ${amountMinor} minor units`);
}

function requireCurrency(account: AccountFacts, currency: string, field: string): void {
  if (account.currency !== currency) {
    throw invalidArgument("CURRENCY_MISMATCH", field, `${field}: account ${account.id} holds ${account.currency}, not ${currency}`);
  }
}

/** A running total pushed past int64 (SQLSTATE 22003): the movement is refused (and rolled back). */
function refuseOutOfRange(err: unknown): never {
  if (sqlState(err) === SQLSTATE.numericValueOutOfRange) throw failedPrecondition("BALANCE_OUT_OF_RANGE", "amount: the movement would take a balance past the largest amount an account can hold", "amount");
  throw err;
}

function insufficientFunds(accountId: string, currency: string, wanted: bigint, available: bigint): DomainError {
  return failedPrecondition(
    "INSUFFICIENT_FUNDS",
    `account ${accountId} has ${formatMinor(available, currency)} ${currency} available, ${formatMinor(wanted, currency)} ${currency} needed`,
    "amount",
    { available_minor: available.toString() },
  );
}

function reused(field: string, id: string, what: string): DomainError {
  return new DomainError("already_exists", "ID_REUSED", `${field}: ${JSON.stringify(id)} was already used for ${what}`, field);
}

function fingerprint(parts: (string | bigint)[]): string {
  return createHash("sha256").update(parts.map(String).join("\u0000")).digest("hex");
}

interface AccountRow {
  id: string;
  owner_id: string;
  currency: string;
  kind: AccountKind;
  posted_minor: bigint;
  pending_minor: bigint;
  created_at: Date;
}

const accountFromRow = (r: AccountRow): Account => ({
  id: r.id,
  ownerId: r.owner_id,
  currency: r.currency,
  kind: r.kind,
  postedMinor: r.posted_minor,
  pendingMinor: r.pending_minor,
  createdAt: r.created_at,
});

async function accountWhere(q: Queryable, where: string, params: unknown[]): Promise<Account | undefined> {
  const { rows } = await q.query<AccountRow>(`SELECT * FROM accounts WHERE ${where}`, params);
  return rows[0] && accountFromRow(rows[0]);
}

async function accountOrFail(q: Queryable, id: string, field: string): Promise<Account> {
  if (id === "") throw invalidArgument("MISSING_FIELD", field, `${field} is required`);
  const found = await accountWhere(q, "id = $1", [id]);
  if (!found) throw notFound("ACCOUNT_NOT_FOUND", `${field}: no account ${JSON.stringify(id)}`, field);
  return found;
}

interface HoldRow {
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

const holdFromRow = (r: HoldRow): Hold => ({
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

async function holdById(q: Queryable, id: string): Promise<{ hold: Hold; requestHash: string } | undefined> {
  const { rows } = await q.query<HoldRow>("SELECT * FROM holds WHERE id = $1", [id]);
  return rows[0] && { hold: holdFromRow(rows[0]), requestHash: rows[0].request_hash };
}

interface EntryRow {
  id: bigint;
  transfer_id: string;
  account_id: string;
  direction: "DEBIT" | "CREDIT";
  currency: string;
  amount_minor: bigint;
  kind: string;
  created_at: Date;
}

const entryFromRow = (r: EntryRow): Entry => ({
  id: r.id,
  transferId: r.transfer_id,
  accountId: r.account_id,
  direction: r.direction,
  currency: r.currency,
  amountMinor: r.amount_minor,
  kind: r.kind,
  createdAt: r.created_at,
});
