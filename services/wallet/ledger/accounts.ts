// Accounts and what is read of them: opening one (idempotent by a chosen id or by the
// request's id), one account with its balances, an owner's accounts, and an account's
// entries page by page.
import { invalidArgument, notFound } from "../../runtime/errors.js";
import { newId } from "../../runtime/ids.js";
import { currencyInfo } from "../../runtime/money/money.js";
import { reused } from "./checks.js";
import { lockKey } from "./locks.js";
import { accountFromRow, accountWhere, entryFromRow, type Account, type AccountRow, type Books, type Entry, type EntryRow } from "./records.js";

export interface OpenAccountRequest {
  requestId: string;
  ownerId: string;
  currency: string;
  accountId?: string;
}

export async function openAccount(books: Books, req: OpenAccountRequest): Promise<Account> {
  if (req.ownerId === "") throw invalidArgument("MISSING_FIELD", "owner_id", "owner_id is required");
  currencyInfo(req.currency, "currency");
  const chosen = req.accountId ?? "";
  if (chosen !== "" && !/^[A-Za-z0-9_-]{1,64}$/.test(chosen)) {
    throw invalidArgument("INVALID_ACCOUNT_ID", "account_id", "account_id: 1 to 64 letters, digits, '_' or '-'");
  }
  return books.db.transaction(async (tx) => {
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
      [chosen || newId("acc"), req.ownerId, req.currency, req.requestId || null, books.now()],
    );
    return accountFromRow(rows[0]!);
  });
}

export async function getAccount(books: Books, id: string): Promise<Account> {
  const found = await accountWhere(books.db, "id = $1", [id]);
  if (!found) throw notFound("ACCOUNT_NOT_FOUND", `account_id: no account ${JSON.stringify(id)}`, "account_id");
  return found;
}

export async function accountsOf(books: Books, ownerId: string): Promise<Account[]> {
  const { rows } = await books.db.query<AccountRow>("SELECT * FROM accounts WHERE owner_id = $1 AND kind = 'USER' ORDER BY created_at, id", [ownerId]);
  return rows.map(accountFromRow);
}

/** An account's entries, newest first; `pageToken` continues where the previous page ended. */
export async function entriesOf(books: Books, accountId: string, pageSize: number, pageToken: string): Promise<{ entries: Entry[]; nextPageToken: string }> {
  await getAccount(books, accountId);
  const size = Math.min(Math.max(pageSize || 50, 1), 500);
  let before: bigint | undefined;
  if (pageToken !== "") {
    if (!/^\d+$/.test(pageToken)) throw invalidArgument("INVALID_PAGE_TOKEN", "page_token", "page_token: not a token this service issued");
    before = BigInt(pageToken);
  }
  const { rows } = await books.db.query<EntryRow>(
    `SELECT * FROM entries WHERE account_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3`,
    [accountId, before ?? null, size + 1],
  );
  const page = rows.slice(0, size).map(entryFromRow);
  return { entries: page, nextPageToken: rows.length > size ? String(page[page.length - 1]!.id) : "" };
}
