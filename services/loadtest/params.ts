// The load runner's parameters: the original proof of concept's k6 environment variables
// (PAYMENTS, CSV_PATH, TX_ID, CUSTOMER_ID, AMOUNT, VUS, DURATION) plus Paygate's own
// (DESTINATION, CURRENCY, API_KEY, ITERATIONS, THRESHOLDS, SCRIPT), each also a command-line
// option (--vus 8 beats VUS=8). Anything wrong is a UsageError naming the parameter: exit 2.
import { isIP } from "node:net";
import { parseArgs } from "node:util";
import { DEMO_MERCHANTS } from "../gateway/demo.js";
import { parseDecimalAmount } from "../runtime/money/money.js";

export class UsageError extends Error {}

export const SCENARIOS = ["connect-json", "rest", "csv", "grpc"] as const;
export type Scenario = (typeof SCENARIOS)[number];

/** What a threshold can be about; p(N) is the N-th latency percentile in ms. */
export type Metric = "error_rate" | "captured_rate" | "payments_per_s" | "max" | "avg" | `p(${number})`;

export interface Threshold {
  text: string;
  metric: Metric;
  op: "<" | "<=" | ">" | ">=";
  limit: number;
}

export interface LoadParams {
  /** A built-in scenario, or the path of a script module (see script.ts). */
  script: Scenario | string;
  /** The gateway's base URL (PAYMENTS, as in the original scripts). */
  target: URL;
  csvPath: string;
  txId: string;
  customerId: string;
  destination: string;
  currency: string;
  /** Decimal in the currency's major units, checked against its ISO 4217 exponent. */
  amount: string;
  /** API key per merchant id ("" when one key serves every payment). */
  apiKeys: Map<string, string>;
  vus: number;
  durationMs: number;
  /** At most this many payments (CSV: at most one per row). */
  iterations: number;
  thresholds: Threshold[];
  json: boolean;
}

export const DEFAULT_THRESHOLDS = "error_rate<0.01,p(95)<1000,p(99)<2000";
export const MAX_ITERATIONS = 1_000_000;
const MAX_DURATION_MS = 3_600_000;

export const USAGE = `usage: load [--script NAME|FILE] [--vus N] [--duration 30s] [--iterations N] [--thresholds LIST] [--json]
  --script       connect-json (default) | rest | csv | grpc, or a script module (.mjs/.js)   SCRIPT
  --target       the gateway, loopback or an in-cluster Service (default http://127.0.0.1:8080)  PAYMENTS
  --csv          payments for the csv script (default tests/data/dummy_transactions.csv)      CSV_PATH
  --tx-id        prefix of every payment's id / Idempotency-Key (default LOAD-<time>)        TX_ID
  --customer-id  the payer's account (default acme_usd)                                      CUSTOMER_ID
  --destination  the payee's account (default globex_usd)                                    DESTINATION
  --currency     the payment's currency (default USD)                                        CURRENCY
  --amount       each payment's amount, a decimal in major units (default 1.00)              AMOUNT
  --api-key      one key, or merchant=key,… picked by the payer's merchant (default: the demo keys)  API_KEY
  --vus          payments in flight at once, 1 to 1000 (default 4)                           VUS
  --duration     how long to send, e.g. 500ms, 30s, 1m30s; at most 1h (default 10s)         DURATION
  --iterations   at most this many payments (default 1000000; csv: each row once)          ITERATIONS
  --thresholds   comma-separated, e.g. "${DEFAULT_THRESHOLDS}" (the default);
                 metrics: error_rate, captured_rate, payments_per_s, avg, max, p(N) in ms    THRESHOLDS
  --json         print the summary as one JSON object instead of a table
exit codes: 0 every threshold met, 99 a threshold failed, 2 bad parameters, 1 the run could not start`;

/** "1m30s", "500ms", "30" (seconds) -> milliseconds. */
export function parseDuration(text: string, name: string): number {
  const parts = /^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$/.exec(text);
  let ms: number;
  if (/^\d+$/.test(text)) ms = Number(text) * 1000;
  else if (parts && text !== "") ms = ((Number(parts[1] ?? 0) * 60 + Number(parts[2] ?? 0)) * 60 + Number(parts[3] ?? 0)) * 1000 + Number(parts[4] ?? 0);
  else throw new UsageError(`${name}: expected a duration such as 500ms, 30s, 1m30s or 2h, got ${JSON.stringify(text)}`);
  if (ms < 1 || ms > MAX_DURATION_MS) throw new UsageError(`${name}: expected a duration from 1ms to 1h, got ${JSON.stringify(text)}`);
  return ms;
}

export function parseThresholds(text: string, name: string): Threshold[] {
  return text
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")
    .map((t) => {
      const m = /^(error_rate|captured_rate|payments_per_s|max|avg|p\((\d{1,2}(?:\.\d+)?)\))\s*(<=|>=|<|>)\s*(\d+(?:\.\d+)?)$/.exec(t);
      if (!m || (m[2] !== undefined && Number(m[2]) > 100)) {
        throw new UsageError(`${name}: ${JSON.stringify(t)} is not a threshold such as p(95)<500 or error_rate<0.01 (metrics: error_rate, captured_rate, payments_per_s, avg, max, p(N))`);
      }
      return { text: t, metric: m[1] as Metric, op: m[3] as Threshold["op"], limit: Number(m[4]) };
    });
}

