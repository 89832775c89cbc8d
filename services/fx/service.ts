// FxService: currencies, rates, exact conversion, quotes and the live rate stream.
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type { DecimalMoney, Money } from "../gen/paygate/common/v1/common_pb.js";
import {
  type ConvertRequest,
  FxService,
  QuoteSchema,
  QuoteStatus,
  RateSchema,
  RoundingMode as RoundingModeProto,
  type Quote,
  type Rate,
} from "../gen/paygate/fx/v1/fx_pb.js";
import { formatDecimal, parseDecimal, type Decimal, type RoundingMode } from "../runtime/money/decimal.js";
import { DomainError, invalidArgument } from "../runtime/errors.js";
import { counter } from "../runtime/observability/metrics.js";
import { newId } from "../runtime/ids.js";
import { readTtl } from "../runtime/ttl.js";
import { allCurrencies, currencyInfo, MAX_MINOR, money, parseDecimalAmount, readMoney, requirePositive } from "../runtime/money/money.js";
import { applySpread, convertMinor, crossRate } from "../runtime/money/conversion.js";
import type { MarketState, SimulatedMarket } from "./market.js";
import type { QuoteRecord, QuoteStore } from "./quotes.js";

const quotesMetric = counter("paygate_fx_quotes_total", "FX quotes by event: created, used, or refused because expired or already used.", ["event"]);
const conversionsMetric = counter("paygate_fx_conversions_total", "Conversions, at the mid rate or at a quote's locked rate.", ["rate"]);

export interface FxDeps {
  market: SimulatedMarket;
  quotes: QuoteStore;
  /** Spread taken off the mid rate in quotes, in basis points. */
  spreadBps: number;
  defaultQuoteTtlMs: number;
  maxQuoteTtlMs: number;
  now: () => Date;
  /** Aborts when the server drains: rate streams end. */
  draining: AbortSignal;
}

const roundingModes: Record<RoundingModeProto, RoundingMode> = {
  [RoundingModeProto.UNSPECIFIED]: "half_even",
  [RoundingModeProto.HALF_EVEN]: "half_even",
  [RoundingModeProto.HALF_UP]: "half_up",
  [RoundingModeProto.DOWN]: "down",
};

