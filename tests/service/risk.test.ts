// RiskService end to end in-process: the real handlers behind a router transport, a real
// database (PGlite always; PostgreSQL too when TEST_DATABASE_URL is set), a clock the test
// moves (it also ages risk's cached fx rates), and fx either real (in-process, rates frozen at
// the reference snapshot), down, or a fake.
import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  createClient,
  createHandlerContext,
  createRouterTransport,
  type CallOptions,
  type Client,
  type Interceptor,
  type ServiceImpl,
  type Transport,
} from "@connectrpc/connect";
import { ErrorDetailSchema, type ErrorDetail } from "../../services/gen/paygate/common/v1/common_pb.js";
import { FxService } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { Outcome, RiskService, type Decision, type ScoreRequest } from "../../services/gen/paygate/risk/v1/risk_pb.js";
import { loadReferenceSnapshot, SimulatedMarket } from "../../services/fx/market.js";
import { QuoteStore } from "../../services/fx/quotes.js";
import { fxService } from "../../services/fx/service.js";
import { BaseRates } from "../../services/risk/rates.js";
import { parseRuleSet, type RuleSet } from "../../services/risk/rules.js";
import { riskService } from "../../services/risk/service.js";
import { DecisionStore } from "../../services/risk/store.js";
import { openDatabase, type Database, type Queryable } from "../../services/runtime/db/database.js";
import { errorMapping } from "../../services/runtime/rpc/interceptors.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { migrate } from "../../services/runtime/db/migrate.js";
import { allCurrencies, money } from "../../services/runtime/money/money.js";
import { storageBackends, testDatabases } from "../support/postgres.js";
import { stringify } from "yaml";

type ScoreInit = Omit<ScoreRequest, "$typeName" | "$unknown">;
/** fx as risk sees it: the real one, one that is down, or a fake. */
type FxMode = "real" | "down" | Partial<ServiceImpl<typeof FxService>>;
type Doc = Record<string, unknown>;

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const T0 = Date.parse("2030-03-01T12:00:00.000Z");
const LONG_AGO = timestampFromDate(new Date("2020-01-01T00:00:00Z"));
const logger = createLogger("risk-test", "silent");
const routerOptions = { router: { interceptors: [errorMapping(logger)] } };

const uid = () => randomUUID().replaceAll("-", "").slice(0, 12);

class Clock {
  constructor(public t = T0) {}
  readonly now = () => new Date(this.t);
  advance(ms: number) {
    this.t += ms;
  }
}

/** A rules file for one test: the given rules, nothing else. */
function rulesYaml(over: Doc = {}): string {
  return stringify({ version: "svc-1", baseCurrency: "USD", thresholds: { review: 50, decline: 80 }, rules: {}, ...over });
}

const codes = (d: Decision | undefined) => (d?.reasons ?? []).map((r) => r.code);

async function rpcError(call: Promise<unknown>): Promise<{ code: Code; detail: ErrorDetail | undefined; message: string }> {
  try {
    await call;
  } catch (err) {
    expect(err).toBeInstanceOf(ConnectError);
    const e = err as ConnectError;
    return { code: e.code, detail: e.findDetails(ErrorDetailSchema)[0], message: e.rawMessage };
  }
  throw new Error("expected the call to fail, it succeeded");
}

// fx, real and in-process: rates frozen at the reference snapshot (no ticking).
let fxDb: Database;
let fxImpl: ReturnType<typeof fxService>;
/** The fx client tests use to compute what risk should have got. */
let fxDirect: Client<typeof FxService>;

beforeAll(async () => {
  fxDb = await openDatabase({ dataDir: "memory://", schema: "fx" });
  await migrate(fxDb, fileURLToPath(new URL("../../services/fx/migrations", import.meta.url)));
  const market = new SimulatedMarket(loadReferenceSnapshot(), { tickMs: 0, maxStepBps: 0, maxDriftBps: 0 });
  fxImpl = fxService({
    market,
    quotes: new QuoteStore(fxDb),
    spreadBps: 30,
    defaultQuoteTtlMs: 30_000,
    maxQuoteTtlMs: 3_600_000,
    now: () => new Date(),
    draining: new AbortController().signal,
  });
  fxDirect = createClient(FxService, createRouterTransport((r) => r.service(FxService, fxImpl), routerOptions));
});

afterAll(async () => {
  await fxDb?.close();
});

/** `db`, logging each statement it runs (whitespace collapsed) into `log`. */
/** Runs before each statement risk sends, when set (a test's way to come between two statements). */
let interpose: ((sql: string) => Promise<void>) | undefined;

function logged(db: Database, log: string[]): Database {
  const wrap = (q: Queryable): Queryable => ({
    query: async (sql, params) => {
      log.push(sql.replace(/\s+/g, " ").trim());
      await interpose?.(sql);
      return q.query(sql, params);
    },
    exec: (sql) => q.exec(sql),
  });
  return {
    ...db,
    ...wrap(db),
    async transaction(fn) {
      log.push("BEGIN");
      try {
        const result = await db.transaction((tx) => fn(wrap(tx)));
        log.push("COMMIT");
        return result;
      } catch (err) {
        log.push("ROLLBACK");
        throw err;
      }
    },
  };
}

async function usdOf(currency: string, amountMinor: bigint): Promise<bigint> {
  const res = await fxDirect.convert({ source: { case: "amount", value: money(currency, amountMinor) }, toCurrency: "USD" });
  expect(res.converted?.currency).toBe("USD");
  return res.converted!.amountMinor;
}

