import { describe, it, expect } from "vitest";
import fc from "fast-check";
import { Decimal as DecimalJs } from "decimal.js";
import { applySpread, convertMinor, crossRate, INVERSE_RATE_SIGNIFICANT_DIGITS } from "../../services/runtime/money/conversion.js";
import { formatDecimal, parseDecimal } from "../../services/runtime/money/decimal.js";
import type { Decimal, RoundingMode } from "../../services/runtime/money/decimal.js";
import { currencyInfo } from "../../services/runtime/money/money.js";

// Independent exact oracle: every product below has < 60 digits, far under 200.
const Oracle = DecimalJs.clone({ precision: 200, rounding: DecimalJs.ROUND_HALF_EVEN, toExpNeg: -1000, toExpPos: 1000 });
type OracleNum = InstanceType<typeof Oracle>;

const ORACLE_MODE: Record<RoundingMode, DecimalJs.Rounding> = {
  half_even: DecimalJs.ROUND_HALF_EVEN,
  half_up: DecimalJs.ROUND_HALF_UP,
  down: DecimalJs.ROUND_DOWN,
};
const modeArb = fc.constantFrom<RoundingMode>("half_even", "half_up", "down");

const toOracle = (d: Decimal): OracleNum => new Oracle(d.mantissa.toString()).div(new Oracle(10).pow(d.scale));
const canonical = (x: OracleNum): string => (x.isZero() ? "0" : x.toString());
const dec = (text: string) => parseDecimal(text, "rate");
const exp = (code: string) => currencyInfo(code, "currency").minorUnits;

// Positive rates with up to 12 fractional digits, from 10^-12 to ~10^6.
const rateArb = fc
  .record({ mantissa: fc.bigInt({ min: 1n, max: 10n ** 18n }), scale: fc.nat({ max: 12 }) })
  .map((d): Decimal => d);
const amountArb = fc.bigInt({ min: -(10n ** 15n), max: 10n ** 15n });
const currencyArb = fc.constantFrom("JPY", "KRW", "USD", "EUR", "KWD", "BHD", "CLF");

describe("convertMinor", () => {
  it("examples across exponents", () => {
    // 100.00 USD at 0.92 -> 92.00 EUR
    expect(convertMinor(10000n, exp("USD"), dec("0.92"), exp("EUR"), "half_even")).toEqual({
      convertedMinor: 9200n,
      residueMinor: { mantissa: 0n, scale: 0 },
    });
    // 1.00 USD at 151.237 JPY -> 151 JPY, residue 0.237 JPY
    const jpy = convertMinor(100n, exp("USD"), dec("151.237"), exp("JPY"), "half_even");
    expect(jpy.convertedMinor).toBe(151n);
    expect(formatDecimal(jpy.residueMinor)).toBe("0.237");
    // 500 JPY at 0.0066 -> 3.30 USD
    expect(convertMinor(500n, exp("JPY"), dec("0.0066"), exp("USD"), "half_even").convertedMinor).toBe(330n);
    // 10.00 USD at 0.30712 KWD -> 3.0712 KWD -> 3.071 KWD, residue 0.2 fils
    const kwd = convertMinor(1000n, exp("USD"), dec("0.30712"), exp("KWD"), "half_even");
    expect(kwd.convertedMinor).toBe(3071n);
    expect(formatDecimal(kwd.residueMinor)).toBe("0.2");
    // 1.000 KWD at 3.2561 USD -> 3.2561 USD -> 3.26 USD (half_up) / 3.25 (down)
    expect(convertMinor(1000n, exp("KWD"), dec("3.2561"), exp("USD"), "half_up").convertedMinor).toBe(326n);
    expect(convertMinor(1000n, exp("KWD"), dec("3.2561"), exp("USD"), "down").convertedMinor).toBe(325n);
    // 1 JPY at 200 -> 200.0000 CLF (exponent 4): exact, no residue
    expect(convertMinor(1n, exp("JPY"), dec("200"), exp("CLF"), "half_even").convertedMinor).toBe(2_000_000n);
  });

  it.each([
    // USD cents at rate 1 into JPY: 0.5, 1.5, 2.5, -2.5, -1.5 yen
    [50n, "half_even", 0n, "0.5"],
    [150n, "half_even", 2n, "-0.5"],
    [250n, "half_even", 2n, "0.5"],
    [-250n, "half_even", -2n, "-0.5"],
    [-150n, "half_even", -2n, "0.5"],
    [250n, "half_up", 3n, "-0.5"],
    [-250n, "half_up", -3n, "0.5"],
    [250n, "down", 2n, "0.5"],
    [-299n, "down", -2n, "-0.99"],
  ] as const)("tie/direction: %s USD cents (%s) -> %s JPY, residue %s", (amount, mode, converted, residue) => {
    const r = convertMinor(amount, 2, dec("1"), 0, mode);
    expect(r.convertedMinor).toBe(converted);
    expect(formatDecimal(r.residueMinor)).toBe(residue);
  });

  it("matches the oracle for every mode and currency pair, and accounts the residue (property)", () => {
    fc.assert(
      fc.property(amountArb, currencyArb, currencyArb, rateArb, modeArb, (amount, from, to, rate, mode) => {
        const r = convertMinor(amount, exp(from), rate, exp(to), mode);
        const exact = new Oracle(amount.toString()).times(toOracle(rate)).times(new Oracle(10).pow(exp(to) - exp(from)));
        expect(r.convertedMinor.toString()).toBe(canonical(exact.toDecimalPlaces(0, ORACLE_MODE[mode])));
        // residue identity: converted + residue == exact, nothing lost
        expect(new Oracle(r.convertedMinor.toString()).plus(toOracle(r.residueMinor)).eq(exact)).toBe(true);
        const residue = toOracle(r.residueMinor);
        if (mode === "down") {
          expect(residue.abs().lt(1)).toBe(true);
          expect(residue.isZero() || residue.isNegative() === exact.isNegative()).toBe(true);
        } else {
          expect(residue.abs().lte(0.5)).toBe(true);
        }
      }),
      { numRuns: 5000 },
    );
  });

  it("rejects non-positive rates and bad exponents", () => {
    expect(() => convertMinor(1n, 2, dec("0"), 2, "half_even")).toThrow(RangeError);
    expect(() => convertMinor(1n, 2, dec("-1.5"), 2, "half_even")).toThrow(RangeError);
    expect(() => convertMinor(1n, -1, dec("1"), 2, "half_even")).toThrow(RangeError);
  });
});

