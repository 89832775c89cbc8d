// The api-gateway process: the public API (gRPC, Connect, gRPC-Web) and the REST
// compatibility routes on one port, with API-key authentication per merchant.
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { FxService } from "../gen/paygate/fx/v1/fx_pb.js";
import { PaymentsService } from "../gen/paygate/payments/v1/payments_pb.js";
import { RiskService } from "../gen/paygate/risk/v1/risk_pb.js";
import { WalletService } from "../gen/paygate/wallet/v1/wallet_pb.js";
import { loadConfig, portVar, runtimeEnv, serverOptions } from "../runtime/config.js";
import { databaseReady, openDatabase } from "../runtime/db/database.js";
import { createLogger } from "../runtime/observability/logger.js";
import { migrate } from "../runtime/db/migrate.js";
import { runMain } from "../runtime/process.js";
import { startServer } from "../runtime/rpc/server.js";
import { upstreamClient, upstreamReady, upstreamTransport } from "../runtime/rpc/upstream.js";
import { seedDemo } from "./demo.js";
import { Merchants } from "./merchants.js";
import { authentication, publicApi } from "./public-api.js";
import { paymentsRelay } from "./relay.js";
import { restRoutes } from "./rest.js";

export const gatewayEnv = {
  ...runtimeEnv,
  GATEWAY_PORT: portVar.default(8080),
  PAYMENTS_URL: z.string().url().default("http://127.0.0.1:9091"),
  FX_URL: z.string().url().default("http://127.0.0.1:9092"),
  WALLET_URL: z.string().url().default("http://127.0.0.1:9093"),
  RISK_URL: z.string().url().default("http://127.0.0.1:9094"),
  /** Create the demo merchants, keys and funded accounts (for local runs, never production). */
  GATEWAY_DEMO_DATA: z.enum(["true", "false"]).default("false"),
};

export async function startGateway(env: NodeJS.ProcessEnv = process.env) {
  const config = loadConfig(gatewayEnv, env);
  const logger = createLogger("gateway", config.LOG_LEVEL);
  const db = await openDatabase({ url: config.DATABASE_URL, dataDir: config.DATA_DIR, schema: "gateway" });
  await migrate(db, fileURLToPath(new URL("./migrations", import.meta.url)));
  const merchants = new Merchants(db);
  const transports = {
    payments: upstreamTransport(config.PAYMENTS_URL),
    fx: upstreamTransport(config.FX_URL),
    wallet: upstreamTransport(config.WALLET_URL),
    risk: upstreamTransport(config.RISK_URL),
  };
  const upstreams = {
    payments: upstreamClient(PaymentsService, transports.payments),
    fx: upstreamClient(FxService, transports.fx),
    wallet: upstreamClient(WalletService, transports.wallet),
  };
  if (config.GATEWAY_DEMO_DATA === "true") {
    const accounts = await seedDemo(merchants, upstreams.wallet);
    logger.info({ accounts: accounts.length }, "demo data ready");
  }
  const api = publicApi(upstreams, config.UPSTREAM_TIMEOUT_MS);
  const relay = paymentsRelay({ upstreamUrl: config.PAYMENTS_URL, merchants, defaultTimeoutMs: config.UPSTREAM_TIMEOUT_MS, logger });
  return startServer(
    {
      name: "gateway",
      services: [PaymentsService, FxService, WalletService],
      routes: (router) => {
        router.service(PaymentsService, api.payments);
        router.service(FxService, api.fx);
        router.service(WalletService, api.wallet);
      },
      interceptors: [authentication(merchants)],
      relay,
      fallback: restRoutes(api, upstreamClient(RiskService, transports.risk), merchants, config.UPSTREAM_TIMEOUT_MS, logger),
      readiness: [
        databaseReady(db),
        ...Object.entries(transports).map(([name, t]) => upstreamReady(name, t)),
      ],
      close: async () => {
        relay.close();
        await db.close();
      },
    },
    serverOptions(config, { port: config.GATEWAY_PORT }, logger),
  );
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await runMain(() => startGateway());
