// Placing a hold (the first phase of a two-phase transfer): the amount stops being available
// on the source account until the hold is captured, released or expires. The common case is
// one statement with no explicit transaction; anything unusual takes a transaction that finds
// the reason and says it. With automatic capture the hold is placed and captured together.
import { SQLSTATE, sqlState, type Queryable } from "../../runtime/db/database.js";
import { invalidArgument, notFound } from "../../runtime/errors.js";
import { formatDecimal, parseDecimal } from "../../runtime/money/decimal.js";
import { fingerprint, insufficientFunds, requireCurrency, requireId, requirePositive, reused } from "./checks.js";
import { capture } from "./holds.js";
import { lockAccounts, lockWithSystem } from "./locks.js";
import { legs, liquidity, settle, write, type FxTerms, type Posting } from "./posting.js";
import { accountOrFail, accountWhere, holdById, type AccountFacts, type Books, type Hold } from "./records.js";

/** What reserve() is asked. */
export interface ReserveRequest {
  holdId: string;
  accountId: string;
  destinationAccountId: string;
  currency: string;
  amountMinor: bigint;
  fx: FxTerms | undefined;
  ttlMs: number;
  capture?: boolean;
}

/** How many account facts a ledger keeps before starting afresh. */
const FACTS_KEPT = 100_000;

/**
 * Places a hold: the amount stops being available on the source account (which must have
 * it, pending holds included) until it is captured, released or expires. With `capture`
 * the hold is placed and captured whole in the same transaction (automatic capture).
 */
export async function reserve(books: Books, req: ReserveRequest): Promise<Hold> {
  requireId(req.holdId, "hold_id");
  requirePositive(req.amountMinor, "amount");
  // Not the capture flag: a retry with it captures a hold placed without it (same hold).
  const hash = fingerprint(["reserve", req.accountId, req.destinationAccountId, req.currency, req.amountMinor, req.fx?.rate ?? "", req.fx?.quoteId ?? "", req.fx?.destinationMinor ?? ""]);
  const atOnce = await placeAtOnce(books, req, hash);
  if (atOnce) return atOnce;
  const placed = await books.db.transaction(async (tx): Promise<Hold | { capture: bigint }> => {
    // Capturing changes both sides (and the liquidity accounts between two currencies);
    // a plain hold only the source's pending total. Locking the source also queues
    // concurrent duplicates of this hold: the second one then finds the first's.
    let locked;
    if (req.capture) {
      const destinationCurrency = req.fx ? (req.fx.destinationCurrency ?? (await accountOrFail(tx, req.destinationAccountId, "destination_account_id")).currency) : req.currency;
      locked = await lockWithSystem(tx, books.now, [req.accountId, req.destinationAccountId], destinationCurrency === req.currency ? [] : liquidity(req.currency, destinationCurrency));
    } else {
      locked = await lockAccounts(tx, [req.accountId]);
    }
    const source = locked.get(req.accountId);
    if (!source) throw notFound("ACCOUNT_NOT_FOUND", `account_id: no account ${JSON.stringify(req.accountId)}`, "account_id");
    const destination = locked.get(req.destinationAccountId) ?? (await accountOrFail(tx, req.destinationAccountId, "destination_account_id"));
    const { hold, posting } = placement(books, req, hash, source, destination);
    const available = source.postedMinor - source.pendingMinor;
    if (source.kind === "USER" && available < req.amountMinor) {
      // Too little for a new hold; a retry of one placed earlier still gets it.
      if (await holdById(tx, req.holdId)) return repeatReserve(tx, req.holdId, hash, hold.status === "CAPTURED");
      throw insufficientFunds(source.id, req.currency, req.amountMinor, available);
    }
    // The hold, and its posting or pending total, in one statement; nothing when the id exists.
    return (await write(tx, books.now, posting, { hold, hash })) ? hold : repeatReserve(tx, req.holdId, hash, hold.status === "CAPTURED");
  });
  return "capture" in placed ? capture(books, req.holdId, placed.capture) : placed;
}

/**
 * The common reserve in one statement and no explicit transaction: lock the accounts it
 * changes, check the funds (see FUNDS_GATE in posting.ts), insert the hold and write its
 * posting or pending total. Undefined when that statement wrote nothing (an existing hold
 * id, too little money, a missing account, a deadlock, the accounts' no-overdraft check) or
 * a check fails: then reserve() takes its transactional path, which finds the reason and
 * says it.
 */
