// The dummy payment generator (scripts/dummygen.ts): the CSV's shape, amounts a payment can
// carry, determinism by seed, and a clear refusal of bad options.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parse } from "csv-parse/sync";
import { describe, expect, it } from "vitest";
import { COLUMNS, dummyPayments, toCsv } from "../../scripts/dummygen.js";
import { currencyInfo, parseDecimalAmount } from "../../services/runtime/money/money.js";
import { repoRoot } from "../support/stack.js";

const defaults = { rows: 500, seed: 42, merchants: ["acme", "globex"], currencies: ["USD", "EUR", "GBP", "JPY", "IDR", "KWD"] };

function run(args: string[]) {
  return spawnSync(process.execPath, ["--import", "tsx", "scripts/dummygen.ts", ...args], { cwd: repoRoot, encoding: "utf8", timeout: 60_000 });
}

describe("dummygen", () => {
  it("writes a header and one row a payment, each a payment the REST route takes", () => {
    const rows = parse(toCsv(dummyPayments(defaults)), { columns: true }) as Record<string, string>[];
    expect(rows).toHaveLength(500);
    expect(Object.keys(rows[0]!)).toEqual([...COLUMNS]);
    expect(new Set(rows.map((r) => r.id)).size).toBe(500);
    for (const r of rows) {
      // Never more decimals than the currency has (parseDecimalAmount refuses them), always positive.
      expect(parseDecimalAmount(r.amount!, r.currency!, "amount")).toBeGreaterThan(0n);
      expect(r.source_account).toBe(`${r.source_account!.split("_")[0]}_${r.currency!.toLowerCase()}`);
      expect(r.source_account!.split("_")[0]).not.toBe(r.destination_account!.split("_")[0]);
      currencyInfo(r.destination_account!.split("_")[1]!.toUpperCase(), "destination");
    }
    // Realistic spread: same- and cross-currency payments, every currency, small and large amounts.
    expect(rows.some((r) => r.destination_account!.endsWith(`_${r.currency!.toLowerCase()}`))).toBe(true);
    expect(rows.some((r) => !r.destination_account!.endsWith(`_${r.currency!.toLowerCase()}`))).toBe(true);
    expect(new Set(rows.map((r) => r.currency))).toEqual(new Set(defaults.currencies));
    const usd = rows.filter((r) => r.currency === "USD").map((r) => parseDecimalAmount(r.amount!, "USD", "amount"));
    expect(usd.some((m) => m < 1_000n)).toBe(true);
    expect(usd.some((m) => m > 50_000n)).toBe(true);
  });

  it("is deterministic: the same seed gives the same file, another seed another", () => {
    expect(toCsv(dummyPayments(defaults))).toBe(toCsv(dummyPayments(defaults)));
    expect(toCsv(dummyPayments({ ...defaults, seed: 43 }))).not.toBe(toCsv(dummyPayments(defaults)));
  });

  it("npm run dummygen -- -n 1000 writes 1000 rows and a header; the same seed twice, the same bytes", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "paygate-dummygen-"));
    try {
      const [a, b] = ["a.csv", "b.csv"].map((f) => path.join(dir, f));
      for (const out of [a!, b!]) expect(run(["-n", "1000", "--out", out]).status).toBe(0);
      const text = readFileSync(a!, "utf8");
      expect(text.trimEnd().split("\n")).toHaveLength(1001);
      expect(readFileSync(b!, "utf8")).toBe(text);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("refuses a bad -n, an unknown currency or option with exit code 2 and a message naming it", () => {
    for (const [args, named] of [
      [["-n", "0"], "-n"],
      [["-n", "ten"], "-n"],
      [["-n", "-5"], "-n"],
      [["--currencies", "USD,XYZ"], "XYZ"],
      [["--merchants", "acme"], "--merchants"],
      [["--rows", "5"], "--rows"],
    ] as const) {
      const result = run([...args, "--out", path.join(os.tmpdir(), "never-written.csv")]);
      expect(result.status, args.join(" ")).toBe(2);
      expect(result.stderr, args.join(" ")).toContain(named);
      expect(result.stderr).not.toMatch(/\n\s+at /);
    }
  });
});
