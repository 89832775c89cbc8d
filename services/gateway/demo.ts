// Demo data for `npm start`: two merchants with fixed, documented API keys, and accounts in
// six currencies holding balances. Every step is idempotent, so restarts change nothing.
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { WalletService } from "../gen/paygate/wallet/v1/wallet_pb.js";
import { money, parseDecimalAmount } from "../runtime/money/money.js";
import type { Merchants } from "./merchants.js";

export const DEMO_MERCHANTS = [
  { id: "acme", name: "Acme Corp", apiKey: "pgk_demo_acme_4f7c1e2a9b3d5f60" },
  { id: "globex", name: "Globex Inc", apiKey: "pgk_demo_globex_8e2b6d4c1a7f3e95" },
];

/** Opening balance of every demo account, by currency. */
const OPENING_BALANCES: Record<string, string> = {
  USD: "10000.00",
  EUR: "10000.00",
  GBP: "8000.00",
  JPY: "1500000",
  IDR: "150000000.00",
  KWD: "3000.000",
};

export async function seedDemo(merchants: Merchants, wallet: Client<typeof WalletService>): Promise<string[]> {
  await waitForWallet(wallet);
  const accounts: string[] = [];
  for (const m of DEMO_MERCHANTS) {
    await merchants.ensure(m, m.apiKey);
    for (const [currency, balance] of Object.entries(OPENING_BALANCES)) {
      const accountId = `${m.id}_${currency.toLowerCase()}`;
      await wallet.openAccount({ requestId: `demo:${accountId}`, accountId, ownerId: m.id, currency });
      await wallet.credit({ transferId: `demo:opening:${accountId}`, accountId, amount: money(currency, parseDecimalAmount(balance, currency, "balance")) });
      accounts.push(accountId);
    }
  }
  return accounts;
}

/** Services start together: give the wallet up to a minute to come up. */
async function waitForWallet(wallet: Client<typeof WalletService>): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await wallet.listAccounts({ ownerId: DEMO_MERCHANTS[0]!.id }, { timeoutMs: 2000 });
      return;
    } catch (err) {
      if (attempt >= 60 || !(err instanceof ConnectError) || (err.code !== Code.Unavailable && err.code !== Code.DeadlineExceeded)) throw err;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}
