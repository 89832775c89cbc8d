import { describe, it, expect } from "vitest";
import fc from "fast-check";
import { Decimal as DecimalJs } from "decimal.js";
import { DomainError } from "../../services/runtime/errors.js";
import {
  compare,
  divideRounded,
  divRound,
  divRoundSignificant,
  formatDecimal,
  isPositive,
  mul,
  normalize,
  parseDecimal,
  roundToScale,
} from "../../services/runtime/money/decimal.js";
import type { Decimal, RoundingMode } from "../../services/runtime/money/decimal.js";

// Independent exact oracle. 200 significant digits is far more than any operand here has
// (< 60 digits), so a quotient that is not a tie can never be rounded into one.
const Oracle = DecimalJs.clone({ precision: 200, rounding: DecimalJs.ROUND_HALF_EVEN, toExpNeg: -1000, toExpPos: 1000 });
type OracleNum = InstanceType<typeof Oracle>;

const ORACLE_MODE: Record<RoundingMode, DecimalJs.Rounding> = {
  half_even: DecimalJs.ROUND_HALF_EVEN,
  half_up: DecimalJs.ROUND_HALF_UP, // decimal.js HALF_UP = ties away from zero
  down: DecimalJs.ROUND_DOWN,
};
const MODES: RoundingMode[] = ["half_even", "half_up", "down"];
const modeArb = fc.constantFrom(...MODES);

const toOracle = (d: Decimal): OracleNum => new Oracle(d.mantissa.toString()).div(new Oracle(10).pow(d.scale));
const canonical = (x: OracleNum): string => (x.isZero() ? "0" : x.toString());

const decimalArb = (maxDigits = 10n ** 24n, maxScale = 15) =>
  fc.record({ mantissa: fc.bigInt({ min: -maxDigits, max: maxDigits }), scale: fc.nat({ max: maxScale }) });
const nonZeroDecimalArb = decimalArb().filter((d) => d.mantissa !== 0n);

function domainError(fn: () => unknown): DomainError {
  try {
    fn();
  } catch (e) {
    if (e instanceof DomainError) return e;
    throw e;
  }
  throw new Error("expected a DomainError, nothing was thrown");
}

describe("parseDecimal / formatDecimal", () => {
  it.each([
    ["1.0825", 10825n, 4],
    ["-3", -3n, 0],
    ["15873.2512", 158732512n, 4],
    ["1.2300", 123n, 2],
    ["0.000", 0n, 0],
    ["-0", 0n, 0],
    ["007", 7n, 0],
  ])("parses %s", (text, mantissa, scale) => {
    expect(parseDecimal(text, "rate")).toEqual({ mantissa, scale });
  });

  it.each(["", " 1", "1 ", "+1", "1e5", "1E-3", ".5", "5.", "1.2.3", "--1", "1,5", "abc", "Infinity", "0x1"])(
    "rejects %j with INVALID_DECIMAL naming the field",
    (text) => {
      const err = domainError(() => parseDecimal(text, "quote.mid_rate"));
      expect(err.kind).toBe("invalid_argument");
      expect(err.reason).toBe("INVALID_DECIMAL");
      expect(err.field).toBe("quote.mid_rate");
      expect(err.message).toContain("quote.mid_rate");
    },
  );

  it.each([
    [{ mantissa: 12300n, scale: 4 }, "1.23"],
    [{ mantissa: 0n, scale: 7 }, "0"],
    [{ mantissa: -125n, scale: 1 }, "-12.5"],
    [{ mantissa: 1n, scale: 3 }, "0.001"],
    [{ mantissa: -1n, scale: 3 }, "-0.001"],
    [{ mantissa: 100n, scale: 0 }, "100"],
    [{ mantissa: 10n ** 30n, scale: 0 }, "1000000000000000000000000000000"],
  ])("formats %o as %s", (d, text) => {
    expect(formatDecimal(d)).toBe(text);
  });

  it("formats like the oracle and round-trips (property)", () => {
    fc.assert(
      fc.property(decimalArb(), (d) => {
        const text = formatDecimal(d);
        expect(text).toBe(canonical(toOracle(d)));
        expect(parseDecimal(text, "f")).toEqual(normalize(d));
      }),
      { numRuns: 2000 },
    );
  });

  it("parses any plain decimal text to the oracle's value (property)", () => {
    const textArb = fc
      .tuple(fc.boolean(), fc.stringMatching(/^[0-9]{1,25}$/), fc.option(fc.stringMatching(/^[0-9]{1,20}$/)))
      .map(([neg, int, frac]) => `${neg ? "-" : ""}${int}${frac === null ? "" : `.${frac}`}`);
    fc.assert(
      fc.property(textArb, (text) => {
        const d = parseDecimal(text, "f");
        expect(toOracle(d).eq(new Oracle(text))).toBe(true);
        expect(d).toEqual(normalize(d));
      }),
      { numRuns: 2000 },
    );
  });
});

