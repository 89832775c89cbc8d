// FxService in memory: the real implementation (fxService) on a still SimulatedMarket and a
// QuoteStore on in-memory PGlite, with a clock the tests move, called through Connect's
// router transport (no network) with the server's own error-mapping interceptor.
// Expected numbers come from an independent oracle: the reference snapshot JSON read here,
// the documented cross rule, and decimal.js.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import fc from "fast-check";
import { Decimal } from "decimal.js";
import { data as isoData } from "currency-codes";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { DurationSchema, timestampDate, type Duration } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createRouterTransport, type Client, type ServiceImpl } from "@connectrpc/connect";
import { ErrorDetailSchema } from "../../services/gen/paygate/common/v1/common_pb.js";
import {
  FxService,
  QuoteStatus,
  RoundingMode,
  ConvertRequestSchema,
  type ConvertResponse,
  type Quote,
  type StreamRatesResponse,
} from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { fxService } from "../../services/fx/service.js";
import { loadReferenceSnapshot, SimulatedMarket, type MarketState } from "../../services/fx/market.js";
import { QuoteStore } from "../../services/fx/quotes.js";
import { openDatabase, type Database } from "../../services/runtime/db/database.js";
import { migrate } from "../../services/runtime/db/migrate.js";
import { errorMapping } from "../../services/runtime/rpc/interceptors.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { formatDecimal } from "../../services/runtime/money/decimal.js";
import { rejectionOf } from "../support/wire.js";

// ---------------------------------------------------------------------------------------
// Independent oracle
// ---------------------------------------------------------------------------------------

/** Plenty of precision: every product and sum here is exact. */
const D = Decimal.clone({ precision: 1000, rounding: Decimal.ROUND_HALF_EVEN, toExpNeg: -9e15, toExpPos: 9e15 });
type Dec = InstanceType<typeof D>;
/** The documented inverse leg: 1 / (BASE->FROM) rounded half-even to 18 significant digits. */
const D18 = Decimal.clone({ precision: 18, rounding: Decimal.ROUND_HALF_EVEN, toExpNeg: -9e15, toExpPos: 9e15 });

interface SnapshotJson {
  base: string;
  date: string;
  rates: Record<string, string>;
  usdPegs: Record<string, string>;
  approximate: Record<string, string>;
}
const snapshotJson = JSON.parse(readFileSync(new URL("../../services/fx/data/reference-rates.json", import.meta.url), "utf8")) as SnapshotJson;

/** Units per one base unit, straight from the JSON: floating rates, approximate ones, USD pegs. */
function referenceMids(): Map<string, Dec> {
  const mids = new Map<string, Dec>([[snapshotJson.base, new D(1)]]);
  for (const [code, text] of Object.entries({ ...snapshotJson.rates, ...snapshotJson.approximate })) mids.set(code, new D(text));
  const usd = mids.get("USD");
  if (!usd) throw new Error("snapshot has no USD");
  for (const [code, peg] of Object.entries(snapshotJson.usdPegs)) mids.set(code, usd.mul(peg));
  return mids;
}
const REF = referenceMids();
const TRADABLE = [...REF.keys()].sort();
const SNAPSHOT_AS_OF = new Date(`${snapshotJson.date}T00:00:00Z`);

/** FROM->TO by the documented rule: equal legs give 1; else round(1/baseToFrom, 18 sig) x baseToTo, exact. */
function oracleCross(mids: ReadonlyMap<string, Dec>, from: string, to: string): Dec {
  const a = mids.get(from);
  const b = mids.get(to);
  if (!a || !b) throw new Error(`no oracle rate for ${from}/${to}`);
  if (a.eq(b)) return new D(1);
  return new D(new D18(1).div(a)).mul(b);
}

/** Exponents from the ISO data package directly (the service also reads it, through its own code). */
const exponentOf = (code: string): number => {
  const rec = isoData.find((c) => c.code === code);
  if (!rec) throw new Error(`no ISO data for ${code}`);
  return rec.digits;
};

const MAX_INT64 = (2n ** 63n - 1n).toString();

const decimalModes = {
  [RoundingMode.UNSPECIFIED]: Decimal.ROUND_HALF_EVEN,
  [RoundingMode.HALF_EVEN]: Decimal.ROUND_HALF_EVEN,
  [RoundingMode.HALF_UP]: Decimal.ROUND_HALF_UP,
  [RoundingMode.DOWN]: Decimal.ROUND_DOWN,
} as const;

/** Exact result of converting `amountMinor` minor units of `from` at `rate`, in minor units of `to`. */
function exactMinor(amountMinor: bigint, from: string, to: string, rate: Dec | string): Dec {
  return new D(amountMinor.toString()).mul(rate).mul(new D(10).pow(exponentOf(to) - exponentOf(from)));
}

/** Checks a ConvertResponse against the oracle: converted = exact rounded by mode, converted + residue = exact. */
function expectExactConversion(res: ConvertResponse, amountMinor: bigint, from: string, to: string, rate: Dec, mode: RoundingMode) {
  expect(new D(res.rate).eq(rate), `rate ${res.rate} != ${rate.toFixed()}`).toBe(true);
  expect(res.source).toMatchObject({ currency: from, amountMinor });
  expect(res.converted?.currency).toBe(to);
  const exact = exactMinor(amountMinor, from, to, rate);
  const converted = res.converted!.amountMinor;
  expect(converted.toString()).toBe(exact.toDecimalPlaces(0, decimalModes[mode]).toFixed());
  // The residue is accounted: converted + residue is exactly the unrounded result.
  expect(/^-?[0-9]+(\.[0-9]+)?$/.test(res.residueMinor), `residue ${res.residueMinor} is plain decimal`).toBe(true);
  expect(new D(converted.toString()).add(res.residueMinor).eq(exact)).toBe(true);
  expect(new D(res.residueMinor).abs().lt(1)).toBe(true);
}

