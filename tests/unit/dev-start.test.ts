// `npm start` (scripts/dev.ts): how long it waits for the services (PAYGATE_START_TIMEOUT_SECONDS,
// checked), what it says about a service that is not ready when it gives up (its /readyz
// answer's failing checks, or its port not open), and where the banner says the data is.
import { execFile } from "node:child_process";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { storageDescription, waitUntilReady, devEnv, type ServiceProcess } from "../../scripts/dev.js";
import { readiness } from "../../scripts/service-process.js";
import { ConfigError, loadConfig } from "../../services/runtime/config.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { startServer, type RunningServer } from "../../services/runtime/rpc/server.js";
import { freePort } from "../support/ports.js";
import { repoRoot } from "../support/wire.js";

vi.setConfig({ testTimeout: 30_000, hookTimeout: 30_000 });

describe("PAYGATE_START_TIMEOUT_SECONDS", () => {
  it("is 120 s unless set, a whole number of seconds from 1 to 86400 when set", () => {
    expect(loadConfig(devEnv, {}).PAYGATE_START_TIMEOUT_SECONDS).toBe(120);
    expect(loadConfig(devEnv, { PAYGATE_START_TIMEOUT_SECONDS: "600" }).PAYGATE_START_TIMEOUT_SECONDS).toBe(600);
    for (const bad of ["abc", "0", "1.5", "-3", "86401"]) {
      expect(() => loadConfig(devEnv, { PAYGATE_START_TIMEOUT_SECONDS: bad })).toThrow(ConfigError);
      expect(() => loadConfig(devEnv, { PAYGATE_START_TIMEOUT_SECONDS: bad })).toThrow(`PAYGATE_START_TIMEOUT_SECONDS: expected a whole number of seconds from 1 to 86400, got "${bad}"`);
    }
  });

  it("npm start refuses a bad one with that message (exit code 2) before starting anything", async () => {
    const run = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      execFile(process.execPath, ["--import", "tsx", "scripts/dev.ts"], { cwd: repoRoot, timeout: 20_000, env: { PATH: process.env.PATH ?? "", PAYGATE_START_TIMEOUT_SECONDS: "soon" } }, (err, _stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stderr }),
      );
    });
    expect(run).toEqual({ code: 2, stderr: 'invalid configuration:\n  PAYGATE_START_TIMEOUT_SECONDS: expected a whole number of seconds from 1 to 86400, got "soon"\n' });
  });
});

describe("waiting for the services", () => {
  const logger = createLogger("dev-start-test", "silent");
  let walletUp = false;
  let ready: RunningServer;
  let waiting: RunningServer;
  let closedPort: number;

  beforeAll(async () => {
    const options = { host: "127.0.0.1", port: 0, adminPort: 0, maxRequestBytes: 1 << 20, shutdownTimeoutMs: 1_000, drainDelayMs: 0, logger };
    ready = await startServer({ name: "fx", services: [], routes: () => {} }, options);
    // Ready once the test says its wallet is up, as payments is once the services it calls are.
    const wallet = {
      name: "wallet",
      check: async () => {
        if (!walletUp) throw new Error("connect ECONNREFUSED 127.0.0.1:9093");
      },
    };
    waiting = await startServer({ name: "payments", services: [], routes: () => {}, readiness: [wallet] }, options);
    closedPort = await freePort(); // nothing listens there
  });
  afterAll(async () => {
    await ready?.shutdown();
    await waiting?.shutdown();
  });

  const service = (name: string, adminUrl: string): ServiceProcess => ({ name, rpcUrl: adminUrl, adminUrl });

  it("readiness says ready, or why not: the failing checks of /readyz, or the port not open", async () => {
    expect(await readiness(ready.adminUrl)).toEqual({ ready: true });
    expect(await readiness(waiting.adminUrl)).toEqual({ ready: false, why: "GET /readyz answers 503, failing wallet: connect ECONNREFUSED 127.0.0.1:9093" });
    expect(await readiness(`http://127.0.0.1:${closedPort}`)).toEqual({ ready: false, why: `its port 127.0.0.1:${closedPort} is not open (still starting, or stuck before it listens)` });
  });

  it("gives up after the timeout naming each service still starting and why, not the ready ones", async () => {
    const started = Date.now();
    const services = [service("fx", ready.adminUrl), service("payments", waiting.adminUrl), service("gateway", `http://127.0.0.1:${closedPort}`)];
    const err = await waitUntilReady(services, 300, undefined, 50).catch((e: unknown) => e);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect((err as Error).message).toBe(
      [
        "not ready within 0.3 s (PAYGATE_START_TIMEOUT_SECONDS sets the wait):",
        "  payments: GET /readyz answers 503, failing wallet: connect ECONNREFUSED 127.0.0.1:9093",
        `  gateway: its port 127.0.0.1:${closedPort} is not open (still starting, or stuck before it listens)`,
      ].join("\n"),
    );
  });

  it("returns once every service is ready, and stops when told to", async () => {
    setTimeout(() => (walletUp = true), 200);
    await waitUntilReady([service("fx", ready.adminUrl), service("payments", waiting.adminUrl)], 10_000, undefined, 50);
    const stop = new AbortController();
    const stopped = waitUntilReady([service("gateway", `http://127.0.0.1:${closedPort}`)], 10_000, stop.signal, 50).catch((e: unknown) => e);
    stop.abort(new Error("Ctrl-C"));
    expect(((await stopped) as Error).message).toBe("Ctrl-C");
  });
});

describe("the banner's storage line", () => {
  it("names the real data folder, or the PostgreSQL server and database without credentials", () => {
    expect(storageDescription({ DATA_DIR: ".data" })).toBe(`embedded PGlite under ${path.resolve(".data")}`);
    expect(storageDescription({ DATA_DIR: "/var/lib/paygate" })).toBe("embedded PGlite under /var/lib/paygate");
    expect(storageDescription({ DATA_DIR: "memory://" })).toBe("embedded PGlite in memory (DATA_DIR=memory://: nothing is kept)");
    const postgres = storageDescription({ DATA_DIR: ".data", DATABASE_URL: "postgres://paygate:s3cret@db.internal:5433/payments?sslmode=require" });
    expect(postgres).toBe("PostgreSQL at db.internal:5433/payments");
    expect(postgres).not.toContain("s3cret");
  });
});
