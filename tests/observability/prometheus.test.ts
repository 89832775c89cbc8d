// The observability configuration against the real services:
//   1. Every PromQL expression in prometheus/rules/*.rules.yml and grafana/dashboards/*.json
//      names only metrics the services actually export. The list of exported names is not
//      written by hand: the whole stack starts in this process (tests/support/stack.ts), real
//      traffic goes through the gateway (a captured payment and a refund, a cross-currency
//      payment, insufficient funds, a risk decline, a manual-capture hold left open, an
//      idempotent replay, a quote and a mid-rate conversion) so every metric family appears,
//      and every /metrics endpoint is scraped. Names come out of the expressions through a
//      small PromQL tokenizer (identifiers that are not functions, keywords, label names in
//      {} / by() / without() / on() / ignoring() / group_*(), durations or Grafana variables).
//      Recording rules defined in the rule files count as known, and so does `up`, the one
//      series Prometheus makes itself (checked in 2.).
//   2. A real Prometheus (Debian's `prometheus` binary) on loopback, with the repository's
//      prometheus.yml rewritten to the stack's real ports and a 1 s scrape interval, and the
//      repository's rules: every target UP, business metrics queryable, every rule evaluated
//      without error, the payment SLO's recording rule at 0 after a success and a
//      customer's failure (insufficient funds), every dashboard query accepted by Prometheus.
//      Under CI=true a missing binary fails the run; elsewhere that part is skipped.
import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { parse, stringify } from "yaml";
import { CaptureMethod, PaymentStatus, type Payment } from "../../services/gen/paygate/payments/v1/payments_pb.js";
import { freePort } from "../support/ports.js";
import { ACME, gatewayClients, GLOBEX, minor, repoRoot, startStack, tempDir, waitFor, type GatewayClients, type Stack } from "../support/stack.js";
import { onPath } from "../support/executables.js";

vi.setConfig({ testTimeout: 60_000, hookTimeout: 180_000 });

const CI = process.env.CI === "true";

// ---------------------------------------------------------------------------------------
// A small PromQL tokenizer: the metric names an expression selects.
// ---------------------------------------------------------------------------------------

/** Binary operators, modifiers and aggregation operators (reserved words, never metric names). */
const KEYWORDS = new Set([
  ...["and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"],
  ...["sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"],
]);
/** Words followed by a parenthesised list of label names, not expressions. */
const LABEL_LISTS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right"]);

/**
 * Metric names selected by a PromQL expression (Grafana variables allowed), in order of
 * appearance. An identifier is a metric name unless it is followed by `(` (a function or an
 * aggregation), is a keyword, or stands where label names do: inside {...} (matchers; a
 * `__name__="x"` matcher does select x), in by/without/on/ignoring/group_left/group_right
 * lists. Strings, comments, numbers, durations, [...] ranges and $variables are skipped.
 */
