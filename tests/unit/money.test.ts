import { describe, it, expect } from "vitest";
import fc from "fast-check";
import { Decimal as DecimalJs } from "decimal.js";
import { DomainError } from "../../services/runtime/errors.js";
import {
  allCurrencies,
  currencyInfo,
  formatMinor,
  MAX_MINOR,
  MIN_MINOR,
  money,
  numberToPlainDecimal,
  parseDecimalAmount,
  parseJsonAmount,
  readMoney,
  requirePositive,
} from "../../services/runtime/money/money.js";

// Independent exact oracle; plain (non-exponent) toString for any size we use.
const Oracle = DecimalJs.clone({ precision: 200, rounding: DecimalJs.ROUND_HALF_EVEN, toExpNeg: -1000, toExpPos: 1000 });

function domainError(fn: () => unknown): DomainError {
  try {
    fn();
  } catch (e) {
    if (e instanceof DomainError) return e;
    throw e;
  }
  throw new Error("expected a DomainError, nothing was thrown");
}

function expectInvalid(fn: () => unknown, reason: string, field: string): DomainError {
  const err = domainError(fn);
  expect(err.kind).toBe("invalid_argument");
  expect(err.reason).toBe(reason);
  expect(err.field).toBe(field);
  expect(err.message).toContain(field);
  return err;
}

const EXPONENTS: Record<string, number> = { JPY: 0, KRW: 0, USD: 2, EUR: 2, KWD: 3, BHD: 3, CLF: 4, UYW: 4 };
const currencyArb = fc.constantFrom(...Object.keys(EXPONENTS));

describe("currencyInfo", () => {
  it.each(Object.entries(EXPONENTS))("%s has exponent %i", (code, exp) => {
    expect(currencyInfo(code, "currency")).toMatchObject({ code, minorUnits: exp });
  });

  it("carries the ISO name", () => {
    expect(currencyInfo("USD", "currency").name).toBe("US Dollar");
    expect(currencyInfo("KWD", "currency").name).toBe("Kuwaiti Dinar");
  });

  it.each(["usd", "Usd", "US", "USDX", "", " USD", "U$D", "123"])("rejects malformed code %j", (code) => {
    const err = expectInvalid(() => currencyInfo(code, "amount.currency"), "UNKNOWN_CURRENCY", "amount.currency");
    expect(err.message).toContain(JSON.stringify(code));
    expect(err.message).toContain("3 upper-case letters");
  });

  it.each(["ABC", "QQQ", "EUX"])("rejects unknown code %s", (code) => {
    const err = expectInvalid(() => currencyInfo(code, "to_currency"), "UNKNOWN_CURRENCY", "to_currency");
    expect(err.message).toContain(`"${code}" is not an ISO 4217 currency code`);
  });

  // ISO 4217 lists these with minor unit "N.A."; currency-codes stores them as 0.
  it.each(["XAU", "XAG", "XPT", "XPD", "XDR", "XSU", "XUA", "XBA", "XTS", "XXX"])("rejects %s (no minor unit)", (code) => {
    const err = expectInvalid(() => currencyInfo(code, "amount.currency"), "UNKNOWN_CURRENCY", "amount.currency");
    expect(err.message).toContain("no minor unit");
  });

  it("keeps 0-decimal currencies that do have a minor unit (XAF, XOF, XPF)", () => {
    for (const code of ["XAF", "XOF", "XPF"]) expect(currencyInfo(code, "c").minorUnits).toBe(0);
  });

  it("truncates absurdly long input in the message", () => {
    const err = expectInvalid(() => currencyInfo("A".repeat(10_000), "c"), "UNKNOWN_CURRENCY", "c");
    expect(err.message.length).toBeLessThan(200);
  });
});

describe("allCurrencies", () => {
  const all = allCurrencies();

  it("is sorted by code, without duplicates", () => {
    for (let i = 1; i < all.length; i++) expect(all[i - 1]!.code < all[i]!.code).toBe(true);
  });

  it("holds tradable currencies and no code without a minor unit", () => {
    const codes = all.map((c) => c.code);
    expect(codes).toEqual(expect.arrayContaining(["USD", "EUR", "JPY", "KWD", "BHD", "CLF", "IDR"]));
    for (const code of ["XAU", "XDR", "XXX", "XTS"]) expect(codes).not.toContain(code);
    expect(all.length).toBeGreaterThan(150);
    for (const c of all) expect([0, 2, 3, 4]).toContain(c.minorUnits);
  });

  it("returns a copy", () => {
    allCurrencies().pop();
    expect(allCurrencies()).toHaveLength(all.length);
  });
});

