// Paygate's operator CLI: merchants, their API keys and their wallet accounts on a running
// deployment, without demo data. An API key is printed once, when it is issued; only its
// SHA-256 is stored (merchants.ts).
//
//   node dist/services/gateway/admin-cli.js create-merchant --id acme --name "Acme Corp"
//   node dist/services/gateway/admin-cli.js create-api-key --merchant acme
//   node dist/services/gateway/admin-cli.js open-account --merchant acme --currency USD --account acme_usd --opening-balance 1000.00
//   node dist/services/gateway/admin-cli.js wait-for-database --timeout-seconds 300
//
// (from a checkout: `npx tsx services/gateway/admin-cli.ts …`). It works on the deployment's
// PostgreSQL (DATABASE_URL, the gateway's schema) and, for accounts, on the wallet (WALLET_URL).
// `--json` prints one JSON object instead of text. Exit codes: 0 done, 1 failed, 2 bad usage
// or configuration, 3 the merchant already exists (create-merchant) or does not (the others).
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { z } from "zod";
import { WalletService } from "../gen/paygate/wallet/v1/wallet_pb.js";
import { ConfigError, loadConfig } from "../runtime/config.js";
import { openDatabase, type Database } from "../runtime/db/database.js";
import { migrate } from "../runtime/db/migrate.js";
import { money, parseDecimalAmount } from "../runtime/money/money.js";
import { upstreamClient, upstreamTransport } from "../runtime/rpc/upstream.js";
import { Merchants, newApiKey } from "./merchants.js";

const USAGE = `usage: admin-cli <command> [options]

commands:
  create-merchant --id ID --name NAME     create a merchant and issue its first API key
  create-api-key --merchant ID            issue another API key for a merchant
  open-account --merchant ID --currency CODE [--account ID] [--opening-balance DECIMAL]
                                          open a wallet account owned by the merchant, with
                                          an opening balance credited once
  wait-for-database [--timeout-seconds N] wait until DATABASE_URL accepts connections (default 300 s)

options:
  --json                                  print the result as one JSON object

environment:
  DATABASE_URL   the deployment's PostgreSQL (required)
  WALLET_URL     the wallet service, for open-account (default http://127.0.0.1:9093)
`;

/** Merchant ids become part of API keys and account ids: lower-case letters, digits, '_' and '-'. */
const MERCHANT_ID = /^[a-z0-9][a-z0-9_-]{0,47}$/;

const cliEnv = {
  DATABASE_URL: z.string().url(),
  WALLET_URL: z.string().url().default("http://127.0.0.1:9093"),
};

class UsageError extends Error {}
class MerchantStateError extends Error {}

type Options = Record<string, string | boolean | undefined>;

const text = (opts: Options, name: string): string | undefined => (typeof opts[name] === "string" ? (opts[name] as string) : undefined);
function required(opts: Options, name: string): string {
  const value = text(opts, name);
  if (value === undefined || value === "") throw new UsageError(`--${name} is required`);
  return value;
}
function merchantId(opts: Options, name: string): string {
  const id = required(opts, name);
  if (!MERCHANT_ID.test(id)) throw new UsageError(`--${name}: 1 to 48 lower-case letters, digits, '_' or '-', starting with a letter or digit; got ${JSON.stringify(id)}`);
  return id;
}

/** The gateway's database (its schema, migrated: the CLI may run before the gateway ever has). */
async function gatewayDatabase(url: string): Promise<Database> {
  const db = await openDatabase({ url, dataDir: ".data", schema: "gateway", poolSize: 2 });
  await migrate(db, fileURLToPath(new URL("./migrations", import.meta.url)));
  return db;
}

async function merchantName(db: Database, id: string): Promise<string | undefined> {
  const { rows } = await db.query<{ name: string }>("SELECT name FROM merchants WHERE id = $1", [id]);
  return rows[0]?.name;
}

async function withGatewayDatabase<T>(url: string, run: (db: Database) => Promise<T>): Promise<T> {
  const db = await gatewayDatabase(url);
  try {
    return await run(db);
  } finally {
    await db.close();
  }
}

type Result = { json: Record<string, unknown>; lines: string[] };

async function createMerchant(opts: Options): Promise<Result> {
  const id = merchantId(opts, "id");
  const name = required(opts, "name");
  const { DATABASE_URL } = loadConfig({ DATABASE_URL: cliEnv.DATABASE_URL });
  return withGatewayDatabase(DATABASE_URL, async (db) => {
    if ((await merchantName(db, id)) !== undefined) throw new MerchantStateError(`merchant ${JSON.stringify(id)} already exists (create-api-key issues another key)`);
    const apiKey = newApiKey(id);
    await new Merchants(db).ensure({ id, name }, apiKey);
    return {
      json: { merchant: { id, name }, apiKey },
      lines: [`merchant ${id} (${name}) created`, `API key: ${apiKey}`, "The key is shown only now (Paygate keeps its hash): store it in a secret store."],
    };
  });
}

async function createApiKey(opts: Options): Promise<Result> {
  const id = merchantId(opts, "merchant");
  const { DATABASE_URL } = loadConfig({ DATABASE_URL: cliEnv.DATABASE_URL });
  return withGatewayDatabase(DATABASE_URL, async (db) => {
    const name = await merchantName(db, id);
    if (name === undefined) throw new MerchantStateError(`no merchant ${JSON.stringify(id)} (create-merchant creates one)`);
    const apiKey = newApiKey(id);
    await new Merchants(db).ensure({ id, name }, apiKey);
    return {
      json: { merchant: { id, name }, apiKey },
      lines: [`new API key for merchant ${id}: ${apiKey}`, "The key is shown only now (Paygate keeps its hash): store it in a secret store."],
    };
  });
}