function metricNames(expr: string): string[] {
  const names: string[] = [];
  const n = expr.length;
  let i = 0;
  const isIdStart = (c: string | undefined) => c !== undefined && /[a-zA-Z_:]/.test(c);
  const isId = (c: string | undefined) => c !== undefined && /[a-zA-Z0-9_:]/.test(c);

  /** Skips a quoted string starting at i (PromQL: "...", '...' with escapes, `...` raw). */
  const skipString = () => {
    const quote = expr[i];
    i++;
    while (i < n && expr[i] !== quote) i += expr[i] === "\\" && quote !== "`" ? 2 : 1;
    i++;
  };
  /** Skips a bracketed span starting at i, nesting and strings included; returns its inside. */
  const skipBalanced = (open: string, close: string): string => {
    const start = i;
    let depth = 0;
    while (i < n) {
      const c = expr[i];
      if (c === '"' || c === "'" || c === "`") {
        skipString();
        continue;
      }
      if (c === open) depth++;
      else if (c === close && --depth === 0) {
        i++;
        return expr.slice(start + 1, i - 1);
      }
      i++;
    }
    throw new Error(`unbalanced ${open} in ${expr}`);
  };

  while (i < n) {
    const c = expr[i]!;
    if (/\s/.test(c)) {
      i++;
    } else if (c === "#") {
      while (i < n && expr[i] !== "\n") i++;
    } else if (c === '"' || c === "'" || c === "`") {
      skipString();
    } else if (c === "{") {
      const matchers = skipBalanced("{", "}");
      const byName = /(?:^|[\s,{])__name__\s*=\s*"([^"]+)"/.exec(matchers);
      if (byName) names.push(byName[1]!);
    } else if (c === "[") {
      skipBalanced("[", "]");
    } else if (c === "$") {
      // Grafana variable: $name or ${name[:format]}
      i++;
      if (expr[i] === "{") skipBalanced("{", "}");
      else while (isId(expr[i])) i++;
    } else if (/[0-9]/.test(c) || (c === "." && /[0-9]/.test(expr[i + 1] ?? ""))) {
      // A number (0.95, 1e-3, 0x1f, 14.4) or a duration (5m, 1h30m, 3d).
      while (i < n && /[0-9a-zA-Z_.]/.test(expr[i]!)) i += /[eE]/.test(expr[i]!) && /[+-]/.test(expr[i + 1] ?? "") ? 2 : 1;
    } else if (isIdStart(c)) {
      const start = i;
      while (isId(expr[i])) i++;
      const word = expr.slice(start, i);
      let k = i;
      while (k < n && /\s/.test(expr[k]!)) k++;
      const followedByParen = expr[k] === "(";
      const lower = word.toLowerCase();
      if (LABEL_LISTS.has(lower)) {
        if (followedByParen) {
          i = k;
          skipBalanced("(", ")");
        }
      } else if (!KEYWORDS.has(lower) && !followedByParen) {
        names.push(word);
      }
    } else {
      i++; // operators and punctuation
    }
  }
  return names;
}

/**
 * The PromQL inside a Grafana variable query: `label_values(<selector>, <label>)` is a series
 * selector plus a label name; `label_values(<label>)` selects no metric; `query_result(<expr>)`
 * is an expression; anything else is taken as PromQL.
 */
function variableQueryExpr(query: string): string | undefined {
  const labelValues = /^\s*label_values\(([\s\S]*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$/.exec(query);
  if (labelValues) return labelValues[1];
  if (/^\s*label_values\(\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$/.test(query)) return undefined;
  const result = /^\s*query_result\(([\s\S]*)\)\s*$/.exec(query);
  return result ? result[1] : query;
}

// ---------------------------------------------------------------------------------------
// The expressions: every rule, every dashboard query and variable query.
// ---------------------------------------------------------------------------------------

interface Expr {
  where: string;
  expr: string;
}

const rulesDir = path.join(repoRoot, "prometheus/rules");
const dashboardsDir = path.join(repoRoot, "grafana/dashboards");

interface RuleFile {
  groups: { name: string; rules: { alert?: string; record?: string; expr: string }[] }[];
}
const ruleFiles = readdirSync(rulesDir)
  .filter((f) => f.endsWith(".rules.yml"))
  .map((f) => ({ file: f, content: parse(readFileSync(path.join(rulesDir, f), "utf8")) as RuleFile }));
const recordingRules = new Set(ruleFiles.flatMap((f) => f.content.groups.flatMap((g) => g.rules.flatMap((r) => (r.record ? [r.record] : [])))));

function ruleExprs(): Expr[] {
  return ruleFiles.flatMap(({ file, content }) =>
    content.groups.flatMap((g) => g.rules.map((r) => ({ where: `${file} ${g.name}/${r.alert ?? r.record}`, expr: String(r.expr) }))),
  );
}

interface DashboardPanel {
  id: number;
  title: string;
  targets?: { refId: string; expr?: string }[];
  panels?: DashboardPanel[];
}
interface DashboardJson {
  uid: string;
  panels: DashboardPanel[];
  templating?: { list?: { name: string; type: string; query?: string | { query?: string } }[] };
}
const dashboards = readdirSync(dashboardsDir)
  .filter((f) => f.endsWith(".json"))
  .map((f) => ({ file: f, json: JSON.parse(readFileSync(path.join(dashboardsDir, f), "utf8")) as DashboardJson }));

function dashboardExprs(): Expr[] {
  return dashboards.flatMap(({ file, json }) => [
    ...json.panels
      .flatMap((p) => [p, ...(p.panels ?? [])])
      .flatMap((p) => (p.targets ?? []).flatMap((t) => (t.expr ? [{ where: `${file} panel ${p.id} "${p.title}" ${t.refId}`, expr: t.expr }] : []))),
    ...(json.templating?.list ?? [])
      .filter((v) => v.type === "query")
      .flatMap((v) => {
        const q = typeof v.query === "string" ? v.query : (v.query?.query ?? "");
        const expr = variableQueryExpr(q);
        return expr === undefined ? [] : [{ where: `${file} variable $${v.name}`, expr }];
      }),
  ]);
}

/** Series Prometheus makes itself for every target (no service exports them). */
const PROMETHEUS_SERIES = new Set(["up"]);

// ---------------------------------------------------------------------------------------
// Scraping
// ---------------------------------------------------------------------------------------

/** Metric names of the samples in a Prometheus text exposition (histograms: _bucket, _sum, _count). */
function sampleNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)?.[0];
    if (!name) throw new Error(`not a sample line: ${line}`);
    names.add(name);
  }
  return names;
}