describe("parseDecimalAmount", () => {
  it.each([
    ["123.45", "USD", 12345n],
    ["-1", "USD", -100n],
    ["0.5", "USD", 50n],
    ["0.05", "USD", 5n],
    ["1.230", "USD", 123n],
    ["1.20000000", "USD", 120n],
    ["0", "USD", 0n],
    ["-0", "USD", 0n],
    ["007.10", "USD", 710n],
    ["500", "JPY", 500n],
    ["500.000", "JPY", 500n],
    ["1.250", "KWD", 1250n],
    ["0.001", "BHD", 1n],
    ["-12.3", "BHD", -12300n],
    ["1.2345", "CLF", 12345n],
    ["0.0001", "UYW", 1n],
  ])("%s %s = %s minor", (text, currency, expected) => {
    expect(parseDecimalAmount(text, currency, "amount")).toBe(expected);
  });

  it.each([
    ["1.234", "USD", "2"],
    ["0.001", "USD", "2"],
    ["500.5", "JPY", "0"],
    ["1.2345", "KWD", "3"],
    ["0.00010", "BHD", "3"],
    ["1.23456", "CLF", "4"],
  ])("%s %s is TOO_MANY_DECIMALS (max %s)", (text, currency, max) => {
    const err = expectInvalid(() => parseDecimalAmount(text, currency, "amount.value"), "TOO_MANY_DECIMALS", "amount.value");
    expect(err.metadata).toEqual({ max_decimals: max });
    expect(err.message).toContain(currency);
  });

  it.each(["", " 1", "1 ", "+1", "1e2", "1E2", ".5", "5.", "1.2.3", "--1", "-", "1,50", "1_000", "0x10", "Infinity", "NaN", "١٢", "１２"])(
    "%j is INVALID_AMOUNT",
    (text) => {
      expectInvalid(() => parseDecimalAmount(text, "USD", "amount"), "INVALID_AMOUNT", "amount");
    },
  );

  it("checks the currency first, naming the currency field", () => {
    expectInvalid(() => parseDecimalAmount("1", "usd", "amount", "currency"), "UNKNOWN_CURRENCY", "currency");
    expectInvalid(() => parseDecimalAmount("1", "XAU", "amount", "body.currency"), "UNKNOWN_CURRENCY", "body.currency");
  });

  it("accepts exactly the int64 range of minor units", () => {
    expect(parseDecimalAmount("92233720368547758.07", "USD", "a")).toBe(MAX_MINOR);
    expect(parseDecimalAmount("-92233720368547758.08", "USD", "a")).toBe(MIN_MINOR);
    expectInvalid(() => parseDecimalAmount("92233720368547758.08", "USD", "a"), "AMOUNT_OUT_OF_RANGE", "a");
    expectInvalid(() => parseDecimalAmount("-9223372036854775809", "JPY", "a"), "AMOUNT_OUT_OF_RANGE", "a");
  });

  it("agrees with an exact oracle (property)", () => {
    const textArb = fc
      .tuple(fc.boolean(), fc.bigInt({ min: 0n, max: 10n ** 22n }), fc.nat({ max: 7 }), fc.nat({ max: 3 }))
      .map(([neg, digits, fracLen, trailingZeros]) => {
        const s = digits.toString().padStart(fracLen + 1, "0");
        const text = fracLen === 0 ? s : `${s.slice(0, -fracLen)}.${s.slice(-fracLen)}${"0".repeat(trailingZeros)}`;
        return (neg ? "-" : "") + text;
      });
    fc.assert(
      fc.property(textArb, currencyArb, (text, currency) => {
        const exact = new Oracle(text).times(new Oracle(10).pow(EXPONENTS[currency]!));
        if (!exact.isInteger()) {
          expect(domainError(() => parseDecimalAmount(text, currency, "f")).reason).toBe("TOO_MANY_DECIMALS");
          return;
        }
        const expected = BigInt(exact.toString().replace(/^-0$/, "0"));
        if (expected > MAX_MINOR || expected < MIN_MINOR) {
          expect(domainError(() => parseDecimalAmount(text, currency, "f")).reason).toBe("AMOUNT_OUT_OF_RANGE");
          return;
        }
        expect(parseDecimalAmount(text, currency, "f")).toBe(expected);
      }),
      { numRuns: 2000 },
    );
  });
});

