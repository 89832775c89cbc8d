// Risk over real sockets: fx and risk started as their processes start them (port 0,
// in-memory databases), called with Connect JSON over HTTP/1.1 (fetch), gRPC (grpc-js,
// knowing only the .proto files) and gRPC-Web; readiness and fail-closed behaviour when fx
// goes away; the caller's deadline carried down to fx when risk asks it for a rate.
import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { fromBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { ErrorDetailSchema } from "../../services/gen/paygate/common/v1/common_pb.js";
import { FxService } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { Outcome, RiskService } from "../../services/gen/paygate/risk/v1/risk_pb.js";
import { startFx } from "../../services/fx/main.js";
import { startRisk } from "../../services/risk/main.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { money } from "../../services/runtime/money/money.js";
import { startServer, type RunningServer } from "../../services/runtime/rpc/server.js";
import { waitFor } from "../support/wire.js";

const UPSTREAM_TIMEOUT_MS = 1000;
const protoDir = fileURLToPath(new URL("../../proto", import.meta.url));
const reflectionDir = fileURLToPath(new URL("../../node_modules/@grpc/reflection/build/proto", import.meta.url));
const loaderOptions: protoLoader.Options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const uid = () => randomUUID().replaceAll("-", "").slice(0, 12);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function grpcClient(includeDir: string, file: string, service: string, address: string): grpc.Client {
  const def = protoLoader.loadSync(file, { ...loaderOptions, includeDirs: [includeDir] });
  const Ctor = grpc.makeGenericClientConstructor(def[service] as grpc.ServiceDefinition, service);
  return new Ctor(address, grpc.credentials.createInsecure());
}

function unary<Res>(client: grpc.Client, method: string, req: unknown, deadlineMs = 10_000): Promise<Res> {
  const fn = (client as unknown as Record<string, Function>)[method]!;
  return new Promise((resolve, reject) => {
    fn.call(client, req, { deadline: Date.now() + deadlineMs }, (err: grpc.ServiceError | null, res: Res) => (err ? reject(err) : resolve(res)));
  });
}

const envFor = (fxUrl: string) => ({
  RISK_PORT: "0",
  RISK_ADMIN_PORT: "0",
  DATA_DIR: "memory://",
  LOG_LEVEL: "silent",
  FX_URL: fxUrl,
  UPSTREAM_TIMEOUT_MS: String(UPSTREAM_TIMEOUT_MS),
  SHUTDOWN_TIMEOUT_MS: "3000",
});

/** A Connect JSON call over HTTP/1.1 with plain fetch. */
async function connectJson(baseUrl: string, method: string, body: unknown): Promise<{ status: number; json: Record<string, any> }> {
  const res = await fetch(`${baseUrl}/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json", "connect-protocol-version": "1" },
    body: JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, any> };
}

async function readyz(adminUrl: string): Promise<{ status: number; body: { status: string; checks: Record<string, string> } }> {
  const res = await fetch(`${adminUrl}/readyz`);
  return { status: res.status, body: (await res.json()) as { status: string; checks: Record<string, string> } };
}

const opened = new Date("2020-01-01T00:00:00Z");

describe("risk over the wire", () => {
  let fx: RunningServer;
  let fxStopped = false;
  let risk: RunningServer;
  let grpcClients: grpc.Client[] = [];
  /** Connect client over gRPC (h2c), the protocol internal hops use. */
  let riskGrpc: Client<typeof RiskService>;

  beforeAll(async () => {
    fx = await startFx({ FX_PORT: "0", FX_ADMIN_PORT: "0", DATA_DIR: "memory://", LOG_LEVEL: "silent", FX_MARKET_TICK_MS: "0" });
    risk = await startRisk(envFor(fx.url));
    riskGrpc = createClient(RiskService, createGrpcTransport({ baseUrl: risk.url }));
  });

  afterAll(async () => {
    for (const c of grpcClients) c.close();
    await risk?.shutdown();
    if (!fxStopped) await fx?.shutdown();
  });

  it("Connect JSON over HTTP/1.1: Score normalises through fx, GetDecision finds it, errors carry ErrorDetail", async () => {
    const paymentId = `pay_${uid()}`;
    const amount = { currency: "EUR", amountMinor: "1500" };
    const fxRes = await connectJson(fx.url, "paygate.fx.v1.FxService/Convert", { amount, toCurrency: "USD" });
    expect(fxRes.status).toBe(200);
    const usd = fxRes.json.converted as { currency: string; amountMinor: string };
    expect(usd.currency).toBe("USD");

    const { status, json } = await connectJson(risk.url, "paygate.risk.v1.RiskService/Score", {
      paymentId,
      accountId: `acc_${uid()}`,
      merchantId: "m_wire",
      amount,
      accountCurrency: "EUR",
      accountOpenedAt: opened.toISOString(),
    });
    expect(status).toBe(200);
    const d = json.decision as Record<string, any>;
    expect(d.id).toMatch(/^rd_/);
    expect(d).toMatchObject({ paymentId, merchantId: "m_wire", amount, baseAmount: usd, outcome: "OUTCOME_APPROVE", shadowOutcome: "OUTCOME_APPROVE" });
    expect(d.rulesVersion).toMatch(/^2026-11-01\+[0-9a-f]{8}$/);
    expect(d.score ?? 0).toBe(0);

    const got = await connectJson(risk.url, "paygate.risk.v1.RiskService/GetDecision", { paymentId });
    expect(got.status).toBe(200);
    expect(got.json.decision).toEqual(d);

    const bad = await connectJson(risk.url, "paygate.risk.v1.RiskService/Score", { paymentId: `pay_${uid()}`, accountId: "acc_x", amount: { currency: "XYZ", amountMinor: "1" } });
    expect(bad.status).toBe(400);
    expect(bad.json.code).toBe("invalid_argument");
    const details = bad.json.details as { type: string; value: string }[];
    expect(details.map((x) => x.type)).toEqual(["paygate.common.v1.ErrorDetail"]);
    const detail = fromBinary(ErrorDetailSchema, Buffer.from(details[0]!.value, "base64"));
    expect(detail).toMatchObject({ reason: "UNKNOWN_CURRENCY", field: "amount.currency" });

    // A misspelt field is refused, not ignored.
    const typo = await connectJson(risk.url, "paygate.risk.v1.RiskService/Score", { paymentId: `pay_${uid()}`, accountId: "acc_x", amount, acountCurrency: "EUR" });
    expect(typo.status).toBe(400);
    expect(typo.json.code).toBe("invalid_argument");

    const missing = await connectJson(risk.url, "paygate.risk.v1.RiskService/GetDecision", { decisionId: "rd_nope" });
    expect(missing.status).toBe(404);
    expect(missing.json.code).toBe("not_found");
  });

  it("gRPC with grpc-js from the .proto file: Score, GetDecision, INVALID_ARGUMENT", async () => {
    const client = grpcClient(protoDir, "paygate/risk/v1/risk.proto", "paygate.risk.v1.RiskService", risk.url.replace("http://", ""));
    grpcClients.push(client);
    const paymentId = `pay_${uid()}`;
    const accountId = `acc_${uid()}`;
    type Wire = { decision: Record<string, any> };
    const res = await unary<Wire>(client, "Score", {
      payment_id: paymentId,
      account_id: accountId,
      amount: { currency: "USD", amount_minor: "250000" },
      account_currency: "USD",
      account_opened_at: { seconds: String(Math.floor(opened.getTime() / 1000)), nanos: 0 },
    });
    // The shipped rules: over 1000.00 USD adds 20 points.
    expect(res.decision).toMatchObject({
      payment_id: paymentId,
      account_id: accountId,
      amount: { currency: "USD", amount_minor: "250000" },
      base_amount: { currency: "USD", amount_minor: "250000" },
      score: 20,
      outcome: "OUTCOME_APPROVE",
    });
    expect(res.decision.reasons.map((r: { code: string }) => r.code)).toEqual(["AMOUNT_OVER_THRESHOLD"]);
    const got = await unary<Wire>(client, "GetDecision", { decision_id: res.decision.id });
    expect(got.decision).toEqual(res.decision);

    const err = await unary(client, "Score", { payment_id: `pay_${uid()}`, amount: { currency: "USD", amount_minor: "1" } }).then(
      () => undefined,
      (e: grpc.ServiceError) => e,
    );
    expect(err?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err?.details).toContain("account_id");
    expect(err?.metadata.get("grpc-status-details-bin")).toHaveLength(1);
  });

  it("gRPC-Web over HTTP/1.1: Score, replay, conflicting replay, GetDecision", async () => {
    const web = createClient(RiskService, createGrpcWebTransport({ baseUrl: risk.url, httpVersion: "1.1" }));
    const req = {
      paymentId: `pay_${uid()}`,
      accountId: `acc_${uid()}`,
      amount: money("JPY", 12_000n),
      accountCurrency: "USD",
      accountOpenedAt: timestampFromDate(opened),
    };
    const d = (await web.score(req)).decision!;
    expect(d.baseAmount?.currency).toBe("USD");
    expect(d.reasons.map((r) => r.code)).toEqual(["CURRENCY_MISMATCH"]);
    expect(d.outcome).toBe(Outcome.APPROVE);
    expect((await web.score(req)).decision).toEqual(d);
    const conflict = await web.score({ ...req, amount: money("JPY", 12_001n) }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(conflict?.code).toBe(Code.AlreadyExists);
    expect(conflict?.findDetails(ErrorDetailSchema)[0]).toMatchObject({ reason: "PAYMENT_ALREADY_SCORED", field: "payment_id" });
    expect((await web.getDecision({ key: { case: "decisionId", value: d.id } })).decision).toEqual(d);
  });

  it("reflection lists RiskService; gRPC health reports it SERVING", async () => {
    const address = risk.url.replace("http://", "");
    const reflection = grpcClient(reflectionDir, "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1.ServerReflection", address);
    grpcClients.push(reflection);
    const call = (reflection as unknown as Record<string, () => grpc.ClientDuplexStream<unknown, { list_services_response?: { service: { name: string }[] } }>>)
      .ServerReflectionInfo!.call(reflection);
    const names = await new Promise<string[]>((resolve, reject) => {
      const out: string[] = [];
      call.on("data", (res: { list_services_response?: { service: { name: string }[] } }) => out.push(...(res.list_services_response?.service.map((s) => s.name) ?? [])));
      call.on("error", reject);
      call.on("end", () => resolve(out));
      call.write({ list_services: "*" });
      call.end();
    });
    expect(names).toContain("paygate.risk.v1.RiskService");
    expect(names).toContain("grpc.health.v1.Health");
    expect(names).not.toContain("paygate.fx.v1.FxService");

    const health = grpcClient(fileURLToPath(new URL("../../node_modules/grpc-health-check/proto", import.meta.url)), "health/v1/health.proto", "grpc.health.v1.Health", address);
    grpcClients.push(health);
    expect(await unary(health, "Check", { service: "paygate.risk.v1.RiskService" })).toEqual({ status: "SERVING" });
  });

  it("RISK_FX_RATE_MAX_AGE_MS must be a whole number of ms up to a minute", async () => {
    for (const bad of ["soon", "-1", "1.5", "60001"]) {
      await expect(startRisk({ ...envFor(fx.url), RISK_FX_RATE_MAX_AGE_MS: bad })).rejects.toThrow(/RISK_FX_RATE_MAX_AGE_MS/);
    }
  });

  it("/readyz is 200 while fx is up", async () => {
    const r = await readyz(risk.adminUrl);
    expect(r.status).toBe(200);
    expect(r.body.checks).toEqual({ server: "ok", database: "ok", fx: "ok" });
  });

  describe("with fx gone", () => {
    beforeAll(async () => {
      await fx.shutdown();
      fxStopped = true;
    });

    it("/readyz turns 503 naming fx (fx is required when failing closed)", async () => {
      let r = await readyz(risk.adminUrl);
      for (let i = 0; i < 50 && r.status !== 503; i++) {
        await sleep(100);
        r = await readyz(risk.adminUrl);
      }
      expect(r.status).toBe(503);
      expect(r.body.checks.fx).not.toBe("ok");
      expect(r.body.checks.database).toBe("ok");
    });

    it("a non-USD payment is declined with FX_UNAVAILABLE within the upstream timeout, and recorded", async () => {
      const paymentId = `pay_${uid()}`;
      const started = performance.now();
      // GBP: no earlier test asked risk for it, so no rate of it is cached.
      const d = (await riskGrpc.score({ paymentId, accountId: `acc_${uid()}`, amount: money("GBP", 10_00n), accountOpenedAt: timestampFromDate(opened) }, { timeoutMs: 20_000 })).decision!;
      const elapsed = performance.now() - started;
      expect(d.outcome).toBe(Outcome.DECLINE);
      expect(d.score).toBe(99);
      expect(d.reasons.map((r) => r.code)).toContain("FX_UNAVAILABLE");
      expect(d.baseAmount).toBeUndefined();
      // Not the caller's 20 s, not the 5 s default: the configured upstream timeout (plus slack).
      expect(elapsed).toBeLessThan(UPSTREAM_TIMEOUT_MS + 2_500);
      expect((await riskGrpc.getDecision({ key: { case: "paymentId", value: paymentId } })).decision).toEqual(d);
    });

    it("a USD payment needs no fx and is still approved", async () => {
      const d = (await riskGrpc.score({ paymentId: `pay_${uid()}`, accountId: `acc_${uid()}`, amount: money("USD", 10_00n), accountOpenedAt: timestampFromDate(opened) })).decision!;
      expect(d.outcome).toBe(Outcome.APPROVE);
      expect(d.reasons).toEqual([]);
    });
  });
});

describe("deadline propagation to a slow fx", () => {
  const FX_DELAY_MS = 3000;
  const logger = createLogger("slow-fx", "silent");
  interface SeenCall {
    timeoutMs: number | undefined;
    /** ms after the call arrived that its signal aborted; undefined if it never did. */
    abortedAfterMs: number | undefined;
    done: Promise<void>;
  }
  const seen: SeenCall[] = [];
  let slowFx: RunningServer;
  let risk: RunningServer;
  let client: Client<typeof RiskService>;

  beforeAll(async () => {
    slowFx = await startServer(
      {
        name: "slow-fx",
        services: [FxService],
        routes: (router) =>
          router.service(FxService, {
            async getRate(req, ctx) {
              const started = performance.now();
              const call: SeenCall = { timeoutMs: ctx.timeoutMs(), abortedAfterMs: undefined, done: sleep(FX_DELAY_MS) };
              ctx.signal.addEventListener("abort", () => (call.abortedAfterMs = performance.now() - started), { once: true });
              seen.push(call);
              await call.done;
              return { rate: { baseCurrency: req.baseCurrency, quoteCurrency: req.quoteCurrency, midRate: "1" } };
            },
          }),
      },
      { host: "127.0.0.1", port: 0, adminPort: 0, maxRequestBytes: 1 << 20, shutdownTimeoutMs: 3000, drainDelayMs: 0, logger },
    );
    risk = await startRisk(envFor(slowFx.url));
    client = createClient(RiskService, createGrpcTransport({ baseUrl: risk.url }));
  });

  afterAll(async () => {
    await risk?.shutdown();
    await Promise.all(seen.map((c) => c.done));
    await slowFx?.shutdown();
  });

  it("a caller giving up first gets DEADLINE_EXCEEDED; fx got the caller's deadline; no decision is recorded", async () => {
    const paymentId = `pay_${uid()}`;
    const CLIENT_TIMEOUT_MS = 400;
    const started = performance.now();
    const err = await client
      .score({ paymentId, accountId: `acc_${uid()}`, amount: money("EUR", 10_00n), accountOpenedAt: timestampFromDate(opened) }, { timeoutMs: CLIENT_TIMEOUT_MS })
      .then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
    expect(err?.code).toBe(Code.DeadlineExceeded);
    expect(performance.now() - started).toBeLessThan(CLIENT_TIMEOUT_MS + 1_500);

    // risk asked fx before the deadline; on a loaded machine fx's handler may run only after
    // the caller's timer fired (one process), so it is waited for, not expected at once.
    await waitFor(() => seen.length === 1, "fx to receive risk's call");
    expect(seen).toHaveLength(1);
    const call = seen[0]!;
    // The remaining time of the caller, not the 1 s upstream default.
    expect(call.timeoutMs).toBeDefined();
    expect(call.timeoutMs!).toBeGreaterThan(0);
    expect(call.timeoutMs!).toBeLessThanOrEqual(CLIENT_TIMEOUT_MS);
    // Wait until fx would have answered: risk must not have recorded anything meanwhile.
    await call.done;
    await sleep(300);
    expect(call.abortedAfterMs).toBeDefined();
    expect(call.abortedAfterMs!).toBeLessThan(CLIENT_TIMEOUT_MS + 1_000);
    const lookup = await client.getDecision({ key: { case: "paymentId", value: paymentId } }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(lookup?.code).toBe(Code.NotFound);
  });

  it("with no caller deadline, a slow fx is unreachable after the upstream timeout: DECLINE with FX_UNAVAILABLE", async () => {
    const paymentId = `pay_${uid()}`;
    const before = seen.length;
    const started = performance.now();
    const d = (await client.score({ paymentId, accountId: `acc_${uid()}`, amount: money("GBP", 10_00n), accountOpenedAt: timestampFromDate(opened) })).decision!;
    const elapsed = performance.now() - started;
    expect(d.outcome).toBe(Outcome.DECLINE);
    expect(d.reasons.map((r) => r.code)).toContain("FX_UNAVAILABLE");
    expect(elapsed).toBeGreaterThanOrEqual(UPSTREAM_TIMEOUT_MS - 50);
    expect(elapsed).toBeLessThan(FX_DELAY_MS);
    expect(seen).toHaveLength(before + 1);
    expect(seen[before]!.timeoutMs).toBeLessThanOrEqual(UPSTREAM_TIMEOUT_MS);
    expect((await client.getDecision({ key: { case: "paymentId", value: paymentId } })).decision).toEqual(d);
  });
});
