// Exact decimals for rates: value = mantissa × 10^-scale, scale a non-negative integer.
// Everything is bigint arithmetic; no float ever touches a value.
import { invalidArgument } from "../errors.js";

export interface Decimal {
  mantissa: bigint;
  scale: number;
}

/** half_even: ties to the even neighbour; half_up: ties away from zero; down: towards zero. */
export type RoundingMode = "half_even" | "half_up" | "down";

export const ZERO: Decimal = { mantissa: 0n, scale: 0 };
export const ONE: Decimal = { mantissa: 1n, scale: 0 };

export function pow10(n: number): bigint {
  checkScale(n);
  return 10n ** BigInt(n);
}

function checkScale(scale: number): void {
  if (!Number.isSafeInteger(scale) || scale < 0) throw new RangeError(`scale must be a non-negative integer, got ${scale}`);
}

// Plain notation only: optional '-', ASCII digits, optional '.' followed by digits.
const PLAIN_DECIMAL = /^(-?)([0-9]+)(?:\.([0-9]+))?$/;

/** Parses plain decimal notation ("-12.50"); no exponent, '+', spaces, ".5" or "5.". */
export function parseDecimal(text: string, field: string): Decimal {
  const m = PLAIN_DECIMAL.exec(text);
  if (!m) {
    throw invalidArgument(
      "INVALID_DECIMAL",
      field,
      `${field}: ${quote(text)} is not a decimal number (expected plain notation such as "1.0825" or "-3")`,
    );
  }
  const [, sign = "", int = "", frac = ""] = m;
  const mantissa = BigInt(int + frac);
  return normalize({ mantissa: sign === "-" ? -mantissa : mantissa, scale: frac.length });
}

/** Canonical text: no trailing fractional zeros, no exponent, "0" for zero. */
export function formatDecimal(d: Decimal): string {
  const { mantissa, scale } = normalize(d);
  const digits = (mantissa < 0n ? -mantissa : mantissa).toString();
  const sign = mantissa < 0n ? "-" : "";
  if (scale === 0) return sign + digits;
  const padded = digits.padStart(scale + 1, "0");
  return `${sign}${padded.slice(0, -scale)}.${padded.slice(-scale)}`;
}

/** Smallest scale with the same value (zero is {0n, 0}). */
export function normalize(d: Decimal): Decimal {
  checkScale(d.scale);
  if (d.mantissa === 0n) return ZERO;
  let { mantissa, scale } = d;
  while (scale > 0 && mantissa % 10n === 0n) {
    mantissa /= 10n;
    scale -= 1;
  }
  return { mantissa, scale };
}

export function mul(a: Decimal, b: Decimal): Decimal {
  return normalize({ mantissa: a.mantissa * b.mantissa, scale: a.scale + b.scale });
}

/** -1, 0 or 1 as a is less than, equal to or greater than b. */
export function compare(a: Decimal, b: Decimal): -1 | 0 | 1 {
  const scale = Math.max(a.scale, b.scale);
  const x = a.mantissa * pow10(scale - a.scale);
  const y = b.mantissa * pow10(scale - b.scale);
  return x < y ? -1 : x > y ? 1 : 0;
}

export function isPositive(d: Decimal): boolean {
  return d.mantissa > 0n;
}

/** The exact quotient numerator / denominator rounded to an integer. */
export function divideRounded(numerator: bigint, denominator: bigint, mode: RoundingMode): bigint {
  if (denominator === 0n) throw new RangeError("division by zero");
  if (denominator < 0n) {
    numerator = -numerator;
    denominator = -denominator;
  }
  const q = numerator / denominator; // truncates towards zero
  const r = numerator % denominator; // same sign as numerator
  if (r === 0n || mode === "down") return q;
  const away = numerator < 0n ? q - 1n : q + 1n;
  const twiceRemainder = 2n * (r < 0n ? -r : r);
  if (twiceRemainder > denominator) return away;
  if (twiceRemainder < denominator) return q;
  if (mode === "half_up") return away;
  return q % 2n === 0n ? q : away;
}

/** a / b rounded once to `scale` fractional digits. */
export function divRound(a: Decimal, b: Decimal, scale: number, mode: RoundingMode): Decimal {
  checkScale(scale);
  if (b.mantissa === 0n) throw new RangeError("division by zero");
  // (am·10^-as) / (bm·10^-bs) · 10^scale = am·10^(bs+scale) / (bm·10^as)
  const numerator = a.mantissa * pow10(b.scale + scale);
  const denominator = b.mantissa * pow10(a.scale);
  return { mantissa: divideRounded(numerator, denominator, mode), scale };
}

/** d rounded to `scale` fractional digits (exact when it already fits). */
export function roundToScale(d: Decimal, scale: number, mode: RoundingMode): Decimal {
  checkScale(scale);
  if (d.scale <= scale) return { mantissa: d.mantissa * pow10(scale - d.scale), scale };
  return { mantissa: divideRounded(d.mantissa, pow10(d.scale - scale), mode), scale };
}

/**
 * a / b rounded once to `digits` significant digits (the result is normalized).
 * Used for the inverse leg of a cross rate, where 1/x is generally not a finite decimal.
 */
export function divRoundSignificant(a: Decimal, b: Decimal, digits: number, mode: RoundingMode): Decimal {
  if (!Number.isSafeInteger(digits) || digits < 1) throw new RangeError(`digits must be a positive integer, got ${digits}`);
  if (b.mantissa === 0n) throw new RangeError("division by zero");
  if (a.mantissa === 0n) return ZERO;
  const abs = (x: bigint) => (x < 0n ? -x : x);
  // |a/b| = n / d with integers n, d.
  const n = abs(a.mantissa) * pow10(b.scale);
  const d = abs(b.mantissa) * pow10(a.scale);
  // e = floor(log10(n/d)): start from the digit-count estimate, which is e or e + 1.
  let e = n.toString().length - d.toString().length;
  if (compareScaledPowers(n, d, e) < 0) e -= 1;
  const scale = digits - 1 - e; // fractional digits that keep `digits` significant ones
  const sign = (a.mantissa < 0n) !== (b.mantissa < 0n) ? -1n : 1n;
  if (scale >= 0) {
    return normalize({ mantissa: sign * divideRounded(n * pow10(scale), d, mode), scale });
  }
  // Quotient has more integer digits than `digits`: round to a multiple of 10^-scale.
  const unit = pow10(-scale);
  return normalize({ mantissa: sign * divideRounded(n, d * unit, mode) * unit, scale: 0 });
}

// Sign of n/d − 10^e, for integers n, d > 0 and any integer e.
function compareScaledPowers(n: bigint, d: bigint, e: number): number {
  const lhs = e < 0 ? n * pow10(-e) : n;
  const rhs = e > 0 ? d * pow10(e) : d;
  return lhs < rhs ? -1 : lhs > rhs ? 1 : 0;
}

/** JSON-quoted, shortened user input for error messages. */
export function quote(text: string): string {
  return JSON.stringify(text.length > 40 ? `${text.slice(0, 40)}…` : text);
}
