// startServer's unaryFastPath option: with it false, a unary Connect call with a binary
// message over HTTP/2 (what the fast path takes by default) reaches connect's handler
// (rpc/handler.ts), which this file wraps to record the paths it is given.
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { FxService } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { startServer, type RunningServer } from "../../services/runtime/rpc/server.js";
import { upstreamClient, upstreamTransport } from "../../services/runtime/rpc/upstream.js";

/** What connect's handler was given: each request's authority and path. */
const handled = vi.hoisted(() => [] as string[]);

vi.mock("../../services/runtime/rpc/handler.js", async (importOriginal) => {
  const original = await importOriginal<typeof import("../../services/runtime/rpc/handler.js")>();
  return {
    ...original,
    rpcHandler: (opts: Parameters<typeof original.rpcHandler>[0]) => {
      const handler = original.rpcHandler(opts);
      return (req: Parameters<typeof handler>[0], res: Parameters<typeof handler>[1]) => {
        handled.push(`${req.headers[":authority"] ?? req.headers.host}${req.url}`);
        handler(req, res);
      };
    },
  };
});

const logger = createLogger("fast-path-flag-test", "silent");
const GET_RATE = "/paygate.fx.v1.FxService/GetRate";

async function fxServer(unaryFastPath: boolean | undefined): Promise<RunningServer> {
  return startServer(
    { name: "fx", services: [FxService], routes: (router) => router.service(FxService, { getRate: (req) => ({ rate: { baseCurrency: req.baseCurrency, quoteCurrency: req.quoteCurrency, midRate: "2" } }) }) },
    { host: "127.0.0.1", port: 0, maxRequestBytes: 1 << 20, shutdownTimeoutMs: 2_000, drainDelayMs: 0, logger, ...(unaryFastPath === undefined ? {} : { unaryFastPath }) },
  );
}

describe("startServer's unaryFastPath option", () => {
  let byDefault: RunningServer;
  let withoutFastPath: RunningServer;

  beforeAll(async () => {
    [byDefault, withoutFastPath] = await Promise.all([fxServer(undefined), fxServer(false)]);
  });
  afterAll(async () => {
    await Promise.all([byDefault?.shutdown(), withoutFastPath?.shutdown()]);
  });

  const getRate = (server: RunningServer) => upstreamClient(FxService, upstreamTransport(server.url)).getRate({ baseCurrency: "USD", quoteCurrency: "EUR" });
  const handledBy = (server: RunningServer) => handled.filter((path) => path === `${new URL(server.url).host}${GET_RATE}`);

  it("by default, the fast path answers the call and connect's handler never sees it", async () => {
    const res = await getRate(byDefault);
    expect(res.rate).toMatchObject({ baseCurrency: "USD", quoteCurrency: "EUR", midRate: "2" });
    expect(handledBy(byDefault)).toEqual([]);
  });

  it("false: connect's handler answers the same call", async () => {
    const res = await getRate(withoutFastPath);
    expect(res.rate).toMatchObject({ baseCurrency: "USD", quoteCurrency: "EUR", midRate: "2" });
    expect(handledBy(withoutFastPath)).toHaveLength(1);
  });
});
