// The reconciliation check of the books: every account's posted total equals its entries,
// every pending total equals its open holds, every transfer balances, every currency sums
// to zero, and no user account is overdrawn.
import type { Books } from "./records.js";

/** The problems found in the books (none when they are right). */
export async function reconcile(books: Books): Promise<string[]> {
  const problems: string[] = [];
  const posted = await books.db.query<{ id: string; posted_minor: bigint; sum: bigint }>(
    `SELECT a.id, a.posted_minor, coalesce(sum(CASE e.direction WHEN 'CREDIT' THEN e.amount_minor ELSE -e.amount_minor END), 0)::int8 AS sum
     FROM accounts a LEFT JOIN entries e ON e.account_id = a.id GROUP BY a.id, a.posted_minor HAVING a.posted_minor <> coalesce(sum(CASE e.direction WHEN 'CREDIT' THEN e.amount_minor ELSE -e.amount_minor END), 0)`,
  );
  for (const r of posted.rows) problems.push(`account ${r.id}: posted ${r.posted_minor} but entries sum to ${r.sum}`);
  const pending = await books.db.query<{ id: string; pending_minor: bigint; sum: bigint }>(
    `SELECT a.id, a.pending_minor, coalesce(sum(h.amount_minor), 0)::int8 AS sum
     FROM accounts a LEFT JOIN holds h ON h.account_id = a.id AND h.status = 'PENDING' GROUP BY a.id, a.pending_minor HAVING a.pending_minor <> coalesce(sum(h.amount_minor), 0)`,
  );
  for (const r of pending.rows) problems.push(`account ${r.id}: pending ${r.pending_minor} but open holds sum to ${r.sum}`);
  const currencies = await books.db.query<{ currency: string; sum: bigint }>(
    `SELECT currency, sum(posted_minor)::int8 AS sum FROM accounts GROUP BY currency HAVING sum(posted_minor) <> 0`,
  );
  for (const r of currencies.rows) problems.push(`currency ${r.currency}: balances sum to ${r.sum}, not 0`);
  const transfers = await books.db.query<{ transfer_id: string; currency: string }>(
    `SELECT transfer_id, currency FROM entries GROUP BY transfer_id, currency
     HAVING sum(CASE direction WHEN 'CREDIT' THEN amount_minor ELSE -amount_minor END) <> 0`,
  );
  for (const r of transfers.rows) problems.push(`transfer ${r.transfer_id}: ${r.currency} debits and credits differ`);
  const overdrawn = await books.db.query<{ id: string }>(`SELECT id FROM accounts WHERE kind = 'USER' AND posted_minor - pending_minor < 0`);
  for (const r of overdrawn.rows) problems.push(`account ${r.id}: overdrawn`);
  return problems;
}