/** Where each service serves /metrics, by the `job` prometheus/prometheus.yml gives it. */
function metricsEndpoints(stack: Stack): Record<string, string> {
  return {
    gateway: stack.gateway.adminUrl,
    payments: stack.payments!.adminUrl,
    fx: stack.fx.adminUrl,
    wallet: stack.wallet.adminUrl,
    risk: stack.risk.adminUrl,
  };
}

// ---------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------

const usd = (value: string) => ({ currency: "USD", amountMinor: minor(value, "USD") });

async function pay(
  acme: GatewayClients,
  src: string,
  dst: string,
  amount: string,
  opts: { manual?: boolean; idempotencyKey?: string } = {},
): Promise<Payment> {
  const { payment } = await acme.payments.createPayment(
    { sourceAccountId: src, destinationAccountId: dst, amount: usd(amount), captureMethod: opts.manual ? CaptureMethod.MANUAL : CaptureMethod.AUTOMATIC },
    opts.idempotencyKey ? { headers: { "idempotency-key": opts.idempotencyKey } } : {},
  );
  return payment!;
}

/** Traffic that makes every metric family appear. */
async function everyKindOfTraffic(stack: Stack, acme: GatewayClients): Promise<void> {
  const src = await stack.fund(ACME.id, "USD", "1000.00");
  const rich = await stack.fund(ACME.id, "USD", "20000.00");
  const poor = await stack.fund(ACME.id, "USD", "5.00");
  const dstUsd = await stack.fund(GLOBEX.id, "USD", "0");
  const dstEur = await stack.fund(GLOBEX.id, "EUR", "0");
  const status = (p: Payment) => [PaymentStatus[p.status], p.failureReason];

  const captured = await pay(acme, src, dstUsd, "10.00");
  expect(status(captured)).toEqual(["CAPTURED", ""]);
  await acme.payments.refundPayment({ paymentId: captured.id, amount: usd("2.00"), reason: "observability test" });
  // Cross-currency: a quote created and used, a conversion at the quote's rate.
  expect(status(await pay(acme, src, dstEur, "20.00"))).toEqual(["CAPTURED", ""]);
  expect(status(await pay(acme, poor, dstUsd, "10.00"))).toEqual(["FAILED", "INSUFFICIENT_FUNDS"]);
  // Shipped risk rules: > 1000.00 +20, > 10000.00 +60, new account +10 -> 90 >= 80: DECLINE.
  expect(status(await pay(acme, rich, dstUsd, "10000.01"))).toEqual(["FAILED", "RISK_DECLINED"]);
  // Manual capture: the hold stays open (the wallet's hold gauges).
  expect(status(await pay(acme, src, dstUsd, "30.00", { manual: true }))).toEqual(["AUTHORIZED", ""]);
  // The same Idempotency-Key twice: the second is a replay.
  const first = await pay(acme, src, dstUsd, "1.00", { idempotencyKey: "observability-replay-1" });
  const again = await pay(acme, src, dstUsd, "1.00", { idempotencyKey: "observability-replay-1" });
  expect(again.id).toBe(first.id);
  // The public FX API: a quote, a conversion at the mid rate.
  await acme.fx.createQuote({ source: { case: "amount", value: usd("100.00") }, toCurrency: "JPY" });
  await acme.fx.convert({ source: { case: "amount", value: usd("100.00") }, toCurrency: "EUR" });
}

