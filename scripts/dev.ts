// `npm start`: runs every Paygate service on this machine, each as its own process on its
// usual ports (or those its *_PORT variables name), with embedded databases under DATA_DIR
// (.data/ by default) or in DATABASE_URL when set. Prints the endpoints and example calls
// once all are ready; when one is not ready within PAYGATE_START_TIMEOUT_SECONDS, says which
// and why, and stops them all. Ctrl-C stops them all gracefully.
import type { ChildProcess } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { DEMO_MERCHANTS } from "../services/gateway/demo.js";
import { ConfigError, loadConfig, portVar, runtimeEnv } from "../services/runtime/config.js";
import { IN_MEMORY } from "../services/runtime/db/database.js";
import { spawnService, untilReady } from "./service-process.js";

const SECONDS_EXPECTED = "expected a whole number of seconds from 1 to 86400";

/** The variables `npm start` reads itself (the services read theirs). */
export const devEnv = {
  /** How long to wait for every service to be ready before giving up. */
  PAYGATE_START_TIMEOUT_SECONDS: z.coerce.number({ error: SECONDS_EXPECTED }).int(SECONDS_EXPECTED).min(1, SECONDS_EXPECTED).max(86_400, SECONDS_EXPECTED).default(120),
  DATABASE_URL: runtimeEnv.DATABASE_URL,
  DATA_DIR: runtimeEnv.DATA_DIR,
  FX_PORT: portVar.default(9092),
  FX_ADMIN_PORT: portVar.default(9102),
  RISK_PORT: portVar.default(9094),
  RISK_ADMIN_PORT: portVar.default(9104),
  WALLET_PORT: portVar.default(9093),
  WALLET_ADMIN_PORT: portVar.default(9103),
  PAYMENTS_PORT: portVar.default(9091),
  PAYMENTS_ADMIN_PORT: portVar.default(9101),
  GATEWAY_PORT: portVar.default(8080),
};

export interface ServiceProcess {
  name: string;
  rpcUrl: string;
  /** Serves /readyz. */
  adminUrl: string;
}

/**
 * Waits until every service is ready. Past `timeoutMs` it rejects with a message naming each
 * service still starting and why (what its /readyz said last); when `signal` aborts it
 * rejects with the signal's reason.
 */
export async function waitUntilReady(services: ServiceProcess[], timeoutMs: number, signal?: AbortSignal, intervalMs = 250): Promise<void> {
  const starting = await untilReady(services, timeoutMs, signal, intervalMs);
  if (starting.size === 0) return;
  const lines = [...starting].map(([s, why]) => `  ${s.name}: ${why}`);
  throw new Error(`not ready within ${timeoutMs / 1000} s (PAYGATE_START_TIMEOUT_SECONDS sets the wait):\n${lines.join("\n")}`);
}

/** Where the services keep their data, as the banner says it: never a password. */
export function storageDescription(config: { DATABASE_URL?: string | undefined; DATA_DIR: string }): string {
  if (config.DATABASE_URL) {
    const url = new URL(config.DATABASE_URL);
    return `PostgreSQL at ${url.host}${url.pathname}`;
  }
  if (config.DATA_DIR === IN_MEMORY) return `embedded PGlite in memory (DATA_DIR=${IN_MEMORY}: nothing is kept)`;
  return `embedded PGlite under ${path.resolve(config.DATA_DIR)}`;
}

