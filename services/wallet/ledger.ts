// The double-entry ledger: accounts, two-phase transfers (hold -> capture or release or
// expiry), immediate transfers, cross-currency settlement through per-currency liquidity
// accounts, and the reconciliation check. Every write runs in one database transaction (or
// one statement) and is idempotent by the caller's id.
//
// This class is the wallet's one way into its books; the work is done in ledger/:
//   accounts.ts   opening accounts, reading accounts and entries
//   reserve.ts    placing holds (automatic capture included)
//   holds.ts      capturing, releasing and expiring holds; hold reads
//   transfers.ts  credits and transfers posted at once
//   reconcile.ts  the reconciliation check
//   posting.ts    legs, fx settlement and the one-statement write of a movement
//   locks.ts      account row locks in id order, advisory locks on caller ids
//   checks.ts     request checks, refusals, request fingerprints
//   records.ts    accounts, holds and entries, their rows and shared reads
import type { Database } from "../runtime/db/database.js";
import { accountsOf, entriesOf, getAccount, openAccount, type OpenAccountRequest } from "./ledger/accounts.js";
import { capture, expireHolds, getHold, holdStats, release } from "./ledger/holds.js";
import { reconcile } from "./ledger/reconcile.js";
import type { Account, Books, Entry, Hold } from "./ledger/records.js";
import { reserve, type ReserveRequest } from "./ledger/reserve.js";
import { credit, transfer, type CreditRequest, type TransferRequest } from "./ledger/transfers.js";

export type { Account, AccountKind, Entry, Hold, HoldStatus } from "./ledger/records.js";
export { systemAccountId, type FxTerms } from "./ledger/posting.js";

export class Ledger {
  private readonly books: Books;

  constructor(db: Database, now: () => Date = () => new Date()) {
    this.books = { db, now, facts: new Map() };
  }

  openAccount(req: OpenAccountRequest): Promise<Account> {
    return openAccount(this.books, req);
  }

  account(id: string): Promise<Account> {
    return getAccount(this.books, id);
  }

  accountsOf(ownerId: string): Promise<Account[]> {
    return accountsOf(this.books, ownerId);
  }

  entries(accountId: string, pageSize: number, pageToken: string): Promise<{ entries: Entry[]; nextPageToken: string }> {
    return entriesOf(this.books, accountId, pageSize, pageToken);
  }

  /** Money from outside Paygate into a user account. */
  credit(req: CreditRequest): Promise<Account> {
    return credit(this.books, req);
  }

  /** Places a hold (and, with `capture`, captures it whole at once). */
  reserve(req: ReserveRequest): Promise<Hold> {
    return reserve(this.books, req);
  }

  /** Captures all of a pending hold (`amountMinor` undefined) or part of it, releasing the rest. */
  capture(holdId: string, amountMinor: bigint | undefined): Promise<Hold> {
    return capture(this.books, holdId, amountMinor);
  }

  release(holdId: string): Promise<Hold> {
    return release(this.books, holdId);
  }

  hold(holdId: string): Promise<Hold> {
    return getHold(this.books, holdId);
  }

  holdStats(): Promise<{ currency: string; open: number; heldMinor: bigint; overdue: number }[]> {
    return holdStats(this.books);
  }

  /** Expires every pending hold past its time; returns how many. */
  expireHolds(): Promise<number> {
    return expireHolds(this.books);
  }

  /** Posts a movement at once (refunds). */
  transfer(req: TransferRequest): Promise<{ amountMinor: bigint; destinationCurrency: string; destinationMinor: bigint }> {
    return transfer(this.books, req);
  }

  /** The problems the reconciliation check finds (none when the books are right). */
  reconcile(): Promise<string[]> {
    return reconcile(this.books);
  }
}