// ---------------------------------------------------------------------------------------

describe("metricNames (the PromQL tokenizer)", () => {
  it.each([
    ['sum by (rpc_method) (rate(rpc_server_requests_total{job=~"$job",code!="ok"}[$__rate_interval]))', ["rpc_server_requests_total"]],
    ['histogram_quantile(0.95, sum by (job, le) (rate(x_seconds_bucket{le="0.5"}[5m])))', ["x_seconds_bucket"]],
    ["sum(rate(a_total[1h])) without (instance) / ignoring(code) group_left(reason) b_total", ["a_total", "b_total"]],
    ["60 * sum by (rate) (rate(paygate_fx_conversions_total[${__rate_interval}]))", ["paygate_fx_conversions_total"]],
    ["paygate:payment_errors:ratio_rate1h > (14.4 * 0.001) and on() paygate:x:ratio_rate5m > bool 1e-3 or up == 0 unless nan", ["paygate:payment_errors:ratio_rate1h", "paygate:x:ratio_rate5m", "up"]],
    ["(sum(rate(m_total[5m])) or vector(0)) + count(m2 offset 1h30m) - .5 * m3 @ end()", ["m_total", "m2", "m3"]],
    ['label_replace(m, "dst", "{x} by (y)", "src", "(.*)") + max_over_time(m4[1h:5m])', ["m", "m4"]],
    ['{__name__="named", job="x"} + on (job) sum(m5{le=\'0.5\', x=`a"b`})', ["named", "m5"]],
    ["# a comment naming not_a_metric\nsum (\n  m6\n)", ["m6"]],
  ])("%s", (expr, names) => {
    expect(metricNames(expr)).toEqual(names);
  });

  it("reads Grafana variable queries", () => {
    expect(variableQueryExpr("label_values(rpc_server_requests_total, job)")).toBe("rpc_server_requests_total");
    expect(variableQueryExpr('label_values(paygate_payments_total{status="CAPTURED"}, currency)')).toBe('paygate_payments_total{status="CAPTURED"}');
    expect(variableQueryExpr("label_values(job)")).toBeUndefined();
    expect(variableQueryExpr("query_result(topk(5, m))")).toBe("topk(5, m)");
  });

  it("finds at least one metric in every rule and dashboard expression", () => {
    const exprs = [...ruleExprs(), ...dashboardExprs()];
    expect(exprs.length).toBeGreaterThan(40);
    for (const { where, expr } of exprs) expect(metricNames(expr).length, where).toBeGreaterThan(0);
  });
});

