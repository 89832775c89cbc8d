// Amounts in the base currency for the rules, from fx mid rates cached in-process, so a Score
// costs no fx call while its currency's rate is fresh.
//
// Staleness: a cached rate is used for at most `maxAgeMs` (RISK_FX_RATE_MAX_AGE_MS, 5 s by
// default) after the call that fetched it started, plus the age of fx's market tick. Risk
// thresholds are policy, not money: a base amount a few seconds behind the market (fx's
// default market moves at most 5 bp per 500 ms tick, so under 0.5 % in 5 s) is fine. The
// money path never uses these rates: payments converts through fx's quotes.
import { Code, ConnectError, type Client, type HandlerContext } from "@connectrpc/connect";
import { LRUCache } from "lru-cache";
import { ErrorDetailSchema } from "../gen/paygate/common/v1/common_pb.js";
import type { FxService } from "../gen/paygate/fx/v1/fx_pb.js";
import { convertMinor } from "../runtime/money/conversion.js";
import { parseDecimal, type Decimal } from "../runtime/money/decimal.js";
import { invalidArgument } from "../runtime/errors.js";
import { allCurrencies, currencyInfo, MAX_MINOR } from "../runtime/money/money.js";
import { downstream } from "../runtime/rpc/upstream.js";

export interface BaseRatesDeps {
  fx: Client<typeof FxService>;
  baseCurrency: string;
  /** How long a fetched rate is reused; 0 fetches one for every Score. */
  maxAgeMs: number;
  upstreamTimeoutMs: number;
  now: () => Date;
}

/** A GetRate call that failed because the Score that started it gave up (its deadline or cancellation). */
class EndedByItsCaller extends Error {
  constructor(
    readonly caller: HandlerContext,
    override readonly cause: unknown,
  ) {
    super("the Score that asked fx for this rate gave up");
  }
}

export class BaseRates {
  /**
   * Mid rates to the base currency: one per currency (every ISO 4217 currency fits, none is
   * evicted), each for `maxAgeMs` after its GetRate started. Scores that miss the same
   * currency meanwhile share one GetRate, made with the deadline and cancellation of the
   * Score that started it. A failed call is not kept.
   */
  private readonly rates: LRUCache<string, Decimal, HandlerContext>;

  constructor(private readonly deps: BaseRatesDeps) {
    this.rates = new LRUCache<string, Decimal, HandlerContext>({
      max: allCurrencies().length,
      // Ages on the clock Scores are dated by, read at every lookup (not once per millisecond).
      perf: { now: () => deps.now().getTime() },
      ttlResolution: 0,
      fetchMethod: (currency, _stale, { options, context }) => this.fetch(currency, context, options),
    });
  }

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
      // With a max age of 0 nothing kept is fresh: every Score asks fx (or joins a call in flight).
      const fetched = this.rates.fetch(currency, { context: ctx, forceRefresh: this.deps.maxAgeMs === 0 });
      try {
        return await untilAborted(fetched, ctx.signal);
      } catch (thrown) {
        const endedByCaller = thrown instanceof EndedByItsCaller ? thrown : undefined;
        const err = endedByCaller ? endedByCaller.cause : thrown;
        if (ctx.signal.aborted) throw err;
        if (endedByCaller) {
          // Our own caller giving up is not fx being down: no decision is recorded then.
          if (endedByCaller.caller === ctx) throw err;
          continue; // another Score's caller gave up, not fx: fetch again
        }
        if (err instanceof ConnectError && (err.code === Code.Unavailable || err.code === Code.DeadlineExceeded)) return undefined;
        throw err;
      }
    }
  }

  /** One GetRate for `currency` on behalf of the Score `ctx`; sets how long its answer stays fresh in `kept.ttl`. */
  private async fetch(currency: string, ctx: HandlerContext, kept: { ttl?: number }): Promise<Decimal> {
    const fetchedAt = this.deps.now().getTime();
    const options = downstream(ctx, this.deps.upstreamTimeoutMs);
    // Read after `options` (it only shrinks): fx got all the time our caller has left, so fx
    // running out of it is our caller's deadline. The downstream timer and our own deadline
    // timer expire together and either may fire first, so a DEADLINE_EXCEEDED under the
    // caller's deadline counts as the caller's.
    const callerRemainingMs = ctx.timeoutMs();
    const boundByCaller = callerRemainingMs !== undefined && (options.timeoutMs ?? Infinity) >= callerRemainingMs;
    try {
      const res = await this.deps.fx.getRate({ baseCurrency: currency, quoteCurrency: this.deps.baseCurrency }, options).catch(asScoreError);
      if (!res.rate) throw new Error("fx returned no rate");
      const mid = parseDecimal(res.rate.midRate, "mid_rate");
      // Too old once maxAgeMs have passed since the call started. lru-cache counts an entry stale
      // once more than `ttl` ms have passed since it was stored, so on this whole-millisecond
      // clock `ttl` is what is left of maxAgeMs less 1 (at least 1 ms: lru-cache reads 0 as
      // "never stale").
      kept.ttl = Math.max(1, fetchedAt + this.deps.maxAgeMs - 1 - this.deps.now().getTime());
      return mid;
    } catch (err) {
      if (ctx.signal.aborted || (boundByCaller && err instanceof ConnectError && err.code === Code.DeadlineExceeded)) throw new EndedByItsCaller(ctx, err);
      throw err;
    }
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
