// The whole of Paygate for end-to-end tests: fx, risk, wallet, payments and the api-gateway
// started in this process the way their processes start them (startX(env), free ports), with
// the gateway's demo data (merchants acme and globex, funded accounts `<merchant>_<ccy>`).
//
// Databases. On PGlite every service gets its own in-memory database (DATA_DIR=memory://).
// On PostgreSQL the services share ONE database, each in its own schema (fx, risk, wallet,
// payments, gateway), as in production. The schema names are fixed, so every stack creates a
// fresh database (CREATE DATABASE on TEST_DATABASE_URL), points DATABASE_URL at it, and drops
// it in stop(): test files running side by side never see each other's rows.
//
// Reconciliation. The ledger's check (Ledger.reconcile()) must read the wallet's own
// database. On PostgreSQL a second connection could do that, but an in-memory PGlite belongs
// to the one process and Database object that opened it. The simplest approach that works
// the same on both backends: ask the running wallet. Its admin port serves GET /reconcile
// (services/wallet/main.ts), which runs `ledger.reconcile()` on the wallet's own Database
// object and answers {balanced, problems}. So the wallet runs exactly as startWallet() starts
// it, and stack.reconcile() returns the problems ([] when the books balance).
//
// Faults. For crash tests the payments service can be left out (`payments: "external"`: the
// test runs it as a child process on a port chosen in advance, see spawnPayments), and
// payments can be pointed at a fault-injecting WalletService proxy (walletProxy), which
// forwards every call to the real wallet and can hold one chosen call, before or after the
// wallet ran it, until the test lets it go: the test kills the payments process meanwhile.
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Decimal } from "decimal.js";
import pg from "pg";
import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type CallOptions, type Client, type HandlerContext, type Interceptor, type ServiceImpl } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { ErrorDetailSchema } from "../../services/gen/paygate/common/v1/common_pb.js";
import { FxService } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { PaymentsService } from "../../services/gen/paygate/payments/v1/payments_pb.js";
import { WalletService } from "../../services/gen/paygate/wallet/v1/wallet_pb.js";
import { startFx } from "../../services/fx/main.js";
import { DEMO_MERCHANTS } from "../../services/gateway/demo.js";
import { startGateway } from "../../services/gateway/main.js";
import { startPayments } from "../../services/payments/main.js";
import { startRisk } from "../../services/risk/main.js";
import { IN_MEMORY } from "../../services/runtime/db/database.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { money, parseDecimalAmount } from "../../services/runtime/money/money.js";
import { startServer, type RunningServer } from "../../services/runtime/rpc/server.js";
import { startWallet } from "../../services/wallet/main.js";
import { spawnService, untilReady, type ChildExit } from "../../scripts/service-process.js";
import { freePort } from "./ports.js";
import type { Backend } from "./postgres.js";

export const repoRoot = fileURLToPath(new URL("../../", import.meta.url));

export const ACME = DEMO_MERCHANTS[0]!;
export const GLOBEX = DEMO_MERCHANTS[1]!;

/** Environment every service gets. Generous timeouts: CI has 2 cores and PGlite is slow. */
const COMMON_ENV = {
  HOST: "127.0.0.1",
  LOG_LEVEL: process.env.E2E_LOG_LEVEL ?? "silent",
  UPSTREAM_TIMEOUT_MS: "15000",
  SHUTDOWN_TIMEOUT_MS: "2000",
  SHUTDOWN_DRAIN_DELAY_MS: "0",
};

export type Service = "fx" | "risk" | "wallet" | "payments" | "gateway";

export interface StackOptions {
  backend: Backend;
  /** Short tag naming the test file (used in the PostgreSQL database name). */
  name: string;
  /** Extra environment per service, e.g. {wallet: {WALLET_HOLD_TTL_SECONDS: "1"}}. */
  env?: Partial<Record<Service, Record<string, string>>>;
  /** Risk rules as YAML text (written to a temp file, RISK_RULES_FILE); the shipped rules when unset. */
  riskRules?: string;
  /**
   * "in-process" (default) starts payments here. "external" leaves it to the test (see
   * spawnPayments): the gateway is pointed at 127.0.0.1:<paymentsPort>, a port picked now.
   */
  payments?: "in-process" | "external";
  /** Puts a fault-injecting proxy between payments and the wallet. */
  walletProxy?: boolean;
}