describe("against the running services (in-process stack on PGlite)", () => {
  let stack: Stack;
  let acme: GatewayClients;
  /** Every metric name scraped from the five /metrics endpoints. */
  const exported = new Set<string>();

  beforeAll(async () => {
    const t0 = Date.now();
    stack = await startStack({ backend: { name: "pglite", url: undefined }, name: "observability" });
    acme = gatewayClients(stack.gatewayUrl, ACME.apiKey);
    await everyKindOfTraffic(stack, acme);
    for (const [job, url] of Object.entries(metricsEndpoints(stack))) {
      const res = await fetch(`${url}/metrics`);
      expect(res.status, `${job} ${url}/metrics`).toBe(200);
      const names = sampleNames(await res.text());
      expect(names, `${job} serves RPC metrics`).toContain("rpc_server_requests_total");
      for (const name of names) exported.add(name);
    }
    console.info(`stack started, traffic made and scraped in ${Date.now() - t0} ms`);
  });
  afterAll(async () => {
    await stack?.stop();
  });

  it("every metric family the dashboards and alerts are about was exported", () => {
    for (const name of [
      "rpc_server_requests_total",
      "rpc_server_request_duration_seconds_bucket",
      "rpc_server_request_duration_seconds_count",
      "rpc_server_requests_in_flight",
      "rpc_client_requests_total",
      "rpc_client_request_duration_seconds_bucket",
      "db_transactions_total",
      "db_query_duration_seconds_bucket",
      "paygate_payments_total",
      "paygate_payments_captured_minor_total",
      "paygate_payments_refunded_minor_total",
      "paygate_payments_failed_total",
      "paygate_idempotent_replays_total",
      "paygate_fx_quotes_total",
      "paygate_fx_conversions_total",
      "paygate_risk_decisions_total",
      "paygate_risk_reasons_total",
      "paygate_wallet_open_holds",
      "paygate_wallet_held_minor",
      "paygate_wallet_overdue_holds",
    ]) {
      expect(exported, name).toContain(name);
    }
  });

  it("every PromQL expression in the rules and dashboards names only exported metrics (or recording rules, or up)", () => {
    const unknown: string[] = [];
    const exprs = [...ruleExprs(), ...dashboardExprs()];
    for (const { where, expr } of exprs) {
      for (const name of metricNames(expr)) {
        if (!exported.has(name) && !recordingRules.has(name) && !PROMETHEUS_SERIES.has(name)) unknown.push(`${where}: ${name}`);
      }
    }
    expect(unknown, "metric names no service exports").toEqual([]);
  });

  // -------------------------------------------------------------------------------------
  // A real Prometheus on loopback
  // -------------------------------------------------------------------------------------

  const prometheusBin = onPath("prometheus");
  if (!prometheusBin && !CI) console.warn("prometheus not found on PATH (Debian: apt-get install prometheus): the real-Prometheus test was NOT run");

  // Defined only where prometheus exists, or under CI (where its absence then fails the run).
  if (prometheusBin || CI) describe("a real Prometheus scraping the stack", () => {
    let prom: RunningPrometheus | undefined;
    const running = (): RunningPrometheus => {
      if (!prom) throw new Error("prometheus is not running (not installed, or it failed to start: see beforeAll)");
      return prom;
    };

    beforeAll(async () => {
      if (!prometheusBin) return; // the test below fails
      prom = await startPrometheus(prometheusBin, metricsEndpoints(stack));
    });
    afterAll(async () => {
      await prom?.stop();
    });

    it("prometheus is installed", () => {
      expect(prometheusBin, "prometheus on PATH (Debian: apt-get install prometheus)").toBeDefined();
    });

    it("sees every target UP, the business metrics, and evaluates every rule without error", async () => {
      const p = running();
      const t0 = Date.now();
      const targets = await waitFor(
        async () => {
          const { data } = await p.api<{ activeTargets: { labels: { job: string }; health: string; lastError: string }[] }>("/api/v1/targets?state=active");
          return data.activeTargets.length === 5 && data.activeTargets.every((t) => t.health === "up") ? data.activeTargets : undefined;
        },
        "every target UP",
        30_000,
        200,
      );
      expect(targets.map((t) => t.labels.job).sort()).toEqual(["fx", "gateway", "payments", "risk", "wallet"]);

      const up = await p.query("up");
      expect(up.map((s) => [s.metric.job, s.value[1]]).sort()).toEqual([
        ["fx", "1"],
        ["gateway", "1"],
        ["payments", "1"],
        ["risk", "1"],
        ["wallet", "1"],
      ]);
      const payments = await p.query("sum(paygate_payments_total)");
      expect(Number(payments[0]?.value[1])).toBeGreaterThan(0);
      const holds = await p.query('max by (currency) (paygate_wallet_open_holds{job="wallet"})');
      expect(holds.map((s) => [s.metric.currency, Number(s.value[1])])).toContainEqual(["USD", 1]);

      // Traffic while Prometheus watches: a captured payment and a customer's failure
      // (insufficient funds). The payment SLO's error ratio must stay at 0.
      const src = await stack.fund(ACME.id, "USD", "100.00");
      const dst = await stack.fund(GLOBEX.id, "USD", "0");
      expect(PaymentStatus[(await pay(acme, src, dst, "10.00")).status]).toBe("CAPTURED");
      expect((await pay(acme, src, dst, "500.00")).failureReason).toBe("INSUFFICIENT_FUNDS");
      const { ratio } = await waitFor(
        async () => {
          const [sample] = await p.query("paygate:payment_errors:ratio_rate5m");
          return sample && !Number.isNaN(Number(sample.value[1])) ? { ratio: Number(sample.value[1]) } : undefined;
        },
        "the payment SLO's error ratio to be recorded",
        30_000,
        250,
      ).catch(async (err: unknown) => {
        const calls = await p.query('sum(increase(rpc_client_requests_total{rpc_method="CreatePayment"}[1m]))');
        throw new Error(`${String(err)}; CreatePayment calls in the last minute: ${JSON.stringify(calls)}`);
      });
      expect(ratio).toBe(0);
      // The latency rules evaluate on their own schedule: wait for their first sample too.
      const slow = await waitFor(
        async () => {
          const samples = await p.query("paygate:payment_latency_slow:ratio_rate5m");
          return samples.length > 0 && !Number.isNaN(Number(samples[0]!.value[1])) ? samples : undefined;
        },
        "the payment latency SLO's slow ratio to be recorded",
        30_000,
        250,
      );
      expect(slow).toHaveLength(1);
      expect(Number(slow[0]!.value[1])).toBeGreaterThanOrEqual(0);
      expect(Number(slow[0]!.value[1])).toBeLessThanOrEqual(1);

      // Every rule evaluated (health "ok", no error): the rules' PromQL runs on real series.
      const rules = await waitFor(
        async () => {
          const { data } = await p.api<{ groups: { name: string; rules: { name: string; health: string; lastError?: string }[] }[] }>("/api/v1/rules");
          const all = data.groups.flatMap((g) => g.rules.map((r) => ({ group: g.name, ...r })));
          return all.length > 0 && all.every((r) => r.health !== "unknown") ? all : undefined;
        },
        "every rule to be evaluated",
        30_000,
        250,
      );
      expect(rules.filter((r) => r.health !== "ok")).toEqual([]);
      expect(rules.length).toBe(ruleExprs().length);
      // Nothing is down and no hold is overdue: those alerts stay quiet.
      const alerts = await p.query('ALERTS{alertname=~"PaygateTargetDown|PaygateWalletHoldsStuck"}');
      expect(alerts).toEqual([]);
      console.info(`prometheus: targets up, queries and rules checked in ${Date.now() - t0} ms`);
    });

    it("accepts every dashboard query, and the per-service panels have data", async () => {
      const p = running();
      // Grafana's variables as a dashboard would set them, for the payments service.
      const substitute = (expr: string) =>
        expr
          .replace(/\$\{?__rate_interval\}?/g, "1m")
          .replace(/\$\{?__range\}?/g, "5m")
          .replace(/\$\{?__interval\}?/g, "15s")
          .replace(/\$\{?job\}?/g, "payments")
          .replace(/\$\{?currency\}?/g, ".*");
      const failures: string[] = [];
      for (const { where, expr } of dashboardExprs()) {
        const res = await p.raw(`/api/v1/query?query=${encodeURIComponent(substitute(expr))}`);
        if (res.status !== "success") failures.push(`${where}: ${res.error ?? res.status}`);
      }
      expect(failures).toEqual([]);

      const services = dashboards.find((d) => d.file === "paygate-services.json")!.json;
      const fourPanels = services.panels.slice(1, 5);
      expect(fourPanels.map((x) => x.title)).toEqual(["Request rate", "Error rate (5m)", "Latency p95 / p99", "Requests in the last 5 minutes"]);
      for (const panel of fourPanels) {
        // The first query of each: data once Prometheus holds two scrapes of a change.
        const expr = substitute(panel.targets![0]!.expr!);
        await waitFor(async () => (await p.query(expr)).length > 0, `data for "${panel.title}": ${expr}`, 30_000, 250);
      }
      const jobs = await p.api<string[]>(`/api/v1/label/job/values?match[]=rpc_server_requests_total`);
      expect(jobs.data.sort()).toEqual(["fx", "gateway", "payments", "risk", "wallet"]);
    });
  });
});

