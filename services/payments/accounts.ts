// Accounts as payments sees them, from the wallet. An account's owner, currency, kind and
// opening time never change, so they are kept (a bounded number) once read: a payment asks
// the wallet about its accounts only the first time it meets them. Balances are not read here.
import { ConnectError, type Client } from "@connectrpc/connect";
import type { Account, WalletService } from "../gen/paygate/wallet/v1/wallet_pb.js";

export class AccountDirectory {
  /** Lookups in flight share one call; a failed one is forgotten. */
  private readonly known = new Map<string, Promise<Account>>();
  /** The lookups that answered. */
  private readonly answered = new Map<string, Account>();

  constructor(
    private readonly wallet: Client<typeof WalletService>,
    /** A shared lookup's own deadline: it is bound to no one caller's. */
    private readonly timeoutMs: number,
    private readonly maxEntries = 10_000,
  ) {}

  /** The account if a lookup of it has answered already (no call made). */
  peek(accountId: string): Account | undefined {
    return this.answered.get(accountId);
  }

  /** The account; a caller whose `signal` aborts stops waiting (the shared lookup goes on). */
  get(accountId: string, signal?: AbortSignal): Promise<Account> {
    let lookup = this.known.get(accountId);
    if (!lookup) {
      if (this.known.size >= this.maxEntries) {
        this.known.clear();
        this.answered.clear();
      }
      const started = this.wallet.getAccount({ accountId }, { timeoutMs: this.timeoutMs }).then((res) => {
        if (this.known.get(accountId) === started) this.answered.set(accountId, res.account!);
        return res.account!;
      });
      started.catch(() => {
        if (this.known.get(accountId) === started) this.known.delete(accountId);
      });
      this.known.set(accountId, started);
      lookup = started;
    }
    if (!signal) return lookup;
    const wait = lookup;
    return new Promise((resolve, reject) => {
      const stop = () => reject(ConnectError.from(signal.reason));
      if (signal.aborted) return stop();
      signal.addEventListener("abort", stop, { once: true });
      wait.then(resolve, reject).finally(() => signal.removeEventListener("abort", stop));
    });
  }
}