/** Only Paygate on this machine or inside the cluster: never a load on anything else. */
function parseTarget(text: string, name: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new UsageError(`${name}: expected a URL such as http://127.0.0.1:8080, got ${JSON.stringify(text)}`);
  }
  if (url.protocol !== "http:") throw new UsageError(`${name}: only http:// (cleartext, as Paygate serves), got ${JSON.stringify(text)}`);
  const host = url.hostname.replace(/^\[|\]$/g, "");
  const loopback = host === "localhost" || host === "::1" || (isIP(host) === 4 && host.startsWith("127."));
  const inCluster = /^[a-z0-9-]+\.[a-z0-9-]+\.svc(\.cluster\.local)?$/.test(host);
  if (!loopback && !inCluster) throw new UsageError(`${name}: only loopback or an in-cluster Service (<name>.<namespace>.svc[.cluster.local]) may be loaded, got ${JSON.stringify(host)}`);
  return url;
}

function parseApiKeys(text: string | undefined, name: string): Map<string, string> {
  if (text === undefined) return new Map(DEMO_MERCHANTS.map((m) => [m.id, m.apiKey]));
  if (!text.includes("=")) {
    if (!/^\S+$/.test(text)) throw new UsageError(`${name}: expected an API key, or merchant=key,… pairs`);
    return new Map([["", text]]);
  }
  const keys = new Map<string, string>();
  for (const pair of text.split(",")) {
    const m = /^([^=\s]+)=(\S+)$/.exec(pair.trim());
    if (!m) throw new UsageError(`${name}: expected merchant=key pairs separated by commas, got ${JSON.stringify(pair)}`);
    keys.set(m[1]!, m[2]!);
  }
  return keys;
}

function integer(text: string, name: string, min: number, max: number): number {
  if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) throw new UsageError(`${name}: expected a whole number from ${min} to ${max}, got ${JSON.stringify(text)}`);
  return Number(text);
}

const OPTIONS = {
  script: { type: "string", env: "SCRIPT" },
  target: { type: "string", env: "PAYMENTS" },
  csv: { type: "string", env: "CSV_PATH" },
  "tx-id": { type: "string", env: "TX_ID" },
  "customer-id": { type: "string", env: "CUSTOMER_ID" },
  destination: { type: "string", env: "DESTINATION" },
  currency: { type: "string", env: "CURRENCY" },
  amount: { type: "string", env: "AMOUNT" },
  "api-key": { type: "string", env: "API_KEY" },
  vus: { type: "string", env: "VUS" },
  duration: { type: "string", env: "DURATION" },
  iterations: { type: "string", env: "ITERATIONS" },
  thresholds: { type: "string", env: "THRESHOLDS" },
} as const;

export function parseParams(argv: string[], env: NodeJS.ProcessEnv): LoadParams {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: argv, options: { ...OPTIONS, json: { type: "boolean" } }, strict: true, allowPositionals: false }));
  } catch (err) {
    // parseArgs names an unknown option or a missing value in its TypeError.
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  /** The option, else its environment variable (empty counts as unset); the name to report with it. */
  const get = (option: keyof typeof OPTIONS): [string | undefined, string] => {
    const fromArg = values[option];
    if (typeof fromArg === "string") return [fromArg, `--${option}`];
    const variable = OPTIONS[option].env;
    const fromEnv = env[variable];
    return [fromEnv === undefined || fromEnv === "" ? undefined : fromEnv, variable];
  };
  const [script = "connect-json", scriptName] = get("script");
  if (!(SCENARIOS as readonly string[]).includes(script) && !/\.(mjs|js)$/.test(script)) {
    throw new UsageError(`${scriptName}: expected ${SCENARIOS.join(", ")} or a script module (.mjs/.js), got ${JSON.stringify(script)}`);
  }
  const [target = "http://127.0.0.1:8080", targetName] = get("target");
  const [txId = `LOAD-${Date.now()}`, txIdName] = get("tx-id");
  if (!/^[A-Za-z0-9._:-]{1,100}$/.test(txId)) throw new UsageError(`${txIdName}: expected 1 to 100 letters, digits or . _ : -, got ${JSON.stringify(txId)}`);
  const [currency = "USD", currencyName] = get("currency");
  const [amount = "1.00", amountName] = get("amount");
  let amountMinor: bigint;
  try {
    amountMinor = parseDecimalAmount(amount, currency, amountName, currencyName);
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  if (amountMinor <= 0n) throw new UsageError(`${amountName}: expected a positive amount, got ${JSON.stringify(amount)}`);
  const [vus = "4", vusName] = get("vus");
  const [duration = "10s", durationName] = get("duration");
  const [iterations = String(MAX_ITERATIONS), iterationsName] = get("iterations");
  const [thresholds = DEFAULT_THRESHOLDS, thresholdsName] = get("thresholds");
  const [apiKey, apiKeyName] = get("api-key");
  const account = (option: "customer-id" | "destination", fallback: string) => {
    const [id = fallback, name] = get(option);
    if (!/^[A-Za-z0-9._:-]{1,100}$/.test(id)) throw new UsageError(`${name}: expected an account id, got ${JSON.stringify(id)}`);
    return id;
  };
  return {
    script,
    target: parseTarget(target, targetName),
    csvPath: get("csv")[0] ?? "tests/data/dummy_transactions.csv",
    txId,
    customerId: account("customer-id", "acme_usd"),
    destination: account("destination", "globex_usd"),
    currency,
    amount,
    apiKeys: parseApiKeys(apiKey, apiKeyName),
    vus: integer(vus, vusName, 1, 1000),
    durationMs: parseDuration(duration, durationName),
    iterations: integer(iterations, iterationsName, 1, MAX_ITERATIONS),
    thresholds: parseThresholds(thresholds, thresholdsName),
    json: values.json === true,
  };
}