describe("formatMinor", () => {
  it.each([
    [12345n, "USD", "123.45"],
    [-5n, "USD", "-0.05"],
    [0n, "USD", "0.00"],
    [-100n, "USD", "-1.00"],
    [500n, "JPY", "500"],
    [-7n, "JPY", "-7"],
    [1250n, "KWD", "1.250"],
    [1n, "BHD", "0.001"],
    [1n, "CLF", "0.0001"],
    [MIN_MINOR, "USD", "-92233720368547758.08"],
  ])("%s %s is %s", (amount, currency, expected) => {
    expect(formatMinor(amount, currency)).toBe(expected);
  });

  it("rejects an unknown currency", () => {
    expectInvalid(() => formatMinor(1n, "ZZZ"), "UNKNOWN_CURRENCY", "currency");
  });

  it("round-trips with parseDecimalAmount and equals the oracle value (property)", () => {
    fc.assert(
      fc.property(fc.bigInt({ min: MIN_MINOR, max: MAX_MINOR }), currencyArb, (amount, currency) => {
        const exp = EXPONENTS[currency]!;
        const text = formatMinor(amount, currency);
        expect(parseDecimalAmount(text, currency, "f")).toBe(amount);
        expect(new Oracle(text).eq(new Oracle(amount.toString()).div(new Oracle(10).pow(exp)))).toBe(true);
        // exactly `exp` fractional digits, no exponent, no '+'
        expect(text).toMatch(exp === 0 ? /^-?[0-9]+$/ : new RegExp(`^-?[0-9]+\\.[0-9]{${exp}}$`));
      }),
      { numRuns: 2000 },
    );
  });
});