async function openAccount(opts: Options): Promise<Result> {
  const owner = merchantId(opts, "merchant");
  const currency = required(opts, "currency").toUpperCase();
  const accountId = text(opts, "account") ?? `${owner}_${currency.toLowerCase()}`;
  const openingBalance = text(opts, "opening-balance");
  // Checked before anything is written: a bad amount must not leave an account half set up.
  const openingMinor = openingBalance === undefined ? undefined : parseDecimalAmount(openingBalance, currency, "opening-balance");
  if (openingMinor !== undefined && openingMinor <= 0n) throw new UsageError("--opening-balance: must be more than zero");
  const { DATABASE_URL, WALLET_URL } = loadConfig(cliEnv);
  await withGatewayDatabase(DATABASE_URL, async (db) => {
    if ((await merchantName(db, owner)) === undefined) throw new MerchantStateError(`no merchant ${JSON.stringify(owner)} (create-merchant creates one)`);
  });
  const wallet = upstreamClient(WalletService, upstreamTransport(WALLET_URL));
  // Request and transfer ids derive from the account id: running the same command again
  // changes nothing, and an account gets at most one opening balance.
  const { account } = await wallet.openAccount({ requestId: `admin:open:${accountId}`, accountId, ownerId: owner, currency }, { timeoutMs: 10_000 });
  let balance: string | undefined;
  if (openingMinor !== undefined) {
    const credited = await wallet.credit({ transferId: `admin:opening:${accountId}`, accountId, amount: money(currency, openingMinor) }, { timeoutMs: 10_000 });
    balance = credited.balance?.available?.amountMinor.toString();
  }
  const id = account?.id ?? accountId;
  return {
    json: { account: { id, ownerId: owner, currency }, ...(balance === undefined ? {} : { availableMinor: balance }) },
    lines: [`account ${id} (${currency}) of merchant ${owner} is open`, ...(balance === undefined ? [] : [`available balance: ${balance} minor units`])],
  };
}

async function waitForDatabase(opts: Options): Promise<Result> {
  const timeoutSeconds = Number(text(opts, "timeout-seconds") ?? "300");
  if (!Number.isInteger(timeoutSeconds) || timeoutSeconds < 1) throw new UsageError("--timeout-seconds: a whole number of seconds, at least 1");
  const { DATABASE_URL } = loadConfig({ DATABASE_URL: cliEnv.DATABASE_URL });
  const deadline = Date.now() + timeoutSeconds * 1000;
  for (let attempt = 1; ; attempt++) {
    const client = new pg.Client({ connectionString: DATABASE_URL, connectionTimeoutMillis: 5_000 });
    client.on("error", () => {});
    try {
      await client.connect();
      await client.query("SELECT 1");
      return { json: { database: "ready", attempts: attempt }, lines: [`database ready (attempt ${attempt})`] };
    } catch (err) {
      // The password is in the URL: report the server's answer only.
      const reason = err instanceof Error ? err.message : String(err);
      if (Date.now() >= deadline) throw new Error(`database not ready after ${timeoutSeconds} s: ${reason}`);
      process.stderr.write(`waiting for the database (attempt ${attempt}): ${reason}\n`);
      await new Promise((r) => setTimeout(r, 2_000));
    } finally {
      await client.end().catch(() => {});
    }
  }
}

const COMMANDS: Record<string, (opts: Options) => Promise<Result>> = {
  "create-merchant": createMerchant,
  "create-api-key": createApiKey,
  "open-account": openAccount,
  "wait-for-database": waitForDatabase,
};

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const run = command === undefined ? undefined : COMMANDS[command];
  if (command === "help" || command === "--help" || command === "-h") {
    process.stdout.write(USAGE);
    return 0;
  }
  try {
    if (!run) throw new UsageError(command === undefined ? "a command is required" : `unknown command ${JSON.stringify(command)}`);
    const { values } = parseArgs({
      args: rest,
      strict: true,
      options: {
        id: { type: "string" },
        name: { type: "string" },
        merchant: { type: "string" },
        currency: { type: "string" },
        account: { type: "string" },
        "opening-balance": { type: "string" },
        "timeout-seconds": { type: "string" },
        json: { type: "boolean" },
      },
    });
    const result = await run(values);
    process.stdout.write(values.json ? `${JSON.stringify(result.json)}\n` : `${result.lines.join("\n")}\n`);
    return 0;
  } catch (err) {
    if (err instanceof UsageError || (err instanceof TypeError && (err as { code?: string }).code?.startsWith("ERR_PARSE_ARGS"))) {
      process.stderr.write(`${err.message}\n\n${USAGE}`);
      return 2;
    }
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      return 2;
    }
    if (err instanceof MerchantStateError) {
      process.stderr.write(`${err.message}\n`);
      return 3;
    }
    process.stderr.write(`failed: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}

// HTTP/2 sessions to the wallet and pools may keep the event loop alive: exit when done.
if (process.argv[1] === fileURLToPath(import.meta.url)) process.exit(await main(process.argv.slice(2)));
