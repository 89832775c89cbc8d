// The risk rule set: parsing/validation of the YAML file and the pure evaluation of the
// rules, checked at every boundary (one minor unit, one millisecond, one point).
import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { stringify } from "yaml";
import { ConfigError } from "../../services/runtime/config.js";
import { evaluate, loadRuleSet, parseRuleSet, type Evaluation, type Facts, type Outcome, type RuleSet } from "../../services/risk/rules.js";

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

type Doc = Record<string, unknown>;

/** A minimal valid rules document; `rules` and other keys overridable. */
function doc(over: Doc = {}): Doc {
  return { version: "t-1", baseCurrency: "USD", thresholds: { review: 50, decline: 80 }, rules: {}, ...over };
}

const rulesOf = (over: Doc = {}): RuleSet => parseRuleSet(stringify(doc(over)), "test.yaml");

/** Facts that fire nothing under any rule set used here. */
function facts(over: Partial<Facts> = {}): Facts {
  return { accountId: "acc_1", currency: "USD", accountCurrency: "", baseAmountMinor: 100n, accountAgeMs: 365 * DAY, windows: [], ...over };
}

const codes = (e: Evaluation) => e.reasons.map((r) => r.code);

/** A rule set whose single enforced rule adds exactly `points` when the amount is over 1.00. */
function scoring(points: number, thresholds = { review: 50, decline: 80 }): RuleSet {
  return rulesOf({ thresholds, rules: { amount: [{ over: "1.00", points }] } });
}