export interface Stack {
  backend: Backend;
  /** The stack's own PostgreSQL database (undefined on PGlite). */
  databaseUrl: string | undefined;
  gatewayUrl: string;
  fx: RunningServer;
  risk: RunningServer;
  wallet: RunningServer;
  /** Undefined when payments is external. */
  payments: RunningServer | undefined;
  gateway: RunningServer;
  /** The port payments listens on when external (known before it starts). */
  paymentsPort: number;
  paymentsAdminPort: number;
  /** The proxy when walletProxy was asked for. */
  walletProxy: WalletProxy | undefined;
  /** Environment for an external payments process (ports, upstreams, database). */
  paymentsEnv(extra?: Record<string, string>): Record<string, string>;
  /** The wallet itself, for test fixtures only (opening and funding accounts). */
  internalWallet: Client<typeof WalletService>;
  /** The ledger's reconciliation check; [] when the books balance. */
  reconcile(): Promise<string[]>;
  /** Opens a fresh account of `owner` in `currency` holding `balance` (decimal, major units). */
  fund(owner: string, currency: string, balance: string): Promise<string>;
  stop(): Promise<void>;
}

export async function startStack(opts: StackOptions): Promise<Stack> {
  const cleanups: (() => Promise<void> | void)[] = [];
  const runCleanups = async () => {
    for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => {});
  };
  try {
    let databaseUrl: string | undefined;
    if (opts.backend.url) {
      databaseUrl = await createDatabase(opts.backend.url, opts.name);
      const url = databaseUrl;
      cleanups.push(() => dropDatabase(opts.backend.url!, url));
    }
    const db: Record<string, string> = databaseUrl ? { DATABASE_URL: databaseUrl } : { DATA_DIR: IN_MEMORY };
    const env = (svc: Service, own: Record<string, string>) => ({ ...COMMON_ENV, ...db, ...own, ...(opts.env?.[svc] ?? {}) });

    let rulesFile: string | undefined;
    if (opts.riskRules !== undefined) {
      const dir = mkdtempSync(path.join(os.tmpdir(), "paygate-e2e-rules-"));
      cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
      rulesFile = path.join(dir, "rules.yaml");
      writeFileSync(rulesFile, opts.riskRules);
    }

    const started: RunningServer[] = [];
    cleanups.push(async () => {
      // Gateway first, fx last: each stops before what it calls.
      for (const s of [...started].reverse()) await s.shutdown().catch(() => {});
    });
    const track = (s: RunningServer) => (started.push(s), s);

    const [fx, wallet] = await Promise.all([
      startFx(env("fx", { FX_PORT: "0", FX_ADMIN_PORT: "0" })).then(track),
      startWallet(env("wallet", { WALLET_PORT: "0", WALLET_ADMIN_PORT: "0" })).then(track),
    ]);
    const risk = track(await startRisk(env("risk", { RISK_PORT: "0", RISK_ADMIN_PORT: "0", FX_URL: fx.url, ...(rulesFile ? { RISK_RULES_FILE: rulesFile } : {}) })));

    let walletProxy: WalletProxy | undefined;
    if (opts.walletProxy) {
      walletProxy = await startWalletProxy(wallet.url);
      const proxy = walletProxy;
      cleanups.push(() => proxy.server.shutdown());
    }
    const walletForPayments = walletProxy?.server.url ?? wallet.url;

    const external = opts.payments === "external";
    const paymentsPort = external ? await freePort() : 0;
    const paymentsAdminPort = external ? await freePort() : 0;
    const payments = external
      ? undefined
      : track(
          await startPayments(
            env("payments", {
              PAYMENTS_PORT: "0",
              PAYMENTS_ADMIN_PORT: "0",
              FX_URL: fx.url,
              WALLET_URL: walletForPayments,
              RISK_URL: risk.url,
              PAYMENTS_DB_POOL_SIZE: "10",
            }),
          ),
        );
    const paymentsUrl = payments?.url ?? `http://127.0.0.1:${paymentsPort}`;

    const gateway = track(
      await startGateway(
        env("gateway", {
          GATEWAY_PORT: "0",
          GATEWAY_DEMO_DATA: "true",
          PAYMENTS_URL: paymentsUrl,
          FX_URL: fx.url,
          WALLET_URL: wallet.url,
          RISK_URL: risk.url,
        }),
      ),
    );

    const internalWallet = createClient(WalletService, createGrpcTransport({ baseUrl: wallet.url }));

    const stack: Stack = {
      backend: opts.backend,
      databaseUrl,
      gatewayUrl: gateway.url,
      fx,
      risk,
      wallet,
      payments,
      gateway,
      paymentsPort,
      paymentsAdminPort,
      walletProxy,
      paymentsEnv: (extra = {}) => ({
        ...COMMON_ENV,
        ...db,
        PAYMENTS_PORT: String(paymentsPort),
        PAYMENTS_ADMIN_PORT: String(paymentsAdminPort),
        FX_URL: fx.url,
        WALLET_URL: walletForPayments,
        RISK_URL: risk.url,
        PAYMENTS_DB_POOL_SIZE: "10",
        ...extra,
      }),
      internalWallet,
      async reconcile() {
        const res = await fetch(`${wallet.adminUrl}/reconcile`);
        const body = (await res.json()) as { balanced?: boolean; problems?: string[]; error?: string };
        if (body.balanced === true) return [];
        return body.problems ?? [`reconcile answered HTTP ${res.status}: ${body.error ?? "no problems listed"}`];
      },
      async fund(owner, currency, balance) {
        const accountId = `e2e_${owner}_${currency.toLowerCase()}_${randomBytes(5).toString("hex")}`;
        await internalWallet.openAccount({ requestId: `open:${accountId}`, accountId, ownerId: owner, currency });
        const amountMinor = parseDecimalAmount(balance, currency, "balance");
        if (amountMinor > 0n) await internalWallet.credit({ transferId: `fund:${accountId}`, accountId, amount: money(currency, amountMinor) });
        return accountId;
      },
      stop: runCleanups,
    };
    return stack;
  } catch (err) {
    await runCleanups();
    throw err;
  }
}

