// `helm test`: a real payment through the gateway, then the books. Runs in the Paygate image
// (working directory /app) with GATEWAY_URL, WALLET_URL, WALLET_ADMIN_URL and DATABASE_URL.
//
// It creates a merchant of its own (the operator CLI: a new API key, accounts with an opening
// balance), pays across currencies over REST and in one currency over the Connect protocol,
// replays the Connect call with its Idempotency-Key, checks the balances, and asks the wallet to
// reconcile its books. Exit code 0 when everything holds.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value.replace(/\/+$/, "");
};
const gateway = env("GATEWAY_URL");
const walletAdmin = env("WALLET_ADMIN_URL");

let failures = 0;
const check = (what, ok, detail) => {
  process.stdout.write(`${ok ? "ok  " : "FAIL"} ${what}${ok ? "" : `: ${detail}`}\n`);
  if (!ok) failures++;
};

/** The operator CLI, as an operator runs it (`--json`: one object on stdout). */
const cli = (...args) =>
  JSON.parse(execFileSync(process.execPath, ["dist/services/gateway/admin-cli.js", ...args, "--json"], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], timeout: 60_000 }));

async function call(method, path, { key, body, headers = {} } = {}) {
  const res = await fetch(`${gateway}${path}`, {
    method,
    headers: { ...(key ? { authorization: `Bearer ${key}` } : {}), ...(body ? { "content-type": "application/json" } : {}), ...headers },
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(20_000),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = { unparsed: text };
  }
  return { status: res.status, headers: res.headers, json };
}

const merchant = `helmtest-${Date.now().toString(36)}-${randomBytes(3).toString("hex")}`;
const usd = `${merchant}_usd`;
const usd2 = `${merchant}_usd2`;
const eur = `${merchant}_eur`;

const { apiKey } = cli("create-merchant", "--id", merchant, "--name", "helm test");
check(`merchant ${merchant} created with an API key`, typeof apiKey === "string" && apiKey.startsWith(`pgk_${merchant}_`), JSON.stringify(apiKey));
cli("open-account", "--merchant", merchant, "--currency", "USD", "--account", usd, "--opening-balance", "100.00");
cli("open-account", "--merchant", merchant, "--currency", "USD", "--account", usd2);
cli("open-account", "--merchant", merchant, "--currency", "EUR", "--account", eur);
check("accounts opened, 100.00 USD credited", true);

const unauthenticated = await call("GET", `/balance/${usd}`);
check("a call without an API key is refused (401)", unauthenticated.status === 401, `HTTP ${unauthenticated.status}`);

// REST, across currencies: USD -> EUR at fx's quote.
const rest = await call("POST", "/payments", {
  key: apiKey,
  body: { id: `${merchant}-rest-1`, currency: "USD", amount: 12.34, source_account: usd, destination_account: eur },
});
check(
  "REST POST /payments (USD -> EUR) is CAPTURED",
  rest.status === 200 && rest.json.status === "CAPTURED" && rest.json.settlement_currency === "EUR" && Number(rest.json.settlement_amount) > 0,
  `HTTP ${rest.status} ${JSON.stringify(rest.json)}`,
);

// Connect protocol (JSON), one currency, with an Idempotency-Key; then the same call again.
const connectPayment = () =>
  call("POST", "/paygate.payments.v1.PaymentsService/CreatePayment", {
    key: apiKey,
    headers: { "idempotency-key": `${merchant}-connect-1` },
    body: { source_account_id: usd, destination_account_id: usd2, amount: { currency: "USD", amount_minor: "500" } },
  });
const first = await connectPayment();
check("Connect CreatePayment (USD -> USD) is CAPTURED", first.status === 200 && first.json.payment?.status === "PAYMENT_STATUS_CAPTURED", `HTTP ${first.status} ${JSON.stringify(first.json)}`);
const replay = await connectPayment();
check(
  "the same Idempotency-Key replays the same payment",
  replay.status === 200 && replay.json.payment?.id === first.json.payment?.id && replay.headers.get("idempotent-replayed") === "true",
  `HTTP ${replay.status} replayed=${replay.headers.get("idempotent-replayed")} ${JSON.stringify(replay.json)}`,
);

// Balances: 100.00 - 12.34 - 5.00 (the replay moved nothing).
const payer = await call("GET", `/balance/${usd}`, { key: apiKey });
check("the payer's balance is 82.66 USD", payer.status === 200 && payer.json.available === "82.66" && payer.json.posted === "82.66", JSON.stringify(payer.json));
const payee = await call("GET", `/balance/${usd2}`, { key: apiKey });
check("the payee's balance is 5.00 USD", payee.status === 200 && payee.json.available === "5.00", JSON.stringify(payee.json));
const eurBalance = await call("GET", `/balance/${eur}`, { key: apiKey });
check("the EUR account holds the settlement", eurBalance.status === 200 && eurBalance.json.available === rest.json.settlement_amount, `${JSON.stringify(eurBalance.json)} vs ${rest.json.settlement_amount}`);

// The books: every balance equals its entries, every transfer and currency sums to zero.
const books = await fetch(`${walletAdmin}/reconcile`, { signal: AbortSignal.timeout(60_000) });
const reconciliation = await books.json();
check("the wallet's books reconcile", books.status === 200 && reconciliation.balanced === true, `HTTP ${books.status} ${JSON.stringify(reconciliation)}`);

process.stdout.write(failures === 0 ? "helm test passed\n" : `helm test FAILED: ${failures} check(s)\n`);
process.exit(failures === 0 ? 0 : 1);
