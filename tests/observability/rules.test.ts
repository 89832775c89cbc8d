// Paygate's Prometheus configuration and rules (prometheus/):
//   - static checks that need no tools: every alert has a severity and summary/description
//     annotations, every alert has promtool unit tests both ways (a case where it fires and
//     one where it does not), the unit tests evaluate the rule groups in a fixed order, and
//     prometheus.yml loads the rule files but not the tests next to them;
//   - `promtool check config`, `promtool check rules` and `promtool test rules` on the real
//     files (promtool from Debian's `prometheus` package, which .ci/run installs).
// Under CI=true a missing promtool fails the run; elsewhere the promtool tests are skipped
// with a warning.
import { execFile } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { onPath } from "../support/executables.js";

const run = promisify(execFile);
const repoRoot = fileURLToPath(new URL("../../", import.meta.url));
const promDir = path.join(repoRoot, "prometheus");
const rulesDir = path.join(promDir, "rules");

const CI = process.env.CI === "true";
const SEVERITIES = ["page", "ticket"];

const promtool = onPath("promtool");
if (!promtool && !CI) console.warn("promtool not found on PATH (Debian: apt-get install prometheus): promtool checks of prometheus/ were NOT run");

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface RuleFile {
  groups: { name: string; interval?: string; rules: Rule[] }[];
}
interface AlertCase {
  eval_time: string;
  alertname: string;
  exp_alerts?: { exp_labels?: Record<string, string>; exp_annotations?: Record<string, string> }[] | null;
}
interface TestFile {
  rule_files: string[];
  evaluation_interval?: string;
  group_eval_order?: string[];
  tests: { interval?: string; input_series: unknown[]; alert_rule_test?: AlertCase[]; promql_expr_test?: unknown[] }[];
}

const ruleFiles = readdirSync(rulesDir).filter((f) => f.endsWith(".rules.yml")).sort();
const testFiles = readdirSync(rulesDir).filter((f) => f.endsWith("_test.yml")).sort();
const loadYaml = <T>(file: string): T => parse(readFileSync(file, "utf8")) as T;
const rules = ruleFiles.map((f) => ({ file: f, content: loadYaml<RuleFile>(path.join(rulesDir, f)) }));
const tests = testFiles.map((f) => ({ file: f, content: loadYaml<TestFile>(path.join(rulesDir, f)) }));
const allRules = rules.flatMap((r) => r.content.groups.flatMap((g) => g.rules));
const alerts = allRules.filter((r): r is Rule & { alert: string } => r.alert !== undefined);