// ---------------------------------------------------------------------------------------
// Clients of the gateway
// ---------------------------------------------------------------------------------------

/** Adds `authorization: Bearer <key>` to every call (no header when key is undefined). */
export function bearer(key: string | undefined): Interceptor {
  return (next) => async (req) => {
    if (key !== undefined) req.header.set("authorization", `Bearer ${key}`);
    return next(req);
  };
}

export interface GatewayClients {
  payments: Client<typeof PaymentsService>;
  fx: Client<typeof FxService>;
  wallet: Client<typeof WalletService>;
}

/**
 * Public-API clients of the gateway for one API key. "connect": Connect protocol, JSON over
 * HTTP/1.1 (what curl speaks); "grpc": gRPC over HTTP/2 (what grpcurl speaks).
 */
export function gatewayClients(baseUrl: string, key: string | undefined, protocol: "connect" | "grpc" = "connect"): GatewayClients {
  const interceptors = [bearer(key)];
  const transport =
    protocol === "connect" ? createConnectTransport({ baseUrl, httpVersion: "1.1", interceptors }) : createGrpcTransport({ baseUrl, interceptors });
  return { payments: createClient(PaymentsService, transport), fx: createClient(FxService, transport), wallet: createClient(WalletService, transport) };
}

// ---------------------------------------------------------------------------------------
// The fault-injecting wallet proxy
// ---------------------------------------------------------------------------------------

export type Phase = "before" | "after";

export interface WalletProxy {
  server: RunningServer;
  /** Names of the calls forwarded so far, e.g. ["GetAccount", "Reserve", ...]. */
  readonly calls: string[];
  /**
   * Holds the next call of `method`: "before" the wallet runs it (the wallet never sees it
   * unless the test releases it with forward=true), or "after" it ran (the wallet committed
   * it; the answer is held back). Resolves when such a call arrives; later calls pass.
   */
  arm(method: string, phase: Phase): Promise<void>;
  /** Lets the held call go: "before" calls are refused (UNAVAILABLE), "after" calls answer. */
  release(): void;
}

