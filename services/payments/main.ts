// The payments service process.
import { hostname } from "node:os";
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { FxService } from "../gen/paygate/fx/v1/fx_pb.js";
import { PaymentsService } from "../gen/paygate/payments/v1/payments_pb.js";
import { RiskService } from "../gen/paygate/risk/v1/risk_pb.js";
import { WalletService } from "../gen/paygate/wallet/v1/wallet_pb.js";
import { loadConfig, portVar, runtimeEnv, serverOptions } from "../runtime/config.js";
import { databaseReady, openDatabase } from "../runtime/db/database.js";
import { newId } from "../runtime/ids.js";
import { createLogger } from "../runtime/observability/logger.js";
import { migrate } from "../runtime/db/migrate.js";
import { runMain } from "../runtime/process.js";
import { startServer } from "../runtime/rpc/server.js";
import { upstreamClient, upstreamReady, upstreamTransport } from "../runtime/rpc/upstream.js";
import { EventFeed } from "./events.js";
import { IdempotencyKeys } from "./idempotency.js";
import { AccountDirectory } from "./accounts.js";
import { startRecovery } from "./recovery.js";
import { Saga } from "./saga.js";
import { paymentsService } from "./service.js";
import { PaymentStore } from "./store.js";

export const paymentsEnv = {
  ...runtimeEnv,
  PAYMENTS_PORT: portVar.default(9091),
  PAYMENTS_ADMIN_PORT: portVar.default(9101),
  FX_URL: z.string().url().default("http://127.0.0.1:9092"),
  WALLET_URL: z.string().url().default("http://127.0.0.1:9093"),
  RISK_URL: z.string().url().default("http://127.0.0.1:9094"),
  /** How long a process owns a payment's saga before recovery may take it over. */
  PAYMENTS_LEASE_MS: z.coerce.number().int().min(100).max(600_000).default(30_000),
  /** How often stalled payments (a crash, an upstream down) are looked for and resumed. */
  PAYMENTS_RECOVERY_INTERVAL_MS: z.coerce.number().int().min(50).max(600_000).default(2_000),
  /** How many stalled payments a sweep resumes at once. */
  PAYMENTS_RECOVERY_CONCURRENCY: z.coerce.number().int().min(1).max(1_000).default(32),
  /** How long idempotency keys are kept (at least 24 h). */
  PAYMENTS_IDEMPOTENCY_RETENTION_HOURS: z.coerce.number().int().min(24).max(24 * 90).default(24),
  /** How often event streams look for events written by other replicas. */
  PAYMENTS_EVENT_POLL_MS: z.coerce.number().int().min(10).max(60_000).default(250),
  PAYMENTS_DB_POOL_SIZE: z.coerce.number().int().min(1).max(200).default(20),
};

export async function startPayments(env: NodeJS.ProcessEnv = process.env) {
  const config = loadConfig(paymentsEnv, env);
  const logger = createLogger("payments", config.LOG_LEVEL);
  const db = await openDatabase({ url: config.DATABASE_URL, dataDir: config.DATA_DIR, schema: "payments", poolSize: config.PAYMENTS_DB_POOL_SIZE });
  await migrate(db, fileURLToPath(new URL("./migrations", import.meta.url)));
  const now = () => new Date();
  const instanceId = `${hostname()}/${process.pid}/${newId("run").slice(4, 12)}`;
  let feed: EventFeed | undefined;
  const store = new PaymentStore(db, now, () => feed?.notify());
  feed = new EventFeed(store, config.PAYMENTS_EVENT_POLL_MS);
  const transports = { fx: upstreamTransport(config.FX_URL), wallet: upstreamTransport(config.WALLET_URL), risk: upstreamTransport(config.RISK_URL) };
  const upstreams = {
    fx: upstreamClient(FxService, transports.fx),
    wallet: upstreamClient(WalletService, transports.wallet),
    risk: upstreamClient(RiskService, transports.risk),
  };
  const accounts = new AccountDirectory(upstreams.wallet, config.UPSTREAM_TIMEOUT_MS);
  const saga = new Saga(store, upstreams, accounts, logger);
  const keys = new IdempotencyKeys(db, { retentionMs: config.PAYMENTS_IDEMPOTENCY_RETENTION_HOURS * 3_600_000, lockMs: config.PAYMENTS_LEASE_MS, now });

  const recovery = startRecovery({
    store,
    saga,
    keys,
    instanceId,
    leaseMs: config.PAYMENTS_LEASE_MS,
    intervalMs: config.PAYMENTS_RECOVERY_INTERVAL_MS,
    concurrency: config.PAYMENTS_RECOVERY_CONCURRENCY,
    // A few rounds of resumes per claim: few claim statements, each payment started early in its lease.
    batchSize: config.PAYMENTS_RECOVERY_CONCURRENCY * 8,
    timeoutMs: config.UPSTREAM_TIMEOUT_MS,
    logger,
  });

  return startServer(
    {
      name: "payments",
      services: [PaymentsService],
      routes: (router, draining) =>
        router.service(
          PaymentsService,
          paymentsService({ store, saga, keys, feed, wallet: upstreams.wallet, accounts, upstreamTimeoutMs: config.UPSTREAM_TIMEOUT_MS, instanceId, leaseMs: config.PAYMENTS_LEASE_MS, now, draining }),
        ),
      readiness: [
        databaseReady(db),
        upstreamReady("wallet", transports.wallet),
        upstreamReady("risk", transports.risk),
        upstreamReady("fx", transports.fx),
      ],
      close: async () => {
        await recovery.stop();
        await db.close();
      },
    },
    serverOptions(config, { port: config.PAYMENTS_PORT, adminPort: config.PAYMENTS_ADMIN_PORT }, logger),
  );
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await runMain(() => startPayments());
