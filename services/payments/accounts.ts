// Accounts as payments sees them, from the wallet. An account's owner, currency, kind and
// opening time never change, so they are kept (a bounded number, the least recently used
// making room) once read: a payment asks the wallet about its accounts only the first time it
// meets them. A failed lookup is not kept. Balances are not read here.
import { ConnectError, type Client } from "@connectrpc/connect";
import { LRUCache } from "lru-cache";
import type { Account, WalletService } from "../gen/paygate/wallet/v1/wallet_pb.js";

export class AccountDirectory {
  /** Answered lookups, and those in flight: callers of an account being looked up share the one call. */
  private readonly cache: LRUCache<string, Account>;

  constructor(
    wallet: Client<typeof WalletService>,
    /** A shared lookup's own deadline: it is bound to no one caller's. */
    timeoutMs: number,
    maxEntries = 10_000,
  ) {
    this.cache = new LRUCache<string, Account>({
      max: maxEntries,
      fetchMethod: async (accountId) => (await wallet.getAccount({ accountId }, { timeoutMs })).account,
      // A lookup pushed out of the cache while in flight still answers those waiting for it.
      ignoreFetchAbort: true,
    });
  }

  /** The account if a lookup of it has answered already (no call made). */
  peek(accountId: string): Account | undefined {
    // get(), not the cache's peek(): an account in use stays among the recently used.
    return this.cache.get(accountId);
  }

  /** The account; a caller whose `signal` aborts stops waiting (the shared lookup goes on). */
  get(accountId: string, signal?: AbortSignal): Promise<Account> {
    const lookup = this.cache.forceFetch(accountId);
    if (!signal) return lookup;
    return new Promise((resolve, reject) => {
      const stop = () => reject(ConnectError.from(signal.reason));
      signal.addEventListener("abort", stop, { once: true });
      lookup.then(resolve, reject).finally(() => signal.removeEventListener("abort", stop));
      if (signal.aborted) stop();
    });
  }
}