describe("parseJsonAmount", () => {
  it("takes strings as parseDecimalAmount does", () => {
    expect(parseJsonAmount("123.45", "USD", "amount")).toBe(12345n);
    expectInvalid(() => parseJsonAmount("1.234", "USD", "amount"), "TOO_MANY_DECIMALS", "amount");
  });

  it.each([
    [123.45, "USD", 12345n],
    [0.1, "USD", 10n],
    [-0.05, "USD", -5n],
    [1.005, "USD", null], // TOO_MANY_DECIMALS, not 100.49999... or 101
    [100, "JPY", 100n],
    [1e2, "JPY", 100n],
    [1.25, "KWD", 1250n],
    [0.001, "BHD", 1n],
    [-0, "USD", 0n],
    [9007199254740.99, "USD", 900719925474099n],
  ])("number %s %s", (value, currency, expected) => {
    if (expected === null) {
      expectInvalid(() => parseJsonAmount(value, currency, "amount"), "TOO_MANY_DECIMALS", "amount");
    } else {
      expect(parseJsonAmount(value, currency, "amount")).toBe(expected);
    }
  });

  it("expands exponent forms exactly, then applies the usual rules", () => {
    const small = expectInvalid(() => parseJsonAmount(1e-7, "CLF", "amount"), "TOO_MANY_DECIMALS", "amount");
    expect(small.message).toContain("0.0000001");
    expectInvalid(() => parseJsonAmount(1e21, "JPY", "amount"), "AMOUNT_OUT_OF_RANGE", "amount");
    expectInvalid(() => parseJsonAmount(-2.5e30, "USD", "amount"), "AMOUNT_OUT_OF_RANGE", "amount");
  });

  it("rejects numbers a double cannot carry exactly", () => {
    const err = expectInvalid(() => parseJsonAmount(0.1 + 0.2, "USD", "amount"), "INVALID_AMOUNT", "amount");
    expect(err.message).toContain("string");
    expectInvalid(() => parseJsonAmount(2 ** 60, "JPY", "amount"), "INVALID_AMOUNT", "amount");
  });

  it.each([[NaN], [Infinity], [-Infinity], [true], [{}], [[1]], [12n]])("rejects %s", (value) => {
    expectInvalid(() => parseJsonAmount(value, "USD", "amount"), "INVALID_AMOUNT", "amount");
  });

  it.each([[undefined], [null]])("%s is MISSING_FIELD", (value) => {
    expectInvalid(() => parseJsonAmount(value, "USD", "amount"), "MISSING_FIELD", "amount");
  });

  it("numberToPlainDecimal expands exponents exactly", () => {
    expect(numberToPlainDecimal(1e-7)).toBe("0.0000001");
    expect(numberToPlainDecimal(-1.5e-9)).toBe("-0.0000000015");
    expect(numberToPlainDecimal(1e21)).toBe("1000000000000000000000");
    expect(numberToPlainDecimal(1.2345e25)).toBe("12345000000000000000000000");
    expect(numberToPlainDecimal(123.45)).toBe("123.45");
    expect(numberToPlainDecimal(-0)).toBe("0");
  });

  it("numberToPlainDecimal has the value of String(n) in plain notation (property)", () => {
    fc.assert(
      fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), (n) => {
        const plain = numberToPlainDecimal(n);
        expect(plain).toMatch(/^-?[0-9]+(\.[0-9]+)?$/);
        expect(new Oracle(plain).eq(new Oracle(String(n)))).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });

  it("numbers with at most 15 significant digits convert to the oracle's value (property)", () => {
    const arb = fc.tuple(fc.integer({ min: -(10 ** 15) + 1, max: 10 ** 15 - 1 }), fc.nat({ max: 6 }), currencyArb);
    fc.assert(
      fc.property(arb, ([digits, fracLen, currency]) => {
        const literal = new Oracle(digits).div(new Oracle(10).pow(fracLen)); // what the client typed
        const n = JSON.parse(literal.toString()) as number;
        const exact = literal.times(new Oracle(10).pow(EXPONENTS[currency]!));
        if (!exact.isInteger()) {
          expect(domainError(() => parseJsonAmount(n, currency, "f")).reason).toBe("TOO_MANY_DECIMALS");
        } else if (exact.abs().gt(MAX_MINOR.toString())) {
          expect(domainError(() => parseJsonAmount(n, currency, "f")).reason).toBe("AMOUNT_OUT_OF_RANGE");
        } else {
          expect(parseJsonAmount(n, currency, "f")).toBe(BigInt(exact.toString().replace(/^-0$/, "0")));
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe("requirePositive", () => {
  it("accepts positive amounts", () => {
    expect(() => requirePositive(1n, "amount.amount_minor")).not.toThrow();
  });

  it.each([[0n], [-1n], [MIN_MINOR]])("rejects %s", (amount) => {
    const err = expectInvalid(() => requirePositive(amount, "amount.amount_minor"), "NON_POSITIVE_AMOUNT", "amount.amount_minor");
    expect(err.message).toContain(amount.toString());
  });
});

describe("money / readMoney", () => {
  it("builds the proto message", () => {
    const m = money("USD", 12345n);
    expect(m.$typeName).toBe("paygate.common.v1.Money");
    expect(m.currency).toBe("USD");
    expect(m.amountMinor).toBe(12345n);
  });

  it("reads a valid Money, whatever its sign", () => {
    expect(readMoney(money("KWD", -1250n), "amount")).toEqual({ currency: "KWD", amountMinor: -1250n });
    expect(readMoney(money("JPY", 0n), "amount")).toEqual({ currency: "JPY", amountMinor: 0n });
  });

  it("requires presence", () => {
    const err = expectInvalid(() => readMoney(undefined, "amount"), "MISSING_FIELD", "amount");
    expect(err.message).toContain("required");
  });

  it.each(["", "usd", "XYZ", "XAU"])("rejects currency %j under <field>.currency", (currency) => {
    expectInvalid(() => readMoney(money(currency, 1n), "refund.amount"), "UNKNOWN_CURRENCY", "refund.amount.currency");
  });
});