async function startWalletProxy(walletUrl: string): Promise<WalletProxy> {
  const upstream = createClient(WalletService, createGrpcTransport({ baseUrl: walletUrl })) as unknown as Record<string, (req: unknown, opts: CallOptions) => Promise<unknown>>;
  const calls: string[] = [];
  let armed: { method: string; phase: Phase; hit: () => void } | undefined;
  let releaseHeld: (() => void) | undefined;
  let released = Promise.resolve();

  /** Waits until the test releases the held call or its caller goes away. */
  const hold = (ctx: HandlerContext) =>
    new Promise<void>((resolve) => {
      const done = () => resolve();
      ctx.signal.addEventListener("abort", done, { once: true });
      void released.then(done);
    });

  const forward = (m: DescMethod) => async (req: unknown, ctx: HandlerContext) => {
    calls.push(m.name);
    const call = () => upstream[m.localName]!(req, { signal: ctx.signal, timeoutMs: ctx.timeoutMs() });
    const fault = armed && armed.method === m.name ? armed : undefined;
    if (!fault) return call();
    armed = undefined;
    if (fault.phase === "before") {
      fault.hit();
      await hold(ctx);
      throw new ConnectError(`test proxy: ${m.name} dropped before reaching the wallet`, Code.Unavailable);
    }
    const res = await call();
    fault.hit();
    await hold(ctx);
    return res;
  };

  const impl: Record<string, (req: unknown, ctx: HandlerContext) => Promise<unknown>> = {};
  for (const m of WalletService.methods) impl[m.localName] = forward(m);
  const server = await startServer(
    { name: "wallet-proxy", services: [WalletService], routes: (router) => router.service(WalletService, impl as unknown as ServiceImpl<typeof WalletService>) },
    { host: "127.0.0.1", port: 0, adminPort: 0, maxRequestBytes: 1 << 20, shutdownTimeoutMs: 1000, drainDelayMs: 0, logger: createLogger("wallet-proxy", "silent") },
  );
  return {
    server,
    calls,
    arm(method, phase) {
      released = new Promise<void>((r) => (releaseHeld = r));
      return new Promise<void>((hit) => (armed = { method, phase, hit }));
    },
    release() {
      armed = undefined;
      releaseHeld?.();
    },
  };
}

// ---------------------------------------------------------------------------------------
// Payments as a child process
// ---------------------------------------------------------------------------------------

export interface ChildService {
  process: ChildProcess;
  /** Resolves with the exit code or signal when the process ends. */
  exited: Promise<ChildExit>;
  /** Everything the process wrote to stderr (for failure messages). */
  stderr(): string;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * Starts `node --import tsx services/payments/main.ts` with `env` (plus PATH/HOME) and waits
 * until its admin /readyz answers 200 (bounded).
 */
export async function spawnPayments(env: Record<string, string>, adminPort: number, readyTimeoutMs = 60_000): Promise<ChildService> {
  let stderr = "";
  const { child, exited } = spawnService("services/payments/main.ts", {
    cwd: repoRoot,
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? os.tmpdir(), ...env },
    onLine: (line, stream) => {
      if (stream !== "stderr") return;
      stderr += `${line}\n`;
      if (stderr.length > 20_000) stderr = stderr.slice(-20_000);
    },
  });
  // Never outlive the test process, whatever happens to it.
  const killOnExit = () => child.kill("SIGKILL");
  process.once("exit", killOnExit);
  void exited.then(() => process.off("exit", killOnExit));
  const service: ChildService = {
    process: child,
    exited,
    stderr: () => stderr,
    async kill(signal = "SIGKILL") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
  const exitedEarly = new AbortController();
  void exited.then((e) => exitedEarly.abort(new Error(`payments exited (${JSON.stringify(e)}) before it was ready:\n${stderr}`)));
  try {
    const notReady = await untilReady([{ adminUrl: `http://127.0.0.1:${adminPort}` }], readyTimeoutMs, exitedEarly.signal, 100);
    if (notReady.size > 0) throw new Error(`timed out after ${readyTimeoutMs} ms waiting for the payments process to be ready`);
  } catch (err) {
    await service.kill();
    throw err;
  }
  return service;
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Polls `fn` until it returns a truthy value (returned) or `timeoutMs` passes (throws, with
 * the last error seen). `fatal` errors stop the polling at once.
 */
export async function waitFor<T>(fn: () => T | Promise<T>, what: string, timeoutMs = 15_000, intervalMs = 50, fatal?: (err: unknown) => boolean): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      if (fatal?.(err)) throw err;
      lastError = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (last error: ${String(lastError)})` : ""}`);
    await sleep(intervalMs);
  }
}

