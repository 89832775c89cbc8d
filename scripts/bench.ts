// `npm run bench`: a benchmark (not a test). Starts the whole stack as separate processes on
// loopback (like `npm start`, on other ports), funds a few hundred accounts, drives payments
// through the gateway at a fixed concurrency for a bounded time, then a no-op RPC through the
// same stack (the ceiling), checks the ledger reconciles, prints a table and stops everything.
//
//   npm run bench                                          # embedded PGlite in a temp DATA_DIR
//   npm run bench -- --database-url postgres://u:p@127.0.0.1:5432/postgres   # real PostgreSQL
//   npm run bench -- --concurrency 64 --duration 60 --cross 20 --accounts 200
//
// With PostgreSQL the benchmark creates a fresh database next to the one in the URL (the
// user needs CREATEDB) and drops it at the end. Ports: the gateway on BENCH_PORT_BASE
// (default 18080), the others at BENCH_PORT_BASE+1011.. (19091 payments, 19092 fx, 19093
// wallet, 19094 risk) and their admin ports at +1021.. (19101..19104).
import type { ChildProcess } from "node:child_process";
import http2 from "node:http2";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { errorFromJsonBytes } from "../services/runtime/rpc/connect-protocol.js";
import pg from "pg";
import { ErrorDetailSchema } from "../services/gen/paygate/common/v1/common_pb.js";
import { GetRateRequestSchema, GetRateResponseSchema } from "../services/gen/paygate/fx/v1/fx_pb.js";
import { CreatePaymentRequestSchema, CreatePaymentResponseSchema, PaymentStatus } from "../services/gen/paygate/payments/v1/payments_pb.js";
import { WalletService } from "../services/gen/paygate/wallet/v1/wallet_pb.js";
import { DEMO_MERCHANTS } from "../services/gateway/demo.js";
import { openDatabase } from "../services/runtime/db/database.js";
import { currencyInfo, formatMinor, money } from "../services/runtime/money/money.js";
import { Ledger } from "../services/wallet/ledger.js";
import { prng } from "./prng.js";
import { spawnService, untilReady } from "./service-process.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

// ---------------------------------------------------------------------------------------
// Options

const USAGE = `usage: npm run bench -- [options]
  --database-url URL   PostgreSQL server to use (default: $DATABASE_URL); a fresh database is
                       created on it and dropped afterwards. Without one: embedded PGlite.
  --pglite             use embedded PGlite even when DATABASE_URL is set
  --concurrency N      requests in flight at any time (default 32)
  --duration S         measured seconds per phase (default 20)
  --warmup S           warm-up seconds before each phase, not counted (default 3)
  --accounts N         funded source accounts the payments are spread over (default 200)
  --dest-accounts N    destination accounts per currency (default accounts/10, at least 4);
                       1 sends everything to one account per currency (a hot merchant account)
  --cross PCT          share of cross-currency payments, in percent (default 20)
  --seed N             seed of the request mix (default 1)
  --cpu-prof LIST      comma-separated services to run with --cpu-prof (e.g. payments,gateway);
                       profiles are written to a temp folder that is kept and printed
  --keep-data          keep the database / data dir instead of dropping it
env: BENCH_PORT_BASE (gateway port, default 18080; the rest at +1011.. and +1021..),
     BENCH_LOG_LEVEL (services' LOG_LEVEL, default warn); other service variables
     (PAYMENTS_DB_POOL_SIZE, UPSTREAM_TIMEOUT_MS, ...) are passed through.`;

const { values: args } = parseArgs({
  options: {
    "database-url": { type: "string" },
    pglite: { type: "boolean", default: false },
    concurrency: { type: "string", default: "32" },
    duration: { type: "string", default: "20" },
    warmup: { type: "string", default: "3" },
    accounts: { type: "string", default: "200" },
    "dest-accounts": { type: "string" },
    cross: { type: "string", default: "20" },
    seed: { type: "string", default: "1" },
    "cpu-prof": { type: "string" },
    "keep-data": { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
  strict: true,
});
if (args.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}

function intArg(name: string, text: string, min: number, max: number): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) {
    process.stderr.write(`--${name}: expected an integer from ${min} to ${max}, got ${JSON.stringify(text)}\n${USAGE}\n`);
    process.exit(2);
  }
  return n;
}

const CONCURRENCY = intArg("concurrency", args.concurrency, 1, 10_000);
const DURATION_S = intArg("duration", args.duration, 1, 3600);
const WARMUP_S = intArg("warmup", args.warmup, 0, 600);
const ACCOUNTS = intArg("accounts", args.accounts, 1, 100_000);
const DEST_ACCOUNTS = args["dest-accounts"] === undefined ? Math.max(4, Math.ceil(ACCOUNTS / 10)) : intArg("dest-accounts", args["dest-accounts"], 1, 100_000);
const CROSS_PCT = intArg("cross", args.cross, 0, 100);
const SEED = intArg("seed", args.seed, 0, 2 ** 31 - 1);
const PORT_BASE = intArg("BENCH_PORT_BASE", process.env.BENCH_PORT_BASE || "18080", 1024, 65535 - 1030);
const LOG_LEVEL = process.env.BENCH_LOG_LEVEL || "warn";
const DATABASE_URL = args.pglite ? undefined : args["database-url"] || process.env.DATABASE_URL || undefined;
const CPU_PROF = new Set((args["cpu-prof"] ?? "").split(",").map((s) => s.trim()).filter(Boolean));

