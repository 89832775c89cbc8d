// Resolving holds (the second phase of a two-phase transfer): a hold resolves exactly once,
// by a capture of all or part of it (the rest released), a release, or its expiry; and the
// reads of holds (one hold, the open holds' figures for the gauges).
import type { Queryable } from "../../runtime/db/database.js";
import { failedPrecondition, notFound } from "../../runtime/errors.js";
import { formatMinor } from "../../runtime/money/money.js";
import { fingerprint, requireId, requirePositive } from "./checks.js";
import { lockWithSystem } from "./locks.js";
import { legs, liquidity, settle, write } from "./posting.js";
import { holdById, holdFromRow, type Books, type Hold, type HoldRow, type HoldStatus } from "./records.js";

/**
 * Posts `amountMinor` of a pending hold (all of it when undefined) to its destination and
 * releases the rest. Capturing a captured hold again with the same amount returns it.
 */
export async function capture(books: Books, holdId: string, amountMinor: bigint | undefined): Promise<Hold> {
  requireId(holdId, "hold_id");
  if (amountMinor !== undefined) requirePositive(amountMinor, "amount");
  return books.db.transaction(async (tx) => {
    const hold = await lockedPendingHold(books, tx, holdId, (h) => h.status === "CAPTURED" && (amountMinor === undefined || h.capturedMinor === amountMinor));
    if (hold.status !== "PENDING") return hold;
    const captured = amountMinor ?? hold.amountMinor;
    if (captured > hold.amountMinor) {
      throw failedPrecondition("CAPTURE_EXCEEDS_HOLD", `amount: ${formatMinor(captured, hold.currency)} ${hold.currency} is more than the ${formatMinor(hold.amountMinor, hold.currency)} held`, "amount");
    }
    return captureHold(books, tx, hold, captured);
  });
}

/** Voids a pending hold. Releasing a released or expired hold returns it unchanged. */
export async function release(books: Books, holdId: string): Promise<Hold> {
  requireId(holdId, "hold_id");
  return books.db.transaction(async (tx) => {
    const hold = await lockedPendingHold(books, tx, holdId, (h) => h.status === "RELEASED" || h.status === "EXPIRED");
    if (hold.status !== "PENDING") return hold;
    await tx.query("UPDATE accounts SET pending_minor = pending_minor - $2 WHERE id = $1", [hold.accountId, hold.amountMinor]);
    return resolve(books, tx, holdId, "RELEASED", null);
  });
}

export async function getHold(books: Books, holdId: string): Promise<Hold> {
  const found = await holdById(books.db, holdId);
  if (!found) throw notFound("HOLD_NOT_FOUND", `hold_id: no hold ${JSON.stringify(holdId)}`, "hold_id");
  return found.hold;
}

/** Open holds per currency: how many, how much, and how many are past their expiry. */
export async function holdStats(books: Books): Promise<{ currency: string; open: number; heldMinor: bigint; overdue: number }[]> {
  const { rows } = await books.db.query<{ currency: string; open: bigint; held: bigint; overdue: bigint }>(
    `SELECT currency, count(*)::int8 AS open, sum(amount_minor)::int8 AS held, count(*) FILTER (WHERE expires_at < $1)::int8 AS overdue
     FROM holds WHERE status = 'PENDING' GROUP BY currency`,
    [books.now()],
  );
  return rows.map((r) => ({ currency: r.currency, open: Number(r.open), heldMinor: r.held, overdue: Number(r.overdue) }));
}

/** Expires every pending hold past its time; returns how many. Runs on a timer. */
export async function expireHolds(books: Books): Promise<number> {
  return books.db.transaction(async (tx) => {
    const { rows } = await tx.query<{ id: string; account_id: string; amount_minor: bigint }>(
      `UPDATE holds SET status = 'EXPIRED', resolved_at = $1 WHERE status = 'PENDING' AND expires_at <= $1 RETURNING id, account_id, amount_minor`,
      [books.now()],
    );
    for (const r of [...rows].sort((a, b) => (a.account_id < b.account_id ? -1 : 1))) {
      await tx.query("UPDATE accounts SET pending_minor = pending_minor - $2 WHERE id = $1", [r.account_id, r.amount_minor]);
    }
    return rows.length;
  });
}

/** Posts `captured` of a locked pending hold and releases all of it from the source's pending total. */
async function captureHold(books: Books, tx: Queryable, hold: Hold, captured: bigint): Promise<Hold> {
  // A partial capture of a cross-currency hold converts the captured part at the hold's rate.
  const destinationMinor = captured === hold.amountMinor ? hold.destinationMinor : settle(hold.currency, hold.destinationCurrency, captured, hold.fxRate ? { rate: hold.fxRate, quoteId: "" } : undefined, "fx");
  await lockWithSystem(tx, books.now, [hold.accountId, hold.destinationAccountId], hold.currency === hold.destinationCurrency ? [] : liquidity(hold.currency, hold.destinationCurrency));
  const moved = legs(hold.accountId, hold.destinationAccountId, hold.currency, captured, hold.destinationCurrency, destinationMinor, "capture");
  await write(tx, books.now, { transferId: `${hold.id}:capture`, kind: "capture", hash: fingerprint(["capture", hold.id, captured]), legs: moved, pending: { accountId: hold.accountId, amountMinor: -hold.amountMinor } });
  return resolve(books, tx, hold.id, "CAPTURED", captured, destinationMinor);
}

/**
 * Locks a hold. A pending hold past its expiry is expired first. Returns a resolved hold
 * when `isRetry` says this call repeats the one that resolved it; otherwise a resolved
 * hold is a FAILED_PRECONDITION naming its state.
 */
async function lockedPendingHold(books: Books, tx: Queryable, holdId: string, isRetry: (h: Hold) => boolean): Promise<Hold> {
  const { rows } = await tx.query<HoldRow>("SELECT * FROM holds WHERE id = $1 FOR UPDATE", [holdId]);
  if (!rows[0]) throw notFound("HOLD_NOT_FOUND", `hold_id: no hold ${JSON.stringify(holdId)}`, "hold_id");
  let hold = holdFromRow(rows[0]);
  if (hold.status === "PENDING" && hold.expiresAt <= books.now()) {
    await tx.query("UPDATE accounts SET pending_minor = pending_minor - $2 WHERE id = $1", [hold.accountId, hold.amountMinor]);
    hold = await resolve(books, tx, holdId, "EXPIRED", null);
  }
  if (hold.status === "PENDING" || isRetry(hold)) return hold;
  throw failedPrecondition(`HOLD_${hold.status}`, `hold_id: hold ${holdId} is already ${hold.status.toLowerCase()}`, "hold_id", { status: hold.status });
}

async function resolve(books: Books, tx: Queryable, holdId: string, status: HoldStatus, capturedMinor: bigint | null, capturedDestinationMinor: bigint | null = null): Promise<Hold> {
  const { rows } = await tx.query<HoldRow>(
    "UPDATE holds SET status = $2, captured_minor = $3, captured_destination_minor = $4, resolved_at = $5 WHERE id = $1 RETURNING *",
    [holdId, status, capturedMinor, capturedDestinationMinor, books.now()],
  );
  return holdFromRow(rows[0]!);
}