// ---------------------------------------------------------------------------------------
// Service under test
// ---------------------------------------------------------------------------------------

const SPREAD_BPS = 30;
const DEFAULT_TTL_MS = 30_000;
const MAX_TTL_MS = 3_600_000;
const T0 = Date.parse("2031-03-04T05:06:07.000Z");
const logger = createLogger("fx-test", "silent");
const migrations = fileURLToPath(new URL("../../services/fx/migrations", import.meta.url));

let db: Database;
let quotes: QuoteStore;
let nowMs = T0;
const clock = () => new Date(nowMs);

function fxClient(market: SimulatedMarket, draining: AbortSignal = new AbortController().signal): Client<typeof FxService> {
  const impl: ServiceImpl<typeof FxService> = fxService({
    market,
    quotes,
    spreadBps: SPREAD_BPS,
    defaultQuoteTtlMs: DEFAULT_TTL_MS,
    maxQuoteTtlMs: MAX_TTL_MS,
    now: clock,
    draining,
  });
  const transport = createRouterTransport((router) => router.service(FxService, impl), {
    router: { interceptors: [errorMapping(logger)] },
  });
  return createClient(FxService, transport);
}

const stillMarket = () => new SimulatedMarket(loadReferenceSnapshot(), { tickMs: 0, maxStepBps: 5, maxDriftBps: 300 });
let client: Client<typeof FxService>;

beforeAll(async () => {
  db = await openDatabase({ dataDir: "memory://", schema: "fx" });
  await migrate(db, migrations);
  quotes = new QuoteStore(db);
  client = fxClient(stillMarket());
}, 60_000);

afterAll(async () => {
  await db?.close();
});

beforeEach(() => {
  nowMs = T0;
});

