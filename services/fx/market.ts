// The rate source. Offline default: the shipped reference snapshot, set in motion by a
// simulated market — every tick each floating currency takes a bounded random step (a few
// basis points), never drifting further than a set band from its reference rate; pegged
// currencies follow the US dollar at their peg. All rates are exact decimals quoted as
// units of the currency per one unit of the snapshot's base currency.
import { randomInt } from "node:crypto";
import { readFileSync } from "node:fs";
import { compare, divRoundSignificant, mul, ONE, parseDecimal, type Decimal } from "../runtime/money/decimal.js";
import { currencyInfo } from "../runtime/money/money.js";

export interface ReferenceSnapshot {
  base: string;
  date: string;
  source: string;
  /** Floating currencies: units per one base unit. */
  rates: Record<string, string>;
  /** Currencies pegged to the US dollar: units per one USD. */
  usdPegs: Record<string, string>;
  /** Floating currencies whose reference level is approximate. */
  approximate: Record<string, string>;
}

export interface MarketState {
  base: string;
  /** Units of each currency per one base unit; the base itself maps to 1. */
  mids: ReadonlyMap<string, Decimal>;
  asOf: Date;
  source: "reference-snapshot" | "simulated-market";
}

export interface MarketOptions {
  /** Milliseconds between ticks; 0 keeps the reference snapshot still. */
  tickMs: number;
  /** Largest step of one tick, in basis points. */
  maxStepBps: number;
  /** Largest distance from the reference rate, in basis points. */
  maxDriftBps: number;
  /** Random integer in [min, max] (inclusive); crypto by default, seeded in tests. */
  randomInt?: (min: number, max: number) => number;
  now?: () => Date;
}

/** Significant digits kept after a step, so rates stay short while the walk goes on. */
const WALK_SIGNIFICANT_DIGITS = 8;

export const REFERENCE_SNAPSHOT_PATH = new URL("./data/reference-rates.json", import.meta.url);

export function loadReferenceSnapshot(path: URL | string = REFERENCE_SNAPSHOT_PATH): ReferenceSnapshot {
  const snapshot = JSON.parse(readFileSync(path, "utf8")) as ReferenceSnapshot;
  // Every code must be ISO 4217 with a known exponent: fail at start-up, not on a payment.
  for (const code of [snapshot.base, ...Object.keys(snapshot.rates), ...Object.keys(snapshot.usdPegs), ...Object.keys(snapshot.approximate)]) {
    currencyInfo(code, "reference snapshot");
  }
  if (!snapshot.rates.USD && snapshot.base !== "USD" && Object.keys(snapshot.usdPegs).length > 0) {
    throw new Error("reference snapshot has US dollar pegs but no USD rate");
  }
  return snapshot;
}

export class SimulatedMarket {
  private readonly reference = new Map<string, Decimal>();
  private readonly pegs = new Map<string, Decimal>();
  private state: MarketState;
  private timer: NodeJS.Timeout | undefined;
  private readonly listeners = new Set<(state: MarketState) => void>();
  private readonly random: (min: number, max: number) => number;
  private readonly now: () => Date;
  private readonly base: string;

  constructor(
    snapshot: ReferenceSnapshot,
    private readonly opts: MarketOptions,
  ) {
    this.base = snapshot.base;
    this.random = opts.randomInt ?? ((min, max) => randomInt(min, max + 1));
    this.now = opts.now ?? (() => new Date());
    for (const [code, text] of Object.entries({ ...snapshot.rates, ...snapshot.approximate })) {
      this.reference.set(code, parseDecimal(text, `reference rate ${code}`));
    }
    for (const [code, text] of Object.entries(snapshot.usdPegs)) this.pegs.set(code, parseDecimal(text, `USD peg ${code}`));
    this.state = { base: this.base, mids: this.withPegs(new Map(this.reference)), asOf: new Date(`${snapshot.date}T00:00:00Z`), source: "reference-snapshot" };
  }

  current(): MarketState {
    return this.state;
  }

  /** Codes the market has a rate for, base included, sorted. */
  currencies(): string[] {
    return [...this.state.mids.keys()].sort();
  }

  start(): void {
    if (this.opts.tickMs > 0 && !this.timer) {
      this.tick();
      this.timer = setInterval(() => this.tick(), this.opts.tickMs);
      this.timer.unref();
    }
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Calls `listener` after every tick until the returned function is called. */
  subscribe(listener: (state: MarketState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** One market step. */
  tick(): void {
    const floating = new Map<string, Decimal>();
    for (const [code, ref] of this.reference) {
      const old = this.state.mids.get(code) ?? ref;
      const step = this.random(-this.opts.maxStepBps, this.opts.maxStepBps);
      const stepped = mul(old, { mantissa: BigInt(10_000 + step), scale: 4 });
      const low = mul(ref, { mantissa: BigInt(10_000 - this.opts.maxDriftBps), scale: 4 });
      const high = mul(ref, { mantissa: BigInt(10_000 + this.opts.maxDriftBps), scale: 4 });
      const bounded = compare(stepped, low) < 0 ? low : compare(stepped, high) > 0 ? high : stepped;
      floating.set(code, divRoundSignificant(bounded, ONE, WALK_SIGNIFICANT_DIGITS, "half_even"));
    }
    this.state = { base: this.base, mids: this.withPegs(floating), asOf: this.now(), source: "simulated-market" };
    for (const listener of this.listeners) listener(this.state);
  }

  private withPegs(floating: Map<string, Decimal>): Map<string, Decimal> {
    const mids = new Map(floating);
    mids.set(this.base, ONE);
    const usd = mids.get("USD");
    for (const [code, peg] of this.pegs) if (usd) mids.set(code, mul(usd, peg));
    return mids;
  }
}
