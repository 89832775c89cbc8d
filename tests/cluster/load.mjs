// A bounded run of payments through the gateway Service, from a Pod in the cluster (the Paygate
// image runs it: `node load.mjs`), for k8s/local-cluster/e2e.sh. Every payment is 1.00 USD from
// PAYER to PAYEE over REST, with an id of its own; a call that gets no answer or a retryable
// error (HTTP 502/503/504, UNAVAILABLE) is sent again with the same id, as a client should, so
// it can never be paid twice. Then every payment is read back (none lost), and the balances must
// be exactly what the captured payments moved.
//
// Environment: GATEWAY_URL, API_KEY, PAYER, PAYEE, RUN (a prefix for the ids), PAYER_OPENING
// (the payer's balance before the run, e.g. "100000.00"), and the bounds: PAYMENTS (at most so
// many), SECONDS (sending stops after this long), CONCURRENCY.
//
// Prints one JSON object on its last line: counts by outcome, retries, latency, the checks.
// Exit code 0 when every payment was CAPTURED, found again, and the balances add up.

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === "") throw new Error(`${name} is not set`);
  return value;
};
const gateway = env("GATEWAY_URL").replace(/\/+$/, "");
const key = env("API_KEY");
const payer = env("PAYER");
const payee = env("PAYEE");
const run = env("RUN");
const payerOpeningCents = Math.round(Number(env("PAYER_OPENING")) * 100);
const maxPayments = Number(env("PAYMENTS", "1000"));
const seconds = Number(env("SECONDS", "60"));
const concurrency = Number(env("CONCURRENCY", "4"));
// One payment gives up after this long (with every retry): then it counts as failed.
const PAYMENT_DEADLINE_MS = 60_000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const counts = {};
const bump = (what) => (counts[what] = (counts[what] ?? 0) + 1);
const errors = {};
const latencies = [];
let retries = 0;

async function call(method, path, body) {
  const res = await fetch(`${gateway}${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(15_000),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = { unparsed: text.slice(0, 200) };
  }
  return { status: res.status, json, replayed: res.headers.get("idempotent-replayed") === "true" };
}

/** One payment, retried with its id until answered for good or its deadline passes. */
async function pay(i) {
  const id = `${run}-${i}`;
  const started = performance.now();
  for (let attempt = 0; ; attempt++) {
    let outcome;
    try {
      const res = await call("POST", "/payments", { id, currency: "USD", amount: 1.0, source_account: payer, destination_account: payee });
      if (res.status === 200) {
        latencies.push(performance.now() - started);
        return { id, paymentId: res.json.id, status: res.json.status, reason: res.json.failure_reason ?? null };
      }
      outcome = `HTTP ${res.status} ${res.json.error?.code ?? res.json.code ?? ""}`.trim();
      // Answers that are final: the payment was refused, a retry would be refused the same way.
      if (![429, 502, 503, 504].includes(res.status) && !/unavailable|deadline/i.test(outcome)) {
        return { id, paymentId: null, status: outcome, reason: JSON.stringify(res.json).slice(0, 200) };
      }
    } catch (err) {
      outcome = `no answer: ${err?.cause?.code ?? err?.name ?? String(err)}`;
    }
    errors[outcome] = (errors[outcome] ?? 0) + 1;
    if (performance.now() - started > PAYMENT_DEADLINE_MS) return { id, paymentId: null, status: `gave up after ${attempt + 1} attempts (${outcome})`, reason: null };
    retries++;
    await sleep(Math.min(2000, 100 * 2 ** attempt));
  }
}

const results = [];
let next = 0;
const t0 = performance.now();
await Promise.all(
  Array.from({ length: concurrency }, async () => {
    while (next < maxPayments && performance.now() - t0 < seconds * 1000) {
      const result = await pay(next++);
      results.push(result);
      bump(result.status);
    }
  }),
);
const elapsed = (performance.now() - t0) / 1000;

// None lost: every payment read back by its id, in the state it was answered with.
let notFound = 0;
for (let i = 0; i < results.length; i += 8) {
  await Promise.all(
    results.slice(i, i + 8).map(async (r) => {
      if (!r.paymentId) return;
      const got = await call("GET", `/payments/${encodeURIComponent(r.paymentId)}`).catch(() => ({ status: 0, json: {} }));
      if (got.status !== 200 || got.json.status !== r.status) notFound++;
    }),
  );
}
const captured = results.filter((r) => r.status === "CAPTURED").length;
const balance = async (account) => {
  const res = await call("GET", `/balance/${encodeURIComponent(account)}`);
  return res.status === 200 ? Math.round(Number(res.json.posted) * 100) : NaN;
};
const payerCents = await balance(payer);
const payeeCents = await balance(payee);

latencies.sort((a, b) => a - b);
const pct = (p) => (latencies.length ? Math.round(latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))]) : null);
const checks = {
  allCaptured: results.length > 0 && captured === results.length,
  noneLost: notFound === 0,
  payerBalance: payerCents === payerOpeningCents - captured * 100,
  payeeBalance: payeeCents === captured * 100,
};
const summary = {
  payments: results.length,
  captured,
  outcomes: counts,
  retries,
  transientErrors: errors,
  notFound,
  seconds: Number(elapsed.toFixed(1)),
  perSecond: Number((results.length / elapsed).toFixed(1)),
  latencyMs: { p50: pct(50), p95: pct(95), p99: pct(99), max: latencies.length ? Math.round(latencies.at(-1)) : null },
  balances: { payer: payerCents / 100, payee: payeeCents / 100 },
  checks,
  passed: Object.values(checks).every(Boolean),
};
process.stdout.write(`${JSON.stringify(summary)}\n`);
process.exit(summary.passed ? 0 : 1);
