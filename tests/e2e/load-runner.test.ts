// The load runner (services/loadtest) against a whole running stack: each script sends the
// payments it was asked for, and the summary's counts are the ledger's (what it says was
// captured is what left the payers' accounts and reached the payees'). Then its exit codes:
// 99 when a threshold fails, 2 naming a bad parameter, 1 when no gateway answers.
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { dummyPayments, toCsv } from "../../scripts/dummygen.js";
import { PaymentStatus, type Payment } from "../../services/gen/paygate/payments/v1/payments_pb.js";
import { parseParams, UsageError } from "../../services/loadtest/params.js";
import { runLoad } from "../../services/loadtest/run.js";
import { freePort } from "../support/ports.js";
import { storageBackends } from "../support/postgres.js";
import { ACME, balanceOf, gatewayClients, GLOBEX, repoRoot, startStack, tempDir, type Stack } from "../support/stack.js";

vi.setConfig({ testTimeout: 90_000, hookTimeout: 180_000 });

/** The runner's CLI as a process: its exit code and output. */
function cli(args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", "services/loadtest/main.ts", ...args], {
      cwd: repoRoot,
      env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "", ...env },
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 60_000,
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

describe.each(storageBackends())("load runner against the stack ($name)", (backend) => {
  let stack: Stack;
  let run = 0;
  /** A run id of this test's own, so no two runs share an Idempotency-Key. */
  const txId = () => `T${Date.now()}-${++run}`;

  beforeAll(async () => {
    stack = await startStack({ backend, name: "load" });
  });
  afterAll(async () => {
    await stack?.stop();
  });

  // Thresholds on latency would judge the machine, not the runner: these runs keep the error rate's only.
  it.each(["connect-json", "rest", "grpc"] as const)("%s: every payment asked for is sent once, captured, and moves exactly its amount", async (script) => {
    const payer = await stack.fund(ACME.id, "USD", "100.00");
    const payee = await stack.fund(GLOBEX.id, "USD", "0");
    const summary = await runLoad(
      parseParams(["--script", script], { PAYMENTS: stack.gatewayUrl, CUSTOMER_ID: payer, DESTINATION: payee, AMOUNT: "1.25", VUS: "3", DURATION: "60s", ITERATIONS: "12", TX_ID: txId(), API_KEY: ACME.apiKey, THRESHOLDS: "error_rate<0.01" }),
    );
    expect(summary).toMatchObject({ protocol: script, requests: 12, payments: 12, captured: 12, errors: 0, codes: { ok: 12 }, outcomes: { CAPTURED: 12 }, capturedMinor: { USD: "1500" }, passed: true });
    expect(summary.latencyMs!.p50).toBeGreaterThan(0);
    expect(summary.latencyMs!.p99).toBeLessThanOrEqual(summary.latencyMs!.max);
    expect(summary.paymentsPerS).toBeGreaterThan(0);
    const wallet = gatewayClients(stack.gatewayUrl, ACME.apiKey).wallet;
    expect((await balanceOf(wallet, payer)).posted).toBe(10_000n - 1_500n);
    expect((await balanceOf(gatewayClients(stack.gatewayUrl, GLOBEX.apiKey).wallet, payee)).posted).toBe(1_500n);
    expect(await stack.reconcile()).toEqual([]);
  });

  it("a script module chooses its payments (cross-currency here); DURATION ends a run that ITERATIONS does not", async () => {
    const payer = await stack.fund(ACME.id, "EUR", "100.00");
    const payee = await stack.fund(GLOBEX.id, "JPY", "0");
    const dir = tempDir("paygate-load-script-");
    try {
      const file = path.join(dir.dir, "cross.mjs");
      writeFileSync(file, `export const protocol = "grpc";\nexport function payment() {\n  return { sourceAccount: ${JSON.stringify(payer)}, destinationAccount: ${JSON.stringify(payee)}, currency: "EUR", amount: "0.10" };\n}\n`);
      const summary = await runLoad(parseParams(["--script", file, "--duration", "1500ms", "--vus", "2"], { PAYMENTS: stack.gatewayUrl, TX_ID: txId(), THRESHOLDS: "error_rate<0.01" }));
      expect(summary.requests).toBeGreaterThan(0);
      expect(summary.requests).toBe(summary.captured);
      expect(summary.elapsedS).toBeGreaterThanOrEqual(1.5);
      expect(summary.capturedMinor).toEqual({ EUR: String(10 * summary.captured) });
      expect((await balanceOf(gatewayClients(stack.gatewayUrl, ACME.apiKey).wallet, payer)).posted).toBe(10_000n - 10n * BigInt(summary.captured));
      expect(await stack.reconcile()).toEqual([]);
    } finally {
      dir.remove();
    }
  });

  it("csv: each row of a dummygen file once, with its payer's merchant's key; the ledger moved by exactly the captured rows", async () => {
    const dir = tempDir("paygate-load-csv-");
    try {
      const csv = path.join(dir.dir, "payments.csv");
      const rows = dummyPayments({ rows: 16, seed: 11, merchants: [ACME.id, GLOBEX.id], currencies: ["USD", "EUR", "JPY"] });
      writeFileSync(csv, toCsv(rows));
      const accounts = [...new Set(rows.flatMap((r) => [r.source_account, r.destination_account]))];
      const clients = { [ACME.id]: gatewayClients(stack.gatewayUrl, ACME.apiKey), [GLOBEX.id]: gatewayClients(stack.gatewayUrl, GLOBEX.apiKey) };
      const owner = (account: string) => clients[account.split("_")[0]!]!;
      const before = new Map(await Promise.all(accounts.map(async (a) => [a, (await balanceOf(owner(a).wallet, a)).posted] as const)));

      const id = txId();
      const summary = await runLoad(parseParams(["--script", "csv", "--csv", csv, "--vus", "4"], { PAYMENTS: stack.gatewayUrl, TX_ID: id, THRESHOLDS: "error_rate<0.01" }));
      expect(summary).toMatchObject({ requests: 16, payments: 16, errors: 0, passed: true });

      // The payments the run made, from each merchant's own list.
      const made: Payment[] = [];
      for (const c of Object.values(clients)) {
        for (let pageToken = "", first = true; first || pageToken !== ""; first = false) {
          const page = await c.payments.listPayments({ pageSize: 100, pageToken });
          made.push(...page.payments.filter((p) => p.merchantReference.startsWith(`${id}-`)));
          pageToken = page.nextPageToken;
        }
      }
      expect(made.map((p) => p.merchantReference).sort()).toEqual(rows.map((r) => `${id}-${r.id}`).sort());
      const captured = made.filter((p) => p.status === PaymentStatus.CAPTURED);
      expect(captured.length).toBe(summary.captured);
      expect(summary.outcomes.CAPTURED ?? 0).toBe(captured.length);
      const capturedMinor: Record<string, bigint> = {};
      const expected = new Map(before);
      for (const p of captured) {
        capturedMinor[p.amount!.currency] = (capturedMinor[p.amount!.currency] ?? 0n) + p.capturedAmount!.amountMinor;
        expected.set(p.sourceAccountId, expected.get(p.sourceAccountId)! - p.amount!.amountMinor);
        expected.set(p.destinationAccountId, expected.get(p.destinationAccountId)! + p.settlementAmount!.amountMinor);
      }
      expect(summary.capturedMinor).toEqual(Object.fromEntries(Object.entries(capturedMinor).map(([c, v]) => [c, v.toString()])));
      for (const a of accounts) expect([a, (await balanceOf(owner(a).wallet, a)).posted]).toEqual([a, expected.get(a)]);
      expect(await stack.reconcile()).toEqual([]);
    } finally {
      dir.remove();
    }
  });

  it("exits 99 when a threshold is not met, after printing the summary", async () => {
    const payer = await stack.fund(ACME.id, "USD", "10.00");
    const result = await cli(["--json"], { PAYMENTS: stack.gatewayUrl, CUSTOMER_ID: payer, VUS: "2", ITERATIONS: "4", TX_ID: txId(), THRESHOLDS: "error_rate<0.01,p(99)<0.001" });
    expect(result.stderr).toBe("");
    expect(result.code).toBe(99);
    const summary = JSON.parse(result.stdout) as { requests: number; captured: number; passed: boolean; thresholds: { threshold: string; ok: boolean }[] };
    expect(summary).toMatchObject({ requests: 4, captured: 4, passed: false });
    expect(summary.thresholds.map((t) => [t.threshold, t.ok])).toEqual([
      ["error_rate<0.01", true],
      ["p(99)<0.001", false],
    ]);
  });
});