describe("prometheus/ (static checks)", () => {
  it("has rule files and unit tests, and nothing else under rules/", () => {
    expect(ruleFiles.length).toBeGreaterThan(0);
    expect(testFiles.length).toBeGreaterThan(0);
    expect(readdirSync(rulesDir).filter((f) => !ruleFiles.includes(f) && !testFiles.includes(f))).toEqual([]);
  });

  it("rule files are plain Prometheus rule files (only `groups`), group and alert names unique", () => {
    const groupNames = rules.flatMap((r) => r.content.groups.map((g) => g.name));
    expect(new Set(groupNames).size).toBe(groupNames.length);
    for (const r of rules) expect(Object.keys(r.content), r.file).toEqual(["groups"]);
    const names = alerts.map((a) => a.alert);
    expect(new Set(names).size, `alert names: ${names.join(", ")}`).toBe(names.length);
    expect(names).toEqual(
      expect.arrayContaining([
        "PaygatePaymentErrorBudgetFastBurn",
        "PaygatePaymentErrorBudgetSlowBurn",
        "PaygatePaymentLatencyBudgetFastBurn",
        "PaygatePaymentLatencyBudgetSlowBurn",
        "PaygateTargetDown",
        "PaygateWalletHoldsStuck",
      ]),
    );
  });

  it("every alert has a severity label (page or ticket) and summary and description annotations", () => {
    for (const a of alerts) {
      expect(SEVERITIES, `${a.alert}: severity`).toContain(a.labels?.severity);
      expect(a.annotations?.summary?.trim(), `${a.alert}: summary`).toBeTruthy();
      expect(a.annotations?.description?.trim(), `${a.alert}: description`).toBeTruthy();
    }
  });

  it("the burn-rate alerts use the SRE workbook's window pairs and factors", () => {
    const expr = (name: string) => alerts.find((a) => a.alert === name)!.expr.replace(/\s+/g, " ");
    for (const [slo, budget] of [["payment_errors", "0.001"], ["payment_latency_slow", "0.01"]] as const) {
      const kind = slo === "payment_errors" ? "Error" : "Latency";
      const fast = expr(`PaygatePayment${kind}BudgetFastBurn`);
      const slow = expr(`PaygatePayment${kind}BudgetSlowBurn`);
      for (const [long, short, factor, text] of [
        ["1h", "5m", "14.4", fast],
        ["6h", "30m", "6", fast],
        ["1d", "2h", "3", slow],
      ] as const) {
        expect(text).toContain(`paygate:${slo}:ratio_rate${long} > (${factor} * ${budget}) and paygate:${slo}:ratio_rate${short} > (${factor} * ${budget})`);
      }
      expect(slow).toContain(`paygate:${slo}:ratio_rate3d > ${budget} and paygate:${slo}:ratio_rate6h > ${budget}`);
    }
  });

  it("every recording rule an alert reads is defined", () => {
    const recorded = new Set(allRules.flatMap((r) => (r.record ? [r.record] : [])));
    for (const a of alerts) {
      for (const name of a.expr.match(/[a-z_]+:[a-z_]+:[a-z0-9_]+/g) ?? []) expect(recorded, `${a.alert} reads ${name}`).toContain(name);
    }
  });

  it("every alert has unit tests where it fires and where it does not", () => {
    const cases = tests.flatMap((t) => t.content.tests.flatMap((g) => g.alert_rule_test ?? []));
    for (const a of alerts) {
      const mine = cases.filter((c) => c.alertname === a.alert);
      expect(mine.some((c) => (c.exp_alerts ?? []).length > 0), `${a.alert}: a case where it fires`).toBe(true);
      expect(mine.some((c) => (c.exp_alerts ?? []).length === 0), `${a.alert}: a case where it stays silent`).toBe(true);
    }
    // ...and no test names an alert that does not exist.
    for (const c of cases) expect(alerts.map((a) => a.alert)).toContain(c.alertname);
  });

  it("unit tests load the rule files and evaluate every group in a fixed order (recording rules first)", () => {
    const groups = rules.flatMap((r) => r.content.groups.map((g) => g.name));
    for (const t of tests) {
      expect(t.content.rule_files.map((f) => path.basename(f)).sort(), t.file).toEqual(ruleFiles);
      // Without group_eval_order promtool's order is arbitrary, and an alert may read a
      // recording rule's previous value: flaky expected $values.
      expect([...(t.content.group_eval_order ?? [])].sort(), `${t.file}: group_eval_order`).toEqual([...groups].sort());
    }
  });

  it("prometheus.yml scrapes the five services every 5s at 127.0.0.1 and loads the rule files, not their tests", () => {
    const config = loadYaml<{
      global: { scrape_interval: string };
      rule_files: string[];
      scrape_configs: { job_name: string; static_configs: { targets: string[] }[] }[];
    }>(path.join(promDir, "prometheus.yml"));
    expect(config.global.scrape_interval).toBe("5s");
    const targets = Object.fromEntries(config.scrape_configs.map((s) => [s.job_name, s.static_configs.flatMap((c) => c.targets)]));
    expect(targets).toEqual({
      gateway: ["127.0.0.1:8080"],
      payments: ["127.0.0.1:9101"],
      fx: ["127.0.0.1:9102"],
      wallet: ["127.0.0.1:9103"],
      risk: ["127.0.0.1:9104"],
    });
    // The globs (relative to the config file; `*` and `?` within a path segment, as Go's filepath.Match).
    const matches = (glob: string, file: string) =>
      new RegExp(`^${glob.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*").replace(/\?/g, "[^/]")}$`).test(`rules/${file}`);
    for (const f of ruleFiles) expect(config.rule_files.some((g) => matches(g, f)), `${f} loaded`).toBe(true);
    for (const f of testFiles) expect(config.rule_files.some((g) => matches(g, f)), `${f} not loaded`).toBe(false);
  });
});

// Defined only where promtool exists, or under CI (where its absence then fails the run).
if (promtool || CI) describe("promtool", () => {
  const tool = async (...args: string[]) => {
    if (!promtool) throw new Error("promtool is not installed: CI must install Debian's `prometheus` package (see .ci/run)");
    try {
      const { stdout, stderr } = await run(promtool, args, { cwd: repoRoot, timeout: 120_000 });
      return stdout + stderr;
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string; message: string };
      throw new Error(`promtool ${args.join(" ")} failed:\n${e.stdout ?? ""}${e.stderr ?? e.message}`);
    }
  };

  it("promtool is installed", () => {
    expect(promtool, "promtool on PATH (Debian: apt-get install prometheus)").toBeDefined();
  });

  it("promtool check config prometheus/prometheus.yml (the rule files it loads included)", async () => {
    const out = await tool("check", "config", "prometheus/prometheus.yml");
    expect(out).toContain("SUCCESS");
    for (const f of ruleFiles) expect(out).toContain(f);
  });

  it("promtool check rules", async () => {
    const out = await tool("check", "rules", ...ruleFiles.map((f) => `prometheus/rules/${f}`));
    expect(out).toMatch(new RegExp(`SUCCESS: ${allRules.length} rules found`));
  });

  // Concurrently: the long SLO cases take seconds each.
  it.concurrent.each(testFiles)("promtool test rules %s", { timeout: 120_000 }, async (file) => {
    const out = await tool("test", "rules", `prometheus/rules/${file}`);
    expect(out).toContain("SUCCESS");
  });
});