export function fxService(deps: FxDeps): ServiceImpl<typeof FxService> {
  const { market } = deps;

  /** An ISO currency Paygate has a rate for; its exponent. */
  const tradable = (code: string, field: string): number => {
    const info = currencyInfo(code, field);
    if (!market.current().mids.has(code)) {
      throw invalidArgument("UNSUPPORTED_CURRENCY", field, `${field}: ${code} (${info.name}) is an ISO 4217 currency Paygate has no rate for`);
    }
    return info.minorUnits;
  };

  const midRate = (state: MarketState, from: string, to: string): Decimal => crossRate(state.mids.get(from)!, state.mids.get(to)!);

  const rateMessage = (state: MarketState, base: string, quote: string): Rate =>
    create(RateSchema, {
      baseCurrency: base,
      quoteCurrency: quote,
      midRate: formatDecimal(midRate(state, base, quote)),
      asOf: timestampFromDate(state.asOf),
      source: state.source,
    });

  /** The amount of a request's `source` oneof, positive, in a tradable currency. */
  const sourceAmount = (source: { case: "amount"; value: Money } | { case: "decimalAmount"; value: DecimalMoney } | { case: undefined; value?: undefined }) => {
    let amount: { currency: string; amountMinor: bigint; field: string };
    if (source.case === "amount") amount = { ...readMoney(source.value, "amount"), field: "amount" };
    else if (source.case === "decimalAmount") {
      const { currency, value } = source.value;
      amount = { currency, amountMinor: parseDecimalAmount(value, currency, "decimal_amount.value", "decimal_amount.currency"), field: "decimal_amount" };
    } else throw invalidArgument("MISSING_FIELD", "amount", "amount (or decimal_amount) is required");
    requirePositive(amount.amountMinor, amount.field);
    return { ...amount, exponent: tradable(amount.currency, `${amount.field}.currency`) };
  };

  const quoteMessage = (q: QuoteRecord, now: Date): Quote =>
    create(QuoteSchema, {
      id: q.id,
      amount: money(q.fromCurrency, q.amountMinor),
      converted: money(q.toCurrency, q.convertedMinor),
      midRate: canonical(q.midRate),
      spreadBps: q.spreadBps,
      rate: canonical(q.rate),
      createdAt: timestampFromDate(q.createdAt),
      expiresAt: timestampFromDate(q.expiresAt),
      status: q.usedAt ? QuoteStatus.USED : q.expiresAt <= now ? QuoteStatus.EXPIRED : QuoteStatus.OPEN,
      usedAt: q.usedAt ? timestampFromDate(q.usedAt) : undefined,
      usedReference: q.usedReference ?? "",
    });

  async function convertWithQuote(req: ConvertRequest) {
    const quote = await deps.quotes.get(req.quoteId);
    if (req.source.case !== undefined) {
      const amount = sourceAmount(req.source);
      if (amount.currency !== quote.fromCurrency || amount.amountMinor !== quote.amountMinor) {
        throw invalidArgument("QUOTE_AMOUNT_MISMATCH", amount.field, `${amount.field}: quote ${quote.id} is for ${quote.amountMinor} ${quote.fromCurrency} minor units, not ${amount.amountMinor} ${amount.currency}`);
      }
    }
    if (req.toCurrency !== "" && req.toCurrency !== quote.toCurrency) {
      throw invalidArgument("QUOTE_CURRENCY_MISMATCH", "to_currency", `to_currency: quote ${quote.id} converts to ${quote.toCurrency}, not ${req.toCurrency}`);
    }
    const now = deps.now();
    const used = await deps.quotes.use(quote.id, req.reference, now).catch((err: unknown) => {
      if (err instanceof DomainError && err.reason === "QUOTE_EXPIRED") quotesMetric.inc({ event: "expired" });
      if (err instanceof DomainError && err.reason === "QUOTE_ALREADY_USED") quotesMetric.inc({ event: "reuse_refused" });
      throw err;
    });
    // Used now, not a replay of an earlier use by the same reference.
    if (used.usedAt?.getTime() === now.getTime()) quotesMetric.inc({ event: "used" });
    return { from: used.fromCurrency, to: used.toCurrency, amountMinor: used.amountMinor, rate: parseDecimal(used.rate, "rate"), asOf: used.createdAt, quoteId: used.id };
  }

  return {
    listCurrencies(req) {
      const mids = market.current().mids;
      const currencies = allCurrenciesWithRates(mids).filter((c) => !req.tradableOnly || c.tradable);
      return { currencies };
    },

    getRate(req) {
      tradable(req.baseCurrency, "base_currency");
      tradable(req.quoteCurrency, "quote_currency");
      return { rate: rateMessage(market.current(), req.baseCurrency, req.quoteCurrency) };
    },

    async convert(req) {
      const mode = roundingModes[req.rounding];
      if (mode === undefined) throw invalidArgument("INVALID_ROUNDING", "rounding", `rounding: unknown rounding mode ${req.rounding}`);
      let c: { from: string; to: string; amountMinor: bigint; rate: Decimal; asOf: Date; quoteId: string };
      if (req.quoteId !== "") c = await convertWithQuote(req);
      else {
        const amount = sourceAmount(req.source);
        tradable(req.toCurrency, "to_currency");
        const state = market.current();
        c = { from: amount.currency, to: req.toCurrency, amountMinor: amount.amountMinor, rate: midRate(state, amount.currency, req.toCurrency), asOf: state.asOf, quoteId: "" };
      }
      conversionsMetric.inc({ rate: c.quoteId ? "quote" : "mid" });
      const result = convertMinor(c.amountMinor, currencyInfo(c.from, "from").minorUnits, c.rate, currencyInfo(c.to, "to").minorUnits, mode);
      requireRepresentable(result.convertedMinor, c.to);
      return {
        source: money(c.from, c.amountMinor),
        converted: money(c.to, result.convertedMinor),
        rate: formatDecimal(c.rate),
        residueMinor: formatDecimal(result.residueMinor),
        quoteId: c.quoteId,
        rounding: req.rounding === RoundingModeProto.UNSPECIFIED ? RoundingModeProto.HALF_EVEN : req.rounding,
        rateAsOf: timestampFromDate(c.asOf),
      };
    },

    async createQuote(req) {
      const amount = sourceAmount(req.source);
      const toExponent = tradable(req.toCurrency, "to_currency");
      const ttlMs = readTtl(req.ttl, deps.defaultQuoteTtlMs, deps.maxQuoteTtlMs);
      const mid = midRate(market.current(), amount.currency, req.toCurrency);
      const rate = applySpread(mid, deps.spreadBps);
      const now = deps.now();
      const record: QuoteRecord = {
        id: newId("qt"),
        fromCurrency: amount.currency,
        toCurrency: req.toCurrency,
        amountMinor: amount.amountMinor,
        convertedMinor: requireRepresentable(convertMinor(amount.amountMinor, amount.exponent, rate, toExponent, "half_even").convertedMinor, req.toCurrency),
        midRate: formatDecimal(mid),
        spreadBps: deps.spreadBps,
        rate: formatDecimal(rate),
        createdAt: now,
        expiresAt: new Date(now.getTime() + ttlMs),
        usedAt: req.useReference === "" ? null : now,
        usedReference: req.useReference === "" ? null : req.useReference,
      };
      if (req.useReference === "") {
        await deps.quotes.insert(record);
        quotesMetric.inc({ event: "created" });
        return { quote: quoteMessage(record, now) };
      }
      const made = await deps.quotes.insertUsed(record);
      if (made === record) {
        quotesMetric.inc({ event: "created" });
        quotesMetric.inc({ event: "used" });
      }
      return { quote: quoteMessage(made, now) };
    },

    async getQuote(req) {
      if (req.quoteId === "") throw invalidArgument("MISSING_FIELD", "quote_id", "quote_id is required");
      return { quote: quoteMessage(await deps.quotes.get(req.quoteId), deps.now()) };
    },

    async *streamRates(req, ctx) {
      const state = market.current();
      const base = req.baseCurrency || state.base;
      tradable(base, "base_currency");
      req.quoteCurrencies.forEach((q, i) => tradable(q, `quote_currencies[${i}]`));
      const quotes = req.quoteCurrencies.length > 0 ? req.quoteCurrencies : market.currencies().filter((c) => c !== base);
      const snapshot = (s: MarketState) => ({ rates: quotes.map((q) => rateMessage(s, base, q)) });
      yield snapshot(state);
      for await (const s of ticks(market, ctx, deps.draining)) yield snapshot(s);
    },
  };
}