async function main(): Promise<void> {
  let config: z.infer<z.ZodObject<typeof devEnv>>;
  try {
    config = loadConfig(devEnv);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`${err.message}\n`);
    process.exit(2);
  }
  const local = (port: number) => `http://127.0.0.1:${port}`;
  const services: (ServiceProcess & { entry: string })[] = [
    { name: "fx", entry: "services/fx/main.ts", rpcUrl: local(config.FX_PORT), adminUrl: local(config.FX_ADMIN_PORT) },
    { name: "risk", entry: "services/risk/main.ts", rpcUrl: local(config.RISK_PORT), adminUrl: local(config.RISK_ADMIN_PORT) },
    { name: "wallet", entry: "services/wallet/main.ts", rpcUrl: local(config.WALLET_PORT), adminUrl: local(config.WALLET_ADMIN_PORT) },
    { name: "payments", entry: "services/payments/main.ts", rpcUrl: local(config.PAYMENTS_PORT), adminUrl: local(config.PAYMENTS_ADMIN_PORT) },
    { name: "gateway", entry: "services/gateway/main.ts", rpcUrl: local(config.GATEWAY_PORT), adminUrl: local(config.GATEWAY_PORT) },
  ];
  // Local runs get the demo merchants and accounts unless told otherwise, and find each other
  // on the ports above unless told where.
  const env = {
    GATEWAY_DEMO_DATA: "true",
    FX_URL: local(config.FX_PORT),
    RISK_URL: local(config.RISK_PORT),
    WALLET_URL: local(config.WALLET_PORT),
    PAYMENTS_URL: local(config.PAYMENTS_PORT),
    ...process.env,
  };

  const children = new Map<string, ChildProcess>();
  const stopping = new AbortController();
  const stopAll = (exitCode: number) => {
    if (stopping.signal.aborted) return;
    stopping.abort();
    process.exitCode = exitCode;
    if (children.size === 0) process.exit(exitCode);
    for (const child of children.values()) child.kill("SIGTERM");
  };
  process.on("SIGINT", () => stopAll(0));
  process.on("SIGTERM", () => stopAll(0));

  for (const svc of services) {
    const { child, exited } = spawnService(svc.entry, { env, onLine: (line) => process.stdout.write(`${svc.name.padEnd(8)}| ${line}\n`) });
    void exited.then(({ code, signal }) => {
      children.delete(svc.name);
      if (!stopping.signal.aborted) {
        process.stderr.write(`${svc.name} exited (${signal ?? `code ${code}`}); stopping the others\n`);
        stopAll(1);
      } else if (children.size === 0) process.exit(process.exitCode ?? 0);
    });
    children.set(svc.name, child);
  }

  // All start at once (each waits for what it calls); the banner comes when every one is ready.
  try {
    await waitUntilReady(services, config.PAYGATE_START_TIMEOUT_SECONDS * 1000, stopping.signal);
  } catch (err) {
    if (stopping.signal.aborted) return; // a service exited, or Ctrl-C: said already
    process.stderr.write(`Paygate did not start: ${err instanceof Error ? err.message : String(err)}\nstopping every service\n`);
    return stopAll(1);
  }
  process.stdout.write(banner(services, storageDescription(config)));
}

function banner(services: ServiceProcess[], storage: string): string {
  const rows = services.map((s) => `  ${s.name.padEnd(9)} rpc ${s.rpcUrl}   ready ${s.adminUrl}/readyz`).join("\n");
  const keys = DEMO_MERCHANTS.map((m) => `  ${m.id.padEnd(7)} ${m.apiKey}   accounts ${m.id}_usd ${m.id}_eur ${m.id}_gbp ${m.id}_jpy ${m.id}_idr ${m.id}_kwd`).join("\n");
  const key = DEMO_MERCHANTS[0]!.apiKey;
  const gateway = services.find((s) => s.name === "gateway")!.rpcUrl;
  const fx = services.find((s) => s.name === "fx")!.rpcUrl;
  return `
Paygate is running (${storage}). Ctrl-C stops it.

${rows}

Demo merchants (API key, funded accounts):
${keys}

Every port speaks gRPC, gRPC-Web and Connect (JSON or binary) at once. Try:

  # a cross-currency payment through the REST route (USD from acme to IDR at globex)
  curl -s -H 'Authorization: Bearer ${key}' -H 'Content-Type: application/json' \\
    -d '{"id":"PAY-001","currency":"USD","amount":123.45,"source_account":"acme_usd","destination_account":"globex_idr"}' \\
    ${gateway}/payments
  curl -s -H 'Authorization: Bearer ${key}' ${gateway}/balance/acme_usd

  # the same API over gRPC, schema from server reflection
  grpcurl -plaintext -H 'authorization: Bearer ${key}' -H 'idempotency-key: demo-2' \\
    -d '{"source_account_id":"acme_eur","destination_account_id":"globex_jpy","amount":{"currency":"EUR","amount_minor":"5000"}}' \\
    ${new URL(gateway).host} paygate.payments.v1.PaymentsService/CreatePayment

  # Connect JSON straight to the fx service
  curl -s -H 'Content-Type: application/json' \\
    -d '{"decimal_amount":{"currency":"USD","value":"100.00"},"to_currency":"IDR"}' \\
    ${fx}/paygate.fx.v1.FxService/Convert

`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