/** The ConnectError a promise rejects with; throws if it resolves or rejects with something else. */
export async function connectError(p: Promise<unknown>): Promise<ConnectError> {
  let outcome: unknown;
  try {
    await p;
  } catch (err) {
    outcome = err;
  }
  if (outcome === undefined) throw new Error("expected the call to fail, it succeeded");
  if (!(outcome instanceof ConnectError)) throw new Error(`expected a ConnectError, got ${String(outcome)}`, { cause: outcome });
  return outcome;
}

async function createDatabase(adminUrl: string, tag: string): Promise<string> {
  const name = `e2e_${tag.replace(/[^a-z0-9_]/gi, "_").toLowerCase()}_${randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

async function dropDatabase(adminUrl: string, databaseUrl: string): Promise<void> {
  const name = new URL(databaseUrl).pathname.slice(1);
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    // FORCE (PostgreSQL 13+): a connection a killed child process left behind must not block it.
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  } finally {
    await admin.end();
  }
}

/** A temporary folder removed by the returned function. */
export function tempDir(prefix: string): { dir: string; remove: () => void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** What a failed call says: its code, and the reason and field of its ErrorDetail. */
export async function failure(p: Promise<unknown>): Promise<{ code: Code; reason: string; field: string; metadata: Record<string, string>; message: string }> {
  const err = await connectError(p);
  const detail = err.findDetails(ErrorDetailSchema)[0];
  return { code: err.code, reason: detail?.reason ?? "", field: detail?.field ?? "", metadata: { ...(detail?.metadata ?? {}) }, message: err.rawMessage };
}

/** An account's balance through the gateway, as three bigints. */
export async function balanceOf(wallet: Client<typeof WalletService>, accountId: string): Promise<{ posted: bigint; pending: bigint; available: bigint }> {
  const { balance } = await wallet.getBalance({ accountId });
  return { posted: balance!.posted!.amountMinor, pending: balance!.pending!.amountMinor, available: balance!.available!.amountMinor };
}

/** ISO 4217 minor-unit exponents of the currencies the tests use (an independent table). */
export const EXPONENT: Record<string, number> = { USD: 2, EUR: 2, GBP: 2, IDR: 2, JPY: 0, KWD: 3 };

const D = Decimal.clone({ precision: 200, rounding: Decimal.ROUND_HALF_EVEN });

/**
 * round_half_even(amount × rate) in target minor units, computed with decimal.js (not the
 * service's own bigint maths): amountMinor / 10^from × rate × 10^to.
 */
export function expectedConversion(amountMinor: bigint, from: string, rate: string, to: string): bigint {
  const fromExp = EXPONENT[from];
  const toExp = EXPONENT[to];
  if (fromExp === undefined || toExp === undefined) throw new Error(`no exponent for ${from} or ${to}`);
  const exact = new D(amountMinor.toString()).div(new D(10).pow(fromExp)).mul(new D(rate)).mul(new D(10).pow(toExp));
  return BigInt(exact.toDecimalPlaces(0, Decimal.ROUND_HALF_EVEN).toFixed(0));
}

/** "123.45" USD -> 12345n (test-side parsing of a decimal in major units). */
export function minor(value: string, currency: string): bigint {
  return parseDecimalAmount(value, currency, "amount");
}
