// The risk service process.
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { FxService } from "../gen/paygate/fx/v1/fx_pb.js";
import { RiskService } from "../gen/paygate/risk/v1/risk_pb.js";
import { loadConfig, portVar, runtimeEnv, serverOptions } from "../runtime/config.js";
import { databaseReady, openDatabase } from "../runtime/db/database.js";
import { createLogger } from "../runtime/observability/logger.js";
import { migrate } from "../runtime/db/migrate.js";
import { runMain } from "../runtime/process.js";
import { startServer } from "../runtime/rpc/server.js";
import { upstreamClient, upstreamReady, upstreamTransport } from "../runtime/rpc/upstream.js";
import { DEFAULT_RULES_FILE, loadRuleSet } from "./rules.js";
import { riskService } from "./service.js";
import { DecisionStore } from "./store.js";

export const riskEnv = {
  ...runtimeEnv,
  RISK_PORT: portVar.default(9094),
  RISK_ADMIN_PORT: portVar.default(9104),
  /** Base URL of the fx service. */
  FX_URL: z.string().url().default("http://127.0.0.1:9092"),
  /** YAML rule set; the shipped services/risk/rules.yaml when unset. */
  RISK_RULES_FILE: z.string().min(1).optional(),
  /** How long an fx rate to the base currency is reused for the rules, in ms; 0 fetches one per Score. */
  RISK_FX_RATE_MAX_AGE_MS: z.coerce.number().int().min(0).max(60_000).default(5_000),
};

export async function startRisk(env: NodeJS.ProcessEnv = process.env) {
  const config = loadConfig(riskEnv, env);
  const rules = loadRuleSet(config.RISK_RULES_FILE ?? DEFAULT_RULES_FILE);
  const logger = createLogger("risk", config.LOG_LEVEL);
  const db = await openDatabase({ url: config.DATABASE_URL, dataDir: config.DATA_DIR, schema: "risk" });
  await migrate(db, fileURLToPath(new URL("./migrations", import.meta.url)));
  const fxTransport = upstreamTransport(config.FX_URL);
  logger.info({ rulesVersion: rules.version, baseCurrency: rules.baseCurrency, shadowMode: rules.shadowMode, fxUnavailable: rules.failClosedWithoutFx ? "closed" : "open" }, "risk rules loaded");
  return startServer(
    {
      name: "risk",
      services: [RiskService],
      routes: (router) =>
        router.service(
          RiskService,
          riskService({
            rules,
            store: new DecisionStore(db),
            fx: upstreamClient(FxService, fxTransport),
            upstreamTimeoutMs: config.UPSTREAM_TIMEOUT_MS,
            fxRateMaxAgeMs: config.RISK_FX_RATE_MAX_AGE_MS,
            now: () => new Date(),
          }),
        ),
      readiness: [
        databaseReady(db),
        // Failing open, risk can still decide without fx, so fx is then not required.
        ...(rules.failClosedWithoutFx ? [upstreamReady("fx", fxTransport)] : []),
      ],
      close: () => db.close(),
    },
    serverOptions(config, { port: config.RISK_PORT, adminPort: config.RISK_ADMIN_PORT }, logger),
  );
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await runMain(() => startRisk());
