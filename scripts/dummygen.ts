// `npm run dummygen`: writes a CSV of realistic payments for load tests, in the shape of the
// REST route POST /payments (id, currency, amount, source_account, destination_account).
// Deterministic: the same seed and options give the same file, byte for byte.
//
//   npm run dummygen                          # 100 rows to tests/data/dummy_transactions.csv
//   npm run dummygen -- -n 1000 --seed 7 --out /tmp/payments.csv
//   npm run dummygen -- --merchants acme,globex --currencies USD,EUR,JPY
//
// Each payment pays from a merchant's account in the payment's currency (`<merchant>_<ccy>`,
// as the demo data opens them) to another merchant's account in any of the currencies, so
// about 1 in N is same-currency and the rest cross-currency. Amounts are decimals in major
// units with at most the currency's ISO 4217 decimals: most small, some large, as card
// payments are (log-uniform between the currency's equivalent of about 1 and 2,000 USD).
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { stringify } from "csv-stringify/sync";
import { DEMO_MERCHANTS } from "../services/gateway/demo.js";
import { currencyInfo, formatMinor } from "../services/runtime/money/money.js";
import { prng } from "./prng.js";

export const COLUMNS = ["id", "currency", "amount", "source_account", "destination_account"] as const;
export type DummyPayment = Record<(typeof COLUMNS)[number], string>;

const DEMO_CURRENCIES = ["USD", "EUR", "GBP", "JPY", "IDR", "KWD"];
/** Rough size of one US dollar in each demo currency's major unit, to keep amounts realistic. */
const DOLLAR: Record<string, number> = { USD: 1, EUR: 0.9, GBP: 0.8, JPY: 150, IDR: 16_000, KWD: 0.3 };

export interface DummyOptions {
  rows: number;
  seed: number;
  merchants: string[];
  currencies: string[];
}

export function dummyPayments(opts: DummyOptions): DummyPayment[] {
  if (opts.merchants.length < 2) throw new Error("--merchants: at least two merchants (a payment goes from one to another)");
  const random = prng(opts.seed);
  const pick = <T>(items: readonly T[]) => items[Math.floor(random() * items.length)]!;
  return Array.from({ length: opts.rows }, (_, i) => {
    const currency = pick(opts.currencies);
    const { minorUnits } = currencyInfo(currency, "--currencies");
    const payer = pick(opts.merchants);
    const payee = pick(opts.merchants.filter((m) => m !== payer));
    // Log-uniform between about 1 and 2,000 USD, in whole minor units: an integer from here on.
    const dollars = Math.exp(random() * Math.log(2_000));
    const amountMinor = BigInt(Math.max(1, Math.round(dollars * (DOLLAR[currency] ?? 1) * 10 ** minorUnits)));
    return {
      id: `DUMMY-${opts.seed}-${String(i + 1).padStart(6, "0")}`,
      currency,
      amount: formatMinor(amountMinor, currency),
      source_account: `${payer}_${currency.toLowerCase()}`,
      destination_account: `${payee}_${pick(opts.currencies).toLowerCase()}`,
    };
  });
}

export function toCsv(rows: DummyPayment[]): string {
  return stringify(rows, { header: true, columns: [...COLUMNS] });
}

class UsageError extends Error {}

function parseOptions(argv: string[]): DummyOptions & { out: string } {
  const { values } = parseArgs({
    args: argv,
    options: {
      n: { type: "string", short: "n", default: "100" },
      seed: { type: "string", default: "42" },
      out: { type: "string", default: "tests/data/dummy_transactions.csv" },
      merchants: { type: "string", default: DEMO_MERCHANTS.map((m) => m.id).join(",") },
      currencies: { type: "string", default: DEMO_CURRENCIES.join(",") },
    },
    strict: true,
  });
  const integer = (name: string, text: string, min: number, max: number) => {
    if (!/^[0-9]+$/.test(text) || Number(text) < min || Number(text) > max) throw new UsageError(`${name}: expected a whole number from ${min} to ${max}, got ${JSON.stringify(text)}`);
    return Number(text);
  };
  const list = (text: string) => text.split(",").map((s) => s.trim()).filter((s) => s !== "");
  const currencies = list(values.currencies);
  for (const c of currencies) {
    try {
      currencyInfo(c, "--currencies");
    } catch (err) {
      throw new UsageError(err instanceof Error ? err.message : String(err));
    }
  }
  if (currencies.length === 0) throw new UsageError("--currencies: at least one currency");
  const merchants = list(values.merchants);
  if (merchants.length < 2) throw new UsageError("--merchants: at least two merchants (a payment goes from one to another)");
  return { rows: integer("-n", values.n, 1, 10_000_000), seed: integer("--seed", values.seed, 0, 4_294_967_295), out: values.out, merchants, currencies };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    const opts = parseOptions(process.argv.slice(2));
    mkdirSync(path.dirname(path.resolve(opts.out)), { recursive: true });
    writeFileSync(opts.out, toCsv(dummyPayments(opts)));
    process.stdout.write(`wrote ${opts.rows} payments (seed ${opts.seed}) to ${opts.out}\n`);
  } catch (err) {
    if (!(err instanceof UsageError) && !(err instanceof TypeError)) throw err;
    // parseArgs reports an unknown option or a missing value as a TypeError with a clear message.
    process.stderr.write(`dummygen: ${err.message}\nusage: npm run dummygen -- [-n ROWS] [--seed N] [--out FILE] [--merchants a,b] [--currencies USD,EUR]\n`);
    process.exit(2);
  }
}