/** Market states as they tick, newest only (a slow reader skips ticks), until the call ends. */
async function* ticks(market: SimulatedMarket, ctx: HandlerContext, draining: AbortSignal): AsyncGenerator<MarketState> {
  let latest: MarketState | undefined;
  let wake: (() => void) | undefined;
  const unsubscribe = market.subscribe((s) => {
    latest = s;
    wake?.();
  });
  const stop = () => wake?.();
  ctx.signal.addEventListener("abort", stop);
  draining.addEventListener("abort", stop);
  try {
    while (!ctx.signal.aborted && !draining.aborted) {
      if (!latest) await new Promise<void>((r) => (wake = r));
      wake = undefined;
      if (latest) {
        const s = latest;
        latest = undefined;
        yield s;
      }
    }
  } finally {
    unsubscribe();
    ctx.signal.removeEventListener("abort", stop);
    draining.removeEventListener("abort", stop);
  }
}

function allCurrenciesWithRates(mids: ReadonlyMap<string, Decimal>) {
  return allCurrencies().map((c) => ({ code: c.code, name: c.name, minorUnits: c.minorUnits, tradable: mids.has(c.code) }));
}

/** A converted amount must fit an int64 of minor units, like every amount on the wire. */
function requireRepresentable(minor: bigint, currency: string): bigint {
  if (minor > MAX_MINOR) {
    throw invalidArgument("AMOUNT_OUT_OF_RANGE", "amount", `amount: converted to ${currency} it exceeds the largest amount Paygate handles (${MAX_MINOR} minor units)`);
  }
  return minor;
}

const canonical = (text: string) => formatDecimal(parseDecimal(text, "rate"));
