// Accounts as payments sees them, from the wallet. An account's owner, currency, kind and
// opening time never change, so they are kept (a bounded number) once read: a payment asks
// the wallet about its accounts only the first time it meets them. Balances are not read here.
import type { CallOptions, Client } from "@connectrpc/connect";
import type { Account, WalletService } from "../gen/paygate/wallet/v1/wallet_pb.js";

export class AccountDirectory {
  /** Lookups in flight share one call; a failed one is forgotten. */
  private readonly known = new Map<string, Promise<Account>>();

  constructor(
    private readonly wallet: Client<typeof WalletService>,
    private readonly maxEntries = 10_000,
  ) {}

  get(accountId: string, call: CallOptions): Promise<Account> {
    const known = this.known.get(accountId);
    if (known) return known;
    if (this.known.size >= this.maxEntries) this.known.clear();
    const lookup = this.wallet.getAccount({ accountId }, call).then((res) => res.account!);
    lookup.catch(() => {
      if (this.known.get(accountId) === lookup) this.known.delete(accountId);
    });
    this.known.set(accountId, lookup);
    return lookup;
  }
}
