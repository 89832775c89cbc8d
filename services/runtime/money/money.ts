// Exact money: integer minor units (bigint), ISO 4217 exponents from the `currency-codes`
// package. No float ever carries an amount.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { create } from "@bufbuild/protobuf";
import { data as isoCurrencies } from "currency-codes";
import { MoneySchema } from "../../gen/paygate/common/v1/common_pb.js";
import type { Money } from "../../gen/paygate/common/v1/common_pb.js";
import { quote } from "./decimal.js";
import { invalidArgument } from "../errors.js";

export interface CurrencyInfo {
  code: string;
  name: string;
  /** Minor-unit exponent: 0 for JPY, 2 for USD, 3 for KWD, 4 for CLF. */
  minorUnits: number;
}

/** Range of a proto int64, which carries every amount on the wire. */
export const MIN_MINOR = -(2n ** 63n);
export const MAX_MINOR = 2n ** 63n - 1n;

// currency-codes 2.2.0 turns ISO's "N.A." minor unit (gold, SDR, bond units, XXX, XTS...)
// into 0, which would make XAU look like a 0-decimal currency. The ISO list it was built
// from ships in the same package, so read which codes have no minor unit from there.
function codesWithoutMinorUnit(): Set<string> {
  const path = createRequire(import.meta.url).resolve("currency-codes/iso-4217-list-one.xml");
  const xml = readFileSync(path, "utf8");
  const codes = new Set<string>();
  for (const [, entry = ""] of xml.matchAll(/<CcyNtry>([\s\S]*?)<\/CcyNtry>/g)) {
    const code = /<Ccy>([^<]*)<\/Ccy>/.exec(entry)?.[1];
    const units = /<CcyMnrUnts>([^<]*)<\/CcyMnrUnts>/.exec(entry)?.[1];
    if (code && !/^[0-9]+$/.test(units ?? "")) codes.add(code);
  }
  if (codes.size === 0) throw new Error(`no currency without minor unit found in ${path}; ISO 4217 list format changed?`);
  return codes;
}

const noMinorUnit = codesWithoutMinorUnit();
const known = new Set(isoCurrencies.map((c) => c.code));
const currencies = new Map<string, CurrencyInfo>(
  isoCurrencies
    .filter((c) => Number.isInteger(c.digits) && c.digits >= 0 && !noMinorUnit.has(c.code))
    .map((c) => [c.code, Object.freeze({ code: c.code, name: c.currency, minorUnits: c.digits })]),
);
const sortedCurrencies = [...currencies.values()].sort((a, b) => (a.code < b.code ? -1 : a.code > b.code ? 1 : 0));

/** The ISO 4217 currency `code`; UNKNOWN_CURRENCY (naming `field`) if it cannot hold amounts. */
export function currencyInfo(code: string, field: string): CurrencyInfo {
  const info = currencies.get(code);
  if (info) return info;
  let why: string;
  if (!/^[A-Z]{3}$/.test(code)) why = "is not an ISO 4217 currency code (expected 3 upper-case letters, e.g. \"USD\")";
  else if (!known.has(code)) why = "is not an ISO 4217 currency code";
  else why = "has no minor unit in ISO 4217 (metals, funds and special codes cannot hold amounts)";
  throw invalidArgument("UNKNOWN_CURRENCY", field, `${field}: ${quote(code)} ${why}`);
}

/** Every ISO 4217 currency with a minor-unit exponent, sorted by code. */
export function allCurrencies(): CurrencyInfo[] {
  return [...sortedCurrencies];
}

// Plain notation only: optional '-', ASCII digits, optional '.' followed by at least one
// digit. Rejected: empty, spaces, '+', exponents, ".5", "5.", separators. Leading zeros
// ("007.50") are unambiguous and accepted.
const PLAIN_AMOUNT = /^(-?)([0-9]+)(?:\.([0-9]+))?$/;

/**
 * Exact decimal text ("123.45") in `currency` to minor units. Extra fractional digits are
 * TOO_MANY_DECIMALS unless they are zeros ("1.230" USD is 123); never rounds.
 * `currencyField` names the currency in an UNKNOWN_CURRENCY error.
 */