// ---------------------------------------------------------------------------------------
// The stack

interface Svc {
  name: "gateway" | "payments" | "fx" | "wallet" | "risk";
  entry: string;
  port: number;
  adminPort: number;
  child?: ChildProcess;
  /** Log lines shown so far, and the last ones kept for a crash report. */
  shown: number;
  suppressed: number;
  tail: string[];
}

const svc = (name: Svc["name"], port: number, adminPort: number): Svc => ({ name, entry: `services/${name}/main.ts`, port, adminPort, shown: 0, suppressed: 0, tail: [] });
const gateway = svc("gateway", PORT_BASE, PORT_BASE);
const payments = svc("payments", PORT_BASE + 1011, PORT_BASE + 1021);
const fx = svc("fx", PORT_BASE + 1012, PORT_BASE + 1022);
const wallet = svc("wallet", PORT_BASE + 1013, PORT_BASE + 1023);
const risk = svc("risk", PORT_BASE + 1014, PORT_BASE + 1024);
const SERVICES = [fx, risk, wallet, payments, gateway];
for (const s of CPU_PROF) {
  if (!SERVICES.some((x) => x.name === s)) {
    process.stderr.write(`--cpu-prof: unknown service ${JSON.stringify(s)} (one of ${SERVICES.map((x) => x.name).join(", ")})\n`);
    process.exit(2);
  }
}
const url = (port: number) => `http://127.0.0.1:${port}`;

const MAX_LOG_LINES = 25;
const READY_TIMEOUT_MS = 180_000;
const seenLines = new Set<string>();
let stopping = false;
let crashed: string | undefined;
const interrupted = new AbortController();

function startService(s: Svc, env: NodeJS.ProcessEnv, profDir: string | undefined): void {
  const nodeArgs = profDir && CPU_PROF.has(s.name) ? ["--cpu-prof", `--cpu-prof-dir=${path.join(profDir, s.name)}`] : [];
  const onLine = (line: string) => {
    s.tail.push(line);
    if (s.tail.length > 20) s.tail.shift();
    // The same line (e.g. a warning every service prints) is shown once, whichever service says it.
    const key = line.replace(/\(node:\d+\)/, "").replace(/"(time|pid)":\d+,?/g, "");
    if (seenLines.has(key)) {
      s.suppressed++;
    } else if (s.shown < MAX_LOG_LINES) {
      seenLines.add(key);
      s.shown++;
      process.stdout.write(`  ${s.name.padEnd(8)}| ${line.length > 400 ? `${line.slice(0, 400)}…` : line}\n`);
    } else s.suppressed++;
  };
  const { child, exited } = spawnService(s.entry, { cwd: ROOT, env, nodeArgs, onLine });
  void exited.then(({ code, signal }) => {
    if (!stopping && !crashed) {
      crashed = `${s.name} exited unexpectedly (${signal ?? `code ${code}`}); last lines:\n${s.tail.map((l) => `  ${s.name}| ${l}`).join("\n")}`;
      interrupted.abort();
    }
  });
  s.child = child;
}

/** Waits until every service is ready, at most READY_TIMEOUT_MS; a crash or Ctrl-C ends the wait. */
async function waitReady(): Promise<void> {
  const notReady = await untilReady(
    SERVICES.map((s) => ({ name: s.name, adminUrl: url(s.adminPort) })),
    READY_TIMEOUT_MS,
    interrupted.signal,
  ).catch((err: unknown) => {
    throw interrupted.signal.aborted ? new Error(crashed ?? "interrupted") : err;
  });
  const [first] = notReady.keys();
  if (first) throw new Error(`${first.name} did not become ready within ${READY_TIMEOUT_MS / 1000}s`);
}

/** SIGTERM (graceful), then SIGKILL after `graceMs`; resolves when it has exited. */
async function stopService(s: Svc, graceMs = 20_000): Promise<void> {
  const child = s.child;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}

async function stopAll(): Promise<void> {
  stopping = true;
  // Callers first, so nothing is left mid-saga by an upstream going away under it.
  await stopService(gateway);
  await stopService(payments);
  await Promise.all([risk, wallet, fx].map((s) => stopService(s)));
}

// ---------------------------------------------------------------------------------------
// Measurement helpers

interface Sample {
  /** Latency class, e.g. "same-currency". */
  tag: string;
  /** Outcome, e.g. "CAPTURED", "FAILED INSUFFICIENT_FUNDS", "OK". */
  outcome: string;
}

interface PhaseResult {
  elapsedS: number;
  completed: number;
  errors: Map<string, number>;
  outcomes: Map<string, number>;
  latencies: Map<string, number[]>;
}

/**
 * Runs `op` from `concurrency` workers until `seconds` have passed (requests in flight then
 * finish and count). Errors are counted by code and reason, latencies by tag.
 */
