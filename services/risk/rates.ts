// Amounts in the base currency for the rules, from fx mid rates cached in-process, so a Score
// costs no fx call while its currency's rate is fresh.
//
// Staleness: a cached rate is used for at most `maxAgeMs` (RISK_FX_RATE_MAX_AGE_MS, 5 s by
// default) after the call that fetched it started, plus the age of fx's market tick. Risk
// thresholds are policy, not money: a base amount a few seconds behind the market (fx's
// default market moves at most 5 bp per 500 ms tick, so under 0.5 % in 5 s) is fine. The
// money path never uses these rates: payments converts through fx's quotes.
import { Code, ConnectError, type Client, type HandlerContext } from "@connectrpc/connect";
import { ErrorDetailSchema } from "../gen/paygate/common/v1/common_pb.js";
import type { FxService } from "../gen/paygate/fx/v1/fx_pb.js";
import { convertMinor } from "../runtime/money/conversion.js";
import { parseDecimal, type Decimal } from "../runtime/money/decimal.js";
import { invalidArgument } from "../runtime/errors.js";
import { currencyInfo, MAX_MINOR } from "../runtime/money/money.js";
import { downstream } from "../runtime/rpc/upstream.js";

export interface BaseRatesDeps {
  fx: Client<typeof FxService>;
  baseCurrency: string;
  /** How long a fetched rate is reused; 0 fetches one for every Score. */
  maxAgeMs: number;
  upstreamTimeoutMs: number;
  now: () => Date;
}

/** A GetRate call in flight, shared by every Score that misses the cache for that currency meanwhile. */
interface Fetch {
  rate: Promise<Decimal>;
  /** Whether it failed because the Score that started it gave up (its deadline or cancellation). */
  endedByItsCaller(err: unknown): boolean;
}

export class BaseRates {
  private readonly cache = new Map<string, { rate: Decimal; fetchedAt: number }>();
  private readonly inFlight = new Map<string, Fetch>();

  constructor(private readonly deps: BaseRatesDeps) {}

  /** The amount in the base currency, or undefined when fx cannot be reached and no fresh rate is cached. */
  async baseAmount(currency: string, amountMinor: bigint, ctx: HandlerContext): Promise<bigint | undefined> {
    const base = this.deps.baseCurrency;
    if (currency === base) return amountMinor;
    const rate = await this.rate(currency, ctx);
    if (rate === undefined) return undefined;
    // Exactly what fx's Convert computes at this rate: one half-even rounding, and its refusal
    // of a result beyond int64.
    const { convertedMinor } = convertMinor(amountMinor, currencyInfo(currency, "amount.currency").minorUnits, rate, currencyInfo(base, "base").minorUnits, "half_even");
    if (convertedMinor > MAX_MINOR) {
      throw invalidArgument("AMOUNT_OUT_OF_RANGE", "amount", `amount: converted to ${base} it exceeds the largest amount Paygate handles (${MAX_MINOR} minor units)`);
    }
    return convertedMinor;
  }

  private async rate(currency: string, ctx: HandlerContext): Promise<Decimal | undefined> {
    for (;;) {
      const cached = this.cache.get(currency);
      if (cached && this.deps.now().getTime() - cached.fetchedAt < this.deps.maxAgeMs) return cached.rate;
      const joined = this.inFlight.get(currency);
      const fetch = joined ?? this.fetch(currency, ctx);
      try {
        return await untilAborted(fetch.rate, ctx.signal);
      } catch (err) {
        if (ctx.signal.aborted) throw err;
        if (fetch.endedByItsCaller(err)) {
          // Our own caller giving up is not fx being down: no decision is recorded then.
          if (!joined) throw err;
          continue; // another Score's caller gave up, not fx: fetch again
        }
        if (err instanceof ConnectError && (err.code === Code.Unavailable || err.code === Code.DeadlineExceeded)) return undefined;
        throw err;
      }
    }
  }

  private fetch(currency: string, ctx: HandlerContext): Fetch {
    const fetchedAt = this.deps.now().getTime();
    const options = downstream(ctx, this.deps.upstreamTimeoutMs);
    // Read after `options` (it only shrinks): fx got all the time our caller has left, so fx
    // running out of it is our caller's deadline. The downstream timer and our own deadline
    // timer expire together and either may fire first, so a DEADLINE_EXCEEDED under the
    // caller's deadline counts as the caller's.
    const callerRemainingMs = ctx.timeoutMs();
    const boundByCaller = callerRemainingMs !== undefined && (options.timeoutMs ?? Infinity) >= callerRemainingMs;
    const rate = this.deps.fx
      .getRate({ baseCurrency: currency, quoteCurrency: this.deps.baseCurrency }, options)
      .then((res) => {
        if (!res.rate) throw new Error("fx returned no rate");
        const mid = parseDecimal(res.rate.midRate, "mid_rate");
        this.cache.set(currency, { rate: mid, fetchedAt });
        return mid;
      }, asScoreError)
      .finally(() => this.inFlight.delete(currency));
    const fetch: Fetch = {
      rate,
      endedByItsCaller: (err) => ctx.signal.aborted || (boundByCaller && err instanceof ConnectError && err.code === Code.DeadlineExceeded),
    };
    this.inFlight.set(currency, fetch);
    return fetch;
  }
}

/** `promise`, or the reason `signal` aborts with if it aborts first. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(ConnectError.from(signal.reason));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(ConnectError.from(signal.reason));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/** fx names the field of its own request (base_currency); to a Score caller it is amount.currency. */
function asScoreError(err: unknown): never {
  const detail = err instanceof ConnectError && err.code === Code.InvalidArgument ? err.findDetails(ErrorDetailSchema)[0] : undefined;
  if (err instanceof ConnectError && detail?.field === "base_currency") {
    throw invalidArgument(detail.reason, "amount.currency", err.rawMessage.replace(/^base_currency/, "amount.currency"), detail.metadata);
  }
  throw err;
}