/** Asserts a Connect error with the code, an ErrorDetail with reason and field, and a message naming the field. */
async function expectFxError(call: Promise<unknown>, code: Code, reason: string, field: string): Promise<ConnectError> {
  const err = await call.then(
    (res) => {
      throw new Error(`expected ${Code[code]} ${reason}, got a response: ${JSON.stringify(res, (_k, v: unknown) => (typeof v === "bigint" ? `${v}n` : v))}`);
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ConnectError);
  const ce = err as ConnectError;
  expect(Code[ce.code], ce.message).toBe(Code[code]);
  const details = ce.findDetails(ErrorDetailSchema);
  expect(details, ce.message).toHaveLength(1);
  expect(details[0]).toMatchObject({ reason, field });
  expect(ce.rawMessage).toContain(field);
  return ce;
}

const usd = (amountMinor: bigint) => ({ case: "amount" as const, value: { currency: "USD", amountMinor } });
const money = (currency: string, amountMinor: bigint) => ({ case: "amount" as const, value: { currency, amountMinor } });
const dec = (currency: string, value: string) => ({ case: "decimalAmount" as const, value: { currency, value } });
const seconds = (s: number): Duration => create(DurationSchema, { seconds: BigInt(s) });

// ---------------------------------------------------------------------------------------

describe("ListCurrencies", () => {
  it("lists ISO 4217 currencies sorted by code with their exponents", async () => {
    const { currencies } = await client.listCurrencies({});
    const codes = currencies.map((c) => c.code);
    expect(codes).toEqual([...codes].sort());
    expect(new Set(codes).size).toBe(codes.length);
    const byCode = new Map(currencies.map((c) => [c.code, c]));
    expect(byCode.get("JPY")).toMatchObject({ minorUnits: 0, tradable: true });
    expect(byCode.get("USD")).toMatchObject({ minorUnits: 2, tradable: true, name: "US Dollar" });
    expect(byCode.get("KWD")).toMatchObject({ minorUnits: 3, tradable: true });
    expect(byCode.get("BHD")).toMatchObject({ minorUnits: 3, tradable: true });
    expect(byCode.get("KRW")).toMatchObject({ minorUnits: 0, tradable: true });
    // ISO currencies Paygate has no rate for are listed, not tradable.
    expect(byCode.get("XAF")).toMatchObject({ minorUnits: 0, tradable: false });
    expect(byCode.get("CLF")).toMatchObject({ minorUnits: 4, tradable: false });
    // Codes without a minor unit (metals, funds, testing) cannot hold amounts: not listed.
    for (const code of ["XAU", "XAG", "XDR", "XXX", "XTS"]) expect(byCode.has(code), code).toBe(false);
    expect(currencies.length).toBeGreaterThan(150);
  });

  it("tradable_only gives exactly the currencies of the reference snapshot", async () => {
    const { currencies } = await client.listCurrencies({ tradableOnly: true });
    expect(currencies.map((c) => c.code)).toEqual(TRADABLE);
    expect(currencies.every((c) => c.tradable)).toBe(true);
    for (const c of currencies) expect(c.minorUnits, c.code).toBe(exponentOf(c.code));
  });
});

describe("GetRate", () => {
  it("a currency against itself is exactly 1", async () => {
    for (const code of ["USD", "JPY", "KWD", "EUR", "AED"]) {
      const { rate } = await client.getRate({ baseCurrency: code, quoteCurrency: code });
      expect(rate?.midRate, code).toBe("1");
    }
  });

  it("USD->IDR follows the reference snapshot through the documented cross rule", async () => {
    const { rate } = await client.getRate({ baseCurrency: "USD", quoteCurrency: "IDR" });
    expect(rate).toMatchObject({ baseCurrency: "USD", quoteCurrency: "IDR", source: "reference-snapshot" });
    const expected = new D(new D18(1).div("1.2923")).mul("12619.13");
    expect(rate!.midRate).toBe(expected.toFixed());
    expect(timestampDate(rate!.asOf!)).toEqual(SNAPSHOT_AS_OF);
    // Sanity: about 9765 rupiah per dollar in May 2013.
    expect(Number(rate!.midRate)).toBeGreaterThan(9700);
    expect(Number(rate!.midRate)).toBeLessThan(9800);
  });

  it("the base leg is the snapshot rate exactly and the inverse is rounded to 18 significant digits", async () => {
    expect((await client.getRate({ baseCurrency: "EUR", quoteCurrency: "IDR" })).rate?.midRate).toBe("12619.13");
    expect((await client.getRate({ baseCurrency: "EUR", quoteCurrency: "KWD" })).rate?.midRate).toBe("0.368");
    const usdEur = (await client.getRate({ baseCurrency: "USD", quoteCurrency: "EUR" })).rate!.midRate;
    expect(usdEur).toBe(new D18(1).div("1.2923").toFixed());
    expect(usdEur.replace(/^0\.0*/, "").length).toBeLessThanOrEqual(18);
  });

  it("every tradable pair matches the oracle", async () => {
    const sample = ["USD", "JPY", "KWD", "BHD", "AED", "GBP", "IDR", "KRW", "EUR"];
    for (const from of sample) {
      for (const to of sample) {
        const { rate } = await client.getRate({ baseCurrency: from, quoteCurrency: to });
        expect(new D(rate!.midRate).eq(oracleCross(REF, from, to)), `${from}/${to} ${rate!.midRate}`).toBe(true);
      }
    }
  });

  it.each([
    ["usd", "IDR", "UNKNOWN_CURRENCY", "base_currency"],
    ["ABC", "IDR", "UNKNOWN_CURRENCY", "base_currency"],
    ["XAU", "IDR", "UNKNOWN_CURRENCY", "base_currency"],
    ["", "IDR", "UNKNOWN_CURRENCY", "base_currency"],
    ["XAF", "IDR", "UNSUPPORTED_CURRENCY", "base_currency"],
    ["USD", "idr", "UNKNOWN_CURRENCY", "quote_currency"],
    ["USD", "XAU", "UNKNOWN_CURRENCY", "quote_currency"],
    ["USD", "XAF", "UNSUPPORTED_CURRENCY", "quote_currency"],
  ])("%s/%s -> INVALID_ARGUMENT %s on %s", async (base, quote, reason, field) => {
    await expectFxError(client.getRate({ baseCurrency: base, quoteCurrency: quote }), Code.InvalidArgument, reason, field);
  });
});

describe("Convert at the mid rate", () => {
  it("converts Money between 2-, 0- and 3-decimal currencies exactly", async () => {
    // 100.00 EUR at 133.26 -> 13326 JPY, nothing to round.
    const eurJpy = await client.convert({ source: money("EUR", 10_000n), toCurrency: "JPY" });
    expect(eurJpy).toMatchObject({ converted: { currency: "JPY", amountMinor: 13_326n }, residueMinor: "0", rate: "133.26", quoteId: "" });
    // 10.00 EUR at 0.3680 -> 3.680 KWD = 3680 minor units.
    const eurKwd = await client.convert({ source: money("EUR", 1_000n), toCurrency: "KWD" });
    expect(eurKwd).toMatchObject({ converted: { currency: "KWD", amountMinor: 3_680n }, residueMinor: "0", rate: "0.368" });
    // 0.01 EUR -> 1.3326 JPY: 1 yen, residue 0.3326.
    const cent = await client.convert({ source: money("EUR", 1n), toCurrency: "JPY" });
    expect(cent).toMatchObject({ converted: { amountMinor: 1n }, residueMinor: "0.3326" });
    expect(timestampDate(cent.rateAsOf!)).toEqual(SNAPSHOT_AS_OF);

    for (const [from, to, amount] of [
      ["USD", "JPY", 1_000n],
      ["JPY", "USD", 12_345n],
      ["JPY", "KWD", 777n],
      ["KWD", "JPY", 1_234n],
      ["KWD", "USD", 1n],
      ["USD", "IDR", 999_999n],
      ["BHD", "KWD", 123_456n],
    ] as const) {
      const res = await client.convert({ source: money(from, amount), toCurrency: to });
      expectExactConversion(res, amount, from, to, oracleCross(REF, from, to), RoundingMode.HALF_EVEN);
    }
  });

  it("takes DecimalMoney exactly, trailing zeros included", async () => {
    const cases = [
      ["EUR", "100", 10_000n],
      ["USD", "1.230", 123n],
      ["USD", "0.01", 1n],
      ["JPY", "1500", 1_500n],
      ["JPY", "1500.000", 1_500n],
      ["KWD", "1.234", 1_234n],
      ["KWD", "0.001", 1n],
    ] as const;
    for (const [currency, value, minor] of cases) {
      const res = await client.convert({ source: dec(currency, value), toCurrency: "GBP" });
      expect(res.source, `${value} ${currency}`).toMatchObject({ currency, amountMinor: minor });
      expectExactConversion(res, minor, currency, "GBP", oracleCross(REF, currency, "GBP"), RoundingMode.HALF_EVEN);
    }
  });

  it("rounds ties by the requested mode and reports the residue", async () => {
    // 25.00 EUR -> 3331.5 JPY (odd floor); 75.00 EUR -> 9994.5 JPY (even floor).
    const cases: [bigint, RoundingMode, bigint, string][] = [
      [2_500n, RoundingMode.UNSPECIFIED, 3_332n, "-0.5"],
      [2_500n, RoundingMode.HALF_EVEN, 3_332n, "-0.5"],
      [2_500n, RoundingMode.HALF_UP, 3_332n, "-0.5"],
      [2_500n, RoundingMode.DOWN, 3_331n, "0.5"],
      [7_500n, RoundingMode.UNSPECIFIED, 9_994n, "0.5"],
      [7_500n, RoundingMode.HALF_EVEN, 9_994n, "0.5"],
      [7_500n, RoundingMode.HALF_UP, 9_995n, "-0.5"],
      [7_500n, RoundingMode.DOWN, 9_994n, "0.5"],
    ];
    for (const [amount, rounding, converted, residue] of cases) {
      const res = await client.convert({ source: money("EUR", amount), toCurrency: "JPY", rounding });
      const what = `${amount} ${RoundingMode[rounding]}`;
      expect(res.converted?.amountMinor, what).toBe(converted);
      expect(res.residueMinor, what).toBe(residue);
      expect(res.rounding, what).toBe(rounding === RoundingMode.UNSPECIFIED ? RoundingMode.HALF_EVEN : rounding);
    }
    // Not a tie: 0.01 EUR -> 1.3326 JPY. DOWN keeps 1, HALF_UP 1 too; 0.02 EUR -> 2.6652: DOWN 2, HALF_UP 3.
    const down = await client.convert({ source: money("EUR", 2n), toCurrency: "JPY", rounding: RoundingMode.DOWN });
    const up = await client.convert({ source: money("EUR", 2n), toCurrency: "JPY", rounding: RoundingMode.HALF_UP });
    expect([down.converted?.amountMinor, down.residueMinor]).toEqual([2n, "0.6652"]);
    expect([up.converted?.amountMinor, up.residueMinor]).toEqual([3n, "-0.3348"]);
  });

  it("rejects an unknown rounding mode", async () => {
    await expectFxError(
      client.convert({ source: usd(100n), toCurrency: "EUR", rounding: 7 as RoundingMode }),
      Code.InvalidArgument,
      "INVALID_ROUNDING",
      "rounding",
    );
  });

  it("property: converted + residue = amount x rate exactly, rounded once by the mode", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.bigInt({ min: 1n, max: 10n ** 15n }),
        fc.constantFrom(...TRADABLE),
        fc.constantFrom(...TRADABLE),
        fc.constantFrom(RoundingMode.UNSPECIFIED, RoundingMode.HALF_EVEN, RoundingMode.HALF_UP, RoundingMode.DOWN),
        async (amount, from, to, rounding) => {
          // Results beyond int64 minor units are another test's business (see "out of range").
          fc.pre(exactMinor(amount, from, to, oracleCross(REF, from, to)).abs().lt(MAX_INT64));
          const res = await client.convert({ source: money(from, amount), toCurrency: to, rounding });
          expectExactConversion(res, amount, from, to, oracleCross(REF, from, to), rounding);
          if (rounding === RoundingMode.DOWN) expect(new D(res.residueMinor).gte(0)).toBe(true);
          else expect(new D(res.residueMinor).abs().lte(0.5)).toBe(true);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe("results beyond the int64 range of Money", () => {
  // 10^15 USD cents are 10^13 USD, about 9.77 x 10^16 rupiah = 9.77 x 10^18 IDR minor units > 2^63 - 1.
  const huge = usd(10n ** 15n);

  it("Convert answers INVALID_ARGUMENT naming the amount, not INTERNAL", async () => {
    expect(exactMinor(10n ** 15n, "USD", "IDR", oracleCross(REF, "USD", "IDR")).gt(MAX_INT64)).toBe(true);
    const err = await rejectionOf(client.convert({ source: huge, toCurrency: "IDR" }));
    const ce = ConnectError.from(err);
    expect(Code[ce.code], ce.message).toBe(Code[Code.InvalidArgument]);
    expect(ce.findDetails(ErrorDetailSchema)[0]).toMatchObject({ reason: expect.stringMatching(/OUT_OF_RANGE/), field: "amount" });
  });

  it("CreateQuote answers INVALID_ARGUMENT naming the amount, not INTERNAL", async () => {
    const err = await rejectionOf(client.createQuote({ source: huge, toCurrency: "IDR" }));
    const ce = ConnectError.from(err);
    expect(Code[ce.code], ce.message).toBe(Code[Code.InvalidArgument]);
    expect(ce.findDetails(ErrorDetailSchema)[0]).toMatchObject({ reason: expect.stringMatching(/OUT_OF_RANGE/), field: "amount" });
  });

  it("the largest amount that fits still converts", async () => {
    const rate = oracleCross(REF, "USD", "IDR");
    // Largest USD minor amount whose IDR result (half-even) stays within int64.
    const max = BigInt(new D(MAX_INT64).div(rate).toDecimalPlaces(0, Decimal.ROUND_DOWN).toFixed()) - 1n;
    const res = await client.convert({ source: usd(max), toCurrency: "IDR" });
    expectExactConversion(res, max, "USD", "IDR", rate, RoundingMode.HALF_EVEN);
  });
});

describe("bad input", () => {
  type Source = NonNullable<MessageInitShape<typeof ConvertRequestSchema>["source"]>;
  const cases: [string, Source, string, string, string][] = [
    ["currency in lower case", money("usd", 100n), "EUR", "UNKNOWN_CURRENCY", "amount.currency"],
    ["not an ISO code", money("ABC", 100n), "EUR", "UNKNOWN_CURRENCY", "amount.currency"],
    ["a metal (no minor unit)", money("XAU", 100n), "EUR", "UNKNOWN_CURRENCY", "amount.currency"],
    ["ISO without a rate", money("XAF", 100n), "EUR", "UNSUPPORTED_CURRENCY", "amount.currency"],
    ["target in lower case", usd(100n), "usd", "UNKNOWN_CURRENCY", "to_currency"],
    ["target not ISO", usd(100n), "ABC", "UNKNOWN_CURRENCY", "to_currency"],
    ["target a metal", usd(100n), "XAU", "UNKNOWN_CURRENCY", "to_currency"],
    ["target without a rate", usd(100n), "XAF", "UNSUPPORTED_CURRENCY", "to_currency"],
    ["missing target", usd(100n), "", "UNKNOWN_CURRENCY", "to_currency"],
    ["decimal currency in lower case", dec("usd", "1"), "EUR", "UNKNOWN_CURRENCY", "decimal_amount.currency"],
    ["decimal currency a metal", dec("XAU", "1"), "EUR", "UNKNOWN_CURRENCY", "decimal_amount.currency"],
    ["decimal currency without a rate", dec("XAF", "1"), "EUR", "UNSUPPORTED_CURRENCY", "decimal_amount.currency"],
    ["3 decimals in USD", dec("USD", "1.234"), "EUR", "TOO_MANY_DECIMALS", "decimal_amount.value"],
    ["1 decimal in JPY", dec("JPY", "1.5"), "EUR", "TOO_MANY_DECIMALS", "decimal_amount.value"],
    ["4 decimals in KWD", dec("KWD", "1.2345"), "EUR", "TOO_MANY_DECIMALS", "decimal_amount.value"],
    ["zero minor units", usd(0n), "EUR", "NON_POSITIVE_AMOUNT", "amount"],
    ["negative minor units", usd(-5n), "EUR", "NON_POSITIVE_AMOUNT", "amount"],
    ["zero decimal", dec("USD", "0.00"), "EUR", "NON_POSITIVE_AMOUNT", "decimal_amount"],
    ["negative decimal", dec("USD", "-5"), "EUR", "NON_POSITIVE_AMOUNT", "decimal_amount"],
    ["exponent notation", dec("USD", "1e3"), "EUR", "INVALID_AMOUNT", "decimal_amount.value"],
    ["thousands separator", dec("USD", "1,000"), "EUR", "INVALID_AMOUNT", "decimal_amount.value"],
    ["empty decimal", dec("USD", ""), "EUR", "INVALID_AMOUNT", "decimal_amount.value"],
    ["missing amount", { case: undefined }, "EUR", "MISSING_FIELD", "amount"],
  ];

  describe.each(["convert", "createQuote"] as const)("%s", (method) => {
    it.each(cases)("%s -> INVALID_ARGUMENT", async (_name, source, toCurrency, reason, field) => {
      const call = method === "convert" ? client.convert({ source, toCurrency }) : client.createQuote({ source, toCurrency });
      const err = await expectFxError(call, Code.InvalidArgument, reason, field);
      if (reason === "TOO_MANY_DECIMALS") {
        const value = (source as { value: { currency: string } }).value;
        expect(err.findDetails(ErrorDetailSchema)[0]?.metadata).toEqual({ max_decimals: String(exponentOf(value.currency)) });
      }
    });
  });
});

describe("CreateQuote", () => {
  it("locks mid rate, spread and final rate = mid x (10000 - spread) / 10000, exactly", async () => {
    const { quote } = await client.createQuote({ source: usd(123_456n), toCurrency: "EUR" });
    const mid = oracleCross(REF, "USD", "EUR");
    expect(quote).toBeDefined();
    const q = quote!;
    expect(q.id).toMatch(/^qt_[0-9a-f]{32}$/);
    expect(new D(q.midRate).eq(mid)).toBe(true);
    expect(q.spreadBps).toBe(SPREAD_BPS);
    const final = mid.mul(10_000 - SPREAD_BPS).div(10_000);
    expect(q.rate).toBe(final.toFixed());
    expect(new D(q.rate).lt(mid)).toBe(true);
    expect(q.amount).toMatchObject({ currency: "USD", amountMinor: 123_456n });
    expect(q.converted?.currency).toBe("EUR");
    expect(q.converted!.amountMinor.toString()).toBe(exactMinor(123_456n, "USD", "EUR", final).toDecimalPlaces(0, Decimal.ROUND_HALF_EVEN).toFixed());
    expect(q.status).toBe(QuoteStatus.OPEN);
    expect(timestampDate(q.createdAt!).getTime()).toBe(T0);
    expect(timestampDate(q.expiresAt!).getTime()).toBe(T0 + DEFAULT_TTL_MS);
    expect(q.usedAt).toBeUndefined();
    expect(q.usedReference).toBe("");
  });

  it("converts into 0- and 3-decimal currencies and takes DecimalMoney", async () => {
    for (const [source, from, minor, to] of [
      [dec("USD", "10.5"), "USD", 1_050n, "JPY"],
      [dec("JPY", "1000"), "JPY", 1_000n, "KWD"],
      [money("KWD", 1_001n), "KWD", 1_001n, "BHD"],
    ] as const) {
      const { quote } = await client.createQuote({ source, toCurrency: to });
      const final = oracleCross(REF, from, to).mul(10_000 - SPREAD_BPS).div(10_000);
      expect(new D(quote!.rate).eq(final)).toBe(true);
      expect(quote!.amount).toMatchObject({ currency: from, amountMinor: minor });
      expect(quote!.converted!.amountMinor.toString()).toBe(exactMinor(minor, from, to, final).toDecimalPlaces(0, Decimal.ROUND_HALF_EVEN).toFixed());
    }
  });

  it("expires at now + ttl; the maximum ttl is accepted", async () => {
    nowMs = T0 + 1234;
    const { quote } = await client.createQuote({ source: usd(100n), toCurrency: "GBP", ttl: seconds(120) });
    expect(timestampDate(quote!.createdAt!).getTime()).toBe(T0 + 1234);
    expect(timestampDate(quote!.expiresAt!).getTime()).toBe(T0 + 1234 + 120_000);
    const longest = await client.createQuote({ source: usd(100n), toCurrency: "GBP", ttl: seconds(MAX_TTL_MS / 1000) });
    expect(timestampDate(longest.quote!.expiresAt!).getTime()).toBe(T0 + 1234 + MAX_TTL_MS);
    const subSecond = await client.createQuote({ source: usd(100n), toCurrency: "GBP", ttl: create(DurationSchema, { nanos: 250_000_000 }) });
    expect(timestampDate(subSecond.quote!.expiresAt!).getTime()).toBe(T0 + 1234 + 250);
  });

  it("with use_reference the quote is made already used by it; the same request again returns that quote, another is ALREADY_EXISTS", async () => {
    const reference = `pay_${Math.random().toString(36).slice(2)}`;
    const { quote } = await client.createQuote({ source: usd(42_00n), toCurrency: "JPY", useReference: reference });
    expect(quote).toMatchObject({ status: QuoteStatus.USED, usedReference: reference });
    expect(timestampDate(quote!.usedAt!).getTime()).toBe(nowMs);
    // Later (the quote's ttl long past, the market moved on), a retry gets the same quote.
    nowMs += MAX_TTL_MS + 60_000;
    const again = await client.createQuote({ source: usd(42_00n), toCurrency: "JPY", useReference: reference });
    expect(again.quote).toEqual(quote);
    expect((await client.getQuote({ quoteId: quote!.id })).quote).toEqual(quote);
    // It is used: Convert with it for another reference is refused.
    await expectFxError(client.convert({ quoteId: quote!.id, reference: "someone else" }), Code.FailedPrecondition, "QUOTE_ALREADY_USED", "quote_id");
    await expectFxError(client.createQuote({ source: usd(42_01n), toCurrency: "JPY", useReference: reference }), Code.AlreadyExists, "QUOTE_REFERENCE_REUSED", "use_reference");
    await expectFxError(client.createQuote({ source: usd(42_00n), toCurrency: "EUR", useReference: reference }), Code.AlreadyExists, "QUOTE_REFERENCE_REUSED", "use_reference");
  });

  it.each([
    ["too long", seconds(MAX_TTL_MS / 1000 + 1)],
    ["zero", seconds(0)],
    ["negative", seconds(-5)],
    ["absurdly long", seconds(10 ** 12)],
  ])("ttl %s -> INVALID_TTL", async (_name, ttl) => {
    const err = await expectFxError(client.createQuote({ source: usd(100n), toCurrency: "GBP", ttl }), Code.InvalidArgument, "INVALID_TTL", "ttl");
    expect(err.findDetails(ErrorDetailSchema)[0]?.metadata).toEqual({ max_seconds: String(MAX_TTL_MS / 1000) });
  });
});

describe("Convert with a quote", () => {
  async function newQuote(amountMinor = 50_000n, to = "EUR", ttl?: Duration): Promise<Quote> {
    const { quote } = await client.createQuote({ source: usd(amountMinor), toCurrency: to, ttl });
    expect(quote?.status).toBe(QuoteStatus.OPEN);
    return quote!;
  }

  it("uses the quote's locked rate once; the same reference replays the same result", async () => {
    const q = await newQuote();
    nowMs = T0 + 5_000;
    const first = await client.convert({ quoteId: q.id, reference: "pay_1" });
    expect(first).toMatchObject({
      source: { currency: "USD", amountMinor: 50_000n },
      converted: { currency: "EUR", amountMinor: q.converted!.amountMinor },
      rate: q.rate,
      quoteId: q.id,
      rounding: RoundingMode.HALF_EVEN,
    });
    expect(timestampDate(first.rateAsOf!)).toEqual(timestampDate(q.createdAt!));
    expectExactConversion(first, 50_000n, "USD", "EUR", new D(q.rate), RoundingMode.HALF_EVEN);

    nowMs = T0 + 9_000;
    const replay = await client.convert({ quoteId: q.id, reference: "pay_1" });
    expect(replay).toEqual(first);

    const err = await expectFxError(client.convert({ quoteId: q.id, reference: "pay_2" }), Code.FailedPrecondition, "QUOTE_ALREADY_USED", "quote_id");
    expect(err.rawMessage).toContain(q.id);

    const { quote } = await client.getQuote({ quoteId: q.id });
    expect(quote).toMatchObject({ status: QuoteStatus.USED, usedReference: "pay_1" });
    expect(timestampDate(quote!.usedAt!).getTime()).toBe(T0 + 5_000);
  });

  it("the same reference replays with the amount and currency given too; an empty reference cannot replay", async () => {
    const q = await newQuote(1_000n, "JPY");
    const first = await client.convert({ quoteId: q.id, reference: "", source: dec("USD", "10"), toCurrency: "JPY" });
    expect(first.converted?.amountMinor).toBe(q.converted!.amountMinor);
    await expectFxError(client.convert({ quoteId: q.id, reference: "" }), Code.FailedPrecondition, "QUOTE_ALREADY_USED", "quote_id");
  });

  it("keeps its locked rate while the market moves", async () => {
    const market = new SimulatedMarket(loadReferenceSnapshot(), { tickMs: 0, maxStepBps: 5, maxDriftBps: 300, randomInt: (_min, max) => max, now: clock });
    const moving = fxClient(market);
    const { quote } = await moving.createQuote({ source: usd(1_000_000n), toCurrency: "JPY" });
    for (let i = 0; i < 10; i++) market.tick();
    const atMid = await moving.convert({ source: usd(1_000_000n), toCurrency: "JPY" });
    expect(atMid.rate).not.toBe(quote!.midRate);
    const withQuote = await moving.convert({ quoteId: quote!.id, reference: "locked" });
    expect(withQuote.rate).toBe(quote!.rate);
    expect(withQuote.converted?.amountMinor).toBe(quote!.converted!.amountMinor);
  });

  it("cannot be used at or after expiry; GetQuote says EXPIRED", async () => {
    const q = await newQuote(2_000n, "EUR", seconds(10));
    const expiresAt = timestampDate(q.expiresAt!).getTime();
    expect(expiresAt).toBe(T0 + 10_000);
    nowMs = expiresAt;
    const err = await expectFxError(client.convert({ quoteId: q.id, reference: "late" }), Code.FailedPrecondition, "QUOTE_EXPIRED", "quote_id");
    expect(err.findDetails(ErrorDetailSchema)[0]?.metadata).toEqual({ expired_at: new Date(expiresAt).toISOString() });
    expect((await client.getQuote({ quoteId: q.id })).quote?.status).toBe(QuoteStatus.EXPIRED);
    nowMs = expiresAt + 60_000;
    await expectFxError(client.convert({ quoteId: q.id, reference: "later" }), Code.FailedPrecondition, "QUOTE_EXPIRED", "quote_id");
  });

  it("is usable up to the last millisecond before expiry, and then stays USED, not EXPIRED", async () => {
    const q = await newQuote(3_000n, "EUR", seconds(10));
    nowMs = T0 + 10_000 - 1;
    expect((await client.getQuote({ quoteId: q.id })).quote?.status).toBe(QuoteStatus.OPEN);
    await client.convert({ quoteId: q.id, reference: "just-in-time" });
    nowMs = T0 + 3_600_000;
    const { quote } = await client.getQuote({ quoteId: q.id });
    expect(quote).toMatchObject({ status: QuoteStatus.USED, usedReference: "just-in-time" });
  });

  it("rejects an amount, currency or target that differs from the quote, and stays OPEN", async () => {
    const q = await newQuote(4_000n, "EUR");
    await expectFxError(client.convert({ quoteId: q.id, source: usd(4_001n) }), Code.InvalidArgument, "QUOTE_AMOUNT_MISMATCH", "amount");
    await expectFxError(client.convert({ quoteId: q.id, source: money("GBP", 4_000n) }), Code.InvalidArgument, "QUOTE_AMOUNT_MISMATCH", "amount");
    await expectFxError(client.convert({ quoteId: q.id, source: dec("USD", "40.01") }), Code.InvalidArgument, "QUOTE_AMOUNT_MISMATCH", "decimal_amount");
    await expectFxError(client.convert({ quoteId: q.id, toCurrency: "JPY" }), Code.InvalidArgument, "QUOTE_CURRENCY_MISMATCH", "to_currency");
    await expectFxError(client.convert({ quoteId: q.id, source: dec("USD", "40.001") }), Code.InvalidArgument, "TOO_MANY_DECIMALS", "decimal_amount.value");
    expect((await client.getQuote({ quoteId: q.id })).quote?.status).toBe(QuoteStatus.OPEN);
    const ok = await client.convert({ quoteId: q.id, source: usd(4_000n), toCurrency: "EUR", reference: "match" });
    expect(ok.quoteId).toBe(q.id);
  });

  it("of concurrent uses with different references exactly one wins", async () => {
    const q = await newQuote(5_000n, "GBP");
    const results = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => client.convert({ quoteId: q.id, reference: `race_${i}` })));
    const won = results.filter((r) => r.status === "fulfilled");
    expect(won).toHaveLength(1);
    for (const r of results) {
      if (r.status === "rejected") {
        const ce = ConnectError.from(r.reason);
        expect(ce.code).toBe(Code.FailedPrecondition);
        expect(ce.findDetails(ErrorDetailSchema)[0]?.reason).toBe("QUOTE_ALREADY_USED");
      }
    }
  });

  it("an unknown quote is NOT_FOUND; GetQuote needs an id", async () => {
    await expectFxError(client.convert({ quoteId: "qt_nope", reference: "x" }), Code.NotFound, "QUOTE_NOT_FOUND", "quote_id");
    await expectFxError(client.getQuote({ quoteId: "qt_nope" }), Code.NotFound, "QUOTE_NOT_FOUND", "quote_id");
    await expectFxError(client.getQuote({ quoteId: "" }), Code.InvalidArgument, "MISSING_FIELD", "quote_id");
  });
});

describe("StreamRates", () => {
  /** A market that moves only when the test calls tick(); each state gets its own asOf. */
  function tickingMarket() {
    let n = 0;
    let step = 0;
    const market = new SimulatedMarket(loadReferenceSnapshot(), {
      tickMs: 0,
      maxStepBps: 5,
      maxDriftBps: 300,
      // Alternating large steps so every tick changes every floating rate.
      randomInt: (min, max) => (step++ % 2 === 0 ? max : min + 1),
      now: () => new Date(T0 + ++n * 1000),
    });
    const states = new Map<number, MarketState>();
    market.subscribe((s) => states.set(s.asOf.getTime(), s));
    return { market, states };
  }

  const asOracleMids = (state: MarketState) => new Map([...state.mids].map(([code, d]) => [code, new D(formatDecimal(d))]));

  /** The next message; keeps the market ticking until it arrives (ticks before the server subscribes are lost). */
  async function nextWhileTicking(it: AsyncIterator<StreamRatesResponse>, market: SimulatedMarket): Promise<StreamRatesResponse> {
    let settled = false;
    const next = it.next().finally(() => (settled = true));
    const deadline = Date.now() + 10_000;
    while (!settled) {
      if (Date.now() > deadline) throw new Error("no stream message after 10 s of ticks");
      market.tick();
      await new Promise((r) => setTimeout(r, 10));
    }
    const r = await next;
    if (r.done) throw new Error("stream ended");
    return r.value;
  }

  it("sends the snapshot first, then the rates of later ticks", async () => {
    const { market, states } = tickingMarket();
    const streaming = fxClient(market);
    const abort = new AbortController();
    const it = streaming.streamRates({}, { signal: abort.signal })[Symbol.asyncIterator]();
    try {
      const first = await it.next();
      expect(first.done).toBe(false);
      const snapshot = first.value as StreamRatesResponse;
      expect(snapshot.rates.map((r) => r.quoteCurrency)).toEqual(TRADABLE.filter((c) => c !== "EUR"));
      for (const r of snapshot.rates) {
        expect(r).toMatchObject({ baseCurrency: "EUR", source: "reference-snapshot" });
        expect(r.midRate, r.quoteCurrency).toBe(REF.get(r.quoteCurrency)!.toFixed());
        expect(timestampDate(r.asOf!)).toEqual(SNAPSHOT_AS_OF);
      }

      let previousAsOf = SNAPSHOT_AS_OF.getTime();
      for (let i = 0; i < 3; i++) {
        const msg = await nextWhileTicking(it, market);
        const asOf = timestampDate(msg.rates[0]!.asOf!).getTime();
        expect(asOf).toBeGreaterThan(previousAsOf);
        previousAsOf = asOf;
        const state = states.get(asOf);
        expect(state, "message matches a market tick").toBeDefined();
        const mids = asOracleMids(state!);
        expect(msg.rates).toHaveLength(snapshot.rates.length);
        for (const r of msg.rates) {
          expect(r.source).toBe("simulated-market");
          expect(new D(r.midRate).eq(oracleCross(mids, "EUR", r.quoteCurrency)), r.quoteCurrency).toBe(true);
        }
        // Floating rates moved off the snapshot.
        expect(msg.rates.find((r) => r.quoteCurrency === "JPY")?.midRate).not.toBe("133.26");
      }
    } finally {
      abort.abort();
    }
  });

  it("filters by base and quote currencies, in the requested order", async () => {
    const { market, states } = tickingMarket();
    const streaming = fxClient(market);
    const abort = new AbortController();
    const it = streaming.streamRates({ baseCurrency: "USD", quoteCurrencies: ["KWD", "JPY", "IDR"] }, { signal: abort.signal })[Symbol.asyncIterator]();
    try {
      const first = (await it.next()).value as StreamRatesResponse;
      expect(first.rates.map((r) => [r.baseCurrency, r.quoteCurrency])).toEqual([
        ["USD", "KWD"],
        ["USD", "JPY"],
        ["USD", "IDR"],
      ]);
      for (const r of first.rates) {
        const { rate } = await streaming.getRate({ baseCurrency: "USD", quoteCurrency: r.quoteCurrency });
        expect(r.midRate).toBe(rate!.midRate);
      }
      const later = await nextWhileTicking(it, market);
      expect(later.rates.map((r) => r.quoteCurrency)).toEqual(["KWD", "JPY", "IDR"]);
      const mids = asOracleMids(states.get(timestampDate(later.rates[0]!.asOf!).getTime())!);
      for (const r of later.rates) expect(new D(r.midRate).eq(oracleCross(mids, "USD", r.quoteCurrency)), r.quoteCurrency).toBe(true);
    } finally {
      abort.abort();
    }
  });

  it("ends when the server drains", async () => {
    const { market } = tickingMarket();
    const draining = new AbortController();
    const streaming = fxClient(market, draining.signal);
    const it = streaming.streamRates({ quoteCurrencies: ["USD"] })[Symbol.asyncIterator]();
    expect((await it.next()).done).toBe(false);
    const rest = it.next();
    draining.abort();
    const end = await Promise.race([rest, new Promise<"hung">((r) => setTimeout(() => r("hung"), 5_000))]);
    expect(end).not.toBe("hung");
    // A tick racing the drain may still be delivered; after it the stream must end.
    if (end !== "hung" && !end.done) expect((await it.next()).done).toBe(true);
  });

  it.each([
    [{ quoteCurrencies: ["JPY", "usd"] }, "UNKNOWN_CURRENCY", "quote_currencies[1]"],
    [{ quoteCurrencies: ["ABC"] }, "UNKNOWN_CURRENCY", "quote_currencies[0]"],
    [{ quoteCurrencies: ["USD", "JPY", "XAU"] }, "UNKNOWN_CURRENCY", "quote_currencies[2]"],
    [{ quoteCurrencies: ["XAF"] }, "UNSUPPORTED_CURRENCY", "quote_currencies[0]"],
    [{ baseCurrency: "usd" }, "UNKNOWN_CURRENCY", "base_currency"],
    [{ baseCurrency: "XAF", quoteCurrencies: ["USD"] }, "UNSUPPORTED_CURRENCY", "base_currency"],
  ])("rejects a bad currency in the filter: %j", async (req, reason, field) => {
    const { market } = tickingMarket();
    const streaming = fxClient(market);
    const read = async () => {
      const out: StreamRatesResponse[] = [];
      for await (const m of streaming.streamRates(req)) out.push(m);
      return out;
    };
    await expectFxError(read(), Code.InvalidArgument, reason, field);
  });
});