describe("normalize / mul / compare / isPositive", () => {
  it("normalize strips trailing zeros and keeps the value", () => {
    expect(normalize({ mantissa: 1500n, scale: 3 })).toEqual({ mantissa: 15n, scale: 1 });
    expect(normalize({ mantissa: 1500n, scale: 0 })).toEqual({ mantissa: 1500n, scale: 0 });
    expect(normalize({ mantissa: 0n, scale: 9 })).toEqual({ mantissa: 0n, scale: 0 });
  });

  it("mul is exact (property)", () => {
    fc.assert(
      fc.property(decimalArb(), decimalArb(), (a, b) => {
        expect(formatDecimal(mul(a, b))).toBe(canonical(toOracle(a).times(toOracle(b))));
      }),
      { numRuns: 2000 },
    );
  });

  it("compare agrees with the oracle (property)", () => {
    const close = fc.tuple(decimalArb(10n ** 6n, 4), fc.nat({ max: 4 })).map(([d, extra]) => [d, { mantissa: d.mantissa * 10n ** BigInt(extra), scale: d.scale + extra }] as const);
    fc.assert(
      fc.property(fc.oneof(fc.tuple(decimalArb(), decimalArb()), close), ([a, b]) => {
        expect(compare(a, b)).toBe(toOracle(a).comparedTo(toOracle(b)));
      }),
      { numRuns: 2000 },
    );
    expect(compare({ mantissa: 10n, scale: 1 }, { mantissa: 1n, scale: 0 })).toBe(0);
  });

  it("isPositive", () => {
    expect(isPositive({ mantissa: 1n, scale: 20 })).toBe(true);
    expect(isPositive({ mantissa: 0n, scale: 0 })).toBe(false);
    expect(isPositive({ mantissa: -1n, scale: 0 })).toBe(false);
  });
});

describe("divideRounded", () => {
  it.each([
    // half_even ties go to the even neighbour
    [1n, 2n, "half_even", 0n],
    [3n, 2n, "half_even", 2n],
    [5n, 2n, "half_even", 2n],
    [7n, 2n, "half_even", 4n],
    [-1n, 2n, "half_even", 0n],
    [-3n, 2n, "half_even", -2n],
    [-5n, 2n, "half_even", -2n],
    [5n, -2n, "half_even", -2n],
    [-5n, -2n, "half_even", 2n],
    // half_up: ties away from zero
    [1n, 2n, "half_up", 1n],
    [5n, 2n, "half_up", 3n],
    [-5n, 2n, "half_up", -3n],
    [-1n, 2n, "half_up", -1n],
    // down: towards zero
    [7n, 2n, "down", 3n],
    [-7n, 2n, "down", -3n],
    [19n, 10n, "down", 1n],
    [-19n, 10n, "down", -1n],
    // not ties
    [-26n, 10n, "half_even", -3n],
    [-24n, 10n, "half_up", -2n],
    [26n, 10n, "half_up", 3n],
    [6n, 3n, "half_even", 2n],
    [0n, 7n, "half_up", 0n],
  ] as const)("%s / %s (%s) = %s", (n, d, mode, q) => {
    expect(divideRounded(n, d, mode)).toBe(q);
  });

  it("rejects division by zero", () => {
    expect(() => divideRounded(1n, 0n, "half_even")).toThrow(RangeError);
  });

  it("agrees with the oracle (property)", () => {
    const big = fc.bigInt({ min: -(10n ** 30n), max: 10n ** 30n });
    const tieFriendly = fc.tuple(fc.bigInt({ min: -(10n ** 12n), max: 10n ** 12n }), fc.constantFrom(2n, -2n, 10n, 4n, 20n, -1000n));
    fc.assert(
      fc.property(fc.oneof(fc.tuple(big, big.filter((d) => d !== 0n)), tieFriendly), modeArb, ([n, d], mode) => {
        const expected = new Oracle(n.toString()).div(d.toString()).toDecimalPlaces(0, ORACLE_MODE[mode]);
        expect(divideRounded(n, d, mode).toString()).toBe(canonical(expected));
      }),
      { numRuns: 3000 },
    );
  });
});