export function parseDecimalAmount(text: string, currency: string, field: string, currencyField = "currency"): bigint {
  const { code, minorUnits } = currencyInfo(currency, currencyField);
  const m = PLAIN_AMOUNT.exec(text);
  if (!m) {
    throw invalidArgument(
      "INVALID_AMOUNT",
      field,
      `${field}: ${quote(text)} is not a decimal amount (expected e.g. "123.45" or "-1": digits, an optional leading '-', an optional '.' fraction)`,
    );
  }
  const [, sign = "", int = "", rawFrac = ""] = m;
  const frac = rawFrac.replace(/0+$/, "");
  if (frac.length > minorUnits) {
    throw invalidArgument(
      "TOO_MANY_DECIMALS",
      field,
      `${field}: ${quote(text)} has ${frac.length} decimal place${frac.length === 1 ? "" : "s"} but ${code} allows at most ${minorUnits}`,
      { max_decimals: String(minorUnits) },
    );
  }
  const magnitude = BigInt(int + frac.padEnd(minorUnits, "0"));
  const amount = sign === "-" ? -magnitude : magnitude;
  if (amount < MIN_MINOR || amount > MAX_MINOR) {
    throw invalidArgument(
      "AMOUNT_OUT_OF_RANGE",
      field,
      `${field}: ${quote(text)} ${code} is outside the representable range (a signed 64-bit number of minor units)`,
      { min_minor: MIN_MINOR.toString(), max_minor: MAX_MINOR.toString() },
    );
  }
  return amount;
}

/** A double survives decimal → double → decimal only up to 15 significant digits. */
export const MAX_JSON_NUMBER_DIGITS = 15;

/**
 * An amount from a JSON body: a decimal string, or a JSON number taken as its shortest
 * round-trip decimal (what String(n) prints, exponent expanded exactly). A number with more
 * than 15 significant digits is rejected: the client's digits may already be lost, so it
 * must send a string.
 */
export function parseJsonAmount(value: unknown, currency: string, field: string, currencyField = "currency"): bigint {
  if (typeof value === "string") return parseDecimalAmount(value, currency, field, currencyField);
  if (value === undefined || value === null) throw invalidArgument("MISSING_FIELD", field, `${field} is required`);
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw invalidArgument(
      "INVALID_AMOUNT",
      field,
      `${field}: expected a decimal string or a JSON number, got ${typeof value === "number" ? String(value) : typeof value}`,
    );
  }
  const text = numberToPlainDecimal(value);
  const significant = text.replace(/^-/, "").replace(".", "").replace(/^0+/, "").replace(/0+$/, "");
  if (significant.length > MAX_JSON_NUMBER_DIGITS) {
    throw invalidArgument(
      "INVALID_AMOUNT",
      field,
      `${field}: the JSON number ${String(value)} has more than ${MAX_JSON_NUMBER_DIGITS} significant digits and cannot be taken exactly; send the amount as a string`,
    );
  }
  return parseDecimalAmount(text, currency, field, currencyField);
}

/**
 * The shortest round-trip decimal of a finite number in plain notation: String(n) with any
 * exponent ("1e-7", "1.5e+21") expanded by moving the decimal point (string work, no maths).
 */
export function numberToPlainDecimal(n: number): string {
  if (!Number.isFinite(n)) throw new RangeError(`not a finite number: ${n}`);
  const text = String(n); // "-0" prints as "0"
  const m = /^(-?)([0-9]+)(?:\.([0-9]+))?e([+-][0-9]+)$/.exec(text);
  if (!m) return text;
  const [, sign = "", int = "", frac = "", exp = "0"] = m;
  const digits = int + frac;
  const point = int.length + Number.parseInt(exp, 10); // position of '.' within `digits`
  let plain: string;
  if (point <= 0) plain = `0.${"0".repeat(-point)}${digits}`;
  else if (point >= digits.length) plain = digits + "0".repeat(point - digits.length);
  else plain = `${digits.slice(0, point)}.${digits.slice(point)}`;
  return sign + plain;
}

/** Minor units as decimal text with exactly the currency's exponent: "123.45", "-0.05", "500" (JPY), "1.250" (KWD). */
export function formatMinor(amountMinor: bigint, currency: string): string {
  const { minorUnits } = currencyInfo(currency, "currency");
  const sign = amountMinor < 0n ? "-" : "";
  const digits = (amountMinor < 0n ? -amountMinor : amountMinor).toString();
  if (minorUnits === 0) return sign + digits;
  const padded = digits.padStart(minorUnits + 1, "0");
  return `${sign}${padded.slice(0, -minorUnits)}.${padded.slice(-minorUnits)}`;
}

export function requirePositive(amountMinor: bigint, field: string): void {
  if (amountMinor <= 0n) {
    throw invalidArgument(
      "NON_POSITIVE_AMOUNT",
      field,
      `${field}: amount must be greater than zero, got ${amountMinor} minor units`,
    );
  }
}

/** The proto Money message. */
export function money(currency: string, amountMinor: bigint): Money {
  return create(MoneySchema, { currency, amountMinor });
}

/** A request's Money: present, with an ISO 4217 currency. The sign is the caller's business. */
export function readMoney(m: Money | undefined, field: string): { currency: string; amountMinor: bigint } {
  if (!m) throw invalidArgument("MISSING_FIELD", field, `${field} is required`);
  const { code } = currencyInfo(m.currency, `${field}.currency`);
  return { currency: code, amountMinor: m.amountMinor };
}
