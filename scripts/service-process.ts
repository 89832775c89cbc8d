// A Paygate service as a child process of this one (`npm start`, `npm run bench`, the crash
// tests): started as `node --import tsx services/<name>/main.ts`, then waited for until its
// admin port's /readyz answers 200.
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";

export interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface SpawnedService {
  child: ChildProcess;
  /** Settles once the process has ended and everything it wrote has been read. */
  exited: Promise<ChildExit>;
}

export interface SpawnOptions {
  env: NodeJS.ProcessEnv;
  /** Where the process runs (this process's working directory when unset). */
  cwd?: string;
  /** Node options before the entry, e.g. --cpu-prof. */
  nodeArgs?: string[];
  /** Gets every line the process writes, from either stream. */
  onLine: (line: string, stream: "stdout" | "stderr") => void;
}

/** Starts the service whose entry point is `entry` (e.g. "services/fx/main.ts"). */
export function spawnService(entry: string, opts: SpawnOptions): SpawnedService {
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), "--import", "tsx", entry], { cwd: opts.cwd, env: opts.env, stdio: ["ignore", "pipe", "pipe"] });
  createInterface({ input: child.stdout }).on("line", (line) => opts.onLine(line, "stdout"));
  createInterface({ input: child.stderr }).on("line", (line) => opts.onLine(line, "stderr"));
  const exited = new Promise<ChildExit>((resolve) => child.once("close", (code, signal) => resolve({ code, signal })));
  return { child, exited };
}

/** Whether the service whose admin port is at `adminUrl` is ready, or why not, from one GET /readyz (bounded). */
export async function readiness(adminUrl: string): Promise<{ ready: true } | { ready: false; why: string }> {
  let res: Response;
  try {
    res = await fetch(`${adminUrl}/readyz`, { signal: AbortSignal.timeout(2_000) });
  } catch (err) {
    const code = (err as { cause?: { code?: unknown } }).cause?.code;
    if (code === "ECONNREFUSED") return { ready: false, why: `its port ${new URL(adminUrl).host} is not open (still starting, or stuck before it listens)` };
    return { ready: false, why: `GET /readyz got no answer (${typeof code === "string" ? code : err instanceof Error ? err.message : String(err)})` };
  }
  const body = await res.text();
  if (res.ok) return { ready: true };
  // A Paygate service answers {"status": "not ready", "checks": {"server": "ok", "fx": "<why>"}}.
  let failing: string[] = [];
  try {
    const { checks } = JSON.parse(body) as { checks?: Record<string, unknown> };
    failing = Object.entries(checks ?? {})
      .filter(([, result]) => result !== "ok")
      .map(([check, result]) => `${check}: ${String(result)}`);
  } catch {
    // not a Paygate answer: the status says enough
  }
  return { ready: false, why: `GET /readyz answers ${res.status}${failing.length ? `, failing ${failing.join("; ")}` : ""}` };
}

/**
 * Polls every service's /readyz until all are ready or `timeoutMs` has passed, and resolves
 * with those still not ready then, each with why (what its /readyz said last): none when all
 * are. When `signal` aborts it rejects with the signal's reason.
 */
export async function untilReady<S extends { adminUrl: string }>(services: S[], timeoutMs: number, signal?: AbortSignal, intervalMs = 250): Promise<Map<S, string>> {
  const deadline = Date.now() + timeoutMs;
  const starting = new Map(services.map((s) => [s, "not asked yet"]));
  for (;;) {
    signal?.throwIfAborted();
    await Promise.all(
      [...starting.keys()].map(async (s) => {
        const state = await readiness(s.adminUrl);
        if (state.ready) starting.delete(s);
        else starting.set(s, state.why);
      }),
    );
    if (starting.size === 0 || Date.now() >= deadline) return starting;
    await sleep(intervalMs, undefined, { signal }).catch(() => {}); // aborted: thrown with its reason above
  }
}
