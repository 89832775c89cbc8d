// The fx service process.
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { FxService } from "../gen/paygate/fx/v1/fx_pb.js";
import { loadConfig, portVar, runtimeEnv, serverOptions } from "../runtime/config.js";
import { databaseReady, openDatabase } from "../runtime/db/database.js";
import { createLogger } from "../runtime/observability/logger.js";
import { migrate } from "../runtime/db/migrate.js";
import { runMain } from "../runtime/process.js";
import { startServer } from "../runtime/rpc/server.js";
import { loadReferenceSnapshot, SimulatedMarket } from "./market.js";
import { QuoteStore } from "./quotes.js";
import { fxService } from "./service.js";

export const fxEnv = {
  ...runtimeEnv,
  FX_PORT: portVar.default(9092),
  FX_ADMIN_PORT: portVar.default(9102),
  /** Spread taken off the mid rate in quotes, in basis points (30 = 0.30%). */
  FX_SPREAD_BPS: z.coerce.number().int().min(0).max(9999).default(30),
  FX_QUOTE_TTL_SECONDS: z.coerce.number().int().min(1).max(86_400).default(30),
  FX_QUOTE_MAX_TTL_SECONDS: z.coerce.number().int().min(1).max(86_400).default(3_600),
  /** Milliseconds between simulated market ticks; 0 freezes rates at the reference snapshot. */
  FX_MARKET_TICK_MS: z.coerce.number().int().min(0).max(3_600_000).default(500),
  FX_MARKET_MAX_STEP_BPS: z.coerce.number().int().min(0).max(1000).default(5),
  FX_MARKET_MAX_DRIFT_BPS: z.coerce.number().int().min(0).max(5000).default(300),
};

export async function startFx(env: NodeJS.ProcessEnv = process.env) {
  const config = loadConfig(fxEnv, env);
  const logger = createLogger("fx", config.LOG_LEVEL);
  const db = await openDatabase({ url: config.DATABASE_URL, dataDir: config.DATA_DIR, schema: "fx" });
  await migrate(db, fileURLToPath(new URL("./migrations", import.meta.url)));
  const market = new SimulatedMarket(loadReferenceSnapshot(), {
    tickMs: config.FX_MARKET_TICK_MS,
    maxStepBps: config.FX_MARKET_MAX_STEP_BPS,
    maxDriftBps: config.FX_MARKET_MAX_DRIFT_BPS,
  });
  market.start();
  return startServer(
    {
      name: "fx",
      services: [FxService],
      routes: (router, draining) =>
        router.service(
          FxService,
          fxService({
            market,
            quotes: new QuoteStore(db),
            spreadBps: config.FX_SPREAD_BPS,
            defaultQuoteTtlMs: config.FX_QUOTE_TTL_SECONDS * 1000,
            maxQuoteTtlMs: config.FX_QUOTE_MAX_TTL_SECONDS * 1000,
            now: () => new Date(),
            draining,
          }),
        ),
      readiness: [databaseReady(db)],
      close: async () => {
        market.stop();
        await db.close();
      },
    },
    serverOptions(config, { port: config.FX_PORT, adminPort: config.FX_ADMIN_PORT }, logger),
  );
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await runMain(() => startFx());