/**
 * One unary call in the Connect protocol with binary messages over an HTTP/2 session, 10 s
 * deadline; a Connect error response becomes a ConnectError. The load generator shares the
 * machine with the stack it measures, so it is kept to a bare HTTP/2 request (connect-node's
 * client costs several times more CPU per call).
 */
function connectUnary<I extends DescMessage, O extends DescMessage>(
  session: http2.ClientHttp2Session,
  path: string,
  input: I,
  message: MessageInitShape<I>,
  output: O,
  headers: Record<string, string>,
): Promise<MessageShape<O>> {
  return new Promise((resolve, reject) => {
    const req = session.request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/proto",
      "connect-protocol-version": "1",
      "connect-timeout-ms": "10000",
      ...headers,
    });
    req.setTimeout(10_000, () => req.close(http2.constants.NGHTTP2_CANCEL));
    let status = 0;
    const chunks: Buffer[] = [];
    req.on("response", (h) => (status = Number(h[":status"])));
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("error", (err) => reject(new ConnectError(err.message, Code.Unavailable)));
    req.on("close", () => {
      const body = Buffer.concat(chunks);
      if (status === 200) resolve(fromBinary(output, body));
      else if (status === 0) reject(new ConnectError("no response (deadline or reset)", Code.DeadlineExceeded));
      else reject(errorFromJsonBytes(body, undefined, new ConnectError(`HTTP ${status}`, Code.Unknown)));
    });
    req.end(toBinary(input, create(input, message)));
  });
}

