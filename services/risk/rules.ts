// The risk rule set (loaded from a YAML file and validated) and its pure evaluation: the
// facts about a payment go in, reasons, score and outcome come out.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { ConfigError } from "../runtime/config.js";
import { currencyInfo, parseDecimalAmount } from "../runtime/money/money.js";

export type Outcome = "APPROVE" | "REVIEW" | "DECLINE";

export interface Reason {
  code: string;
  points: number;
  message: string;
  shadow: boolean;
}

const DURATION = /^(\d+)(s|m|h|d)$/;
const UNIT_MS = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
const duration = z.string().regex(DURATION, 'expected a duration such as "30s", "5m", "1h" or "7d"').transform((text) => {
  const [, n, unit] = DURATION.exec(text)!;
  return Number(n) * UNIT_MS[unit as keyof typeof UNIT_MS];
});
const points = z.number().int().min(0).max(99);
// A threshold of 0 would review or decline a payment no rule fired on (a decision without a
// reason), and would make shadow mode enforce: thresholds start at 1.
const threshold = z.number().int().min(1).max(99);
const shadow = z.boolean().default(false);
const decimalText = z.string().regex(/^\d+(\.\d+)?$/, 'expected a decimal string such as "1000.00"');

const ruleFileSchema = z
  .object({
    version: z.string().min(1),
    baseCurrency: z.string(),
    mode: z.enum(["enforce", "shadow"]).default("enforce"),
    fxUnavailable: z.enum(["closed", "open"]).default("closed"),
    thresholds: z.object({ review: threshold, decline: threshold }).strict(),
    lists: z
      .object({ blockedAccounts: z.array(z.string()).default([]), allowedAccounts: z.array(z.string()).default([]) })
      .strict()
      .default({ blockedAccounts: [], allowedAccounts: [] }),
    rules: z
      .object({
        amount: z.array(z.object({ over: decimalText, points, shadow }).strict()).default([]),
        velocity: z
          .array(
            z
              .object({ window: duration, maxCount: z.number().int().min(1).optional(), maxSum: decimalText.optional(), points, shadow })
              .strict()
              .refine((v) => (v.maxCount === undefined) !== (v.maxSum === undefined), "give exactly one of maxCount or maxSum"),
          )
          .default([]),
        currencyMismatch: z.object({ points, shadow }).strict().optional(),
        newAccount: z.object({ maxAge: duration, points, shadow }).strict().optional(),
      })
      .strict(),
  })
  .strict()
  .refine((f) => f.thresholds.review <= f.thresholds.decline, { message: "thresholds.review must not exceed thresholds.decline", path: ["thresholds"] });

export interface AmountRule {
  overMinor: bigint;
  over: string;
  points: number;
  shadow: boolean;
}
export interface VelocityRule {
  windowMs: number;
  window: string;
  maxCount?: number;
  maxSumMinor?: bigint;
  maxSum?: string;
  points: number;
  shadow: boolean;
}

export interface RuleSet {
  /** Declared version plus a hash of the file: what every decision records. */
  version: string;
  baseCurrency: string;
  /** Every rule is shadow: evaluated and recorded, never enforced. */
  shadowMode: boolean;
  failClosedWithoutFx: boolean;
  review: number;
  decline: number;
  blocked: ReadonlySet<string>;
  allowed: ReadonlySet<string>;
  amount: AmountRule[];
  velocity: VelocityRule[];
  currencyMismatch?: { points: number; shadow: boolean };
  newAccount?: { maxAgeMs: number; points: number; shadow: boolean };
}

export const DEFAULT_RULES_FILE = new URL("./rules.yaml", import.meta.url);

/** Reads and validates a rules file; a bad file is a ConfigError naming the key at fault. */
export function loadRuleSet(file: URL | string = DEFAULT_RULES_FILE): RuleSet {
  const name = file instanceof URL ? file.pathname : file;
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError(`RISK_RULES_FILE: cannot read ${name}: ${(err as Error).message}`);
  }
  return parseRuleSet(text, name);
}