function configErrorOf(text: string): ConfigError {
  try {
    parseRuleSet(text, "bad.yaml");
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error("expected a ConfigError, the rules parsed");
}

describe("amount threshold", () => {
  const rules = rulesOf({ rules: { amount: [{ over: "1000.00", points: 20 }] } });

  it("does not fire at exactly the threshold, fires one minor unit over", () => {
    expect(rules.amount[0]!.overMinor).toBe(100_000n);
    expect(evaluate(rules, facts({ baseAmountMinor: 100_000n })).reasons).toEqual([]);
    const over = evaluate(rules, facts({ baseAmountMinor: 100_001n }));
    expect(over.reasons).toEqual([{ code: "AMOUNT_OVER_THRESHOLD", points: 20, message: expect.stringContaining("1000.00 USD"), shadow: false }]);
    expect(over.score).toBe(20);
  });

  it("reads the threshold in the base currency's minor units (JPY 0, KWD 3 decimals)", () => {
    const jpy = rulesOf({ baseCurrency: "JPY", rules: { amount: [{ over: "1000", points: 20 }] } });
    expect(codes(evaluate(jpy, facts({ baseAmountMinor: 1000n })))).toEqual([]);
    expect(codes(evaluate(jpy, facts({ baseAmountMinor: 1001n })))).toEqual(["AMOUNT_OVER_THRESHOLD"]);
    const kwd = rulesOf({ baseCurrency: "KWD", rules: { amount: [{ over: "1.5", points: 20 }] } });
    expect(kwd.amount[0]!.overMinor).toBe(1500n);
    expect(codes(evaluate(kwd, facts({ baseAmountMinor: 1500n })))).toEqual([]);
    expect(codes(evaluate(kwd, facts({ baseAmountMinor: 1501n })))).toEqual(["AMOUNT_OVER_THRESHOLD"]);
  });

  it("every threshold passed adds its points", () => {
    const two = rulesOf({ rules: { amount: [{ over: "1000.00", points: 20 }, { over: "10000.00", points: 60 }] } });
    expect(evaluate(two, facts({ baseAmountMinor: 1_000_000n })).score).toBe(20);
    const both = evaluate(two, facts({ baseAmountMinor: 1_000_001n }));
    expect(codes(both)).toEqual(["AMOUNT_OVER_THRESHOLD", "AMOUNT_OVER_THRESHOLD"]);
    expect(both.score).toBe(80);
    expect(both.outcome).toBe("DECLINE");
  });
});

describe("velocity", () => {
  it("count: maxCount payments (the current one included) is allowed, one more fires", () => {
    const rules = rulesOf({ rules: { velocity: [{ window: "1m", maxCount: 3, points: 40 }] } });
    expect(rules.velocity[0]!.windowMs).toBe(60_000);
    // 2 earlier + this one = 3 = maxCount: reached, not exceeded.
    expect(evaluate(rules, facts({ windows: [{ count: 2, sumMinor: 0n }] })).reasons).toEqual([]);
    const fired = evaluate(rules, facts({ windows: [{ count: 3, sumMinor: 0n }] }));
    expect(fired.reasons).toEqual([{ code: "VELOCITY_COUNT", points: 40, message: "4 payments in 1m, more than 3", shadow: false }]);
  });

  it("maxCount 1: the first payment passes, the second in the window fires", () => {
    const rules = rulesOf({ rules: { velocity: [{ window: "30s", maxCount: 1, points: 40 }] } });
    expect(codes(evaluate(rules, facts({ windows: [{ count: 0, sumMinor: 0n }] })))).toEqual([]);
    expect(codes(evaluate(rules, facts({ windows: [{ count: 1, sumMinor: 0n }] })))).toEqual(["VELOCITY_COUNT"]);
  });

  it("sum: earlier base amounts plus this one, compared in the base currency", () => {
    const rules = rulesOf({ rules: { velocity: [{ window: "1h", maxSum: "500.00", points: 40 }] } });
    expect(rules.velocity[0]!.maxSumMinor).toBe(50_000n);
    expect(evaluate(rules, facts({ baseAmountMinor: 10_000n, windows: [{ count: 4, sumMinor: 40_000n }] })).reasons).toEqual([]);
    const fired = evaluate(rules, facts({ baseAmountMinor: 10_001n, windows: [{ count: 4, sumMinor: 40_000n }] }));
    expect(fired.reasons).toEqual([{ code: "VELOCITY_SUM", points: 40, message: "payments in 1h total more than 500.00 USD", shadow: false }]);
    // A single payment over the sum with nothing earlier fires too.
    expect(codes(evaluate(rules, facts({ baseAmountMinor: 50_001n, windows: [{ count: 0, sumMinor: 0n }] })))).toEqual(["VELOCITY_SUM"]);
  });

  it("sum in a 3-decimal base currency", () => {
    const rules = rulesOf({ baseCurrency: "KWD", rules: { velocity: [{ window: "1h", maxSum: "10", points: 40 }] } });
    expect(rules.velocity[0]!.maxSumMinor).toBe(10_000n);
    expect(codes(evaluate(rules, facts({ baseAmountMinor: 1n, windows: [{ count: 1, sumMinor: 9_999n }] })))).toEqual([]);
    expect(codes(evaluate(rules, facts({ baseAmountMinor: 2n, windows: [{ count: 1, sumMinor: 9_999n }] })))).toEqual(["VELOCITY_SUM"]);
  });

  it("each rule reads its own window (same order as the rules)", () => {
    const rules = rulesOf({
      rules: {
        velocity: [
          { window: "1m", maxCount: 5, points: 10 },
          { window: "1h", maxCount: 20, points: 30 },
        ],
      },
    });
    const e = evaluate(rules, facts({ windows: [{ count: 2, sumMinor: 0n }, { count: 20, sumMinor: 0n }] }));
    expect(e.reasons).toEqual([expect.objectContaining({ code: "VELOCITY_COUNT", points: 30, message: "21 payments in 1h, more than 20" })]);
    expect(rules.velocity.map((v) => v.window)).toEqual(["1m", "1h"]);
  });
});

describe("currency mismatch and new account", () => {
  const rules = rulesOf({ rules: { currencyMismatch: { points: 15 }, newAccount: { maxAge: "24h", points: 10 } } });

  it("a payment in another currency than the account's fires; same or unknown account currency does not", () => {
    expect(evaluate(rules, facts({ currency: "USD", accountCurrency: "EUR" })).reasons).toEqual([
      { code: "CURRENCY_MISMATCH", points: 15, message: "payment in USD from a EUR account", shadow: false },
    ]);
    expect(codes(evaluate(rules, facts({ currency: "EUR", accountCurrency: "EUR" })))).toEqual([]);
    expect(codes(evaluate(rules, facts({ currency: "EUR", accountCurrency: "" })))).toEqual([]);
  });

  it("an account younger than maxAge fires; exactly maxAge old does not", () => {
    expect(rules.newAccount!.maxAgeMs).toBe(DAY);
    expect(evaluate(rules, facts({ accountAgeMs: DAY - 1 })).reasons).toEqual([
      { code: "NEW_ACCOUNT", points: 10, message: "account is younger than 1d", shadow: false },
    ]);
    expect(codes(evaluate(rules, facts({ accountAgeMs: 0 })))).toEqual(["NEW_ACCOUNT"]);
    expect(codes(evaluate(rules, facts({ accountAgeMs: DAY })))).toEqual([]);
  });

  it("rules left out of the file never fire", () => {
    const none = rulesOf();
    expect(evaluate(none, facts({ currency: "USD", accountCurrency: "EUR", accountAgeMs: 0, baseAmountMinor: 10n ** 15n })).reasons).toEqual([]);
  });
});

describe("score and outcome", () => {
  it("score is the sum of the points, capped at 99", () => {
    const rules = rulesOf({
      rules: {
        amount: [{ over: "1.00", points: 30 }],
        currencyMismatch: { points: 25 },
        newAccount: { maxAge: "1d", points: 20 },
      },
    });
    const e = evaluate(rules, facts({ baseAmountMinor: 101n, accountCurrency: "EUR", accountAgeMs: 0 }));
    expect(e.score).toBe(75);
    const capped = rulesOf({ rules: { amount: [{ over: "1.00", points: 60 }, { over: "2.00", points: 50 }] } });
    const c = evaluate(capped, facts({ baseAmountMinor: 201n }));
    expect(c.reasons.reduce((s, r) => s + r.points, 0)).toBe(110);
    expect(c.score).toBe(99);
    expect(c.shadowScore).toBe(99);
    expect(c.outcome).toBe("DECLINE");
  });

  it.each<[number, Outcome]>([
    [0, "APPROVE"],
    [49, "APPROVE"],
    [50, "REVIEW"],
    [79, "REVIEW"],
    [80, "DECLINE"],
    [99, "DECLINE"],
  ])("score %i -> %s (review 50, decline 80)", (points, outcome) => {
    const e = evaluate(scoring(points), facts({ baseAmountMinor: 101n }));
    expect(e.score).toBe(points);
    expect(e.outcome).toBe(outcome);
    expect(e.shadowOutcome).toBe(outcome);
  });

  it("thresholds are configurable; review = decline skips REVIEW", () => {
    const t = { review: 10, decline: 10 };
    expect(evaluate(scoring(9, t), facts({ baseAmountMinor: 101n })).outcome).toBe("APPROVE");
    expect(evaluate(scoring(10, t), facts({ baseAmountMinor: 101n })).outcome).toBe("DECLINE");
  });
});

describe("block and allow lists", () => {
  const everything = {
    amount: [{ over: "1.00", points: 30 }],
    velocity: [{ window: "1m", maxCount: 1, points: 40 }],
    currencyMismatch: { points: 15 },
    newAccount: { maxAge: "1d", points: 10 },
  };
  const firesAll = facts({ accountId: "acc_x", baseAmountMinor: 1_000_00n, accountCurrency: "EUR", accountAgeMs: 0, windows: [{ count: 5, sumMinor: 0n }] });

  it("sanity: these facts fire every rule for an unlisted account", () => {
    const e = evaluate(rulesOf({ rules: everything }), firesAll);
    expect(codes(e).sort()).toEqual(["AMOUNT_OVER_THRESHOLD", "CURRENCY_MISMATCH", "NEW_ACCOUNT", "VELOCITY_COUNT"]);
  });

  it("a blocked account scores 99 and is declined, whatever else", () => {
    const rules = rulesOf({ lists: { blockedAccounts: ["acc_x"] }, rules: everything });
    const e = evaluate(rules, facts({ accountId: "acc_x" }));
    expect(e.reasons).toEqual([{ code: "BLOCKLISTED", points: 99, message: expect.stringContaining("acc_x"), shadow: false }]);
    expect(e).toMatchObject({ score: 99, outcome: "DECLINE", shadowScore: 99, shadowOutcome: "DECLINE" });
    expect(codes(evaluate(rules, firesAll))).toEqual(["BLOCKLISTED"]);
    // Other accounts are not affected.
    expect(codes(evaluate(rules, facts({ accountId: "acc_y" })))).toEqual([]);
  });

  it("an allowed account is approved and no other rule applies", () => {
    const rules = rulesOf({ lists: { allowedAccounts: ["acc_x"] }, rules: everything });
    const e = evaluate(rules, firesAll);
    expect(e.reasons).toEqual([{ code: "ALLOWLISTED", points: 0, message: expect.any(String), shadow: false }]);
    expect(e).toMatchObject({ score: 0, outcome: "APPROVE", shadowScore: 0, shadowOutcome: "APPROVE" });
    // Even with fx down and failing closed.
    expect(evaluate(rules, { ...firesAll, baseAmountMinor: undefined }).outcome).toBe("APPROVE");
  });

  it("the block list beats the allow list", () => {
    const rules = rulesOf({ lists: { blockedAccounts: ["acc_x"], allowedAccounts: ["acc_x"] }, rules: everything });
    const e = evaluate(rules, firesAll);
    expect(codes(e)).toEqual(["BLOCKLISTED"]);
    expect(e.outcome).toBe("DECLINE");
  });
});

describe("shadow rules", () => {
  it("a shadow rule is recorded but not enforced; the shadow score counts it", () => {
    const rules = rulesOf({ rules: { amount: [{ over: "1.00", points: 60, shadow: true }], currencyMismatch: { points: 15 } } });
    const e = evaluate(rules, facts({ baseAmountMinor: 101n, accountCurrency: "EUR" }));
    expect(e.reasons).toEqual([
      expect.objectContaining({ code: "AMOUNT_OVER_THRESHOLD", points: 60, shadow: true }),
      expect.objectContaining({ code: "CURRENCY_MISMATCH", points: 15, shadow: false }),
    ]);
    expect(e).toMatchObject({ score: 15, outcome: "APPROVE", shadowScore: 75, shadowOutcome: "REVIEW" });
  });

  it("per-rule shadow on velocity, currency mismatch and new account", () => {
    const rules = rulesOf({
      rules: {
        velocity: [{ window: "1m", maxCount: 1, points: 40, shadow: true }],
        currencyMismatch: { points: 20, shadow: true },
        newAccount: { maxAge: "1d", points: 30, shadow: true },
      },
    });
    const e = evaluate(rules, facts({ windows: [{ count: 1, sumMinor: 0n }], accountCurrency: "EUR", accountAgeMs: 0 }));
    expect(e.reasons.map((r) => [r.code, r.shadow])).toEqual([
      ["VELOCITY_COUNT", true],
      ["CURRENCY_MISMATCH", true],
      ["NEW_ACCOUNT", true],
    ]);
    expect(e).toMatchObject({ score: 0, outcome: "APPROVE", shadowScore: 90, shadowOutcome: "DECLINE" });
  });

  it("mode: shadow makes every reason shadow: enforced outcome APPROVE, shadow outcome as if enforced", () => {
    const r = { amount: [{ over: "1.00", points: 60 }], currencyMismatch: { points: 25 } };
    const enforced = evaluate(rulesOf({ rules: r }), facts({ baseAmountMinor: 101n, accountCurrency: "EUR" }));
    const shadowMode = rulesOf({ mode: "shadow", rules: r });
    expect(shadowMode.shadowMode).toBe(true);
    const e = evaluate(shadowMode, facts({ baseAmountMinor: 101n, accountCurrency: "EUR" }));
    expect(e.reasons.every((x) => x.shadow)).toBe(true);
    expect(codes(e)).toEqual(codes(enforced));
    expect(e).toMatchObject({ score: 0, outcome: "APPROVE", shadowScore: 85, shadowOutcome: "DECLINE" });
    expect(enforced).toMatchObject({ score: 85, outcome: "DECLINE" });
  });

  it("mode: shadow also shadows the block list and fx failing closed", () => {
    const rules = rulesOf({ mode: "shadow", lists: { blockedAccounts: ["acc_b"] } });
    const blocked = evaluate(rules, facts({ accountId: "acc_b" }));
    expect(blocked.reasons).toEqual([expect.objectContaining({ code: "BLOCKLISTED", points: 99, shadow: true })]);
    expect(blocked).toMatchObject({ score: 0, outcome: "APPROVE", shadowScore: 99, shadowOutcome: "DECLINE" });
    const noFx = evaluate(rules, facts({ baseAmountMinor: undefined }));
    expect(noFx).toMatchObject({ outcome: "APPROVE", shadowOutcome: "DECLINE" });
  });
});

describe("fx unavailable", () => {
  const r = {
    amount: [{ over: "1.00", points: 30 }],
    velocity: [
      { window: "1m", maxCount: 1, points: 40 },
      { window: "1h", maxSum: "1.00", points: 40 },
    ],
    currencyMismatch: { points: 5 },
  };
  const noFx = facts({ currency: "EUR", accountCurrency: "GBP", baseAmountMinor: undefined, windows: [{ count: 1, sumMinor: 0n }, { count: 1, sumMinor: 10n ** 12n }] });

  it("fails closed by default: FX_UNAVAILABLE 99 -> DECLINE", () => {
    const rules = rulesOf({ rules: r });
    expect(rules.failClosedWithoutFx).toBe(true);
    const e = evaluate(rules, noFx);
    expect(e.reasons[0]).toEqual({ code: "FX_UNAVAILABLE", points: 99, message: expect.stringContaining("fail closed"), shadow: false });
    expect(codes(e)).not.toContain("AMOUNT_OVER_THRESHOLD");
    expect(codes(e)).not.toContain("VELOCITY_SUM");
    expect(e).toMatchObject({ score: 99, outcome: "DECLINE" });
    expect(evaluate(rulesOf({ fxUnavailable: "closed", rules: r }), noFx).outcome).toBe("DECLINE");
  });

  it("fails open when configured: FX_UNAVAILABLE 0 points, amount and sum rules skipped, count rules still apply", () => {
    const rules = rulesOf({ fxUnavailable: "open", rules: r });
    expect(rules.failClosedWithoutFx).toBe(false);
    const e = evaluate(rules, noFx);
    expect(e.reasons.map((x) => [x.code, x.points])).toEqual([
      ["FX_UNAVAILABLE", 0],
      ["VELOCITY_COUNT", 40],
      ["CURRENCY_MISMATCH", 5],
    ]);
    expect(e).toMatchObject({ score: 45, outcome: "APPROVE" });
    // The same facts with an amount known fire the amount and sum rules.
    const known = evaluate(rules, { ...noFx, baseAmountMinor: 1_000n });
    expect(codes(known)).toEqual(["AMOUNT_OVER_THRESHOLD", "VELOCITY_COUNT", "VELOCITY_SUM", "CURRENCY_MISMATCH"]);
  });
});

describe("rules version", () => {
  it("carries the declared version and a hash of the file text", () => {
    const text = stringify(doc({ version: "2031-01-01" }));
    const a = parseRuleSet(text);
    expect(a.version).toMatch(/^2031-01-01\+[0-9a-f]{8}$/);
    expect(parseRuleSet(text).version).toBe(a.version);
    // Any edit, even a comment, shows in the version.
    expect(parseRuleSet(`${text}# tweak\n`).version).not.toBe(a.version);
    expect(parseRuleSet(`${text}# tweak\n`).version.startsWith("2031-01-01+")).toBe(true);
    expect(parseRuleSet(text.replace("review: 50", "review: 51")).version).not.toBe(a.version);
  });

  it("the shipped rules.yaml loads", () => {
    const shipped = loadRuleSet();
    expect(shipped.version).toMatch(/^2026-11-01\+[0-9a-f]{8}$/);
    expect(shipped).toMatchObject({ baseCurrency: "USD", shadowMode: false, failClosedWithoutFx: true, review: 50, decline: 80 });
    expect(shipped.velocity.map((v) => v.maxCount ?? v.maxSum)).toEqual([10, "20000.00"]);
  });

  it("an unreadable file is a ConfigError naming RISK_RULES_FILE", () => {
    expect(() => loadRuleSet("/nonexistent/rules.yaml")).toThrow(ConfigError);
    expect(() => loadRuleSet("/nonexistent/rules.yaml")).toThrow(/RISK_RULES_FILE/);
  });
});

describe("invalid rule files are ConfigErrors naming the key", () => {
  it("an unknown top-level key", () => {
    const err = configErrorOf(stringify({ ...doc(), treshold: 3 }));
    expect(err.message).toMatch(/bad\.yaml/);
    expect(err.message).toMatch(/treshold/);
  });

  it("an unknown key inside a rule", () => {
    const err = configErrorOf(stringify(doc({ rules: { amount: [{ over: "1.00", point: 3 }] } })));
    expect(err.message).toMatch(/rules\.amount\.0/);
    expect(err.message).toMatch(/point/);
  });

  it('a bad duration "5 minutes"', () => {
    const err = configErrorOf(stringify(doc({ rules: { velocity: [{ window: "5 minutes", maxCount: 3, points: 1 }] } })));
    expect(err.message).toMatch(/rules\.velocity\.0\.window/);
    expect(err.message).toMatch(/duration/);
    const age = configErrorOf(stringify(doc({ rules: { newAccount: { maxAge: "1 day", points: 1 } } })));
    expect(age.message).toMatch(/rules\.newAccount\.maxAge/);
  });

  it("review above decline", () => {
    const err = configErrorOf(stringify(doc({ thresholds: { review: 81, decline: 80 } })));
    expect(err.message).toMatch(/thresholds/);
    expect(err.message).toMatch(/review/);
  });

  it("a threshold of 0 (a payment no rule fired on would not be approved)", () => {
    expect(configErrorOf(stringify(doc({ thresholds: { review: 0, decline: 80 } }))).message).toMatch(/thresholds\.review/);
    expect(configErrorOf(stringify(doc({ thresholds: { review: 0, decline: 0 } }))).message).toMatch(/thresholds\.decline/);
  });

  it("points out of 0..99", () => {
    expect(configErrorOf(stringify(doc({ thresholds: { review: 50, decline: 100 } }))).message).toMatch(/thresholds\.decline/);
    expect(configErrorOf(stringify(doc({ rules: { currencyMismatch: { points: -1 } } }))).message).toMatch(/rules\.currencyMismatch\.points/);
  });

  it("an unknown base currency", () => {
    const err = configErrorOf(stringify(doc({ baseCurrency: "XYZ" })));
    expect(err.message).toMatch(/baseCurrency/);
    expect(err.message).toMatch(/XYZ/);
  });

  it('more decimals than the base currency allows in "over" (and in maxSum)', () => {
    const err = configErrorOf(stringify(doc({ rules: { amount: [{ over: "1000.001", points: 1 }] } })));
    expect(err.message).toMatch(/rules\.amount\[0\]\.over/);
    expect(err.message).toMatch(/decimal/);
    const jpy = configErrorOf(stringify(doc({ baseCurrency: "JPY", rules: { velocity: [{ window: "1h", maxSum: "10.5", points: 1 }] } })));
    expect(jpy.message).toMatch(/rules\.velocity\[0\]\.maxSum/);
    // Trailing zeros are not extra precision.
    expect(rulesOf({ rules: { amount: [{ over: "1000.000", points: 1 }] } }).amount[0]!.overMinor).toBe(100_000n);
  });

  it("both maxCount and maxSum (and neither)", () => {
    const both = configErrorOf(stringify(doc({ rules: { velocity: [{ window: "1h", maxCount: 3, maxSum: "10.00", points: 1 }] } })));
    expect(both.message).toMatch(/rules\.velocity\.0/);
    expect(both.message).toMatch(/maxCount or maxSum/);
    const neither = configErrorOf(stringify(doc({ rules: { velocity: [{ window: "1h", points: 1 }] } })));
    expect(neither.message).toMatch(/maxCount or maxSum/);
  });

  it("YAML that does not parse, a duplicated key, an empty file", () => {
    expect(configErrorOf("version: [\n").message).toMatch(/bad\.yaml.*line \d/s);
    expect(configErrorOf(`${stringify(doc())}version: again\n`).message).toMatch(/unique/);
    expect(configErrorOf("").message).toMatch(/\(root\)/);
  });

  it("a missing version and a bad mode", () => {
    const { version: _, ...noVersion } = doc();
    expect(configErrorOf(stringify(noVersion)).message).toMatch(/version/);
    expect(configErrorOf(stringify(doc({ mode: "audit" }))).message).toMatch(/mode/);
    expect(configErrorOf(stringify(doc({ fxUnavailable: "maybe" }))).message).toMatch(/fxUnavailable/);
  });
});

describe("properties", () => {
  const outcomeRank: Record<Outcome, number> = { APPROVE: 0, REVIEW: 1, DECLINE: 2 };
  const pts = fc.integer({ min: 0, max: 99 });
  const ruleSetArb = fc
    .record({
      a: pts,
      b: pts,
      decline: fc.integer({ min: 1, max: 99 }),
      reviewBelow: fc.integer({ min: 1, max: 99 }),
      count: pts,
      sum: pts,
      mismatch: pts,
      fresh: pts,
      shadowFlags: fc.array(fc.boolean(), { minLength: 6, maxLength: 6 }),
      mode: fc.constantFrom("enforce", "shadow"),
      fxUnavailable: fc.constantFrom("closed", "open"),
    })
    .map((g) => {
      const s = (i: number) => g.shadowFlags[i] ?? false;
      return rulesOf({
        mode: g.mode,
        fxUnavailable: g.fxUnavailable,
        thresholds: { review: Math.min(g.reviewBelow, g.decline), decline: g.decline },
        lists: { blockedAccounts: ["acc_blocked"], allowedAccounts: ["acc_allowed"] },
        rules: {
          amount: [
            { over: "100.00", points: g.a, shadow: s(0) },
            { over: "5000.00", points: g.b, shadow: s(1) },
          ],
          velocity: [
            { window: "1m", maxCount: 3, points: g.count, shadow: s(2) },
            { window: "1h", maxSum: "10000.00", points: g.sum, shadow: s(3) },
          ],
          currencyMismatch: { points: g.mismatch, shadow: s(4) },
          newAccount: { maxAge: "1d", points: g.fresh, shadow: s(5) },
        },
      });
    });
  const factsArb: fc.Arbitrary<Facts> = fc.record({
    accountId: fc.constantFrom("acc_1", "acc_2", "acc_blocked", "acc_allowed"),
    currency: fc.constantFrom("USD", "EUR"),
    accountCurrency: fc.constantFrom("", "USD", "EUR"),
    baseAmountMinor: fc.option(fc.bigInt({ min: 1n, max: 10n ** 9n }), { nil: undefined }),
    accountAgeMs: fc.integer({ min: 0, max: 3 * DAY }),
    windows: fc.tuple(
      fc.record({ count: fc.integer({ min: 0, max: 6 }), sumMinor: fc.bigInt({ min: 0n, max: 10n ** 7n }) }),
      fc.record({ count: fc.integer({ min: 0, max: 6 }), sumMinor: fc.bigInt({ min: 0n, max: 10n ** 7n }) }),
    ),
  });

  it("score and shadow score stay within 0..99, match the reasons, and the outcome is monotonic in the score", () => {
    fc.assert(
      fc.property(ruleSetArb, fc.array(factsArb, { minLength: 1, maxLength: 15 }), (rules, many) => {
        const evals = many.map((f) => evaluate(rules, f));
        for (const e of evals) {
          for (const s of [e.score, e.shadowScore]) {
            expect(Number.isInteger(s)).toBe(true);
            expect(s).toBeGreaterThanOrEqual(0);
            expect(s).toBeLessThanOrEqual(99);
          }
          expect(e.score).toBe(Math.min(99, e.reasons.filter((r) => !r.shadow).reduce((n, r) => n + r.points, 0)));
          expect(e.shadowScore).toBe(Math.min(99, e.reasons.reduce((n, r) => n + r.points, 0)));
          expect(e.shadowScore).toBeGreaterThanOrEqual(e.score);
          if (rules.shadowMode) expect(e.outcome).toBe("APPROVE");
        }
        // Over every pair of evaluations (and of shadow scores), a higher score never gives a milder outcome.
        const points = evals.flatMap((e) => [
          [e.score, outcomeRank[e.outcome]],
          [e.shadowScore, outcomeRank[e.shadowOutcome]],
        ]);
        for (const [s1, o1] of points) for (const [s2, o2] of points) if (s1! <= s2!) expect(o1!).toBeLessThanOrEqual(o2!);
      }),
      { numRuns: 150 },
    );
  });

  it("outcome is exactly the threshold band of the score", () => {
    fc.assert(
      fc.property(pts, fc.integer({ min: 1, max: 99 }), fc.integer({ min: 1, max: 99 }), (p, x, y) => {
        const t = { review: Math.min(x, y), decline: Math.max(x, y) };
        const e = evaluate(scoring(p, t), facts({ baseAmountMinor: 101n }));
        const expected: Outcome = p >= t.decline ? "DECLINE" : p >= t.review ? "REVIEW" : "APPROVE";
        expect(e.score).toBe(p);
        expect(e.outcome).toBe(expected);
      }),
      { numRuns: 200 },
    );
  });
});
