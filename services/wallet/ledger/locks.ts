// How the ledger's writes serialise: account rows locked in one order (Paygate's own
// accounts created on first use), and advisory locks on a caller's id.
import type { Queryable } from "../../runtime/db/database.js";
import { systemAccountId } from "./posting.js";
import { accountFromRow, type Account, type AccountRow } from "./records.js";

/**
 * Row-locks accounts in id order and returns them by id (missing ids are skipped). Every
 * write locks all the accounts it changes up front, in this one order, so transactions
 * touching the same accounts queue instead of deadlocking, and reads their balances under
 * the lock. NO KEY UPDATE (what an UPDATE takes) leaves the foreign-key checks of concurrent
 * inserts (KEY SHARE) unblocked.
 */
export async function lockAccounts(tx: Queryable, ids: string[]): Promise<Map<string, Account>> {
  const { rows } = await tx.query<AccountRow>("SELECT * FROM accounts WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE", [ids]);
  return new Map(rows.map((r) => [r.id, accountFromRow(r)]));
}

/**
 * Row-locks the accounts a write changes (`system`: Paygate's own among them, created on
 * first use, at `now()`) and returns them by id. See lockAccounts.
 */
export async function lockWithSystem(
  tx: Queryable,
  now: () => Date,
  ids: string[],
  system: { kind: "LIQUIDITY" | "EXTERNAL"; currency: string }[] = [],
): Promise<Map<string, Account>> {
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
      now(),
    ]);
  }
  return lockAccounts(tx, all);
}

/** Serialises writes that share a caller id, so a concurrent retry sees the first one's result. */
export async function lockKey(tx: Queryable, key: string): Promise<void> {
  await tx.query("SELECT pg_advisory_xact_lock(hashtext($1))", [key]);
}
