// Movements posted at once, without a hold: money from outside Paygate into a user account
// (credit) and transfers between accounts (refunds), each idempotent by the caller's
// transfer id and, from a user account, never past its available balance.
import { invalidArgument, notFound } from "../../runtime/errors.js";
import { fingerprint, insufficientFunds, requireCallerTransferId, requireCurrency, requireId, requirePositive } from "./checks.js";
import { lockKey, lockWithSystem } from "./locks.js";
import { legs, liquidity, replayed, settle, systemAccountId, write, type FxTerms } from "./posting.js";
import { accountOrFail, type Account, type Books } from "./records.js";

export interface CreditRequest {
  transferId: string;
  accountId: string;
  currency: string;
  amountMinor: bigint;
}

export interface TransferRequest {
  transferId: string;
  fromAccountId: string;
  toAccountId: string;
  currency: string;
  amountMinor: bigint;
  fx: FxTerms | undefined;
}

/** Money from outside Paygate into a user account (the world account is debited). */
export async function credit(books: Books, req: CreditRequest): Promise<Account> {
  requireCallerTransferId(req.transferId);
  requirePositive(req.amountMinor, "amount");
  return books.db.transaction(async (tx) => {
    await lockKey(tx, `transfer:${req.transferId}`);
    const account = await accountOrFail(tx, req.accountId, "account_id");
    requireCurrency(account, req.currency, "amount.currency");
    const hash = fingerprint(["credit", req.accountId, req.currency, req.amountMinor]);
    if (await replayed(tx, req.transferId, hash)) return account;
    const locked = await lockWithSystem(tx, books.now, [account.id], [{ kind: "EXTERNAL", currency: req.currency }]);
    await write(tx, books.now, { transferId: req.transferId, kind: "credit", hash, legs: [{ from: systemAccountId("EXTERNAL", req.currency), to: account.id, currency: req.currency, amountMinor: req.amountMinor, kind: "credit" }] });
    const before = locked.get(account.id)!;
    return { ...before, postedMinor: before.postedMinor + req.amountMinor };
  });
}

/** Posts a movement at once (refunds), with the same no-overdraft rule as holds. */
export async function transfer(books: Books, req: TransferRequest): Promise<{ amountMinor: bigint; destinationCurrency: string; destinationMinor: bigint }> {
  requireCallerTransferId(req.transferId);
  requirePositive(req.amountMinor, "amount");
  return books.db.transaction(async (tx) => {
    await lockKey(tx, `transfer:${req.transferId}`);
    const destination = await accountOrFail(tx, req.toAccountId, "to_account_id");
    requireId(req.fromAccountId, "from_account_id");
    const locked = await lockWithSystem(tx, books.now, [req.fromAccountId, destination.id], destination.currency === req.currency ? [] : liquidity(req.currency, destination.currency));
    const source = locked.get(req.fromAccountId);
    if (!source) throw notFound("ACCOUNT_NOT_FOUND", `from_account_id: no account ${JSON.stringify(req.fromAccountId)}`, "from_account_id");
    requireCurrency(source, req.currency, "amount.currency");
    if (source.id === destination.id) throw invalidArgument("SAME_ACCOUNT", "to_account_id", "to_account_id: must differ from from_account_id");
    const destinationMinor = settle(source.currency, destination.currency, req.amountMinor, req.fx, "fx");
    const result = { amountMinor: req.amountMinor, destinationCurrency: destination.currency, destinationMinor };
    const hash = fingerprint(["transfer", source.id, destination.id, req.currency, req.amountMinor, req.fx?.rate ?? "", req.fx?.destinationMinor ?? ""]);
    if (await replayed(tx, req.transferId, hash)) return result;
    const available = source.postedMinor - source.pendingMinor;
    if (source.kind === "USER" && available < req.amountMinor) throw insufficientFunds(source.id, source.currency, req.amountMinor, available);
    await write(tx, books.now, { transferId: req.transferId, kind: "transfer", hash, legs: legs(source.id, destination.id, source.currency, req.amountMinor, destination.currency, destinationMinor, "transfer") });
    return result;
  });
}
