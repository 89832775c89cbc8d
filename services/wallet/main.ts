// The wallet service process.
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { WalletService } from "../gen/paygate/wallet/v1/wallet_pb.js";
import { loadConfig, portVar, runtimeEnv, serverOptions } from "../runtime/config.js";
import { databaseReady, openDatabase } from "../runtime/db/database.js";
import { createLogger } from "../runtime/observability/logger.js";
import { gauge } from "../runtime/observability/metrics.js";
import { migrate } from "../runtime/db/migrate.js";
import { runMain } from "../runtime/process.js";
import { startServer } from "../runtime/rpc/server.js";
import { Ledger } from "./ledger.js";
import { walletService } from "./service.js";

export const walletEnv = {
  ...runtimeEnv,
  WALLET_PORT: portVar.default(9093),
  WALLET_ADMIN_PORT: portVar.default(9103),
  WALLET_HOLD_TTL_SECONDS: z.coerce.number().int().min(1).default(7 * 86_400),
  WALLET_HOLD_MAX_TTL_SECONDS: z.coerce.number().int().min(1).default(30 * 86_400),
  /** How often expired holds are released. */
  WALLET_HOLD_SWEEP_MS: z.coerce.number().int().min(10).max(3_600_000).default(1_000),
};

/** The ledger the hold gauges read (the latest started, when tests start several in one process). */
let holdSource: Ledger | undefined;

/** Open holds and held amounts per currency, read from the ledger when Prometheus scrapes. */
function registerHoldMetrics(ledger: Ledger): void {
  holdSource = ledger;
  const stats = async () => (holdSource ? holdSource.holdStats() : []);
  gauge("paygate_wallet_open_holds", "Pending holds, by currency.", ["currency"], async function () {
    this.reset();
    for (const s of await stats()) this.set({ currency: s.currency }, s.open);
  });
  gauge("paygate_wallet_held_minor", "Money held by pending holds, in minor units, by currency.", ["currency"], async function () {
    this.reset();
    for (const s of await stats()) this.set({ currency: s.currency }, Number(s.heldMinor));
  });
  gauge("paygate_wallet_overdue_holds", "Pending holds past their expiry (the expiry sweep is behind), by currency.", ["currency"], async function () {
    this.reset();
    for (const s of await stats()) this.set({ currency: s.currency }, s.overdue);
  });
}

export async function startWallet(env: NodeJS.ProcessEnv = process.env) {
  const config = loadConfig(walletEnv, env);
  const logger = createLogger("wallet", config.LOG_LEVEL);
  const db = await openDatabase({ url: config.DATABASE_URL, dataDir: config.DATA_DIR, schema: "wallet" });
  await migrate(db, fileURLToPath(new URL("./migrations", import.meta.url)));
  const ledger = new Ledger(db);
  registerHoldMetrics(ledger);
  const sweeper = setInterval(() => {
    ledger.expireHolds().then(
      (n) => n > 0 && logger.info({ expired: n }, "holds expired"),
      (err: unknown) => logger.error({ err }, "hold expiry sweep failed"),
    );
  }, config.WALLET_HOLD_SWEEP_MS);
  return startServer(
    {
      name: "wallet",
      services: [WalletService],
      routes: (router) =>
        router.service(WalletService, walletService({ ledger, defaultHoldTtlMs: config.WALLET_HOLD_TTL_SECONDS * 1000, maxHoldTtlMs: config.WALLET_HOLD_MAX_TTL_SECONDS * 1000 })),
      readiness: [databaseReady(db)],
      // The reconciliation check (`npm run reconcile`): 200 when the books balance.
      adminRoutes: {
        "/reconcile": (_req, res) => {
          ledger.reconcile().then(
            (problems) => {
              res.writeHead(problems.length === 0 ? 200 : 409, { "content-type": "application/json" });
              res.end(JSON.stringify({ balanced: problems.length === 0, problems }));
            },
            (err: unknown) => {
              logger.error({ err }, "reconciliation failed");
              res.writeHead(500, { "content-type": "application/json" });
              res.end(JSON.stringify({ error: "reconciliation could not run" }));
            },
          );
        },
      },
      close: async () => {
        clearInterval(sweeper);
        await db.close();
      },
    },
    serverOptions(config, { port: config.WALLET_PORT, adminPort: config.WALLET_ADMIN_PORT }, logger),
  );
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await runMain(() => startWallet());