describe.each(storageBackends())("risk service on $name", (backend) => {
  const dbs = testDatabases(backend, "risk_service");
  let store: DecisionStore;
  let riskDb: Database;
  /** Every statement risk sent, BEGIN and COMMIT/ROLLBACK included. */
  const statements: string[] = [];

  beforeAll(async () => {
    const db = (riskDb = await dbs.open(dbs.newSchema()));
    const { applied } = await migrate(db, fileURLToPath(new URL("../../services/risk/migrations", import.meta.url)));
    expect(applied).toContain("001_decisions.sql");
    store = new DecisionStore(logged(db, statements));
  });

  afterAll(async () => {
    await dbs.cleanup();
  });

  interface Harness {
    risk: Client<typeof RiskService>;
    rules: RuleSet;
    clock: Clock;
    /** Swaps the fx risk talks to. */
    setFx(mode: FxMode): void;
    /** Calls risk made to fx so far. */
    fxCalls(): number;
    /** Score with defaults filled in (a fresh payment id, an old account, USD). */
    score(over?: Partial<ScoreInit>, options?: { timeoutMs?: number }): Promise<Decision>;
  }

  function harness(opts: { rules?: Doc | string; fx?: FxMode; fxRateMaxAgeMs?: number; store?: DecisionStore } = {}): Harness {
    const rules = parseRuleSet(typeof opts.rules === "string" ? opts.rules : rulesYaml(opts.rules), "test rules");
    const clock = new Clock();
    let calls = 0;
    const counting: Interceptor = (next) => (req) => {
      calls++;
      return next(req);
    };
    let fx = opts.fx ?? "real";
    const down: Partial<ServiceImpl<typeof FxService>> = {
      getRate() {
        throw new ConnectError("down", Code.Unavailable);
      },
    };
    // Risk asks fx for rates only: GetRate goes to whatever fx is at the moment.
    const current: Partial<ServiceImpl<typeof FxService>> = {
      getRate(req, ctx) {
        const impl = fx === "real" ? fxImpl : fx === "down" ? down : fx;
        if (!impl.getRate) throw new ConnectError("not implemented", Code.Unimplemented);
        return impl.getRate(req, ctx);
      },
    };
    const fxTransport: Transport = createRouterTransport((r) => r.service(FxService, current), {
      router: { interceptors: [counting, errorMapping(logger)] },
    });
    const risk = createClient(
      RiskService,
      createRouterTransport(
        (r) =>
          r.service(
            RiskService,
            riskService({ rules, store: opts.store ?? store, fx: createClient(FxService, fxTransport), upstreamTimeoutMs: 5_000, fxRateMaxAgeMs: opts.fxRateMaxAgeMs ?? 5_000, now: clock.now }),
          ),
        routerOptions,
      ),
    );
    const account = `acc_${uid()}`;
    return {
      risk,
      rules,
      clock,
      setFx: (mode) => void (fx = mode),
      fxCalls: () => calls,
      async score(over = {}, options = {}) {
        const res = await risk.score(
          {
          paymentId: `pay_${uid()}`,
          accountId: account,
          destinationAccountId: "acc_merchant",
          merchantId: "m_1",
          amount: money("USD", 1_000n),
          accountOpenedAt: LONG_AGO,
          ...over,
          },
          options,
        );
        expect(res.decision).toBeDefined();
        return res.decision!;
      },
    };
  }

  describe("decisions", () => {
    it("Score records a decision, retrievable by decision_id and by payment_id, with the rules version", async () => {
      const h = harness({ rules: { rules: { amount: [{ over: "100.00", points: 20 }], currencyMismatch: { points: 15 } } } });
      const paymentId = `pay_${uid()}`;
      const d = await h.score({ paymentId, accountId: "acc_rec_" + uid(), amount: money("USD", 12_345n), accountCurrency: "USD", merchantId: "m_42" });
      expect(d.id).toMatch(/^rd_[0-9a-f]{32}$/);
      expect(d).toMatchObject({
        paymentId,
        merchantId: "m_42",
        amount: { currency: "USD", amountMinor: 12_345n },
        baseAmount: { currency: "USD", amountMinor: 12_345n },
        score: 20,
        outcome: Outcome.APPROVE,
        shadowScore: 20,
        shadowOutcome: Outcome.APPROVE,
        rulesVersion: h.rules.version,
      });
      expect(d.rulesVersion).toMatch(/^svc-1\+[0-9a-f]{8}$/);
      expect(d.reasons.map((r) => ({ code: r.code, points: r.points, shadow: r.shadow }))).toEqual([{ code: "AMOUNT_OVER_THRESHOLD", points: 20, shadow: false }]);
      expect(timestampDate(d.createdAt!).getTime()).toBe(T0);

      h.clock.advance(HOUR);
      const byId = await h.risk.getDecision({ key: { case: "decisionId", value: d.id } });
      const byPayment = await h.risk.getDecision({ key: { case: "paymentId", value: paymentId } });
      expect(byId.decision).toEqual(d);
      expect(byPayment.decision).toEqual(d);
    });

    it("a REVIEW and a DECLINE are recorded like an APPROVE", async () => {
      const h = harness({ rules: { rules: { amount: [{ over: "100.00", points: 50 }, { over: "1000.00", points: 30 }] } } });
      const review = await h.score({ amount: money("USD", 10_001n) });
      const decline = await h.score({ amount: money("USD", 100_001n) });
      expect([review.outcome, review.score]).toEqual([Outcome.REVIEW, 50]);
      expect([decline.outcome, decline.score]).toEqual([Outcome.DECLINE, 80]);
      expect((await h.risk.getDecision({ key: { case: "paymentId", value: decline.paymentId } })).decision?.outcome).toBe(Outcome.DECLINE);
    });

    it("per-rule shadow and shadow mode are recorded with their shadow score and outcome", async () => {
      const shadowRule = harness({ rules: { rules: { amount: [{ over: "1.00", points: 85, shadow: true }] } } });
      const a = await shadowRule.score();
      expect(a).toMatchObject({ score: 0, outcome: Outcome.APPROVE, shadowScore: 85, shadowOutcome: Outcome.DECLINE });
      expect(a.reasons.map((r) => [r.code, r.shadow])).toEqual([["AMOUNT_OVER_THRESHOLD", true]]);
      const shadowMode = harness({ rules: { mode: "shadow", lists: { blockedAccounts: ["acc_blocked_svc"] } } });
      const b = await shadowMode.score({ accountId: "acc_blocked_svc" });
      expect(b).toMatchObject({ score: 0, outcome: Outcome.APPROVE, shadowScore: 99, shadowOutcome: Outcome.DECLINE });
      expect((await shadowMode.risk.getDecision({ key: { case: "decisionId", value: b.id } })).decision).toEqual(b);
    });

    it("the same payment_id with the same request returns the same decision and counts once in velocity", async () => {
      const h = harness({ rules: { rules: { velocity: [{ window: "1h", maxCount: 2, points: 60 }] } } });
      const first: Partial<ScoreInit> = { paymentId: `pay_${uid()}`, amount: money("USD", 5_000n) };
      const d1 = await h.score(first);
      h.clock.advance(1_000);
      const again = await h.score(first);
      const concurrent = await Promise.all([1, 2, 3, 4].map(() => h.score(first)));
      for (const d of [again, ...concurrent]) expect(d).toEqual(d1);
      // Only one decision for the payment so far: the second payment is the 2nd, not the 6th.
      h.clock.advance(1_000);
      expect(codes(await h.score())).toEqual([]);
      expect(codes(await h.score())).toEqual(["VELOCITY_COUNT"]);
    });

    it("the same payment_id with other content is ALREADY_EXISTS PAYMENT_ALREADY_SCORED", async () => {
      const h = harness();
      const paymentId = `pay_${uid()}`;
      const d = await h.score({ paymentId, amount: money("USD", 5_000n) });
      for (const other of [{ amount: money("USD", 5_001n) }, { amount: money("EUR", 5_000n) }, { merchantId: "m_other" }, { destinationAccountId: "acc_else" }]) {
        const err = await rpcError(h.score({ paymentId, amount: money("USD", 5_000n), ...other }));
        expect(err.code).toBe(Code.AlreadyExists);
        expect(err.detail).toMatchObject({ reason: "PAYMENT_ALREADY_SCORED", field: "payment_id" });
      }
      // Another account scoring the same payment id is refused too.
      expect((await rpcError(h.score({ paymentId, accountId: "acc_someone_else", amount: money("USD", 5_000n) }))).code).toBe(Code.AlreadyExists);
      expect((await h.risk.getDecision({ key: { case: "paymentId", value: paymentId } })).decision).toEqual(d);
    });

    it("concurrent requests for one payment with different content: one decision, the others ALREADY_EXISTS", async () => {
      const h = harness();
      const paymentId = `pay_${uid()}`;
      const results = await Promise.allSettled([1n, 2n, 3n, 4n, 5n].map((n) => h.score({ paymentId, amount: money("USD", 1_000n + n) })));
      const won = results.filter((r): r is PromiseFulfilledResult<Decision> => r.status === "fulfilled");
      expect(won).toHaveLength(1);
      for (const r of results) {
        if (r.status === "rejected") expect(ConnectError.from(r.reason).code).toBe(Code.AlreadyExists);
      }
      expect((await h.risk.getDecision({ key: { case: "paymentId", value: paymentId } })).decision).toEqual(won[0]!.value);
    });
  });

  describe("velocity", () => {
    it("count: a payment exactly one window after the earlier one is outside the sliding window", async () => {
      const rules = { rules: { velocity: [{ window: "1m", maxCount: 1, points: 60 }] } };
      const inside = harness({ rules });
      expect(codes(await inside.score())).toEqual([]);
      inside.clock.advance(59_999);
      const second = await inside.score();
      expect(codes(second)).toEqual(["VELOCITY_COUNT"]);
      expect(second.outcome).toBe(Outcome.REVIEW);

      const outside = harness({ rules });
      expect(codes(await outside.score())).toEqual([]);
      outside.clock.advance(60_000);
      expect(codes(await outside.score())).toEqual([]);
    });

    it("count over successive payments as the clock advances: old payments drop out", async () => {
      const h = harness({ rules: { rules: { velocity: [{ window: "1m", maxCount: 3, points: 40 }] } } });
      const plan: [seconds: number, fires: boolean][] = [
        [0, false],
        [10, false],
        [20, false], // 3 in the window: reached, not exceeded
        [30, true], // 4
        [65, true], // window (5s, 65s]: 10, 20, 30 and this one
        [100, false], // window (40s, 100s]: 65 and this one
        [101, false],
        [102, true],
      ];
      const seen: [number, boolean][] = [];
      for (const [s] of plan) {
        h.clock.t = T0 + s * 1000;
        seen.push([s, codes(await h.score()).includes("VELOCITY_COUNT")]);
      }
      expect(seen).toEqual(plan);
    });

    it("velocity is per account", async () => {
      const rules = { rules: { velocity: [{ window: "1h", maxCount: 1, points: 60 }] } };
      const a = harness({ rules });
      expect(codes(await a.score())).toEqual([]);
      expect(codes(await a.score({ accountId: `acc_${uid()}` }))).toEqual([]);
      expect(codes(await a.score())).toEqual(["VELOCITY_COUNT"]);
    });

    it("sum: EUR, JPY and KWD payments are normalised to USD through fx and summed in USD", async () => {
      const h = harness({ rules: { rules: { velocity: [{ window: "1h", maxSum: "1000.00", points: 60 }] } } });
      const payments = [money("EUR", 200_00n), money("JPY", 30_000n), money("KWD", 80_000n)];
      let sum = 0n;
      for (const amount of payments) {
        h.clock.advance(60_000);
        const expected = await usdOf(amount.currency, amount.amountMinor);
        expect(expected).toBeGreaterThan(0n);
        const d = await h.score({ amount });
        expect(d.amount).toMatchObject({ currency: amount.currency, amountMinor: amount.amountMinor });
        expect(d.baseAmount).toMatchObject({ currency: "USD", amountMinor: expected });
        expect(codes(d)).toEqual([]);
        sum += expected;
      }
      expect(h.fxCalls()).toBe(3);
      expect(sum).toBeLessThan(1000_00n);
      // Up to exactly the maximum passes; one cent more fires.
      expect(codes(await h.score({ amount: money("USD", 1000_00n - sum) }))).toEqual([]);
      const over = await h.score({ amount: money("USD", 1n) });
      expect(codes(over)).toEqual(["VELOCITY_SUM"]);
      expect(over.outcome).toBe(Outcome.REVIEW);
      // The window now holds the maximum plus one cent. An hour after the first payment, that
      // payment has left the window: its USD value less one cent fits again, exactly.
      h.clock.t = T0 + 60_000 + HOUR;
      const first = await usdOf("EUR", 200_00n);
      expect(codes(await h.score({ amount: money("USD", first - 1n) }))).toEqual([]);
      expect(codes(await h.score({ amount: money("USD", 1n) }))).toEqual(["VELOCITY_SUM"]);
    });

    it("amount thresholds compare the USD value, not the nominal amount", async () => {
      const h = harness({ rules: { rules: { amount: [{ over: "100.00", points: 20 }] } } });
      // 100.00 EUR is more than 100.00 USD; 10 000 JPY is less.
      expect(await usdOf("EUR", 100_00n)).toBeGreaterThan(100_00n);
      expect(codes(await h.score({ amount: money("EUR", 100_00n) }))).toEqual(["AMOUNT_OVER_THRESHOLD"]);
      expect(await usdOf("JPY", 10_000n)).toBeLessThanOrEqual(100_00n);
      expect(codes(await h.score({ amount: money("JPY", 10_000n) }))).toEqual([]);
    });
  });

  describe("new account and currency mismatch", () => {
    const rules = { rules: { newAccount: { maxAge: "24h", points: 10 } } };

    it("by account_opened_at: younger than maxAge fires, exactly maxAge old does not", async () => {
      const h = harness({ rules });
      const openedAgo = (ms: number) => timestampFromDate(new Date(T0 - ms));
      expect(codes(await h.score({ accountOpenedAt: openedAgo(HOUR) }))).toEqual(["NEW_ACCOUNT"]);
      expect(codes(await h.score({ accountOpenedAt: openedAgo(DAY - 1) }))).toEqual(["NEW_ACCOUNT"]);
      expect(codes(await h.score({ accountOpenedAt: openedAgo(DAY) }))).toEqual([]);
    });

    it("without account_opened_at, by when risk first saw the account", async () => {
      const h = harness({ rules });
      const first = await h.score({ accountOpenedAt: undefined });
      expect(codes(first)).toEqual(["NEW_ACCOUNT"]);
      h.clock.advance(DAY - 1);
      expect(codes(await h.score({ accountOpenedAt: undefined }))).toEqual(["NEW_ACCOUNT"]);
      h.clock.advance(1);
      expect(codes(await h.score({ accountOpenedAt: undefined }))).toEqual([]);
    });

    it("an account first scored with account_opened_at is seen from then on", async () => {
      const h = harness({ rules });
      expect(codes(await h.score())).toEqual([]); // opened long ago
      h.clock.advance(DAY);
      // Risk has known this account for a day: not new, even though this caller gives no date.
      expect(codes(await h.score({ accountOpenedAt: undefined }))).toEqual([]);
    });

    it("currency mismatch: a payment in another currency than the account's", async () => {
      const h = harness({ rules: { rules: { currencyMismatch: { points: 15 } } } });
      const d = await h.score({ amount: money("EUR", 10_00n), accountCurrency: "USD" });
      expect(d.reasons.map((r) => [r.code, r.points])).toEqual([["CURRENCY_MISMATCH", 15]]);
      expect(d.reasons[0]?.message).toContain("EUR");
      expect(codes(await h.score({ amount: money("EUR", 10_00n), accountCurrency: "EUR" }))).toEqual([]);
      expect(codes(await h.score({ amount: money("EUR", 10_00n), accountCurrency: "" }))).toEqual([]);
    });
  });

  describe("fx unreachable", () => {
    const rules = { rules: { amount: [{ over: "1.00", points: 90 }], velocity: [{ window: "1h", maxCount: 1, points: 60 }, { window: "1h", maxSum: "1.00", points: 90 }] } };

    it("fails closed by default: DECLINE with FX_UNAVAILABLE, and the decision is persisted", async () => {
      const h = harness({ rules, fx: "down" });
      expect(h.rules.failClosedWithoutFx).toBe(true);
      const d = await h.score({ amount: money("EUR", 10_00n) });
      expect(h.fxCalls()).toBeGreaterThanOrEqual(1);
      expect(d).toMatchObject({ score: 99, outcome: Outcome.DECLINE });
      expect(d.baseAmount).toBeUndefined();
      expect(d.reasons[0]).toMatchObject({ code: "FX_UNAVAILABLE", points: 99, shadow: false });
      expect((await h.risk.getDecision({ key: { case: "paymentId", value: d.paymentId } })).decision).toEqual(d);
    });

    it("fails open when the rules say so: not declined for it, amount and sum rules skipped, count rules apply", async () => {
      const h = harness({ rules: { fxUnavailable: "open", ...rules }, fx: "down" });
      const first = await h.score({ amount: money("EUR", 5_000_00n) });
      expect(first.reasons.map((r) => [r.code, r.points])).toEqual([["FX_UNAVAILABLE", 0]]);
      expect(first).toMatchObject({ score: 0, outcome: Outcome.APPROVE });
      expect(first.baseAmount).toBeUndefined();
      const second = await h.score({ amount: money("EUR", 5_000_00n) });
      expect(second.reasons.map((r) => [r.code, r.points])).toEqual([
        ["FX_UNAVAILABLE", 0],
        ["VELOCITY_COUNT", 60],
      ]);
      expect(second.outcome).toBe(Outcome.REVIEW);
    });

    it("a payment in the base currency needs no fx, even with fx down", async () => {
      const h = harness({ rules, fx: "down" });
      const d = await h.score({ amount: money("USD", 50_00n) });
      expect(h.fxCalls()).toBe(0);
      expect(codes(d)).toEqual(["AMOUNT_OVER_THRESHOLD", "VELOCITY_SUM"]);
      expect(d.baseAmount).toMatchObject({ currency: "USD", amountMinor: 50_00n });
      const up = harness({ rules: { rules: {} } });
      await up.score({ amount: money("USD", 50_00n) });
      expect(up.fxCalls()).toBe(0);
    });

    it("fx timing out within the caller's own deadline is the caller's deadline: nothing recorded", async () => {
      // fx answers DEADLINE_EXCEEDED when the deadline it was given runs out. Risk's own timer for
      // the same deadline may fire a moment later, so risk must not take this for fx being down
      // (it used to record a DECLINE with FX_UNAVAILABLE for a caller already gone).
      const timesOut: Partial<ServiceImpl<typeof FxService>> = {
        getRate(_req, ctx) {
          expect(ctx.timeoutMs()).toBeDefined();
          throw new ConnectError("the operation timed out", Code.DeadlineExceeded);
        },
      };
      const h = harness({ fx: timesOut });
      const paymentId = `pay_${uid()}`;
      const err = await rpcError(h.score({ paymentId, amount: money("EUR", 10_00n) }, { timeoutMs: 5_000 }));
      expect(err.code).toBe(Code.DeadlineExceeded);
      expect(h.fxCalls()).toBe(1);
      expect((await rpcError(h.risk.getDecision({ key: { case: "paymentId", value: paymentId } }))).code).toBe(Code.NotFound);
      // Without a caller deadline the timeout is risk's own upstream timeout: fx is unreachable.
      const d = await h.score({ amount: money("EUR", 10_00n) });
      expect(d.reasons[0]).toMatchObject({ code: "FX_UNAVAILABLE", points: 99 });
      expect(d.outcome).toBe(Outcome.DECLINE);
    });

    it("an fx refusal that is not unavailability (a currency fx has no rate for) fails the call and records nothing", async () => {
      const h = harness();
      const paymentId = `pay_${uid()}`;
      const err = await rpcError(h.score({ paymentId, amount: money("ISK", 1_000n) }));
      expect(err.code).toBe(Code.InvalidArgument);
      expect(err.detail).toMatchObject({ reason: "UNSUPPORTED_CURRENCY", field: "amount.currency" });
      // Word for word what fx's Convert says about the same amount (risk asks GetRate, whose field is base_currency).
      const fxSays = await rpcError(fxDirect.convert({ source: { case: "amount", value: money("ISK", 1_000n) }, toCurrency: "USD" }));
      expect(err.message).toBe(fxSays.message);
      expect(err.message).toMatch(/^amount\.currency: ISK/);
      expect((await rpcError(h.risk.getDecision({ key: { case: "paymentId", value: paymentId } }))).code).toBe(Code.NotFound);
    });
  });

  describe("fx rate cache", () => {
    it("one GetRate per currency for every Score within the max age, conversions exact; fetched again once it is that old", async () => {
      const h = harness({ fxRateMaxAgeMs: 5_000 });
      const eur = async (amountMinor: bigint) => {
        const d = await h.score({ amount: money("EUR", amountMinor) });
        expect(d.baseAmount).toEqual(money("USD", await usdOf("EUR", amountMinor)));
      };
      await eur(10_00n);
      expect(h.fxCalls()).toBe(1);
      h.clock.advance(2_000);
      for (const amount of [1n, 33_33n, 1_000_000_00n]) await eur(amount);
      h.clock.advance(2_999);
      await Promise.all([7n, 8n, 9n, 10n, 11n].map(eur));
      expect(h.fxCalls()).toBe(1);
      // Each currency has its rate.
      const jpy = await h.score({ amount: money("JPY", 12_345n) });
      expect(jpy.baseAmount).toEqual(money("USD", await usdOf("JPY", 12_345n)));
      expect(h.fxCalls()).toBe(2);
      // 5 s after the EUR rate was fetched it is too old.
      h.clock.advance(1);
      await eur(10_00n);
      expect(h.fxCalls()).toBe(3);
      await eur(10_00n);
      expect(h.fxCalls()).toBe(3);

      const uncached = harness({ fxRateMaxAgeMs: 0 });
      for (const n of [1n, 2n, 3n]) await uncached.score({ amount: money("EUR", n) });
      expect(uncached.fxCalls()).toBe(3);
    });

    it("fx down: a fresh cached rate still converts; once too old, FX_UNAVAILABLE (fail closed) until fx is back", async () => {
      const h = harness({ rules: { rules: { amount: [{ over: "1.00", points: 20 }] } }, fxRateMaxAgeMs: 5_000 });
      expect(codes(await h.score({ amount: money("EUR", 10_00n) }))).toEqual(["AMOUNT_OVER_THRESHOLD"]);
      h.setFx("down");
      h.clock.advance(4_999);
      const cached = await h.score({ amount: money("EUR", 10_00n) });
      expect(codes(cached)).toEqual(["AMOUNT_OVER_THRESHOLD"]);
      expect(cached.baseAmount).toEqual(money("USD", await usdOf("EUR", 10_00n)));
      expect(h.fxCalls()).toBe(1);
      h.clock.advance(1);
      const stale = await h.score({ amount: money("EUR", 10_00n) });
      expect(stale).toMatchObject({ score: 99, outcome: Outcome.DECLINE });
      expect(codes(stale)).toEqual(["FX_UNAVAILABLE"]);
      expect(stale.baseAmount).toBeUndefined();
      expect(h.fxCalls()).toBe(2);
      // fx down is not remembered: the next Score asks again, and fx is back.
      h.setFx("real");
      expect(codes(await h.score({ amount: money("EUR", 10_00n) }))).toEqual(["AMOUNT_OVER_THRESHOLD"]);
      expect(h.fxCalls()).toBe(3);
    });

    it("a payment scored already gets its decision, or PAYMENT_ALREADY_SCORED, even when fx then fails the call", async () => {
      const h = harness({ fxRateMaxAgeMs: 1_000 });
      const req: Partial<ScoreInit> = { paymentId: `pay_${uid()}`, amount: money("EUR", 10_00n) };
      const d = await h.score(req);
      h.clock.advance(1_000); // the rate is too old: a replay asks fx again
      h.setFx({
        getRate() {
          throw new ConnectError("the operation timed out", Code.DeadlineExceeded);
        },
      });
      expect(await h.score(req, { timeoutMs: 5_000 })).toEqual(d);
      const other = await rpcError(h.score({ ...req, amount: money("EUR", 10_01n) }, { timeoutMs: 5_000 }));
      expect(other.code).toBe(Code.AlreadyExists);
      expect(other.detail?.reason).toBe("PAYMENT_ALREADY_SCORED");
      // A new payment under the same failure still gets the caller's deadline.
      expect((await rpcError(h.score({ amount: money("EUR", 10_00n) }, { timeoutMs: 5_000 }))).code).toBe(Code.DeadlineExceeded);
      expect(h.fxCalls()).toBe(4);
    });

    it("an amount whose base value exceeds int64 is refused as fx's Convert refuses it; nothing recorded", async () => {
      const h = harness();
      const amount = money("EUR", 2n ** 63n - 1n);
      const fxSays = await rpcError(fxDirect.convert({ source: { case: "amount", value: amount }, toCurrency: "USD" }));
      expect(fxSays.detail?.reason).toBe("AMOUNT_OUT_OF_RANGE");
      const paymentId = `pay_${uid()}`;
      const err = await rpcError(h.score({ paymentId, amount }));
      expect(err).toEqual(fxSays);
      expect((await rpcError(h.risk.getDecision({ key: { case: "paymentId", value: paymentId } }))).code).toBe(Code.NotFound);
    });
  });

  describe("statements", () => {
    it("a new Score is one read and one guarded INSERT, no transaction; a replay or a refusal is the read alone", async () => {
      const h = harness({
        rules: { rules: { velocity: [{ window: "1m", maxCount: 5, points: 40 }, { window: "1h", maxSum: "100.00", points: 40 }], newAccount: { maxAge: "24h", points: 10 } } },
      });
      const kind = (sql: string) =>
        ["BEGIN", "COMMIT", "ROLLBACK"].includes(sql) ? sql : sql.includes("pg_advisory_xact_lock") ? "lock" : sql.includes("INSERT INTO decisions") ? "insert" : "read";
      const shape = () => statements.map(kind);
      const req: Partial<ScoreInit> = { paymentId: `pay_${uid()}`, amount: money("EUR", 10_00n), accountOpenedAt: undefined };
      statements.length = 0;
      await h.score(req);
      expect(shape()).toEqual(["read", "insert"]);
      statements.length = 0;
      await h.score(req);
      expect(shape()).toEqual(["read"]);
      statements.length = 0;
      await rpcError(h.score({ ...req, amount: money("EUR", 10_01n) }));
      expect(shape()).toEqual(["read"]);
    });

    it("the next payment of an account this store scored is one statement: the account's state is kept, not read", async () => {
      const h = harness({ rules: { rules: { velocity: [{ window: "1m", maxCount: 2, points: 40 }, { window: "1h", maxSum: "25.00", points: 20 }] } } });
      const kind = (sql: string) => (sql.includes("INSERT INTO decisions") ? "insert" : "read");
      statements.length = 0;
      const decisions = [];
      for (let i = 0; i < 4; i++) decisions.push(await h.score({ amount: money("USD", 10_00n) }));
      expect(statements.map(kind)).toEqual(["read", "insert", "insert", "insert", "insert"]);
      // Counted as a read would: the 3rd and 4th see 2 and 3 in the minute; the 3rd is over 25.00 in the hour.
      expect(decisions.map(codes)).toEqual([[], [], ["VELOCITY_COUNT", "VELOCITY_SUM"], ["VELOCITY_COUNT", "VELOCITY_SUM"]]);
      // A minute later the minute window is empty again, the hour still holds all four.
      h.clock.advance(61_000);
      expect(codes(await h.score({ amount: money("USD", 1n) }))).toEqual(["VELOCITY_SUM"]);
    });

    it("a store keeps the states of the accounts it scored most recently, as many as it may", async () => {
      const h = harness({ store: new DecisionStore(logged(riskDb, statements), 2) });
      const kind = (sql: string) => (sql.includes("INSERT INTO decisions") ? "insert" : "read");
      const [a, b, c] = [`acc_${uid()}`, `acc_${uid()}`, `acc_${uid()}`];
      for (const accountId of [a, b, a, c]) await h.score({ accountId }); // c's state takes b's place
      statements.length = 0;
      await h.score({ accountId: a });
      await h.score({ accountId: c });
      expect(statements.map(kind)).toEqual(["insert", "insert"]);
      statements.length = 0;
      await h.score({ accountId: b });
      expect(statements.map(kind)).toEqual(["read", "insert"]);
    });

    it("a retry of a payment scored before the kept window still gets its recorded decision", async () => {
      const h = harness({ rules: { rules: { velocity: [{ window: "1m", maxCount: 5, points: 40 }] } } });
      const paymentId = `pay_${uid()}`;
      const first = await h.score({ paymentId });
      h.clock.advance(5 * 60_000);
      await h.score(); // the kept state now holds only this one
      expect(await h.score({ paymentId })).toEqual(first);
      expect((await h.risk.getDecision({ key: { case: "paymentId", value: paymentId } })).decision).toEqual(first);
    });

    it("two replicas scoring one account in turn count every decision: a kept state another replica has moved past is not used", async () => {
      const other = new DecisionStore(riskDb);
      const rules = { rules: { velocity: [{ window: "1m", maxCount: 3, points: 40 }] } };
      const a = harness({ rules });
      const b = harness({ rules, store: other });
      const accountId = `acc_${uid()}`;
      const seen: number[] = [];
      for (let i = 0; i < 8; i++) {
        const d = await (i % 2 === 0 ? a : b).score({ accountId });
        const fired = d.reasons.find((r) => r.code === "VELOCITY_COUNT");
        seen.push(fired ? Number(/^(\d+) payments/.exec(fired.message)?.[1]) : 0);
      }
      // Each payment counts every one before it, whichever replica scored them: from the 4th on
      // the rule fires, naming the payments in the minute with this one.
      expect(seen).toEqual([0, 0, 0, 4, 5, 6, 7, 8]);
    });

    it("a Score that loses the race to another decision of its account decides again under the account's lock, counting it", async () => {
      const h = harness({ rules: { rules: { velocity: [{ window: "1m", maxCount: 1, points: 40 }] } } });
      let other: Promise<Decision> | undefined;
      // Just before the first payment's INSERT, a second payment of the account is scored whole.
      interpose = async (sql) => {
        if (!sql.includes("INSERT INTO decisions")) return;
        interpose = undefined;
        other = h.score();
        await other;
      };
      statements.length = 0;
      const first = await h.score();
      const second = await other!;
      expect(codes(second)).toEqual([]);
      expect(codes(first)).toEqual(["VELOCITY_COUNT"]);
      expect(statements.filter((sql) => sql.includes("pg_advisory_xact_lock"))).toHaveLength(1);
      expect(statements.filter((sql) => sql.includes("INSERT INTO decisions"))).toHaveLength(3); // first's lost one, second's, first's again
    });

    it("a refused Score does not record the account as seen", async () => {
      const h = harness({ rules: { rules: { newAccount: { maxAge: "24h", points: 10 } } } });
      const paymentId = `pay_${uid()}`;
      await h.score({ paymentId });
      const other = `acc_${uid()}`;
      expect((await rpcError(h.score({ paymentId, accountId: other }))).code).toBe(Code.AlreadyExists);
      // A day later the other account is still new to risk: the refused call did not count.
      h.clock.advance(DAY);
      expect(codes(await h.score({ accountId: other, accountOpenedAt: undefined }))).toEqual(["NEW_ACCOUNT"]);
    });
  });

  describe("concurrency", () => {
    it("30 concurrent payments of one account with maxCount 10: exactly 20 fire VELOCITY_COUNT", async () => {
      const h = harness({ rules: { rules: { velocity: [{ window: "1m", maxCount: 10, points: 40 }] } } });
      const decisions = await Promise.all(Array.from({ length: 30 }, (_, i) => h.score({ amount: money(i % 2 === 0 ? "EUR" : "USD", BigInt(100 + i)) })));
      expect(new Set(decisions.map((d) => d.id)).size).toBe(30);
      const fired = decisions.filter((d) => codes(d).includes("VELOCITY_COUNT"));
      expect(fired).toHaveLength(20);
      // Every payment saw exactly the ones before it: the 11th to the 30th.
      const counts = fired.map((d) => Number(/^(\d+) payments/.exec(d.reasons[0]!.message)?.[1])).sort((a, b) => a - b);
      expect(counts).toEqual(Array.from({ length: 20 }, (_, i) => i + 11));
    });

    it("two windows read in one query: concurrent payments see exactly the earlier ones in each", async () => {
      const h = harness({ rules: { rules: { velocity: [{ window: "1m", maxCount: 3, points: 10 }, { window: "1h", maxSum: "10.50", points: 20 }] } } });
      // Five payments of 1.00 half an hour ago: inside the hour, outside the minute.
      for (let i = 0; i < 5; i++) await h.score({ amount: money("USD", 1_00n) });
      h.clock.advance(30 * 60_000);
      const decisions = await Promise.all(Array.from({ length: 10 }, () => h.score({ amount: money("USD", 1_00n) })));
      const fired = (code: string) => decisions.filter((d) => codes(d).includes(code));
      // The k-th (from 0) sees k payments in the minute and 5 + k in the hour.
      const counts = fired("VELOCITY_COUNT").map((d) => Number(/^(\d+) payments/.exec(d.reasons.find((r) => r.code === "VELOCITY_COUNT")!.message)?.[1]));
      expect(counts.sort((a, b) => a - b)).toEqual([4, 5, 6, 7, 8, 9, 10]);
      expect(fired("VELOCITY_SUM")).toHaveLength(5); // 5 + k + 1 > 10.50 from k = 5
      // Every one over the sum is over the count too: payments are in one order for both windows.
      for (const d of fired("VELOCITY_SUM")) expect(codes(d)).toContain("VELOCITY_COUNT");
    });
  });

  describe("bad input", () => {
    const cases: [name: string, reason: string, field: string, over: Partial<ScoreInit>][] = [
      ["missing payment_id", "MISSING_FIELD", "payment_id", { paymentId: "" }],
      ["missing account_id", "MISSING_FIELD", "account_id", { accountId: "" }],
      ["missing amount", "MISSING_FIELD", "amount", { amount: undefined }],
      ["amount 0", "NON_POSITIVE_AMOUNT", "amount", { amount: money("USD", 0n) }],
      ["negative amount", "NON_POSITIVE_AMOUNT", "amount", { amount: money("EUR", -5n) }],
      ["unknown currency", "UNKNOWN_CURRENCY", "amount.currency", { amount: money("XYZ", 100n) }],
      ["empty currency", "UNKNOWN_CURRENCY", "amount.currency", { amount: money("", 100n) }],
      ["a code without minor unit", "UNKNOWN_CURRENCY", "amount.currency", { amount: money("XAU", 100n) }],
      ["bad account_currency", "UNKNOWN_CURRENCY", "account_currency", { accountCurrency: "usd" }],
      ["unknown account_currency", "UNKNOWN_CURRENCY", "account_currency", { accountCurrency: "ABC" }],
    ];

    it.each(cases)("%s -> INVALID_ARGUMENT %s naming %s; nothing recorded, fx not called", async (_name, reason, field, over) => {
      const h = harness();
      const paymentId = over.paymentId ?? `pay_${uid()}`;
      const err = await rpcError(h.score({ ...over, paymentId }));
      expect(err.code).toBe(Code.InvalidArgument);
      expect(err.detail).toMatchObject({ reason, field });
      expect(err.message).toContain(field);
      expect(h.fxCalls()).toBe(0);
      if (paymentId !== "") expect((await rpcError(h.risk.getDecision({ key: { case: "paymentId", value: paymentId } }))).code).toBe(Code.NotFound);
    });

    it("GetDecision of an unknown decision or payment is NOT_FOUND; with no key INVALID_ARGUMENT", async () => {
      const h = harness();
      const byId = await rpcError(h.risk.getDecision({ key: { case: "decisionId", value: "rd_nope" } }));
      expect(byId.code).toBe(Code.NotFound);
      expect(byId.detail).toMatchObject({ reason: "DECISION_NOT_FOUND", field: "decision_id" });
      const byPayment = await rpcError(h.risk.getDecision({ key: { case: "paymentId", value: "pay_nope" } }));
      expect(byPayment.code).toBe(Code.NotFound);
      expect(byPayment.detail).toMatchObject({ reason: "DECISION_NOT_FOUND", field: "payment_id" });
      const none = await rpcError(h.risk.getDecision({}));
      expect(none.code).toBe(Code.InvalidArgument);
      expect(none.detail).toMatchObject({ reason: "MISSING_FIELD" });
      const empty = await rpcError(h.risk.getDecision({ key: { case: "paymentId", value: "" } }));
      expect(empty.code).toBe(Code.InvalidArgument);
    });
  });
});