describe("load runner parameters", () => {
  it.each([
    [{ VUS: "0" }, "VUS"],
    [{ VUS: "many" }, "VUS"],
    [{ DURATION: "ten seconds" }, "DURATION"],
    [{ DURATION: "2h" }, "DURATION"],
    [{ AMOUNT: "1.005" }, "AMOUNT"],
    [{ AMOUNT: "0" }, "AMOUNT"],
    [{ CURRENCY: "XXY" }, "CURRENCY"],
    [{ PAYMENTS: "http://example.com:8080" }, "PAYMENTS"],
    [{ PAYMENTS: "not a url" }, "PAYMENTS"],
    [{ TX_ID: "has space" }, "TX_ID"],
    [{ ITERATIONS: "-1" }, "ITERATIONS"],
    [{ THRESHOLDS: "p(95)<fast" }, "THRESHOLDS"],
    [{ SCRIPT: "k6" }, "SCRIPT"],
  ])("%o: refused, naming %s", (env, name) => {
    expect(() => parseParams([], env)).toThrow(UsageError);
    expect(() => parseParams([], env)).toThrow(new RegExp(`^${name}: `));
  });

  it("options beat the environment, and name themselves when wrong; an empty variable counts as unset", () => {
    expect(parseParams([], { CUSTOMER_ID: "", VUS: "" })).toMatchObject({ customerId: "acme_usd", vus: 4 });
    expect(parseParams(["--vus", "7", "--duration", "1m30s"], { VUS: "3", DURATION: "5s" })).toMatchObject({ vus: 7, durationMs: 90_000 });
    expect(() => parseParams(["--vus", "x"], {})).toThrow(/^--vus: /);
    expect(() => parseParams(["--no-such-option"], {})).toThrow(UsageError);
    expect(parseParams([], { API_KEY: "acme=k1,globex=k2" }).apiKeys).toEqual(new Map([["acme", "k1"], ["globex", "k2"]]));
    expect(parseParams([], { PAYMENTS: "http://paygate-gateway.paygate.svc.cluster.local:8080" }).target.hostname).toBe("paygate-gateway.paygate.svc.cluster.local");
  });

  it("the CLI exits 2 naming the parameter, and 1 saying what is missing when no gateway answers", async () => {
    const bad = await cli([], { VUS: "0" });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^load: VUS: expected a whole number from 1 to 1000, got "0"/);
    const port = await freePort();
    const none = await cli([], { PAYMENTS: `http://127.0.0.1:${port}`, ITERATIONS: "1" });
    expect(none.code).toBe(1);
    expect(none.stderr).toContain(`no Paygate gateway answers at http://127.0.0.1:${port}`);
    expect(none.stderr).toContain("npm start");
  });
});