describe("divRound / roundToScale / divRoundSignificant", () => {
  it("examples", () => {
    expect(formatDecimal(divRound(parseDecimal("1", "a"), parseDecimal("3", "b"), 4, "half_even"))).toBe("0.3333");
    expect(formatDecimal(divRound(parseDecimal("2", "a"), parseDecimal("3", "b"), 4, "down"))).toBe("0.6666");
    expect(divRound(parseDecimal("1", "a"), parseDecimal("8", "b"), 2, "half_even")).toEqual({ mantissa: 12n, scale: 2 });
    expect(divRound(parseDecimal("1", "a"), parseDecimal("8", "b"), 2, "half_up")).toEqual({ mantissa: 13n, scale: 2 });
    expect(roundToScale(parseDecimal("2.5", "a"), 0, "half_even")).toEqual({ mantissa: 2n, scale: 0 });
    expect(roundToScale(parseDecimal("-2.5", "a"), 0, "half_even")).toEqual({ mantissa: -2n, scale: 0 });
    expect(roundToScale(parseDecimal("1.5", "a"), 0, "half_even")).toEqual({ mantissa: 2n, scale: 0 });
    expect(roundToScale(parseDecimal("0.5", "a"), 0, "half_even")).toEqual({ mantissa: 0n, scale: 0 });
    expect(roundToScale(parseDecimal("1.2", "a"), 3, "down")).toEqual({ mantissa: 1200n, scale: 3 });
    expect(formatDecimal(divRoundSignificant(parseDecimal("1", "a"), parseDecimal("3", "b"), 5, "half_even"))).toBe("0.33333");
    expect(formatDecimal(divRoundSignificant(parseDecimal("2", "a"), parseDecimal("3", "b"), 5, "half_even"))).toBe("0.66667");
    expect(formatDecimal(divRoundSignificant(parseDecimal("123456789", "a"), parseDecimal("1", "b"), 3, "half_even"))).toBe("123000000");
    expect(formatDecimal(divRoundSignificant(parseDecimal("1", "a"), parseDecimal("0.001", "b"), 2, "half_even"))).toBe("1000");
    expect(formatDecimal(divRoundSignificant(parseDecimal("-1", "a"), parseDecimal("16", "b"), 2, "half_even"))).toBe("-0.062");
    expect(formatDecimal(divRoundSignificant(parseDecimal("9.9996", "a"), parseDecimal("1", "b"), 4, "half_even"))).toBe("10");
  });

  it("divRound agrees with the oracle (property)", () => {
    fc.assert(
      fc.property(decimalArb(), nonZeroDecimalArb, fc.nat({ max: 20 }), modeArb, (a, b, scale, mode) => {
        const q = divRound(a, b, scale, mode);
        expect(q.scale).toBe(scale);
        const expected = toOracle(a).div(toOracle(b)).toDecimalPlaces(scale, ORACLE_MODE[mode]);
        expect(formatDecimal(q)).toBe(canonical(expected));
      }),
      { numRuns: 2000 },
    );
  });

  it("roundToScale agrees with the oracle (property)", () => {
    fc.assert(
      fc.property(decimalArb(), fc.nat({ max: 18 }), modeArb, (d, scale, mode) => {
        const r = roundToScale(d, scale, mode);
        expect(r.scale).toBe(scale);
        expect(formatDecimal(r)).toBe(canonical(toOracle(d).toDecimalPlaces(scale, ORACLE_MODE[mode])));
      }),
      { numRuns: 2000 },
    );
  });

  it("divRoundSignificant agrees with the oracle (property)", () => {
    fc.assert(
      fc.property(decimalArb(), nonZeroDecimalArb, fc.integer({ min: 1, max: 25 }), modeArb, (a, b, digits, mode) => {
        const SigOracle = Oracle.clone({ precision: digits, rounding: ORACLE_MODE[mode] });
        const expected = new SigOracle(toOracle(a)).div(new SigOracle(toOracle(b)));
        expect(formatDecimal(divRoundSignificant(a, b, digits, mode))).toBe(canonical(expected));
      }),
      { numRuns: 2000 },
    );
  });

  it("reject bad arguments", () => {
    const one = parseDecimal("1", "a");
    expect(() => divRound(one, parseDecimal("0", "b"), 2, "half_even")).toThrow(RangeError);
    expect(() => divRound(one, one, -1, "half_even")).toThrow(RangeError);
    expect(() => roundToScale(one, 1.5, "half_even")).toThrow(RangeError);
    expect(() => divRoundSignificant(one, one, 0, "half_even")).toThrow(RangeError);
  });
});