describe("BaseRates", () => {
  interface PendingCall {
    currency: string;
    options: CallOptions | undefined;
    answer(midRate: string): void;
  }
  /** An fx client whose GetRate calls wait for the test to answer them, and honour their signal. */
  function slowFx() {
    const calls: PendingCall[] = [];
    const client = {
      getRate(req: { baseCurrency: string }, options?: CallOptions) {
        return new Promise((resolve, reject) => {
          options?.signal?.addEventListener("abort", () => reject(ConnectError.from(options.signal!.reason)), { once: true });
          calls.push({ currency: req.baseCurrency, options, answer: (midRate) => resolve({ rate: { midRate } }) });
        });
      },
    } as unknown as Client<typeof FxService>;
    return { calls, client };
  }
  const context = (timeoutMs?: number) =>
    createHandlerContext({ service: RiskService, method: RiskService.method.score, protocolName: "connect", requestMethod: "POST", url: "http://risk/", timeoutMs });
  const rates = (fx: Client<typeof FxService>, maxAgeMs = 5_000) => new BaseRates({ fx, baseCurrency: "USD", maxAgeMs, upstreamTimeoutMs: 5_000, now: () => new Date(T0) });

  it("concurrent misses for one currency share one GetRate; the result is converted exactly, half-even", async () => {
    const fx = slowFx();
    const r = rates(fx.client, 0); // nothing cached: only sharing saves calls
    // Ties: 10.00 EUR at 1.0845 is 1084.5 cents, to the even 1084; 0.03 EUR is 3.2535 cents.
    const amounts = [10_00n, 3n, 10_00n, 1n, 10_00n];
    const pending = amounts.map((a) => r.baseAmount("EUR", a, context()));
    const jpy = r.baseAmount("JPY", 12_345n, context());
    expect(fx.calls.map((c) => c.currency)).toEqual(["EUR", "JPY"]);
    fx.calls[0]!.answer("1.0845");
    fx.calls[1]!.answer("0.0077");
    expect(await Promise.all(pending)).toEqual([1084n, 3n, 1084n, 1n, 1084n]);
    expect(await jpy).toBe(9506n); // 95.0565 USD
    // The call carried the caller's time (none: risk's own upstream timeout).
    expect(fx.calls[0]!.options?.timeoutMs).toBe(5_000);
    // Settled, so the next miss asks again.
    const again = r.baseAmount("EUR", 10_00n, context());
    expect(fx.calls).toHaveLength(3);
    fx.calls[2]!.answer("1.0845");
    expect(await again).toBe(1084n);
  });

  it("keeps a rate for every currency: none gives way to another", async () => {
    const fx = slowFx();
    const r = rates(fx.client);
    const currencies = allCurrencies().map((c) => c.code).filter((c) => c !== "USD");
    for (const currency of currencies) {
      const converted = r.baseAmount(currency, 1n, context());
      fx.calls.at(-1)!.answer("1");
      await converted;
    }
    expect(fx.calls).toHaveLength(currencies.length);
    const again = currencies.map((currency) => r.baseAmount(currency, 1n, context()));
    expect(fx.calls).toHaveLength(currencies.length);
    await Promise.all(again);
  });

  it("the base currency needs no rate", async () => {
    const fx = slowFx();
    expect(await rates(fx.client).baseAmount("USD", 12_34n, context())).toBe(12_34n);
    expect(fx.calls).toHaveLength(0);
  });

  it("a Score whose caller gives up ends alone: one sharing the call gets the rate, another call if need be", async () => {
    const fx = slowFx();
    const r = rates(fx.client);
    const first = context(60_000);
    const second = context();
    const third = context(60_000);
    const a = r.baseAmount("EUR", 10_00n, first);
    const b = r.baseAmount("EUR", 10_00n, second);
    const c = r.baseAmount("EUR", 10_00n, third);
    expect(fx.calls).toHaveLength(1);
    // The call carries the first caller's deadline and cancellation.
    expect(fx.calls[0]!.options?.timeoutMs).toBeLessThanOrEqual(60_000);
    third.abort(new ConnectError("canceled by the client", Code.Canceled));
    expect((await c.then(() => undefined, (e: unknown) => ConnectError.from(e)))?.code).toBe(Code.Canceled);
    first.abort(new ConnectError("canceled by the client", Code.Canceled));
    expect((await a.then(() => undefined, (e: unknown) => ConnectError.from(e)))?.code).toBe(Code.Canceled);
    // The second Score's caller is still there: it asks fx again rather than failing or
    // taking fx for unreachable.
    await expect.poll(() => fx.calls.length).toBe(2);
    expect(fx.calls[1]!.options?.signal).toBe(second.signal);
    fx.calls[1]!.answer("1.0845");
    expect(await b).toBe(1084n);
  });
});