export function parseRuleSet(text: string, name = "rules"): RuleSet {
  // A YAML syntax error (or a duplicated key) is a bad rules file like any other.
  const parsed = ruleFileSchema.safeParse(toConfig(() => parseYaml(text) as unknown, name));
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join(".") || "(root)"}: ${i.message}`);
    throw new ConfigError(`invalid risk rules in ${name}:\n${lines.join("\n")}`);
  }
  const f = parsed.data;
  const base = toConfig(() => currencyInfo(f.baseCurrency, "baseCurrency").code, name);
  const minor = (text: string, key: string) => toConfig(() => parseDecimalAmount(text, base, key), name);
  return {
    version: `${f.version}+${createHash("sha256").update(text).digest("hex").slice(0, 8)}`,
    baseCurrency: base,
    shadowMode: f.mode === "shadow",
    failClosedWithoutFx: f.fxUnavailable === "closed",
    review: f.thresholds.review,
    decline: f.thresholds.decline,
    blocked: new Set(f.lists.blockedAccounts),
    allowed: new Set(f.lists.allowedAccounts),
    amount: f.rules.amount.map((r, i) => ({ overMinor: minor(r.over, `rules.amount[${i}].over`), over: r.over, points: r.points, shadow: r.shadow })),
    velocity: f.rules.velocity.map((r, i) => ({
      windowMs: r.window,
      window: formatWindow(r.window),
      maxCount: r.maxCount,
      maxSum: r.maxSum,
      maxSumMinor: r.maxSum === undefined ? undefined : minor(r.maxSum, `rules.velocity[${i}].maxSum`),
      points: r.points,
      shadow: r.shadow,
    })),
    currencyMismatch: f.rules.currencyMismatch,
    newAccount: f.rules.newAccount && { maxAgeMs: f.rules.newAccount.maxAge, points: f.rules.newAccount.points, shadow: f.rules.newAccount.shadow },
  };
}

function toConfig<T>(fn: () => T, name: string): T {
  try {
    return fn();
  } catch (err) {
    throw new ConfigError(`invalid risk rules in ${name}: ${(err as Error).message}`);
  }
}

function formatWindow(ms: number): string {
  for (const [unit, size] of [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000]] as const) if (ms % size === 0) return `${ms / size}${unit}`;
  return `${ms / 1000}s`;
}

/** What the rules look at, gathered by the service. */
export interface Facts {
  accountId: string;
  currency: string;
  accountCurrency: string;
  /** The amount in the base currency; undefined when fx could not be reached. */
  baseAmountMinor: bigint | undefined;
  /** Age of the paying account in ms. */
  accountAgeMs: number;
  /** Per velocity rule (same order): earlier payments of the account inside its window. */
  windows: { count: number; sumMinor: bigint }[];
}

export interface Evaluation {
  reasons: Reason[];
  score: number;
  outcome: Outcome;
  shadowScore: number;
  shadowOutcome: Outcome;
}

export function evaluate(rules: RuleSet, facts: Facts): Evaluation {
  const reasons: Reason[] = [];
  const fire = (code: string, pts: number, message: string, isShadow = false) => reasons.push({ code, points: pts, message, shadow: isShadow || rules.shadowMode });

  if (rules.blocked.has(facts.accountId)) fire("BLOCKLISTED", 99, `account ${facts.accountId} is on the block list`);
  else if (rules.allowed.has(facts.accountId)) fire("ALLOWLISTED", 0, `account ${facts.accountId} is on the allow list: no other rule applies`);
  else {
    const base = rules.baseCurrency;
    if (facts.baseAmountMinor === undefined) {
      if (rules.failClosedWithoutFx) fire("FX_UNAVAILABLE", 99, `fx unreachable: cannot normalise the amount to ${base}, declining (fail closed)`);
      else fire("FX_UNAVAILABLE", 0, `fx unreachable: amount rules skipped (fail open)`);
    } else {
      for (const r of rules.amount) {
        if (facts.baseAmountMinor > r.overMinor) fire("AMOUNT_OVER_THRESHOLD", r.points, `amount is over ${r.over} ${base}`, r.shadow);
      }
    }
    rules.velocity.forEach((r, i) => {
      const w = facts.windows[i] ?? { count: 0, sumMinor: 0n };
      if (r.maxCount !== undefined && w.count + 1 > r.maxCount) {
        fire("VELOCITY_COUNT", r.points, `${w.count + 1} payments in ${r.window}, more than ${r.maxCount}`, r.shadow);
      }
      if (r.maxSumMinor !== undefined && facts.baseAmountMinor !== undefined && w.sumMinor + facts.baseAmountMinor > r.maxSumMinor) {
        fire("VELOCITY_SUM", r.points, `payments in ${r.window} total more than ${r.maxSum} ${base}`, r.shadow);
      }
    });
    const mismatch = rules.currencyMismatch;
    if (mismatch && facts.accountCurrency !== "" && facts.accountCurrency !== facts.currency) {
      fire("CURRENCY_MISMATCH", mismatch.points, `payment in ${facts.currency} from a ${facts.accountCurrency} account`, mismatch.shadow);
    }
    const fresh = rules.newAccount;
    if (fresh && facts.accountAgeMs < fresh.maxAgeMs) fire("NEW_ACCOUNT", fresh.points, `account is younger than ${formatWindow(fresh.maxAgeMs)}`, fresh.shadow);
  }

  const sum = (list: Reason[]) => Math.min(99, list.reduce((s, r) => s + r.points, 0));
  const score = sum(reasons.filter((r) => !r.shadow));
  const shadowScore = sum(reasons);
  const outcomeOf = (s: number): Outcome => (s >= rules.decline ? "DECLINE" : s >= rules.review ? "REVIEW" : "APPROVE");
  return { reasons, score, outcome: outcomeOf(score), shadowScore, shadowOutcome: outcomeOf(shadowScore) };
}