async function drive(concurrency: number, seconds: number, op: (seq: number) => Promise<Sample>): Promise<PhaseResult> {
  const result: PhaseResult = { elapsedS: 0, completed: 0, errors: new Map(), outcomes: new Map(), latencies: new Map() };
  let seq = 0;
  const start = performance.now();
  const end = start + seconds * 1000;
  const worker = async () => {
    while (performance.now() < end && !interrupted.signal.aborted) {
      const n = seq++;
      const t0 = performance.now();
      try {
        const s = await op(n);
        const ms = performance.now() - t0;
        let list = result.latencies.get(s.tag);
        if (!list) result.latencies.set(s.tag, (list = []));
        list.push(ms);
        bump(result.outcomes, s.outcome);
        result.completed++;
      } catch (err) {
        bump(result.errors, describeError(err));
        // An error storm (e.g. a service down) must not spin: back off a little.
        await sleep(5);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  result.elapsedS = (performance.now() - start) / 1000;
  return result;
}

function bump(m: Map<string, number>, key: string, by = 1): void {
  m.set(key, (m.get(key) ?? 0) + by);
}

function describeError(err: unknown): string {
  if (err instanceof ConnectError) {
    const reason = err.findDetails(ErrorDetailSchema)[0]?.reason;
    return `${Code[err.code]}${reason ? ` ${reason}` : ""}: ${err.rawMessage.slice(0, 80)}`;
  }
  return err instanceof Error ? err.message.slice(0, 100) : String(err);
}

interface Stats {
  n: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
  mean: number;
}

function stats(values: number[]): Stats | undefined {
  if (values.length === 0) return undefined;
  const sorted = Float64Array.from(values).sort();
  const at = (p: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
  return { n: sorted.length, p50: at(50), p95: at(95), p99: at(99), max: sorted[sorted.length - 1]!, mean: sorted.reduce((a, b) => a + b, 0) / sorted.length };
}

// CPU: per process from /proc/<pid>/stat, the machine from /proc/stat (Linux only).
const CLK_TCK = 100;

function procCpuMs(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const text = readFileSync(`/proc/${pid}/stat`, "utf8");
    const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
    return ((Number(rest[11]) + Number(rest[12])) * 1000) / CLK_TCK;
  } catch {
    return undefined;
  }
}

function machineCpu(): { busyMs: number; totalMs: number } | undefined {
  try {
    const fields = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
    const total = fields.reduce((a, b) => a + b, 0);
    const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
    return { busyMs: ((total - idle) * 1000) / CLK_TCK, totalMs: (total * 1000) / CLK_TCK };
  } catch {
    return undefined;
  }
}

/**
 * CPU ms of every PostgreSQL process on this machine, by pid: the backends serving the bench
 * database (their process title names it) apart from the rest (wal writer, checkpointer, other
 * databases). Empty when PostgreSQL is not local or /proc is missing.
 */
function postgresCpu(dbName: string | undefined): Map<number, { bench: boolean; ms: number }> {
  const found = new Map<number, { bench: boolean; ms: number }>();
  if (!dbName) return found;
  let pids: string[];
  try {
    pids = readdirSync("/proc").filter((d) => /^\d+$/.test(d));
  } catch {
    return found;
  }
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      if (stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")")) !== "postgres") continue;
      const title = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      found.set(Number(pid), { bench: title.includes(` ${dbName} `), ms: ((Number(rest[11]) + Number(rest[12])) * 1000) / CLK_TCK });
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

interface CpuSnapshot {
  at: number;
  /** CLOCK_MONOTONIC in µs: the clock of the timestamps in V8 CPU profiles. */
  monoUs: bigint;
  procs: Map<string, number | undefined>;
  self: NodeJS.CpuUsage;
  machine: ReturnType<typeof machineCpu>;
  postgres: ReturnType<typeof postgresCpu>;
}

const cpuSnapshot = (): CpuSnapshot => ({
  at: performance.now(),
  monoUs: process.hrtime.bigint() / 1000n,
  procs: new Map(SERVICES.map((s) => [s.name, procCpuMs(s.child?.pid)])),
  self: process.cpuUsage(),
  machine: machineCpu(),
  postgres: postgresCpu(benchDbName),
});

/** CPU ms spent per process between two snapshots. */
function cpuDelta(a: CpuSnapshot, b: CpuSnapshot): { rows: [string, number | undefined][]; wallMs: number; machineBusyMs?: number; machineTotalMs?: number } {
  const rows: [string, number | undefined][] = SERVICES.map((s) => {
    const x = a.procs.get(s.name);
    const y = b.procs.get(s.name);
    return [s.name, x === undefined || y === undefined ? undefined : y - x];
  });
  rows.push(["bench client", (b.self.user + b.self.system - a.self.user - a.self.system) / 1000]);
  if (b.postgres.size > 0) {
    // Processes started during the window count from zero; ones that ended are missed.
    const sum = (bench: boolean) => [...b.postgres].filter(([, p]) => p.bench === bench).reduce((t, [pid, p]) => t + p.ms - (a.postgres.get(pid)?.ms ?? 0), 0);
    rows.push(["postgres: bench db backends", sum(true)]);
    rows.push(["postgres: other processes", sum(false)]);
  }
  const out: ReturnType<typeof cpuDelta> = { rows, wallMs: b.at - a.at };
  if (a.machine && b.machine) {
    out.machineBusyMs = b.machine.busyMs - a.machine.busyMs;
    out.machineTotalMs = b.machine.totalMs - a.machine.totalMs;
  }
  return out;
}

// PostgreSQL counters of the bench database (transactions; statements when
// pg_stat_statements is loaded). Approximate: backends flush their stats about once a second.
interface PgCounters {
  xacts: number;
  statements: number | undefined;
}

async function pgCounters(client: pg.Client | undefined): Promise<PgCounters | undefined> {
  if (!client) return undefined;
  const { rows } = await client.query<{ xacts: string }>("SELECT (xact_commit + xact_rollback)::text AS xacts FROM pg_stat_database WHERE datname = current_database()");
  let statements: number | undefined;
  try {
    const r = await client.query<{ calls: string | null }>(
      "SELECT sum(calls)::text AS calls FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    );
    statements = r.rows[0]?.calls == null ? undefined : Number(r.rows[0].calls);
  } catch {
    statements = undefined; // pg_stat_statements not in shared_preload_libraries
  }
  return { xacts: Number(rows[0]?.xacts ?? 0), statements };
}

// ---------------------------------------------------------------------------------------
// Formatting

const f1 = (n: number) => n.toFixed(1);
const pct = (part: number, whole: number) => (whole === 0 ? "-" : `${((100 * part) / whole).toFixed(1)}%`);
const group = (n: number) => n.toLocaleString("en-US");
const loadAvg = () => os.loadavg().map((l) => l.toFixed(2)).join(" ");

function table(header: string[], rows: string[][], alignLeft = 1): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    `  ${cells.map((c, i) => (i < alignLeft ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ")}`.trimEnd();
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}

function latencyRow(label: string, count: number, elapsedS: number, s: Stats | undefined, errors: number | string): string[] {
  return [label, group(count), f1(count / elapsedS), s ? f1(s.p50) : "-", s ? f1(s.p95) : "-", s ? f1(s.p99) : "-", s ? f1(s.max) : "-", String(errors)];
}

const out = (text = "") => process.stdout.write(`${text}\n`);

// ---------------------------------------------------------------------------------------
// The run

const runId = `${Date.now().toString(36)}${Math.floor(Math.random() * 1296).toString(36).padStart(2, "0")}`;
const merchant = DEMO_MERCHANTS[0]!;
const payee = DEMO_MERCHANTS[1]!;
const SOURCE_CURRENCIES = ["USD", "USD", "USD", "EUR"]; // 3/4 USD, 1/4 EUR (risk converts EUR to USD through fx)
const DEST_CURRENCIES = ["USD", "EUR", "GBP", "JPY", "IDR", "KWD"];
const OPENING_MAJOR = 10_000n;

let dataDir: string | undefined;
let benchDbUrl: string | undefined;
let benchDbName: string | undefined;
let profDir: string | undefined;
let statsClient: pg.Client | undefined;

// Ctrl-C reaches the services too (same process group): they stop by themselves, expectedly.
const onSignal = () => {
  process.stderr.write("\ninterrupted: stopping the load and the stack…\n");
  stopping = true;
  interrupted.abort();
};
process.on("SIGINT", onSignal);
process.on("SIGTERM", onSignal);

async function createBenchDatabase(serverUrl: string): Promise<{ url: string; name: string; describe: string }> {
  const name = `paygate_bench_${runId}`;
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
    const show = async (k: string) => (await admin.query<{ v: string }>("SELECT current_setting($1) AS v", [k])).rows[0]?.v ?? "?";
    const version = await show("server_version");
    const settings = ["fsync", "synchronous_commit", "max_connections", "shared_buffers"];
    const values: string[] = [];
    for (const k of settings) values.push(await show(k));
    const u = new URL(serverUrl);
    const where = u.hostname ? `${u.hostname}:${u.port || 5432}` : "(socket)";
    return {
      url: (() => {
        u.pathname = `/${name}`;
        return u.toString();
      })(),
      name,
      describe: `PostgreSQL ${version} at ${where}, fresh database ${name}${args["keep-data"] ? " (kept)" : " (dropped afterwards)"}; ${settings.map((k, i) => `${k}=${values[i]}`).join(" ")}`,
    };
  } finally {
    await admin.end();
  }
}

async function dropBenchDatabase(serverUrl: string, name: string): Promise<void> {
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  } finally {
    await admin.end();
  }
}