async function placeAtOnce(books: Books, req: ReserveRequest, hash: string): Promise<Hold | undefined> {
  const [source, destination] = await Promise.all([accountFacts(books, req.accountId), accountFacts(books, req.destinationAccountId)]);
  if (!source || !destination || source.currency !== req.currency || source.id === destination.id) return undefined;
  const { hold, posting } = placement(books, req, hash, source, destination);
  const ids = posting.legs.length > 0 ? [...new Set(posting.legs.flatMap((l) => [l.from, l.to]))] : [source.id];
  const gate = { lock: ids, funds: { accountId: source.id, amountMinor: req.amountMinor } };
  const placed = await write(books.db, books.now, posting, { hold, hash, gate }).catch((err: unknown) => {
    // A deadlock, or the schema's no-overdraft check refusing the new pending total (its
    // account moved while this statement waited for it): the statement wrote nothing.
    const code = sqlState(err);
    if (code === SQLSTATE.deadlockDetected || code === SQLSTATE.checkViolation) return false;
    throw err;
  });
  return placed ? hold : undefined;
}

/** A new hold for `req` between these accounts, and what placing it writes. */
function placement(books: Books, req: ReserveRequest, hash: string, source: AccountFacts, destination: AccountFacts): { hold: Hold; posting: Posting } {
  requireCurrency(source, req.currency, "amount.currency");
  if (source.id === destination.id) throw invalidArgument("SAME_ACCOUNT", "destination_account_id", "destination_account_id: must differ from account_id");
  const destinationMinor = settle(source.currency, destination.currency, req.amountMinor, req.fx, "fx");
  const captured = req.capture === true;
  const now = books.now();
  const hold = {
    id: req.holdId, accountId: source.id, destinationAccountId: destination.id, currency: source.currency, amountMinor: req.amountMinor,
    destinationCurrency: destination.currency, destinationMinor, fxRate: req.fx?.rate ? formatDecimal(parseDecimal(req.fx.rate, "fx.rate")) : null, fxQuoteId: req.fx?.quoteId || null,
    status: captured ? "CAPTURED" : "PENDING", capturedMinor: captured ? req.amountMinor : null, capturedDestinationMinor: captured ? destinationMinor : null,
    expiresAt: new Date(now.getTime() + req.ttlMs), createdAt: now, resolvedAt: captured ? now : null,
  } satisfies Hold;
  const posting: Posting = captured
    ? { transferId: `${req.holdId}:capture`, kind: "capture", hash: fingerprint(["capture", req.holdId, req.amountMinor]), legs: legs(source.id, destination.id, source.currency, req.amountMinor, destination.currency, destinationMinor, "capture") }
    : { legs: [], pending: { accountId: source.id, amountMinor: req.amountMinor } };
  return { hold, posting };
}

/** An account's owner, currency and kind (they never change), read once; undefined when there is none. */
async function accountFacts(books: Books, id: string): Promise<AccountFacts | undefined> {
  const kept = books.facts.get(id);
  if (kept || id === "") return kept;
  const found = await accountWhere(books.db, "id = $1", [id]);
  if (!found) return undefined;
  if (books.facts.size >= FACTS_KEPT) books.facts.clear();
  const facts = { id: found.id, ownerId: found.ownerId, currency: found.currency, kind: found.kind };
  books.facts.set(id, facts);
  return facts;
}

/**
 * A reserve whose hold id exists: the same request gets its hold, another is ID_REUSED.
 * Asked to capture a hold that is not captured whole, it says so (`capture`): that is done
 * by capture() in a transaction of its own, which locks the hold before the accounts as
 * every capture, release and expiry does.
 */
async function repeatReserve(tx: Queryable, holdId: string, hash: string, captureAsked: boolean): Promise<Hold | { capture: bigint }> {
  const earlier = await holdById(tx, holdId);
  if (!earlier || earlier.requestHash !== hash) throw reused("hold_id", holdId, "a different hold");
  const { hold } = earlier;
  if (!captureAsked || (hold.status === "CAPTURED" && hold.capturedMinor === hold.amountMinor)) return hold;
  return { capture: hold.amountMinor };
}
