// The wallet service process.
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { WalletService } from "../gen/paygate/wallet/v1/wallet_pb.js";
import { loadConfig, portVar, runtimeEnv, serverOptions } from "../runtime/config.js";
import { databaseReady, openDatabase } from "../runtime/db/database.js";
import { createLogger } from "../runtime/observability/logger.js";
import { migrate } from "../runtime/db/migrate.js";
import { runMain } from "../runtime/process.js";
import { startServer } from "../runtime/rpc/server.js";
import { Ledger } from "./ledger.js";
import { registerHoldMetrics, reconcileRoute, startHoldExpiry } from "./operations.js";
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

export async function startWallet(env: NodeJS.ProcessEnv = process.env) {
  const config = loadConfig(walletEnv, env);
  const logger = createLogger("wallet", config.LOG_LEVEL);
  const db = await openDatabase({ url: config.DATABASE_URL, dataDir: config.DATA_DIR, schema: "wallet" });
  await migrate(db, fileURLToPath(new URL("./migrations", import.meta.url)));
  const ledger = new Ledger(db);
  registerHoldMetrics(ledger);
  const stopHoldExpiry = startHoldExpiry(ledger, config.WALLET_HOLD_SWEEP_MS, logger);
  return startServer(
    {
      name: "wallet",
      services: [WalletService],
      routes: (router) =>
        router.service(WalletService, walletService({ ledger, defaultHoldTtlMs: config.WALLET_HOLD_TTL_SECONDS * 1000, maxHoldTtlMs: config.WALLET_HOLD_MAX_TTL_SECONDS * 1000 })),
      readiness: [databaseReady(db)],
      adminRoutes: { "/reconcile": reconcileRoute(ledger, logger) },
      close: async () => {
        stopHoldExpiry();
        await db.close();
      },
    },
    serverOptions(config, { port: config.WALLET_PORT, adminPort: config.WALLET_ADMIN_PORT }, logger),
  );
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await runMain(() => startWallet());
