#!/usr/bin/env node
// A bounded load run against the development loop (the Tiltfile's "load-run" button): REST
// payments through the gateway with the demo merchants' keys (k8s/paygate-dev-values.yaml turns
// demo data on), at a fixed concurrency, until a number of payments or a time limit is reached;
// then the outcomes, throughput and latency, and the wallet's reconciliation.
//
//   node k8s/load-run.mjs [--gateway http://127.0.0.1:8080] [--wallet-admin http://127.0.0.1:9103]
//                         [--payments 300] [--concurrency 8] [--max-seconds 60]
//
// Exit code 1 when a call fails (anything but an answered payment) or the books do not balance.
// Risk declines are outcomes, not failures: the demo accounts soon hit the velocity rules.
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    gateway: { type: "string", default: "http://127.0.0.1:8080" },
    "wallet-admin": { type: "string", default: "http://127.0.0.1:9103" },
    payments: { type: "string", default: "300" },
    concurrency: { type: "string", default: "8" },
    "max-seconds": { type: "string", default: "60" },
  },
});
const total = Number(values.payments);
const concurrency = Number(values.concurrency);
const maxMs = Number(values["max-seconds"]) * 1000;
for (const [name, n, max] of [["payments", total, 100_000], ["concurrency", concurrency, 256], ["max-seconds", maxMs / 1000, 3600]]) {
  if (!Number.isInteger(n) || n < 1 || n > max) throw new Error(`--${name}: a whole number from 1 to ${max}`);
}

// The demo merchants (services/gateway/demo.ts): keys, and a small amount per currency.
const MERCHANTS = [
  { id: "acme", key: "pgk_demo_acme_4f7c1e2a9b3d5f60", payee: "globex" },
  { id: "globex", key: "pgk_demo_globex_8e2b6d4c1a7f3e95", payee: "acme" },
];
const AMOUNTS = { usd: "1.25", eur: "1.10", gbp: "0.95", jpy: "150", idr: "15000.00", kwd: "0.350" };
const CURRENCIES = Object.keys(AMOUNTS);

const run = Date.now().toString(36);
const outcomes = new Map();
const latencies = [];
let failures = 0;
let next = 0;
const started = performance.now();

async function pay(i) {
  const merchant = MERCHANTS[i % MERCHANTS.length];
  const from = CURRENCIES[Math.floor(i / 2) % CURRENCIES.length];
  // One payment in five crosses currencies.
  const to = i % 5 === 0 ? CURRENCIES[(CURRENCIES.indexOf(from) + 1) % CURRENCIES.length] : from;
  const t0 = performance.now();
  try {
    const res = await fetch(`${values.gateway}/payments`, {
      method: "POST",
      headers: { authorization: `Bearer ${merchant.key}`, "content-type": "application/json" },
      body: JSON.stringify({ id: `load-${run}-${i}`, currency: from.toUpperCase(), amount: Number(AMOUNTS[from]), source_account: `${merchant.id}_${from}`, destination_account: `${merchant.payee}_${to}` }),
      signal: AbortSignal.timeout(15_000),
    });
    const body = await res.json();
    latencies.push(performance.now() - t0);
    const outcome = res.ok ? `${body.status}${body.failure_reason ? ` ${body.failure_reason}` : ""}` : `HTTP ${res.status} ${body.error?.code ?? ""}`.trim();
    outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
    if (!res.ok) failures++;
  } catch (err) {
    failures++;
    const outcome = `error ${err instanceof Error ? err.name : String(err)}`;
    outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
  }
}

await Promise.all(
  Array.from({ length: concurrency }, async () => {
    while (next < total && performance.now() - started < maxMs) await pay(next++);
  }),
);
const seconds = (performance.now() - started) / 1000;
latencies.sort((a, b) => a - b);
const pct = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))].toFixed(1) : "-");
process.stdout.write(`${next} payments in ${seconds.toFixed(1)} s (${(next / seconds).toFixed(1)}/s), concurrency ${concurrency}\n`);
process.stdout.write(`latency ms: p50 ${pct(50)}  p95 ${pct(95)}  p99 ${pct(99)}\n`);
for (const [outcome, n] of [...outcomes].sort((a, b) => b[1] - a[1])) process.stdout.write(`  ${String(n).padStart(6)}  ${outcome}\n`);

const books = await fetch(`${values["wallet-admin"]}/reconcile`, { signal: AbortSignal.timeout(60_000) }).then(
  (r) => r.json(),
  (err) => ({ error: `no wallet answered at ${values["wallet-admin"]}: ${err instanceof Error ? err.message : err}` }),
);
process.stdout.write(books.balanced ? "ledger balanced\n" : `ledger NOT balanced: ${JSON.stringify(books)}\n`);
process.exit(failures === 0 && books.balanced ? 0 : 1);