describe("crossRate", () => {
  it("uses 18 significant digits for the inverse leg", () => {
    expect(INVERSE_RATE_SIGNIFICANT_DIGITS).toBe(18);
  });

  it("FROM = base gives BASE->TO exactly", () => {
    expect(formatDecimal(crossRate(dec("1"), dec("15873.2512")))).toBe("15873.2512");
  });

  it("TO = base gives the rounded inverse", () => {
    // 1 / 0.92 = 1.08695652173913043|478...
    expect(formatDecimal(crossRate(dec("0.92"), dec("1")))).toBe("1.08695652173913043");
    // 1 / 3 rounded half-even to 18 significant digits
    expect(formatDecimal(crossRate(dec("3"), dec("1")))).toBe("0.333333333333333333");
    expect(formatDecimal(crossRate(dec("3"), dec("1"), 4))).toBe("0.3333");
  });

  it("rounds a tie in the inverse leg half-even", () => {
    // 1/8 = 0.125 -> 2 significant digits: 0.12 (half-up would give 0.13)
    expect(formatDecimal(crossRate(dec("8"), dec("1"), 2))).toBe("0.12");
    expect(formatDecimal(crossRate(dec("8"), dec("1"), 1))).toBe("0.1");
    expect(formatDecimal(crossRate(dec("0.16"), dec("1"), 2))).toBe("6.2"); // 6.25
    // 1/2^26 = 0.00000001490116119384765625: 19 significant digits ending in 5
    expect(formatDecimal(crossRate(dec("67108864"), dec("1")))).toBe("0.0000000149011611938476562");
  });

  it("cross = rounded inverse × BASE->TO, exact product", () => {
    // EUR->IDR with USD base: 1.08695652173913043 × 15873.2512
    expect(formatDecimal(crossRate(dec("0.92"), dec("15873.2512")))).toBe("17253.533913043478184954016");
  });

  it("equal legs (FROM = TO) give exactly 1", () => {
    expect(formatDecimal(crossRate(dec("0.92"), dec("0.92")))).toBe("1");
    expect(formatDecimal(crossRate(dec("3"), dec("3.000")))).toBe("1");
  });

  it("matches round-sig(1/a) × b from the oracle (property)", () => {
    const Sig = Oracle.clone({ precision: INVERSE_RATE_SIGNIFICANT_DIGITS, rounding: DecimalJs.ROUND_HALF_EVEN });
    // powers of 2 and 5 have finite inverses, some ending exactly on a tie
    const tieArb = fc.tuple(fc.nat({ max: 70 }), fc.nat({ max: 30 }), fc.nat({ max: 12 })).map(
      ([i, j, scale]): Decimal => ({ mantissa: 2n ** BigInt(i) * 5n ** BigInt(j), scale }),
    );
    fc.assert(
      fc.property(fc.oneof(rateArb, tieArb), rateArb, (a, b) => {
        const inverse = new Sig(1).div(new Sig(toOracle(a)));
        const expected = toOracle(a).eq(toOracle(b)) ? new Oracle(1) : new Oracle(inverse).times(toOracle(b));
        expect(formatDecimal(crossRate(a, b))).toBe(canonical(expected));
      }),
      { numRuns: 3000 },
    );
  });

  it("rejects non-positive legs", () => {
    expect(() => crossRate(dec("0"), dec("1"))).toThrow(RangeError);
    expect(() => crossRate(dec("1"), dec("-2"))).toThrow(RangeError);
  });
});

describe("applySpread", () => {
  it("examples", () => {
    expect(formatDecimal(applySpread(dec("1.2345"), 25))).toBe("1.23141375");
    expect(formatDecimal(applySpread(dec("15873.2512"), 0))).toBe("15873.2512");
    expect(formatDecimal(applySpread(dec("100"), 150))).toBe("98.5");
  });

  it("is exactly mid × (10000 − bps) / 10000 (property)", () => {
    fc.assert(
      fc.property(rateArb, fc.integer({ min: 0, max: 9999 }), (mid, bps) => {
        const expected = toOracle(mid).times(10000 - bps).div(10000);
        expect(formatDecimal(applySpread(mid, bps))).toBe(canonical(expected));
      }),
      { numRuns: 2000 },
    );
  });

  it("rejects out-of-range spreads", () => {
    for (const bps of [-1, 10000, 2.5, NaN]) expect(() => applySpread(dec("1"), bps)).toThrow(RangeError);
  });
});
