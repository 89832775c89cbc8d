// A run's figures: payments/s, latency percentiles from the exact sorted samples, outcomes,
// error rate by code, what was captured, and each threshold met or not.
import { formatMinor } from "../runtime/money/money.js";
import type { Answer } from "./protocols.js";
import type { Metric, Threshold } from "./params.js";

export interface Tally {
  latenciesMs: number[];
  /** Answers by code: ok, invalid_argument, unavailable, … */
  codes: Map<string, number>;
  /** Payments by status (and failure reason): CAPTURED, FAILED RISK_DECLINED, … */
  outcomes: Map<string, number>;
  capturedMinor: Map<string, bigint>;
}

export function newTally(): Tally {
  return { latenciesMs: [], codes: new Map(), outcomes: new Map(), capturedMinor: new Map() };
}

export function record(t: Tally, answer: Answer, latencyMs: number): void {
  t.latenciesMs.push(latencyMs);
  bump(t.codes, answer.code);
  if (answer.code !== "ok") return;
  bump(t.outcomes, answer.reason ? `${answer.status} ${answer.reason}` : (answer.status ?? "?"));
  if (answer.captured) t.capturedMinor.set(answer.captured.currency, (t.capturedMinor.get(answer.captured.currency) ?? 0n) + answer.captured.minor);
}

function bump(m: Map<string, number>, key: string): void {
  m.set(key, (m.get(key) ?? 0) + 1);
}

export interface Summary {
  script: string;
  protocol: string;
  target: string;
  vus: number;
  durationMs: number;
  elapsedS: number;
  requests: number;
  /** Requests answered with a payment (whatever its status). */
  payments: number;
  captured: number;
  errors: number;
  errorRate: number;
  capturedRate: number;
  paymentsPerS: number;
  latencyMs: { avg: number; p50: number; p90: number; p95: number; p99: number; max: number } | null;
  codes: Record<string, number>;
  outcomes: Record<string, number>;
  /** Captured amounts per currency, in minor units (decimal strings). */
  capturedMinor: Record<string, string>;
  thresholds: { threshold: string; value: number | null; ok: boolean }[];
  passed: boolean;
}

/** The p-th percentile (nearest rank) of ascending `sorted`. */
export function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

export function summarize(run: { script: string; protocol: string; target: string; vus: number; durationMs: number; elapsedS: number }, t: Tally, thresholds: Threshold[]): Summary {
  const sorted = Float64Array.from(t.latenciesMs).sort();
  const requests = sorted.length;
  const payments = t.codes.get("ok") ?? 0;
  const captured = t.outcomes.get("CAPTURED") ?? 0;
  const errors = requests - payments;
  const paymentsPerS = run.elapsedS > 0 ? payments / run.elapsedS : 0;
  const latencyMs =
    requests === 0
      ? null
      : { avg: sorted.reduce((a, b) => a + b, 0) / requests, p50: percentile(sorted, 50), p90: percentile(sorted, 90), p95: percentile(sorted, 95), p99: percentile(sorted, 99), max: sorted[requests - 1]! };
  const errorRate = requests === 0 ? 0 : errors / requests;
  const capturedRate = requests === 0 ? 0 : captured / requests;
  // Without a single request there is nothing to judge a threshold by: it fails.
  const value = (m: Metric): number | null => {
    if (requests === 0) return null;
    if (m === "error_rate") return errorRate;
    if (m === "captured_rate") return capturedRate;
    if (m === "payments_per_s") return paymentsPerS;
    if (m === "max") return latencyMs!.max;
    if (m === "avg") return latencyMs!.avg;
    return percentile(sorted, Number(m.slice(2, -1)));
  };
  const judged = thresholds.map((th) => {
    const v = value(th.metric);
    const ok = v !== null && (th.op === "<" ? v < th.limit : th.op === "<=" ? v <= th.limit : th.op === ">" ? v > th.limit : v >= th.limit);
    return { threshold: th.text, value: v, ok };
  });
  return {
    ...run,
    requests,
    payments,
    captured,
    errors,
    errorRate,
    capturedRate,
    paymentsPerS,
    latencyMs,
    codes: Object.fromEntries([...t.codes].sort((a, b) => b[1] - a[1])),
    outcomes: Object.fromEntries([...t.outcomes].sort((a, b) => b[1] - a[1])),
    capturedMinor: Object.fromEntries([...t.capturedMinor].sort().map(([c, v]) => [c, v.toString()])),
    thresholds: judged,
    passed: judged.every((j) => j.ok),
  };
}

const f1 = (n: number) => n.toFixed(1);
const pct = (n: number, of: number) => (of === 0 ? "-" : `${((100 * n) / of).toFixed(1)}%`);

/** The summary as a few aligned lines for a terminal or a Job's log. */
export function formatSummary(s: Summary): string {
  const shares = (m: Record<string, number>) => Object.entries(m).map(([k, n]) => `${k} ${n} (${pct(n, s.requests)})`).join(", ") || "-";
  const l = s.latencyMs;
  const lines = [
    ["script", s.script === s.protocol ? s.script : `${s.script} over ${s.protocol}`],
    ["target", s.target],
    ["load", `${s.vus} VUs for at most ${s.durationMs / 1000} s`],
    ["payments", `${s.requests} sent in ${s.elapsedS.toFixed(2)} s: ${f1(s.paymentsPerS)} payments/s answered, ${s.captured} CAPTURED`],
    ["latency", l ? `avg ${f1(l.avg)} ms, p50 ${f1(l.p50)}, p90 ${f1(l.p90)}, p95 ${f1(l.p95)}, p99 ${f1(l.p99)}, max ${f1(l.max)} ms` : "-"],
    ["outcomes", shares(s.outcomes)],
    ["codes", shares(s.codes)],
    ["error rate", `${(100 * s.errorRate).toFixed(2)}% (${s.errors} of ${s.requests})`],
    ["captured", Object.entries(s.capturedMinor).map(([c, v]) => `${formatMinor(BigInt(v), c)} ${c}`).join(", ") || "-"],
    ["thresholds", s.thresholds.map((t) => `${t.ok ? "ok" : "FAILED"} ${t.threshold} (${t.value === null ? "no data" : Number.isInteger(t.value) ? t.value : t.value.toFixed(3)})`).join(", ") || "none"],
  ];
  return lines.map(([k, v]) => `${k!.padEnd(11)}${v}`).join("\n");
}
