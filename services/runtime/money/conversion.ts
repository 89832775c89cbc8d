// FX maths: exact conversion with one rounding and an accounted residue, cross rates
// through the base currency, and the quote spread. Pure bigint arithmetic.
import { compare, divideRounded, divRoundSignificant, isPositive, mul, normalize, ONE, pow10 } from "./decimal.js";
import type { Decimal, RoundingMode } from "./decimal.js";

export interface Conversion {
  /** The result in target minor units, rounded once. */
  convertedMinor: bigint;
  /** Exact unrounded result minus convertedMinor, in target minor units (|residue| < 1). */
  residueMinor: Decimal;
}

/**
 * amountMinor (minor units, exponent fromExp) × rate, in minor units of exponent toExp:
 * exact = amountMinor × rate × 10^(toExp − fromExp), rounded once to an integer with `mode`.
 */
export function convertMinor(
  amountMinor: bigint,
  fromExp: number,
  rate: Decimal,
  toExp: number,
  mode: RoundingMode,
): Conversion {
  if (!isPositive(rate)) throw new RangeError("rate must be positive");
  const product = amountMinor * rate.mantissa;
  // exact = product × 10^-shift
  const shift = rate.scale + pow10Exponent(fromExp) - pow10Exponent(toExp);
  if (shift <= 0) return { convertedMinor: product * pow10(-shift), residueMinor: { mantissa: 0n, scale: 0 } };
  const convertedMinor = divideRounded(product, pow10(shift), mode);
  const residueMinor = normalize({ mantissa: product - convertedMinor * pow10(shift), scale: shift });
  return { convertedMinor, residueMinor };
}

function pow10Exponent(exp: number): number {
  if (!Number.isSafeInteger(exp) || exp < 0) throw new RangeError(`minor-unit exponent must be a non-negative integer, got ${exp}`);
  return exp;
}

/**
 * Significant digits kept in the inverse leg 1 / (BASE→FROM). With 18, the rounding moves
 * the rate by less than 5·10^-18 relative: under 0.005 minor units on 10^15 minor units.
 */
export const INVERSE_RATE_SIGNIFICANT_DIGITS = 18;

/**
 * The FROM→TO rate from the two legs quoted against the base currency (units of X per one
 * base unit). Rule, deterministic and documented for clients:
 *   FROM→BASE = 1 / baseToFrom, rounded half-even to `sigDigits` significant digits;
 *   FROM→TO   = FROM→BASE × baseToTo, exact (no second rounding).
 * Consequences: FROM = base (baseToFrom = 1) gives baseToTo exactly; TO = base gives the
 * rounded inverse; equal legs (FROM = TO, or two currencies at the same rate) give exactly 1,
 * which is the true cross rate.
 */
export function crossRate(baseToFrom: Decimal, baseToTo: Decimal, sigDigits = INVERSE_RATE_SIGNIFICANT_DIGITS): Decimal {
  if (!isPositive(baseToFrom) || !isPositive(baseToTo)) throw new RangeError("rates must be positive");
  if (compare(baseToFrom, baseToTo) === 0) return ONE;
  const fromToBase = divRoundSignificant(ONE, baseToFrom, sigDigits, "half_even");
  return mul(fromToBase, baseToTo);
}

/** Exact mid × (10000 − spreadBps) / 10000: the rate the customer gets after the spread. */
export function applySpread(mid: Decimal, spreadBps: number): Decimal {
  if (!Number.isSafeInteger(spreadBps) || spreadBps < 0 || spreadBps >= 10_000) {
    throw new RangeError(`spread must be an integer number of basis points in [0, 10000), got ${spreadBps}`);
  }
  return mul(mid, { mantissa: BigInt(10_000 - spreadBps), scale: 4 });
}
