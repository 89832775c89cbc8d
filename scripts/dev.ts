// `npm start`: runs every Paygate service on this machine, each as its own process on its
// usual ports, with embedded databases under .data/ (or DATABASE_URL when set). Prints the
// endpoints and example calls once all are ready; Ctrl-C stops them all gracefully.
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { DEMO_MERCHANTS } from "../services/gateway/demo.js";

interface ServiceProcess {
  name: string;
  entry: string;
  rpcPort: number;
  adminPort: number;
}

const services: ServiceProcess[] = [
  { name: "fx", entry: "services/fx/main.ts", rpcPort: 9092, adminPort: 9102 },
  { name: "risk", entry: "services/risk/main.ts", rpcPort: 9094, adminPort: 9104 },
  { name: "wallet", entry: "services/wallet/main.ts", rpcPort: 9093, adminPort: 9103 },
  { name: "payments", entry: "services/payments/main.ts", rpcPort: 9091, adminPort: 9101 },
  { name: "gateway", entry: "services/gateway/main.ts", rpcPort: 8080, adminPort: 8080 },
];

const children = new Map<string, ChildProcess>();
let stopping = false;

function start(svc: ServiceProcess): ChildProcess {
  // Local runs get the demo merchants and accounts unless told otherwise.
  const env = { GATEWAY_DEMO_DATA: "true", ...process.env };
  const child = spawn(process.execPath, ["--import", "tsx", svc.entry], { env, stdio: ["ignore", "pipe", "pipe"] });
  for (const stream of [child.stdout, child.stderr]) {
    createInterface({ input: stream }).on("line", (line) => process.stdout.write(`${svc.name.padEnd(8)}| ${line}\n`));
  }
  child.on("exit", (code, signal) => {
    children.delete(svc.name);
    if (!stopping) {
      process.stderr.write(`${svc.name} exited (${signal ?? `code ${code}`}); stopping the others\n`);
      stopAll(1);
    } else if (children.size === 0) process.exit(process.exitCode ?? 0);
  });
  children.set(svc.name, child);
  return child;
}

function stopAll(exitCode: number): void {
  if (stopping) return;
  stopping = true;
  process.exitCode = exitCode;
  if (children.size === 0) process.exit(exitCode);
  for (const child of children.values()) child.kill("SIGTERM");
}

async function waitReady(svc: ServiceProcess, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && !stopping) {
    try {
      const res = await fetch(`http://127.0.0.1:${svc.adminPort}/readyz`);
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await sleep(250);
  }
  if (!stopping) throw new Error(`${svc.name} did not become ready within ${timeoutMs / 1000}s`);
}

process.on("SIGINT", () => stopAll(0));
process.on("SIGTERM", () => stopAll(0));

// All start at once (each waits for what it calls); the banner comes when every one is ready.
for (const svc of services) start(svc);
await Promise.all(services.map((svc) => waitReady(svc))).catch((err: Error) => {
  process.stderr.write(`${err.message}\n`);
  stopAll(1);
});
if (!stopping) process.stdout.write(banner());

function banner(): string {
  const rows = services.map((s) => `  ${s.name.padEnd(9)} rpc http://127.0.0.1:${s.rpcPort}   ready http://127.0.0.1:${s.adminPort}/readyz`).join("\n");
  const keys = DEMO_MERCHANTS.map((m) => `  ${m.id.padEnd(7)} ${m.apiKey}   accounts ${m.id}_usd ${m.id}_eur ${m.id}_gbp ${m.id}_jpy ${m.id}_idr ${m.id}_kwd`).join("\n");
  const key = DEMO_MERCHANTS[0]!.apiKey;
  return `
Paygate is running (${process.env.DATABASE_URL ? "PostgreSQL from DATABASE_URL" : "embedded PGlite under .data/"}). Ctrl-C stops it.

${rows}

Demo merchants (API key, funded accounts):
${keys}

Every port speaks gRPC, gRPC-Web and Connect (JSON or binary) at once. Try:

  # a cross-currency payment through the REST route (USD from acme to IDR at globex)
  curl -s -H 'Authorization: Bearer ${key}' -H 'Content-Type: application/json' \\
    -d '{"id":"PAY-001","currency":"USD","amount":123.45,"source_account":"acme_usd","destination_account":"globex_idr"}' \\
    http://127.0.0.1:8080/payments
  curl -s -H 'Authorization: Bearer ${key}' http://127.0.0.1:8080/balance/acme_usd

  # the same API over gRPC, schema from server reflection
  grpcurl -plaintext -H 'authorization: Bearer ${key}' -H 'idempotency-key: demo-2' \\
    -d '{"source_account_id":"acme_eur","destination_account_id":"globex_jpy","amount":{"currency":"EUR","amount_minor":"5000"}}' \\
    127.0.0.1:8080 paygate.payments.v1.PaymentsService/CreatePayment

  # Connect JSON straight to the fx service
  curl -s -H 'Content-Type: application/json' \\
    -d '{"decimal_amount":{"currency":"USD","value":"100.00"},"to_currency":"IDR"}' \\
    http://127.0.0.1:9092/paygate.fx.v1.FxService/Convert

`;
}
