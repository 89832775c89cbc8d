// A benchmark (not a test) of the unary path between Paygate's services against connect-node's
// own, on loopback:
//
//   client A  upstreamTransport (upstream.ts): bare node:http2 requests through runUnaryCall
//   client B  connect-node's createConnectTransport (HTTP/2, binary) with a shared Http2SessionManager
//   server 1  startServer with the unary fast path (unary-fast-path.ts)
//   server 2  startServer with every call left to connect's handler (unaryFastPath: false)
//
//   npx tsx scripts/bench-transport.ts [--seconds 5] [--concurrency 8] [--rounds 5] [--warmup 2]
//
// Each server runs in a child process of its own, a trivial FxService/GetRate (a constant
// answer: the cost measured is the call's, not the work's), with the server interceptors a
// service runs. Both clients carry the client interceptors a service's calls carry (tracing,
// metrics) and keep the same PING keep-alive. Each round runs every combination for --seconds
// at --concurrency calls in flight, in an order rotated from round to round so the machine's
// drift spreads over all of them; it prints calls/s, the client's and the server's CPU per call
// (process.cpuUsage() of each process) and p50/p99 latency per combination, and then their
// medians over the rounds.
import { fork, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import os from "node:os";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { FxService } from "../services/gen/paygate/fx/v1/fx_pb.js";
import { createLogger } from "../services/runtime/observability/logger.js";
import { rpcClientMetrics } from "../services/runtime/observability/metrics.js";
import { rpcClientTracing } from "../services/runtime/observability/rpc-spans.js";
import { initTracing } from "../services/runtime/observability/tracing.js";
import { startServer } from "../services/runtime/rpc/server.js";
import { upstreamTransport } from "../services/runtime/rpc/upstream.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SELF = fileURLToPath(import.meta.url);

/** The keep-alive of upstream.ts's sessions (http2-upstream.ts's defaults), given to connect's session manager too. */
const PING = { pingIntervalMs: 15_000, pingTimeoutMs: 10_000 };

type ServerMode = "fast-path" | "connect-handler";

/** What a server child says on its IPC channel. */
type ChildMessage = { url: string } | { cpu: NodeJS.CpuUsage };

// ---------------------------------------------------------------------------------------
// The server child: `--serve <mode>` starts one server and answers "cpu" with its CPU so far.

async function serve(mode: ServerMode): Promise<void> {
  const logger = createLogger(`bench-transport-${mode}`, "warn");
  const server = await startServer(
    {
      name: "fx",
      services: [FxService],
      routes: (router) =>
        router.service(FxService, {
          getRate: (req) => ({ rate: { baseCurrency: req.baseCurrency, quoteCurrency: req.quoteCurrency, midRate: "15873.015873" } }),
        }),
    },
    { host: "127.0.0.1", port: 0, maxRequestBytes: 1 << 20, shutdownTimeoutMs: 2_000, drainDelayMs: 0, logger, unaryFastPath: mode === "fast-path" },
  );
  process.on("message", (m) => {
    if (m === "cpu") process.send!({ cpu: process.cpuUsage() } satisfies ChildMessage);
  });
  // The parent going away (or closing the channel) ends this process.
  process.once("disconnect", () => void server.shutdown().then(() => process.exit(0)));
  process.send!({ url: server.url } satisfies ChildMessage);
}

interface ServerChild {
  mode: ServerMode;
  child: ChildProcess;
  url: string;
}

async function startChild(mode: ServerMode): Promise<ServerChild> {
  const child = fork(SELF, ["--serve", mode], { cwd: ROOT, execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const [first] = (await Promise.race([once(child, "message"), once(child, "exit").then(() => Promise.reject(new Error(`the ${mode} server exited before it listened`)))])) as [ChildMessage];
  if (!("url" in first)) throw new Error(`the ${mode} server said ${JSON.stringify(first)} before its URL`);
  return { mode, child, url: first.url };
}

/** The child's CPU so far, in µs (user + system). */
async function childCpuUs(server: ServerChild): Promise<number> {
  const answer = once(server.child, "message") as Promise<[ChildMessage]>;
  server.child.send("cpu");
  const [m] = await answer;
  if (!("cpu" in m)) throw new Error(`the ${server.mode} server answered ${JSON.stringify(m)} to "cpu"`);
  return m.cpu.user + m.cpu.system;
}

// ---------------------------------------------------------------------------------------
// The parent: the clients, the rounds and the figures.

type ClientKind = "A upstreamTransport" | "B connect-node transport";

interface Combination {
  name: string;
  server: ServerChild;
  client: Client<typeof FxService>;
}

interface RoundResult {
  callsPerSecond: number;
  clientCpuUsPerCall: number;
  serverCpuUsPerCall: number;
  p50Ms: number;
  p99Ms: number;
}

function transportFor(kind: ClientKind, baseUrl: string): Transport {
  if (kind === "A upstreamTransport") return upstreamTransport(baseUrl);
  const interceptors = [rpcClientTracing(baseUrl), rpcClientMetrics()];
  return createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, interceptors, sessionManager: new Http2SessionManager(baseUrl, PING) });
}

/** Calls GetRate with `concurrency` calls in flight for `seconds`; the latency of each call in ms. */
async function drive(client: Client<typeof FxService>, concurrency: number, seconds: number): Promise<number[]> {
  const latencies: number[] = [];
  const end = performance.now() + seconds * 1000;
  const worker = async () => {
    while (performance.now() < end) {
      const t0 = performance.now();
      await client.getRate({ baseCurrency: "USD", quoteCurrency: "IDR" }, { timeoutMs: 10_000 });
      latencies.push(performance.now() - t0);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return latencies;
}

async function measure(c: Combination, concurrency: number, seconds: number): Promise<RoundResult> {
  const server0 = await childCpuUs(c.server);
  const client0 = process.cpuUsage();
  const t0 = performance.now();
  const latencies = await drive(c.client, concurrency, seconds);
  const wallS = (performance.now() - t0) / 1000;
  const client = process.cpuUsage(client0);
  const serverUs = (await childCpuUs(c.server)) - server0;
  const sorted = Float64Array.from(latencies).sort();
  const at = (p: number) => sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!;
  const calls = latencies.length;
  return { callsPerSecond: calls / wallS, clientCpuUsPerCall: (client.user + client.system) / calls, serverCpuUsPerCall: serverUs / calls, p50Ms: at(0.5), p99Ms: at(0.99) };
}

const median = (values: number[]) => {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

function row(name: string, r: RoundResult): string {
  return [
    name.padEnd(44),
    r.callsPerSecond.toFixed(0).padStart(8),
    r.clientCpuUsPerCall.toFixed(0).padStart(12),
    r.serverCpuUsPerCall.toFixed(0).padStart(12),
    r.p50Ms.toFixed(2).padStart(8),
    r.p99Ms.toFixed(2).padStart(8),
  ].join(" ");
}

const HEADER = `${"combination".padEnd(44)} ${"calls/s".padStart(8)} ${"client µs/c".padStart(12)} ${"server µs/c".padStart(12)} ${"p50 ms".padStart(8)} ${"p99 ms".padStart(8)}`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      serve: { type: "string" },
      seconds: { type: "string", default: "5" },
      concurrency: { type: "string", default: "8" },
      rounds: { type: "string", default: "5" },
      warmup: { type: "string", default: "2" },
    },
  });
  if (values.serve !== undefined) {
    if (values.serve !== "fast-path" && values.serve !== "connect-handler") throw new Error(`--serve: no mode "${values.serve}"`);
    return serve(values.serve);
  }
  const number = (name: string, text: string, min: number) => {
    const n = Number(text);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number of at least ${min}, not "${text}"`);
    return n;
  };
  const seconds = number("seconds", values.seconds, 0.1);
  const concurrency = Math.floor(number("concurrency", values.concurrency, 1));
  const rounds = Math.floor(number("rounds", values.rounds, 1));
  const warmup = number("warmup", values.warmup, 0);

  // The client interceptors do what they do in a service: trace ids without recorded spans (unless OTEL_* asks).
  await initTracing("bench-transport", createLogger("bench-transport", "warn"));
  const servers = [await startChild("fast-path"), await startChild("connect-handler")];
  try {
    // In the order A1 B1 A2 B2: from one run to the next the client or the server changes.
    const combinations: Combination[] = [];
    for (const server of servers) {
      for (const kind of ["A upstreamTransport", "B connect-node transport"] as const) {
        combinations.push({ name: `${kind} -> ${server.mode === "fast-path" ? "1 fast path" : "2 connect handler"}`, server, client: createClient(FxService, transportFor(kind, server.url)) });
      }
    }
    console.log(`node ${process.version}, ${os.cpus().length} cores, load average ${os.loadavg().map((l) => l.toFixed(2)).join(" ")}`);
    console.log(`${rounds} rounds of ${seconds} s per combination at concurrency ${concurrency}, after ${warmup} s of warm-up each`);
    for (const c of combinations) await drive(c.client, concurrency, warmup);

    const results = new Map<string, RoundResult[]>(combinations.map((c) => [c.name, []]));
    for (let round = 0; round < rounds; round++) {
      console.log(`\nround ${round + 1} (load average ${os.loadavg()[0]!.toFixed(2)})\n${HEADER}`);
      // Rotated: each combination runs first, second, … in turn.
      const order = combinations.map((_, i) => combinations[(i + round) % combinations.length]!);
      for (const c of order) {
        const r = await measure(c, concurrency, seconds);
        results.get(c.name)!.push(r);
        console.log(row(c.name, r));
      }
    }

    console.log(`\nmedians over ${rounds} rounds (load average at the end ${os.loadavg().map((l) => l.toFixed(2)).join(" ")})\n${HEADER}`);
    for (const c of combinations) {
      const rs = results.get(c.name)!;
      const pick = (f: (r: RoundResult) => number) => median(rs.map(f));
      console.log(row(c.name, { callsPerSecond: pick((r) => r.callsPerSecond), clientCpuUsPerCall: pick((r) => r.clientCpuUsPerCall), serverCpuUsPerCall: pick((r) => r.serverCpuUsPerCall), p50Ms: pick((r) => r.p50Ms), p99Ms: pick((r) => r.p99Ms) }));
    }
  } finally {
    for (const s of servers) s.child.disconnect();
    await Promise.all(servers.map((s) => (s.child.exitCode === null ? once(s.child, "exit") : undefined)));
  }
  // The clients' sessions (and their PING timers) would keep this process alive.
  process.exit(0);
}

await main();