async function main(): Promise<number> {
  const cpus = os.cpus();
  out(`Paygate benchmark  run ${runId}  ${new Date().toISOString()}`);
  out(`machine   ${cpus.length} cores (${cpus[0]?.model.trim() ?? "?"}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}`);
  out(`load avg  ${loadAvg()} (1/5/15 min) at start`);

  let backend: string;
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    HOST: "127.0.0.1",
    LOG_LEVEL: LOG_LEVEL,
    GATEWAY_DEMO_DATA: "true",
    GATEWAY_PORT: String(gateway.port),
    PAYMENTS_PORT: String(payments.port),
    PAYMENTS_ADMIN_PORT: String(payments.adminPort),
    FX_PORT: String(fx.port),
    FX_ADMIN_PORT: String(fx.adminPort),
    WALLET_PORT: String(wallet.port),
    WALLET_ADMIN_PORT: String(wallet.adminPort),
    RISK_PORT: String(risk.port),
    RISK_ADMIN_PORT: String(risk.adminPort),
    PAYMENTS_URL: url(payments.port),
    FX_URL: url(fx.port),
    WALLET_URL: url(wallet.port),
    RISK_URL: url(risk.port),
  };
  if (DATABASE_URL) {
    const db = await createBenchDatabase(DATABASE_URL);
    benchDbUrl = db.url;
    benchDbName = db.name;
    backend = db.describe;
    env.DATABASE_URL = db.url;
    statsClient = new pg.Client({ connectionString: db.url });
    await statsClient.connect();
    try {
      await statsClient.query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
    } catch {
      // not installed: statement counts are left out
    }
  } else {
    dataDir = mkdtempSync(path.join(os.tmpdir(), "paygate-bench-"));
    backend = `embedded PGlite ${readPgliteVersion()}, temp DATA_DIR ${dataDir}${args["keep-data"] ? " (kept)" : " (removed afterwards)"}, one PGlite per service`;
    env.DATABASE_URL = "";
    env.DATA_DIR = dataDir;
  }
  if (CPU_PROF.size > 0) {
    profDir = path.join(os.tmpdir(), `paygate-bench-prof-${runId}`);
    mkdirSync(profDir, { recursive: true });
  }
  out(`backend   ${backend}`);
  out(`stack     gateway ${url(gateway.port)}, payments :${payments.port}, fx :${fx.port}, wallet :${wallet.port}, risk :${risk.port}; LOG_LEVEL=${LOG_LEVEL}; one process each`);
  const passed = Object.keys(process.env)
    .filter((k) => process.env[k] && (["PAYMENTS_DB_POOL_SIZE", "UPSTREAM_TIMEOUT_MS", "RISK_RULES_FILE"].includes(k) || k.startsWith("OTEL_")))
    .sort()
    .map((k) => `${k}=${process.env[k]}`);
  if (passed.length) out(`env       ${passed.join(" ")}`);
  out(
    process.env.RISK_RULES_FILE
      ? `risk      rules from RISK_RULES_FILE=${process.env.RISK_RULES_FILE}; payments spread over ${ACCOUNTS} source accounts`
      : `risk      shipped rules (services/risk/rules.yaml); payments spread over ${ACCOUNTS} source accounts: amounts of 0.01-1.00 can score REVIEW (velocity, new account), never DECLINE`,
  );

  const t0 = performance.now();
  for (const s of SERVICES) startService(s, env, profDir);
  await waitReady();
  out(`started   all five ready in ${f1((performance.now() - t0) / 1000)} s`);

  // --- seed: funded source accounts (the merchant's), destination accounts (the payee's) ---
  const walletClient = createClient(WalletService, createGrpcTransport({ baseUrl: url(wallet.port) }));
  const sources: { id: string; currency: string }[] = [];
  for (let i = 0; i < ACCOUNTS; i++) {
    const currency = SOURCE_CURRENCIES[i % SOURCE_CURRENCIES.length]!;
    sources.push({ id: `bench_src_${String(i).padStart(4, "0")}`, currency });
  }
  const perCurrency = DEST_ACCOUNTS;
  const destinations = new Map<string, string[]>();
  for (const c of DEST_CURRENCIES) destinations.set(c, Array.from({ length: perCurrency }, (_, i) => `bench_dst_${c.toLowerCase()}_${String(i).padStart(3, "0")}`));
  const opening = (currency: string) => OPENING_MAJOR * 10n ** BigInt(currencyInfo(currency, "currency").minorUnits);
  const seedJobs: (() => Promise<unknown>)[] = [
    ...sources.map((s) => async () => {
      await walletClient.openAccount({ requestId: `bench:${s.id}`, accountId: s.id, ownerId: merchant.id, currency: s.currency });
      await walletClient.credit({ transferId: `bench:fund:${s.id}`, accountId: s.id, amount: money(s.currency, opening(s.currency)) });
    }),
    ...[...destinations].flatMap(([currency, ids]) => ids.map((id) => () => walletClient.openAccount({ requestId: `bench:${id}`, accountId: id, ownerId: payee.id, currency }))),
  ];
  const t1 = performance.now();
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      for (let job = seedJobs.shift(); job; job = seedJobs.shift()) await job();
    }),
  );
  out(`seeded    ${ACCOUNTS} source accounts of ${merchant.id} (${[...new Set(SOURCE_CURRENCIES)].join("/")}, ${OPENING_MAJOR}.00 each) and ${perCurrency * DEST_CURRENCIES.length} destination accounts of ${payee.id} (${DEST_CURRENCIES.join("/")}) through WalletService in ${f1((performance.now() - t1) / 1000)} s`);

  // --- the client: Connect binary over HTTP/2, one connection, as a merchant would call ---
  const session = http2.connect(url(gateway.port));
  session.on("error", () => {}); // a failed call reports it
  const auth = { authorization: `Bearer ${merchant.apiKey}` };
  const rand = prng(SEED);
  const capturedBySource = new Map<string, bigint>();
  let notFinal = 0;

  const pay = async (phase: string, seq: number): Promise<Sample> => {
    const src = sources[Math.floor(rand() * sources.length)]!;
    const cross = rand() * 100 < CROSS_PCT;
    const others = DEST_CURRENCIES.filter((c) => c !== src.currency);
    const destCurrency = cross ? others[Math.floor(rand() * others.length)]! : src.currency;
    const pool = destinations.get(destCurrency)!;
    const dst = pool[Math.floor(rand() * pool.length)]!;
    const amountMinor = 1n + BigInt(Math.floor(rand() * 100)); // 0.01 .. 1.00
    const { payment } = await connectUnary(
      session,
      "/paygate.payments.v1.PaymentsService/CreatePayment",
      CreatePaymentRequestSchema,
      { sourceAccountId: src.id, destinationAccountId: dst, amount: money(src.currency, amountMinor), merchantReference: `bench-${phase}-${seq}` },
      CreatePaymentResponseSchema,
      { ...auth, "idempotency-key": `bench-${runId}-${phase}-${seq}` },
    );
    if (!payment) throw new Error("CreatePayment answered without a payment");
    const status = PaymentStatus[payment.status] ?? String(payment.status);
    if (payment.status === PaymentStatus.CAPTURED) {
      bump64(capturedBySource, src.currency, payment.capturedAmount?.amountMinor ?? 0n);
    } else if (payment.status !== PaymentStatus.FAILED) notFinal++;
    return { tag: cross ? "cross-currency" : "same-currency", outcome: payment.failureReason ? `${status} ${payment.failureReason}` : status };
  };
  const noop = async (): Promise<Sample> => {
    const { rate } = await connectUnary(session, "/paygate.fx.v1.FxService/GetRate", GetRateRequestSchema, { baseCurrency: "USD", quoteCurrency: "EUR" }, GetRateResponseSchema, auth);
    if (!rate) throw new Error("GetRate answered without a rate");
    return { tag: "noop", outcome: "OK" };
  };

  out(`load      ${CONCURRENCY} in flight, ${DURATION_S} s measured after ${WARMUP_S} s warm-up per phase; payments ${100 - CROSS_PCT}% same-currency / ${CROSS_PCT}% cross-currency, 0.01-1.00 each, random source and destination`);
  out(`client    Connect binary over HTTP/2 (one connection, bare node:http2 requests), Authorization: Bearer <${merchant.id} key>, a unique Idempotency-Key per payment, 10 s deadline`);
  out();

  // --- phase 1: payments ---
  if (WARMUP_S > 0) await drive(CONCURRENCY, WARMUP_S, (n) => pay("warm", n));
  const loadBeforePay = loadAvg();
  const pg0 = await pgCounters(statsClient);
  const c0 = cpuSnapshot();
  const payRes = await drive(CONCURRENCY, DURATION_S, (n) => pay("run", n));
  const c1 = cpuSnapshot();
  await sleep(1100); // let backends flush their statistics
  const pg1 = await pgCounters(statsClient);
  const loadAfterPay = loadAvg();

  // --- phase 2: the no-op ceiling ---
  if (interrupted.signal.aborted) throw new Error(crashed ?? "interrupted");
  if (WARMUP_S > 0) await drive(CONCURRENCY, WARMUP_S, () => noop());
  const c2 = cpuSnapshot();
  const noopRes = await drive(CONCURRENCY, DURATION_S, () => noop());
  const c3 = cpuSnapshot();
  const loadAfterNoop = loadAvg();
  if (crashed) throw new Error(crashed);

  // --- results ---
  const payErrors = [...payRes.errors.values()].reduce((a, b) => a + b, 0);
  const payAll = [...payRes.latencies.values()].flat();
  const noopErrors = [...noopRes.errors.values()].reduce((a, b) => a + b, 0);
  const paymentsPerS = payRes.completed / payRes.elapsedS;
  const noopPerS = noopRes.completed / noopRes.elapsedS;
  const header = ["RPC through the gateway", "done", "per s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"];
  out(
    table(header, [
      latencyRow("CreatePayment (all)", payRes.completed, payRes.elapsedS, stats(payAll), payErrors),
      latencyRow("  same-currency", payRes.latencies.get("same-currency")?.length ?? 0, payRes.elapsedS, stats(payRes.latencies.get("same-currency") ?? []), ""),
      latencyRow("  cross-currency", payRes.latencies.get("cross-currency")?.length ?? 0, payRes.elapsedS, stats(payRes.latencies.get("cross-currency") ?? []), ""),
      latencyRow("FxService/GetRate (no-op)", noopRes.completed, noopRes.elapsedS, stats(noopRes.latencies.get("noop") ?? []), noopErrors),
    ]),
  );
  out();
  out(`payments/s ÷ no-op/s = ${f1(paymentsPerS)} ÷ ${f1(noopPerS)} = ${(paymentsPerS / noopPerS).toFixed(3)}`);
  const p99 = stats(payAll)?.p99;
  out(`target    >= 300 payments/s with p99 < 100 ms: ${paymentsPerS >= 300 && p99 !== undefined && p99 < 100 ? "MET" : "NOT MET"} (${f1(paymentsPerS)}/s, p99 ${p99 === undefined ? "-" : f1(p99)} ms)`);
  out(`load avg  ${loadBeforePay} before payments, ${loadAfterPay} after payments, ${loadAfterNoop} after no-op`);
  out();

  const outcomeRows = [...payRes.outcomes].sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, group(v), pct(v, payRes.completed + payErrors)]);
  const errorRows = [...payRes.errors].sort((a, b) => b[1] - a[1]).map(([k, v]) => [`error ${k}`, group(v), pct(v, payRes.completed + payErrors)]);
  const noopErrRows = [...noopRes.errors].sort((a, b) => b[1] - a[1]).map(([k, v]) => [`no-op error ${k}`, group(v), pct(v, noopRes.completed + noopErrors)]);
  out(table(["Payments by final status (measured phase)", "count", "share"], [...outcomeRows, ...errorRows, ...noopErrRows]));
  out();

  const cpuPay = cpuDelta(c0, c1);
  const cpuNoop = cpuDelta(c2, c3);
  const cpuRows: string[][] = [];
  const fmtCpu = (ms: number | undefined, wallMs: number, n: number) => (ms === undefined ? ["-", "-"] : [`${f1((100 * ms) / wallMs)}%`, n > 0 ? (ms / n).toFixed(2) : "-"]);
  for (let i = 0; i < cpuPay.rows.length; i++) {
    const [name, ms] = cpuPay.rows[i]!;
    const noopMs = cpuNoop.rows[i]?.[1];
    cpuRows.push([name, ...fmtCpu(ms, cpuPay.wallMs, payRes.completed), ...fmtCpu(noopMs, cpuNoop.wallMs, noopRes.completed)]);
  }
  const rest = (d: ReturnType<typeof cpuDelta>) =>
    // Clock-tick granularity can make it slightly negative on an otherwise idle machine.
    d.machineBusyMs === undefined ? undefined : Math.max(0, d.machineBusyMs - d.rows.reduce((a, [, ms]) => a + (ms ?? 0), 0));
  cpuRows.push([DATABASE_URL && c1.postgres.size === 0 ? "postgres + rest of machine" : "rest of machine (not ours)", ...fmtCpu(rest(cpuPay), cpuPay.wallMs, payRes.completed), ...fmtCpu(rest(cpuNoop), cpuNoop.wallMs, noopRes.completed)]);
  if (cpuPay.machineBusyMs !== undefined && cpuPay.machineTotalMs && cpuNoop.machineBusyMs !== undefined && cpuNoop.machineTotalMs) {
    cpuRows.push([
      `machine busy (of ${cpus.length} cores)`,
      `${f1((100 * cpuPay.machineBusyMs) / cpuPay.machineTotalMs)}%`,
      "",
      `${f1((100 * cpuNoop.machineBusyMs) / cpuNoop.machineTotalMs)}%`,
      "",
    ]);
  }
  out(table(["CPU (% of one core; ms per request)", "payments", "ms/pay", "no-op", "ms/req"], cpuRows));
  // What the machine could do if it were all ours: the CPU one request costs, spread over every core.
  const ours = (d: ReturnType<typeof cpuDelta>) => d.rows.filter(([name]) => name !== "postgres: other processes").reduce((t, [, ms]) => t + (ms ?? 0), 0);
  const ceiling = (d: ReturnType<typeof cpuDelta>, n: number) => (n === 0 ? "-" : `${(ours(d) / n).toFixed(2)} ms CPU each -> at most ~${Math.round((cpus.length * 1000 * n) / ours(d))}/s`);
  out(`cpu-bound ${cpus.length} idle cores would give: payments ${ceiling(cpuPay, payRes.completed)}; no-op ${ceiling(cpuNoop, noopRes.completed)} (services + client${c1.postgres.size > 0 ? " + bench db backends" : ""})`);
  if (pg0 && pg1 && payRes.completed > 0) {
    const per = (a: number, b: number) => ((b - a) / payRes.completed).toFixed(1);
    const parts = [`${per(pg0.xacts, pg1.xacts)} transactions per payment`];
    if (pg0.statements !== undefined && pg1.statements !== undefined) parts.push(`${per(pg0.statements, pg1.statements)} statements per payment (pg_stat_statements, incl. BEGIN/COMMIT)`);
    out(`database  ≈ ${parts.join(", ")} across all services`);
  }
  out();

  // --- stop, then check the books ---
  const t2 = performance.now();
  await statsClient?.end();
  statsClient = undefined;
  await stopAll();
  out(`stopped   all five in ${f1((performance.now() - t2) / 1000)} s${SERVICES.some((s) => s.suppressed > 0) ? `; repeated or further log lines not shown: ${SERVICES.filter((s) => s.suppressed > 0).map((s) => `${s.name} ${s.suppressed}`).join(", ")}` : ""}`);

  const walletDb = await openDatabase({ url: benchDbUrl, dataDir: dataDir ?? ".", schema: "wallet" });
  let clean = false;
  try {
    const t3 = performance.now();
    const problems = await new Ledger(walletDb).reconcile();
    const counts = await walletDb.query<{ accounts: bigint; entries: bigint; pending: bigint }>(
      "SELECT (SELECT count(*) FROM accounts)::int8 AS accounts, (SELECT count(*) FROM entries)::int8 AS entries, (SELECT count(*) FROM holds WHERE status = 'PENDING')::int8 AS pending",
    );
    const c = counts.rows[0]!;
    clean = problems.length === 0;
    out(`ledger    reconciliation ${clean ? "CLEAN" : `FAILED (${problems.length} problems)`}: ${group(Number(c.accounts))} accounts, ${group(Number(c.entries))} entries, ${c.pending} pending holds (${f1((performance.now() - t3) / 1000)} s)`);
    for (const p of problems.slice(0, 20)) out(`            ${p}`);
    // Money check: what left the bench accounts equals what the bench saw captured.
    const { rows } = await walletDb.query<{ currency: string; posted: bigint; n: bigint }>(
      "SELECT currency, sum(posted_minor)::int8 AS posted, count(*)::int8 AS n FROM accounts WHERE id LIKE 'bench\\_src\\_%' GROUP BY currency ORDER BY currency",
    );
    const checks = rows.map((r) => {
      const debited = opening(r.currency) * r.n - r.posted;
      const seen = capturedBySource.get(r.currency) ?? 0n;
      return { ok: debited === seen, text: `${r.currency} ${formatMinor(debited, r.currency)} debited${debited === seen ? "" : ` vs ${formatMinor(seen, r.currency)} captured`}` };
    });
    const moneyOk = checks.every((x) => x.ok);
    out(`money     debited from the bench accounts = sum of CAPTURED amounts answered (warm-up included): ${moneyOk ? "yes" : "NO"} (${checks.map((x) => x.text).join(", ")})${notFinal ? `; ${notFinal} answers were not final (resumed later by recovery)` : ""}`);
    clean &&= moneyOk || notFinal > 0;
  } finally {
    await walletDb.close();
  }
  if (profDir) {
    out(`profiles  ${profDir}/<service>/ (${[...CPU_PROF].join(", ")}; the main thread's is the largest file; open in Chrome DevTools or speedscope)`);
    out(`          measured windows in the profiles' clock (µs): payments ${c0.monoUs}..${c1.monoUs}, no-op ${c2.monoUs}..${c3.monoUs}`);
  }
  return clean ? 0 : 1;
}

function bump64(m: Map<string, bigint>, key: string, by: bigint): void {
  m.set(key, (m.get(key) ?? 0n) + by);
}

function readPgliteVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(path.join(ROOT, "node_modules/@electric-sql/pglite/package.json"), "utf8")) as { version?: string };
    return pkg.version ?? "";
  } catch {
    return "";
  }
}

let exitCode = 1;
try {
  exitCode = await main();
} catch (err) {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.message : String(err)}\n`);
  exitCode = 1;
} finally {
  await statsClient?.end().catch(() => {});
  await stopAll();
  if (benchDbName && DATABASE_URL && !args["keep-data"]) await dropBenchDatabase(DATABASE_URL, benchDbName).catch((err: unknown) => process.stderr.write(`could not drop ${benchDbName}: ${String(err)}\n`));
  if (dataDir && !args["keep-data"]) rmSync(dataDir, { recursive: true, force: true });
}
process.exit(exitCode);