// ---------------------------------------------------------------------------------------
// Running Prometheus
// ---------------------------------------------------------------------------------------

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}
interface ApiAnswer<T> {
  status: string;
  data: T;
  error?: string;
}
interface RunningPrometheus {
  url: string;
  raw<T>(pathAndQuery: string): Promise<ApiAnswer<T>>;
  api<T>(pathAndQuery: string): Promise<ApiAnswer<T>>;
  query(expr: string): Promise<Sample[]>;
  stop(): Promise<void>;
}

/**
 * Starts `prometheus` on 127.0.0.1:<free port> with the repository's prometheus.yml, its
 * targets pointed at `endpoints` (by job), scraping and evaluating every second, the
 * repository's rule files, and a throwaway TSDB. Resolves once it is ready.
 */
async function startPrometheus(bin: string, endpoints: Record<string, string>): Promise<RunningPrometheus> {
  const tmp = tempDir("paygate-prometheus-");
  const config = parse(readFileSync(path.join(repoRoot, "prometheus/prometheus.yml"), "utf8")) as {
    global: Record<string, string>;
    rule_files: string[];
    scrape_configs: { job_name: string; static_configs: { targets: string[] }[] }[];
  };
  config.global = { ...config.global, scrape_interval: "1s", scrape_timeout: "1s", evaluation_interval: "1s" };
  config.rule_files = config.rule_files.map((f) => path.resolve(repoRoot, "prometheus", f));
  for (const job of config.scrape_configs) {
    const url = endpoints[job.job_name];
    if (!url) throw new Error(`prometheus.yml has a job ${job.job_name} the stack does not run`);
    job.static_configs = [{ targets: [new URL(url).host] }];
  }
  const jobs = config.scrape_configs.map((j) => j.job_name).sort();
  if (jobs.join() !== Object.keys(endpoints).sort().join()) throw new Error(`prometheus.yml scrapes ${jobs.join(", ")}, the stack runs ${Object.keys(endpoints).join(", ")}`);
  const configFile = path.join(tmp.dir, "prometheus.yml");
  writeFileSync(configFile, stringify(config));

  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child: ChildProcess = spawn(
    bin,
    [`--config.file=${configFile}`, `--storage.tsdb.path=${path.join(tmp.dir, "data")}`, `--web.listen-address=127.0.0.1:${port}`, "--log.level=warn"],
    { cwd: tmp.dir, stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => {
    stderr = (stderr + d.toString("utf8")).slice(-20_000);
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let hasExited = false;
  void exited.then(() => (hasExited = true));
  const killOnExit = () => child.kill("SIGKILL");
  process.once("exit", killOnExit);

  const stop = async () => {
    if (!hasExited) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    }
    process.off("exit", killOnExit);
    tmp.remove();
  };

  const raw = async <T>(pathAndQuery: string): Promise<ApiAnswer<T>> => {
    const res = await fetch(`${url}${pathAndQuery}`, { signal: AbortSignal.timeout(10_000) });
    return (await res.json()) as ApiAnswer<T>;
  };
  const api = async <T>(pathAndQuery: string): Promise<ApiAnswer<T>> => {
    const body = await raw<T>(pathAndQuery);
    if (body.status !== "success") throw new Error(`${pathAndQuery}: ${body.error ?? body.status}`);
    return body;
  };

  try {
    await waitFor(
      async () => {
        if (hasExited) throw new Error(`prometheus exited:\n${stderr}`);
        const res = await fetch(`${url}/-/ready`).catch(() => undefined);
        return res?.status === 200;
      },
      "prometheus to be ready",
      30_000,
      100,
      (err) => err instanceof Error && err.message.startsWith("prometheus exited"),
    );
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    url,
    raw,
    api,
    query: async (expr) => (await api<{ resultType: string; result: Sample[] }>(`/api/v1/query?query=${encodeURIComponent(expr)}`)).data.result,
    stop,
  };
}
