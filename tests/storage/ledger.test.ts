// The double-entry ledger against both backends (PGlite always, PostgreSQL when
// TEST_DATABASE_URL is set): accounts, credits, holds (reserve -> capture / release / expiry),
// cross-currency settlement through liquidity accounts, transfers, the entry history, a
// model-based property test, and the no-overdraft rule under real concurrency. After every
// test the books must reconcile.
import { randomUUID } from "node:crypto";
import { Decimal as DecimalJs } from "decimal.js";
import fc from "fast-check";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { openDatabase, type Database, type Queryable } from "../../services/runtime/db/database.js";
import { DomainError } from "../../services/runtime/errors.js";
import { currencyInfo } from "../../services/runtime/money/money.js";
import { Ledger, systemAccountId, type Account, type FxTerms, type Hold } from "../../services/wallet/ledger.js";
import { Clock, expectDomainError, HOUR, migrateLedger, MINUTE } from "../support/ledger.js";
import { storageBackends, testDatabases } from "../support/postgres.js";

const backends = storageBackends();
const DAY = 24 * HOUR;
/** Holds in the example tests live long, so only the expiry tests' holds ever expire. */
const LONG_TTL = 30 * DAY;

const uid = () => randomUUID().replaceAll("-", "").slice(0, 16);

/** The test's own oracle: round_half_even(amountMinor / 10^from × rate) in 10^-to units. */
function oracleConvert(amountMinor: bigint, from: string, rate: string, to: string): bigint {
  const fromExp = currencyInfo(from, "from").minorUnits;
  const toExp = currencyInfo(to, "to").minorUnits;
  const exact = new DecimalJs(amountMinor.toString()).div(DecimalJs.pow(10, fromExp)).mul(rate).mul(DecimalJs.pow(10, toExp));
  return BigInt(exact.toDecimalPlaces(0, DecimalJs.ROUND_HALF_EVEN).toFixed(0));
}

/** A Database whose every call runs inside `tx`: lets reconcile() look at uncommitted tampering. */
function inTransaction(tx: Queryable, backend: Database["backend"]): Database {
  return { backend, query: (sql, params) => tx.query(sql, params), exec: (sql) => tx.exec(sql), transaction: (fn) => fn(tx), close: async () => {} };
}

/** Helpers over one ledger and its database. */
function fixtures(get: () => { db: Database; ledger: Ledger }) {
  const f = {
    async open(currency = "USD", ownerId = `own_${uid()}`): Promise<Account> {
      return get().ledger.openAccount({ requestId: `req_${uid()}`, ownerId, currency });
    },
    async fund(account: Account, amountMinor: bigint): Promise<void> {
      await get().ledger.credit({ transferId: `cr_${uid()}`, accountId: account.id, currency: account.currency, amountMinor });
    },
    async funded(amountMinor: bigint, currency = "USD"): Promise<Account> {
      const account = await f.open(currency);
      await f.fund(account, amountMinor);
      return account;
    },
    async bal(id: string): Promise<{ posted: bigint; pending: bigint; available: bigint }> {
      const a = await get().ledger.account(id);
      return { posted: a.postedMinor, pending: a.pendingMinor, available: a.postedMinor - a.pendingMinor };
    },
    /** Posted balance of an account that may not exist yet (system accounts appear on first use). */
    async posted(id: string): Promise<bigint> {
      const { rows } = await get().db.query<{ posted_minor: bigint }>("SELECT posted_minor FROM accounts WHERE id = $1", [id]);
      return rows[0]?.posted_minor ?? 0n;
    },
    async counts(): Promise<{ accounts: bigint; transfers: bigint; entries: bigint; holds: bigint }> {
      const { rows } = await get().db.query<{ accounts: bigint; transfers: bigint; entries: bigint; holds: bigint }>(
        `SELECT (SELECT count(*) FROM accounts) AS accounts, (SELECT count(*) FROM transfers) AS transfers,
                (SELECT count(*) FROM entries) AS entries, (SELECT count(*) FROM holds) AS holds`,
      );
      return rows[0]!;
    },
    async currencySums(): Promise<Map<string, bigint>> {
      const { rows } = await get().db.query<{ currency: string; sum: bigint }>("SELECT currency, sum(posted_minor)::int8 AS sum FROM accounts GROUP BY currency");
      return new Map(rows.map((r) => [r.currency, r.sum]));
    },
    reserve(
      source: Account,
      destination: Account,
      amountMinor: bigint,
      over: { holdId?: string; fx?: FxTerms; ttlMs?: number; currency?: string; capture?: boolean } = {},
    ): Promise<Hold> {
      return get().ledger.reserve({
        holdId: over.holdId ?? `h_${uid()}`,
        accountId: source.id,
        destinationAccountId: destination.id,
        currency: over.currency ?? source.currency,
        amountMinor,
        fx: over.fx,
        ttlMs: over.ttlMs ?? LONG_TTL,
        capture: over.capture,
      });
    },
  };
  return f;
}

describe.each(backends)("ledger on $name", (backend) => {
  const dbs = testDatabases(backend, "ledger");
  const clock = new Clock();
  let db: Database;
  let ledger: Ledger;
  const f = fixtures(() => ({ db, ledger }));

  beforeAll(async () => {
    db = await dbs.open(dbs.newSchema());
    await migrateLedger(db);
    ledger = new Ledger(db, clock.now);
  });
  afterEach(async () => {
    if (ledger) expect(await ledger.reconcile()).toEqual([]);
  });
  afterAll(() => dbs.cleanup());

  describe("reconcile()", () => {
    it("is [] on an empty ledger and after ordinary work", async () => {
      const a = await f.funded(10_00n);
      const b = await f.open();
      const h = await f.reserve(a, b, 4_00n);
      await ledger.capture(h.id, 1_00n);
      expect(await ledger.reconcile()).toEqual([]);
    });

    it("finds tampering: a posted total off its entries, a pending total off its holds, an unbalanced transfer", async () => {
      const a = await f.funded(10_00n);
      const b = await f.open();
      await f.reserve(a, b, 3_00n);
      const rollback = new Error("rollback");
      const problems = await db
        .transaction(async (tx) => {
          const view = new Ledger(inTransaction(tx, db.backend), clock.now);
          expect(await view.reconcile()).toEqual([]);
          await tx.query("UPDATE accounts SET posted_minor = posted_minor + 7 WHERE id = $1", [a.id]);
          await tx.query("UPDATE accounts SET pending_minor = pending_minor + 1 WHERE id = $1", [a.id]);
          await tx.query("INSERT INTO transfers (id, kind, request_hash, created_at) VALUES ('t_bad', 'x', 'x', now())");
          await tx.query("INSERT INTO entries (transfer_id, account_id, direction, currency, amount_minor, kind, created_at) VALUES ('t_bad', $1, 'CREDIT', 'USD', 5, 'x', now())", [b.id]);
          throw Object.assign(rollback, { problems: await view.reconcile() });
        })
        .catch((err: unknown) => {
          if (err !== rollback) throw err;
          return (err as Error & { problems: string[] }).problems;
        });
      expect(problems).toEqual(
        expect.arrayContaining([
          expect.stringMatching(new RegExp(`^account ${a.id}: posted`)),
          expect.stringMatching(new RegExp(`^account ${b.id}: posted`)),
          expect.stringMatching(new RegExp(`^account ${a.id}: pending`)),
          expect.stringMatching(/^currency USD: balances sum to 7/),
          expect.stringMatching(/^transfer t_bad: USD/),
        ]),
      );
      // Rolled back: the real books are untouched.
      expect(await ledger.reconcile()).toEqual([]);
    });
  });

  describe("openAccount", () => {
    it("opens a USER account with zero balances, idempotent by request_id", async () => {
      const owner = `own_${uid()}`;
      const req = { requestId: `req_${uid()}`, ownerId: owner, currency: "EUR" };
      const before = await f.counts();
      const a = await ledger.openAccount(req);
      expect(a).toMatchObject({ ownerId: owner, currency: "EUR", kind: "USER", postedMinor: 0n, pendingMinor: 0n, createdAt: clock.now() });
      expect(a.id).toMatch(/^acc_/);
      const again = await ledger.openAccount(req);
      expect(again).toEqual(a);
      expect((await f.counts()).accounts).toBe(before.accounts + 1n);
      expect(await ledger.accountsOf(owner)).toEqual([a]);
      expect(await ledger.account(a.id)).toEqual(a);
    });

    it("same request_id for another currency or owner is ALREADY_EXISTS ID_REUSED", async () => {
      const req = { requestId: `req_${uid()}`, ownerId: `own_${uid()}`, currency: "USD" };
      await ledger.openAccount(req);
      const before = await f.counts();
      await expectDomainError(ledger.openAccount({ ...req, currency: "EUR" }), "already_exists", "ID_REUSED", "request_id");
      await expectDomainError(ledger.openAccount({ ...req, ownerId: `own_${uid()}` }), "already_exists", "ID_REUSED", "request_id");
      expect(await f.counts()).toEqual(before);
    });

    it("without request_id opens a new account each time; bad input is INVALID_ARGUMENT", async () => {
      const owner = `own_${uid()}`;
      const a = await ledger.openAccount({ requestId: "", ownerId: owner, currency: "JPY" });
      const b = await ledger.openAccount({ requestId: "", ownerId: owner, currency: "JPY" });
      expect(a.id).not.toBe(b.id);
      expect((await ledger.accountsOf(owner)).map((x) => x.id).sort()).toEqual([a.id, b.id].sort());
      await expectDomainError(ledger.openAccount({ requestId: "", ownerId: owner, currency: "XAU" }), "invalid_argument", "UNKNOWN_CURRENCY", "currency");
      await expectDomainError(ledger.openAccount({ requestId: "", ownerId: "", currency: "USD" }), "invalid_argument", "MISSING_FIELD", "owner_id");
      await expectDomainError(ledger.account("acc_nope"), "not_found", "ACCOUNT_NOT_FOUND");
    });
  });

  describe("credit", () => {
    it("posts money from the world account, once per transfer_id", async () => {
      const a = await f.open("USD");
      const world = systemAccountId("EXTERNAL", "USD");
      const worldBefore = await f.posted(world);
      const req = { transferId: `cr_${uid()}`, accountId: a.id, currency: "USD", amountMinor: 125_50n };
      const after = await ledger.credit(req);
      expect(after).toMatchObject({ id: a.id, postedMinor: 125_50n, pendingMinor: 0n });
      expect(await f.posted(world)).toBe(worldBefore - 125_50n);
      const before = await f.counts();
      const replay = await ledger.credit(req);
      expect(replay.postedMinor).toBe(125_50n);
      expect(await f.counts()).toEqual(before);
      expect(await f.posted(world)).toBe(worldBefore - 125_50n);
    });

    it("same transfer_id with another amount or account is ID_REUSED, nothing written", async () => {
      const a = await f.open();
      const b = await f.open();
      const req = { transferId: `cr_${uid()}`, accountId: a.id, currency: "USD", amountMinor: 10_00n };
      await ledger.credit(req);
      const before = await f.counts();
      await expectDomainError(ledger.credit({ ...req, amountMinor: 10_01n }), "already_exists", "ID_REUSED", "transfer_id");
      await expectDomainError(ledger.credit({ ...req, accountId: b.id }), "already_exists", "ID_REUSED", "transfer_id");
      expect(await f.counts()).toEqual(before);
      expect(await f.bal(a.id)).toEqual({ posted: 10_00n, pending: 0n, available: 10_00n });
      expect(await f.bal(b.id)).toEqual({ posted: 0n, pending: 0n, available: 0n });
    });

    it("refuses a non-positive amount, another currency, an unknown account", async () => {
      const a = await f.open("USD");
      const base = { transferId: `cr_${uid()}`, accountId: a.id, currency: "USD", amountMinor: 1n };
      const before = await f.counts();
      await expectDomainError(ledger.credit({ ...base, amountMinor: 0n }), "invalid_argument", "NON_POSITIVE_AMOUNT", "amount");
      await expectDomainError(ledger.credit({ ...base, amountMinor: -5n }), "invalid_argument", "NON_POSITIVE_AMOUNT", "amount");
      await expectDomainError(ledger.credit({ ...base, currency: "EUR" }), "invalid_argument", "CURRENCY_MISMATCH", "amount.currency");
      await expectDomainError(ledger.credit({ ...base, accountId: "acc_missing" }), "not_found", "ACCOUNT_NOT_FOUND", "account_id");
      await expectDomainError(ledger.credit({ ...base, transferId: "" }), "invalid_argument", "MISSING_FIELD", "transfer_id");
      // The ledger's own ids for captures cannot be taken by a caller (a later capture would collide).
      await expectDomainError(ledger.credit({ ...base, transferId: "h_1:capture" }), "invalid_argument", "RESERVED_ID", "transfer_id");
      expect(await f.counts()).toEqual(before);
    });

    it("refuses a credit that would take a balance past int64, writing nothing", async () => {
      // A currency no other test uses: its world account goes as far negative as this one goes up.
      const full = await f.funded(9_223_372_036_854_775_000n, "MNT");
      const before = await f.counts();
      await expectDomainError(ledger.credit({ transferId: `cr_${uid()}`, accountId: full.id, currency: "MNT", amountMinor: 1_000n }), "failed_precondition", "BALANCE_OUT_OF_RANGE", "amount");
      expect(await f.counts()).toEqual(before);
      expect((await f.bal(full.id)).posted).toBe(9_223_372_036_854_775_000n);
    });
  });

  describe("reserve", () => {
    it("moves money from available to pending; posted is unchanged", async () => {
      const a = await f.funded(100_00n);
      const b = await f.open();
      const hold = await f.reserve(a, b, 30_00n, { ttlMs: 2 * HOUR });
      expect(hold).toMatchObject({
        accountId: a.id,
        destinationAccountId: b.id,
        currency: "USD",
        amountMinor: 30_00n,
        destinationCurrency: "USD",
        destinationMinor: 30_00n,
        fxRate: null,
        fxQuoteId: null,
        status: "PENDING",
        capturedMinor: null,
        createdAt: clock.now(),
        expiresAt: new Date(clock.t + 2 * HOUR),
        resolvedAt: null,
      });
      expect(await f.bal(a.id)).toEqual({ posted: 100_00n, pending: 30_00n, available: 70_00n });
      expect(await f.bal(b.id)).toEqual({ posted: 0n, pending: 0n, available: 0n });
      expect(await ledger.hold(hold.id)).toEqual(hold);
    });

    it("insufficient funds is FAILED_PRECONDITION INSUFFICIENT_FUNDS with nothing written; pending holds count", async () => {
      const a = await f.funded(50_00n);
      const b = await f.open();
      await f.reserve(a, b, 20_00n);
      const before = await f.counts();
      const holdId = `h_${uid()}`;
      const err = await expectDomainError(f.reserve(a, b, 30_01n, { holdId }), "failed_precondition", "INSUFFICIENT_FUNDS", "amount");
      expect(err.metadata).toEqual({ available_minor: "3000" });
      expect(await f.counts()).toEqual(before);
      expect(await f.bal(a.id)).toEqual({ posted: 50_00n, pending: 20_00n, available: 30_00n });
      await expectDomainError(ledger.hold(holdId), "not_found", "HOLD_NOT_FOUND", "hold_id");
      // Exactly what is available fits, and the id that failed is free to use.
      await f.reserve(a, b, 30_00n, { holdId });
      expect(await f.bal(a.id)).toEqual({ posted: 50_00n, pending: 50_00n, available: 0n });
      await expectDomainError(f.reserve(a, b, 1n), "failed_precondition", "INSUFFICIENT_FUNDS");
    });

    it("is idempotent by hold_id: a replay returns the same hold and holds once; other content is ID_REUSED", async () => {
      const a = await f.funded(100_00n);
      const b = await f.open();
      const c = await f.open();
      const holdId = `h_${uid()}`;
      const first = await f.reserve(a, b, 25_00n, { holdId });
      clock.advance(1000);
      const second = await f.reserve(a, b, 25_00n, { holdId });
      expect(second).toEqual(first);
      expect(await f.bal(a.id)).toEqual({ posted: 100_00n, pending: 25_00n, available: 75_00n });
      const before = await f.counts();
      await expectDomainError(f.reserve(a, b, 25_01n, { holdId }), "already_exists", "ID_REUSED", "hold_id");
      await expectDomainError(f.reserve(a, c, 25_00n, { holdId }), "already_exists", "ID_REUSED", "hold_id");
      expect(await f.counts()).toEqual(before);
      expect(await f.bal(a.id)).toEqual({ posted: 100_00n, pending: 25_00n, available: 75_00n });
      // A replay after the hold resolved still answers with the hold, and holds nothing more.
      await ledger.release(holdId);
      const late = await f.reserve(a, b, 25_00n, { holdId });
      expect(late.status).toBe("RELEASED");
      expect(await f.bal(a.id)).toEqual({ posted: 100_00n, pending: 0n, available: 100_00n });
    });

    it("refuses another currency, the same account, an unknown destination, a non-positive amount", async () => {
      const a = await f.funded(10_00n);
      const b = await f.open();
      const before = await f.counts();
      await expectDomainError(f.reserve(a, b, 1_00n, { currency: "EUR" }), "invalid_argument", "CURRENCY_MISMATCH", "amount.currency");
      await expectDomainError(f.reserve(a, a, 1_00n), "invalid_argument", "SAME_ACCOUNT", "destination_account_id");
      await expectDomainError(f.reserve(a, { ...b, id: "acc_missing" }, 1_00n), "not_found", "ACCOUNT_NOT_FOUND", "destination_account_id");
      await expectDomainError(f.reserve({ ...a, id: "acc_missing" }, b, 1_00n), "not_found", "ACCOUNT_NOT_FOUND", "account_id");
      await expectDomainError(f.reserve(a, b, 0n), "invalid_argument", "NON_POSITIVE_AMOUNT", "amount");
      await expectDomainError(f.reserve(a, b, 1n, { holdId: "" }), "invalid_argument", "MISSING_FIELD", "hold_id");
      expect(await f.counts()).toEqual(before);
      expect(await f.bal(a.id)).toEqual({ posted: 10_00n, pending: 0n, available: 10_00n });
    });

    it("across currencies requires an fx rate (FX_REQUIRED); within one it refuses one (FX_NOT_EXPECTED)", async () => {
      const usd = await f.funded(10_00n, "USD");
      const usd2 = await f.open("USD");
      const eur = await f.open("EUR");
      const before = await f.counts();
      await expectDomainError(f.reserve(usd, eur, 1_00n), "invalid_argument", "FX_REQUIRED", "fx.rate");
      await expectDomainError(f.reserve(usd, eur, 1_00n, { fx: { rate: "", quoteId: "q_1" } }), "invalid_argument", "FX_REQUIRED", "fx.rate");
      await expectDomainError(f.reserve(usd, usd2, 1_00n, { fx: { rate: "1", quoteId: "q_1" } }), "invalid_argument", "FX_NOT_EXPECTED", "fx");
      await expectDomainError(f.reserve(usd, eur, 1_00n, { fx: { rate: "0", quoteId: "q_1" } }), "invalid_argument", "INVALID_RATE", "fx.rate");
      await expectDomainError(f.reserve(usd, eur, 1_00n, { fx: { rate: "-0.9", quoteId: "q_1" } }), "invalid_argument", "INVALID_RATE", "fx.rate");
      await expectDomainError(f.reserve(usd, eur, 1_00n, { fx: { rate: "1e3", quoteId: "q_1" } }), "invalid_argument", "INVALID_DECIMAL", "fx.rate");
      expect(await f.counts()).toEqual(before);
      expect(await f.bal(usd.id)).toEqual({ posted: 10_00n, pending: 0n, available: 10_00n });
    });
  });

  describe("capture and release", () => {
    it("captures in full: source debited, destination credited, hold CAPTURED", async () => {
      const a = await f.funded(100_00n);
      const b = await f.open();
      const hold = await f.reserve(a, b, 40_00n);
      clock.advance(5 * MINUTE);
      const before = await f.counts();
      const captured = await ledger.capture(hold.id, undefined);
      expect(captured).toMatchObject({ id: hold.id, status: "CAPTURED", capturedMinor: 40_00n, resolvedAt: clock.now(), createdAt: hold.createdAt });
      expect(await f.bal(a.id)).toEqual({ posted: 60_00n, pending: 0n, available: 60_00n });
      expect(await f.bal(b.id)).toEqual({ posted: 40_00n, pending: 0n, available: 40_00n });
      const after = await f.counts();
      expect(after.transfers - before.transfers).toBe(1n);
      expect(after.entries - before.entries).toBe(2n);
      const [bEntry] = (await ledger.entries(b.id, 10, "")).entries;
      expect(bEntry).toMatchObject({ direction: "CREDIT", amountMinor: 40_00n, currency: "USD", kind: "capture" });
    });

    it("captures part: the remainder is released (pending back to 0, posted down by the captured part only)", async () => {
      const a = await f.funded(100_00n);
      const b = await f.open();
      const hold = await f.reserve(a, b, 40_00n);
      const captured = await ledger.capture(hold.id, 15_25n);
      expect(captured).toMatchObject({ status: "CAPTURED", capturedMinor: 15_25n, amountMinor: 40_00n });
      expect(await f.bal(a.id)).toEqual({ posted: 84_75n, pending: 0n, available: 84_75n });
      expect(await f.bal(b.id)).toEqual({ posted: 15_25n, pending: 0n, available: 15_25n });
    });

    it("capturing more than held is CAPTURE_EXCEEDS_HOLD and changes nothing", async () => {
      const a = await f.funded(100_00n);
      const b = await f.open();
      const hold = await f.reserve(a, b, 40_00n);
      const before = await f.counts();
      await expectDomainError(ledger.capture(hold.id, 40_01n), "failed_precondition", "CAPTURE_EXCEEDS_HOLD", "amount");
      await expectDomainError(ledger.capture(hold.id, 0n), "invalid_argument", "NON_POSITIVE_AMOUNT", "amount");
      expect(await f.counts()).toEqual(before);
      expect(await ledger.hold(hold.id)).toEqual(hold);
      expect(await f.bal(a.id)).toEqual({ posted: 100_00n, pending: 40_00n, available: 60_00n });
      expect((await ledger.capture(hold.id, 40_00n)).status).toBe("CAPTURED");
    });

    it("a second capture with the same amount returns the same hold and posts nothing more; another amount is HOLD_CAPTURED", async () => {
      const a = await f.funded(100_00n);
      const b = await f.open();
      const hold = await f.reserve(a, b, 40_00n);
      const first = await ledger.capture(hold.id, 10_00n);
      const before = await f.counts();
      clock.advance(MINUTE);
      expect(await ledger.capture(hold.id, 10_00n)).toEqual(first);
      expect(await f.counts()).toEqual(before);
      expect(await f.bal(a.id)).toEqual({ posted: 90_00n, pending: 0n, available: 90_00n });
      expect(await f.bal(b.id)).toEqual({ posted: 10_00n, pending: 0n, available: 10_00n });
      await expectDomainError(ledger.capture(hold.id, 20_00n), "failed_precondition", "HOLD_CAPTURED", "hold_id");
      await expectDomainError(ledger.release(hold.id), "failed_precondition", "HOLD_CAPTURED", "hold_id");
      expect(await f.counts()).toEqual(before);
      // A full capture retried without an amount returns the hold too.
      const full = await f.reserve(a, b, 5_00n);
      const once = await ledger.capture(full.id, undefined);
      expect(await ledger.capture(full.id, undefined)).toEqual(once);
      expect(await ledger.capture(full.id, 5_00n)).toEqual(once);
      expect(await f.bal(a.id)).toEqual({ posted: 85_00n, pending: 0n, available: 85_00n });
    });

    it("release voids the hold (idempotent); capture after release is HOLD_RELEASED", async () => {
      const a = await f.funded(100_00n);
      const b = await f.open();
      const hold = await f.reserve(a, b, 40_00n);
      const before = await f.counts();
      clock.advance(MINUTE);
      const released = await ledger.release(hold.id);
      expect(released).toMatchObject({ status: "RELEASED", capturedMinor: null, resolvedAt: clock.now() });
      expect(await f.bal(a.id)).toEqual({ posted: 100_00n, pending: 0n, available: 100_00n });
      expect(await ledger.release(hold.id)).toEqual(released);
      await expectDomainError(ledger.capture(hold.id, undefined), "failed_precondition", "HOLD_RELEASED", "hold_id");
      await expectDomainError(ledger.capture(hold.id, 1_00n), "failed_precondition", "HOLD_RELEASED", "hold_id");
      const after = await f.counts();
      expect({ transfers: after.transfers, entries: after.entries }).toEqual({ transfers: before.transfers, entries: before.entries });
      expect(await f.bal(b.id)).toEqual({ posted: 0n, pending: 0n, available: 0n });
    });

    it("an unknown hold is NOT_FOUND", async () => {
      await expectDomainError(ledger.capture("h_missing", undefined), "not_found", "HOLD_NOT_FOUND", "hold_id");
      await expectDomainError(ledger.release("h_missing"), "not_found", "HOLD_NOT_FOUND", "hold_id");
      await expectDomainError(ledger.hold("h_missing"), "not_found", "HOLD_NOT_FOUND", "hold_id");
      await expectDomainError(ledger.capture("", undefined), "invalid_argument", "MISSING_FIELD", "hold_id");
    });
  });

  describe("reserve with capture (automatic capture)", () => {
    it("places and posts the hold in one transaction: source debited, destination credited, nothing pending", async () => {
      const a = await f.funded(10_00n);
      const b = await f.open();
      const hold = await f.reserve(a, b, 4_25n, { capture: true });
      expect(hold).toMatchObject({ status: "CAPTURED", amountMinor: 4_25n, capturedMinor: 4_25n, capturedDestinationMinor: 4_25n });
      expect(hold.resolvedAt).not.toBeNull();
      expect(await f.bal(a.id)).toEqual({ posted: 5_75n, pending: 0n, available: 5_75n });
      expect(await f.bal(b.id)).toEqual({ posted: 4_25n, pending: 0n, available: 4_25n });
      const credits = (await ledger.entries(b.id, 10, "")).entries;
      expect(credits.map((e) => [e.transferId, e.direction, e.amountMinor, e.kind])).toEqual([[`${hold.id}:capture`, "CREDIT", 4_25n, "capture"]]);
    });

    it("is one statement and no transaction when the accounts are known and the money is there; too little takes the careful path", async () => {
      const statements: string[] = [];
      const counted: Database = {
        ...db,
        query: (sql, params) => (statements.push(sql.trim().split(/\s+/)[0]!), db.query(sql, params)),
        transaction: (fn) => (statements.push("BEGIN"), db.transaction(fn)),
      };
      const counting = new Ledger(counted, clock.now);
      const a = await f.funded(10_00n, "EUR");
      const b = await f.open("EUR");
      const jpy = await f.open("JPY");
      await f.reserve(a, jpy, 1_00n, { capture: true, fx: { rate: "160.5", quoteId: "" } }); // liquidity accounts exist
      const reserve = (destination: Account, amountMinor: bigint, fx?: FxTerms) =>
        counting.reserve({ holdId: `h_${uid()}`, accountId: a.id, destinationAccountId: destination.id, currency: "EUR", amountMinor, fx, ttlMs: LONG_TTL, capture: true });
      await reserve(b, 1_00n);
      expect(statements).toEqual(["SELECT", "SELECT", "WITH"]); // the two accounts, read once and kept
      statements.length = 0;
      await reserve(b, 2_00n);
      await reserve(jpy, 3_00n, { rate: "160.5", quoteId: "" });
      expect(statements).toEqual(["WITH", "SELECT", "WITH"]); // the JPY account was new to this ledger
      statements.length = 0;
      await expectDomainError(reserve(b, 5_00n), "failed_precondition", "INSUFFICIENT_FUNDS");
      expect(statements).toEqual(["WITH", "BEGIN"]);
      expect(await f.bal(a.id)).toEqual({ posted: 3_00n, pending: 0n, available: 3_00n });
    });

    it("across currencies posts through both liquidity accounts at the rate, half-even", async () => {
      const a = await f.funded(20_00n, "EUR");
      const b = await f.open("JPY");
      const liqEur = systemAccountId("LIQUIDITY", "EUR");
      const liqJpy = systemAccountId("LIQUIDITY", "JPY");
      const [eurBefore, jpyBefore] = [await f.posted(liqEur), await f.posted(liqJpy)];
      // 3.00 EUR × 160.5 = 481.5 JPY, a tie -> 482
      const hold = await f.reserve(a, b, 3_00n, { capture: true, fx: { rate: "160.5", quoteId: `q_${uid()}`, destinationMinor: 482n, destinationCurrency: "JPY" } });
      expect(hold).toMatchObject({ status: "CAPTURED", capturedMinor: 3_00n, capturedDestinationMinor: 482n, destinationCurrency: "JPY" });
      expect(await f.bal(a.id)).toEqual({ posted: 17_00n, pending: 0n, available: 17_00n });
      expect(await f.bal(b.id)).toEqual({ posted: 482n, pending: 0n, available: 482n });
      expect((await f.posted(liqEur)) - eurBefore).toBe(3_00n);
      expect((await f.posted(liqJpy)) - jpyBefore).toBe(-482n);
    });

    it("a retry returns the captured hold and posts nothing more; other content is ID_REUSED", async () => {
      const a = await f.funded(10_00n);
      const b = await f.open();
      const holdId = `h_${uid()}`;
      const first = await f.reserve(a, b, 2_00n, { holdId, capture: true });
      const before = await f.counts();
      expect(await f.reserve(a, b, 2_00n, { holdId, capture: true })).toEqual(first);
      expect(await f.reserve(a, b, 2_00n, { holdId })).toEqual(first);
      await expectDomainError(f.reserve(a, b, 2_01n, { holdId, capture: true }), "already_exists", "ID_REUSED", "hold_id");
      expect(await f.counts()).toEqual(before);
      expect(await f.bal(a.id)).toEqual({ posted: 8_00n, pending: 0n, available: 8_00n });
    });

    it("captures a pending hold of the same request whole; a released one is HOLD_RELEASED", async () => {
      const a = await f.funded(10_00n);
      const b = await f.open();
      const pending = await f.reserve(a, b, 3_00n);
      expect(await f.reserve(a, b, 3_00n, { holdId: pending.id, capture: true })).toMatchObject({ id: pending.id, status: "CAPTURED", capturedMinor: 3_00n });
      expect(await f.bal(a.id)).toEqual({ posted: 7_00n, pending: 0n, available: 7_00n });
      const released = await f.reserve(a, b, 1_00n);
      await ledger.release(released.id);
      await expectDomainError(f.reserve(a, b, 1_00n, { holdId: released.id, capture: true }), "failed_precondition", "HOLD_RELEASED", "hold_id");
      expect(await f.bal(a.id)).toEqual({ posted: 7_00n, pending: 0n, available: 7_00n });
    });

    it("insufficient funds writes nothing: no hold, no transfer, no entries", async () => {
      const a = await f.funded(1_00n);
      const b = await f.open();
      const before = await f.counts();
      await expectDomainError(f.reserve(a, b, 1_01n, { capture: true }), "failed_precondition", "INSUFFICIENT_FUNDS", "amount");
      expect(await f.counts()).toEqual(before);
      expect(await f.bal(a.id)).toEqual({ posted: 1_00n, pending: 0n, available: 1_00n });
    });
  });

  describe("expiry", () => {
    it("expireHolds() expires a hold past expires_at and restores available; capture is then HOLD_EXPIRED", async () => {
      const a = await f.funded(100_00n);
      const b = await f.open();
      const hold = await f.reserve(a, b, 30_00n, { ttlMs: 10 * MINUTE });
      const keep = await f.reserve(a, b, 20_00n, { ttlMs: 20 * MINUTE });
      clock.advance(10 * MINUTE - 1);
      expect(await ledger.expireHolds()).toBe(0);
      expect((await ledger.hold(hold.id)).status).toBe("PENDING");
      clock.advance(2);
      expect(await ledger.expireHolds()).toBe(1);
      expect(await ledger.hold(hold.id)).toMatchObject({ status: "EXPIRED", resolvedAt: clock.now(), capturedMinor: null });
      expect((await ledger.hold(keep.id)).status).toBe("PENDING");
      expect(await f.bal(a.id)).toEqual({ posted: 100_00n, pending: 20_00n, available: 80_00n });
      expect(await ledger.expireHolds()).toBe(0);
      await expectDomainError(ledger.capture(hold.id, undefined), "failed_precondition", "HOLD_EXPIRED", "hold_id");
      // Releasing an expired hold returns it unchanged.
      expect((await ledger.release(hold.id)).status).toBe("EXPIRED");
      expect(await f.bal(a.id)).toEqual({ posted: 100_00n, pending: 20_00n, available: 80_00n });
      expect(await f.bal(b.id)).toEqual({ posted: 0n, pending: 0n, available: 0n });
      await ledger.release(keep.id);
    });

    it("a hold past its time cannot be captured even before the sweep; up to its last millisecond it can", async () => {
      const a = await f.funded(100_00n);
      const b = await f.open();
      const late = await f.reserve(a, b, 30_00n, { ttlMs: MINUTE });
      const onTime = await f.reserve(a, b, 20_00n, { ttlMs: MINUTE + 1 });
      clock.advance(MINUTE);
      await expectDomainError(ledger.capture(late.id, undefined), "failed_precondition", "HOLD_EXPIRED", "hold_id");
      expect((await ledger.capture(onTime.id, undefined)).status).toBe("CAPTURED");
      expect(await f.bal(b.id)).toEqual({ posted: 20_00n, pending: 0n, available: 20_00n });
      expect(await ledger.expireHolds()).toBe(1);
      expect(await f.bal(a.id)).toEqual({ posted: 80_00n, pending: 0n, available: 80_00n });
      expect((await ledger.hold(late.id)).status).toBe("EXPIRED");
    });

    it("expireHolds() leaves captured and released holds alone", async () => {
      const a = await f.funded(100_00n);
      const b = await f.open();
      const captured = await f.reserve(a, b, 10_00n, { ttlMs: MINUTE });
      const released = await f.reserve(a, b, 10_00n, { ttlMs: MINUTE });
      await ledger.capture(captured.id, 4_00n);
      await ledger.release(released.id);
      clock.advance(2 * MINUTE);
      expect(await ledger.expireHolds()).toBe(0);
      expect((await ledger.hold(captured.id)).status).toBe("CAPTURED");
      expect((await ledger.hold(released.id)).status).toBe("RELEASED");
      expect(await f.bal(a.id)).toEqual({ posted: 96_00n, pending: 0n, available: 96_00n });
    });
  });

  describe("cross-currency settlement through liquidity accounts", () => {
    const cases = [
      // 12.34 USD × 15678.505 = 193472.7517 IDR -> 193472.75
      { from: "USD", to: "IDR", amountMinor: 12_34n, rate: "15678.505", expected: 193472_75n },
      // 0.01 USD × 15500.005 = 155.00005 IDR: 15500.005 minor units, a tie -> 15500 (even)
      { from: "USD", to: "IDR", amountMinor: 1n, rate: "15500.005", expected: 155_00n },
      // 1.00 EUR × 160.5 = 160.5 JPY (0 decimals), a tie -> 160 (half-up would give 161)
      { from: "EUR", to: "JPY", amountMinor: 1_00n, rate: "160.5", expected: 160n },
      // 3.00 EUR × 160.5 = 481.5 JPY, a tie -> 482
      { from: "EUR", to: "JPY", amountMinor: 3_00n, rate: "160.5", expected: 482n },
      // 10.00 USD × 0.30705 = 3.0705 KWD (3 decimals), a tie -> 3.070
      { from: "USD", to: "KWD", amountMinor: 10_00n, rate: "0.30705", expected: 3_070n },
      // 25.00 USD × 0.30703 = 7.67575 KWD -> 7.676
      { from: "USD", to: "KWD", amountMinor: 25_00n, rate: "0.30703", expected: 7_676n },
    ];

    it.each(cases)("$from -> $to: $amountMinor minor units at $rate gives exactly $expected", async ({ from, to, amountMinor, rate, expected }) => {
      expect(oracleConvert(amountMinor, from, rate, to)).toBe(expected);
      const src = await f.funded(amountMinor + 1_00n, from);
      const dst = await f.open(to);
      const liqFrom = systemAccountId("LIQUIDITY", from);
      const liqTo = systemAccountId("LIQUIDITY", to);
      const [liqFromBefore, liqToBefore] = [await f.posted(liqFrom), await f.posted(liqTo)];
      const quoteId = `q_${uid()}`;
      const hold = await f.reserve(src, dst, amountMinor, { fx: { rate, quoteId } });
      expect(hold).toMatchObject({ currency: from, amountMinor, destinationCurrency: to, destinationMinor: expected, fxRate: rate, fxQuoteId: quoteId });
      const captured = await ledger.capture(hold.id, undefined);
      expect(captured).toMatchObject({ status: "CAPTURED", capturedMinor: amountMinor, destinationMinor: expected });
      expect(await f.bal(src.id)).toEqual({ posted: 1_00n, pending: 0n, available: 1_00n });
      expect(await f.bal(dst.id)).toEqual({ posted: expected, pending: 0n, available: expected });
      expect((await f.posted(liqFrom)) - liqFromBefore).toBe(amountMinor);
      expect((await f.posted(liqTo)) - liqToBefore).toBe(-expected);
      for (const [currency, sum] of await f.currencySums()) expect({ currency, sum }).toEqual({ currency, sum: 0n });
      const dstEntries = (await ledger.entries(dst.id, 10, "")).entries;
      expect(dstEntries.map((e) => ({ d: e.direction, c: e.currency, m: e.amountMinor, k: e.kind }))).toEqual([{ d: "CREDIT", c: to, m: expected, k: "capture:fx" }]);
      // Both legs belong to the one capture transfer, each balanced in its currency.
      const legs = await db.query<{ account_id: string; direction: string; currency: string; amount_minor: bigint }>(
        "SELECT account_id, direction, currency, amount_minor FROM entries WHERE transfer_id = $1 ORDER BY id",
        [dstEntries[0]!.transferId],
      );
      expect(legs.rows).toEqual([
        { account_id: src.id, direction: "DEBIT", currency: from, amount_minor: amountMinor },
        { account_id: liqFrom, direction: "CREDIT", currency: from, amount_minor: amountMinor },
        { account_id: liqTo, direction: "DEBIT", currency: to, amount_minor: expected },
        { account_id: dst.id, direction: "CREDIT", currency: to, amount_minor: expected },
      ]);
    });

    it.each([
      // hold 10.00 USD at 0.30705 (3.070 KWD); capture 3.33 USD = 1.0224765 KWD -> 1.022
      { from: "USD", to: "KWD", held: 10_00n, rate: "0.30705", capture: 3_33n, expected: 1_022n },
      // hold 3.00 EUR at 160.5 (482 JPY); capture 1.00 EUR = 160.5 JPY, a tie -> 160
      { from: "EUR", to: "JPY", held: 3_00n, rate: "160.5", capture: 1_00n, expected: 160n },
      // hold 100.00 USD at 15678.505; capture 0.07 USD = 1097.49535 IDR -> 1097.50
      { from: "USD", to: "IDR", held: 100_00n, rate: "15678.505", capture: 7n, expected: 1097_50n },
    ])("a partial $from -> $to capture converts the captured part only", async ({ from, to, held, rate, capture, expected }) => {
      expect(oracleConvert(capture, from, rate, to)).toBe(expected);
      const src = await f.funded(held, from);
      const dst = await f.open(to);
      const liqTo = systemAccountId("LIQUIDITY", to);
      const liqToBefore = await f.posted(liqTo);
      const hold = await f.reserve(src, dst, held, { fx: { rate, quoteId: `q_${uid()}` } });
      expect(hold.destinationMinor).toBe(oracleConvert(held, from, rate, to));
      const captured = await ledger.capture(hold.id, capture);
      expect(captured).toMatchObject({ status: "CAPTURED", capturedMinor: capture });
      expect(await f.bal(src.id)).toEqual({ posted: held - capture, pending: 0n, available: held - capture });
      expect(await f.bal(dst.id)).toEqual({ posted: expected, pending: 0n, available: expected });
      expect((await f.posted(liqTo)) - liqToBefore).toBe(-expected);
    });

    it("a conversion that rounds to zero posts only the source leg", async () => {
      const src = await f.funded(1n, "USD");
      const dst = await f.open("JPY");
      // 0.01 USD × 0.4 = 0.004 JPY -> 0
      const hold = await f.reserve(src, dst, 1n, { fx: { rate: "0.4", quoteId: "q_zero" } });
      expect(hold.destinationMinor).toBe(0n);
      await ledger.capture(hold.id, undefined);
      expect(await f.bal(src.id)).toEqual({ posted: 0n, pending: 0n, available: 0n });
      expect(await f.bal(dst.id)).toEqual({ posted: 0n, pending: 0n, available: 0n });
    });
  });

  describe("transfer", () => {
    it("moves posted money at once (a refund), idempotent by transfer_id, never overdrawing", async () => {
      const merchant = await f.open();
      const customer = await f.funded(50_00n);
      await ledger.capture((await f.reserve(customer, merchant, 30_00n)).id, undefined);
      // The merchant has 30.00 posted, 10.00 of it held elsewhere: 20.00 available.
      const other = await f.open();
      await f.reserve(merchant, other, 10_00n);
      const refund = { transferId: `tr_${uid()}`, fromAccountId: merchant.id, toAccountId: customer.id, currency: "USD", amountMinor: 12_50n, fx: undefined };
      expect(await ledger.transfer(refund)).toEqual({ amountMinor: 12_50n, destinationCurrency: "USD", destinationMinor: 12_50n });
      expect(await f.bal(merchant.id)).toEqual({ posted: 17_50n, pending: 10_00n, available: 7_50n });
      expect(await f.bal(customer.id)).toEqual({ posted: 32_50n, pending: 0n, available: 32_50n });
      const before = await f.counts();
      expect(await ledger.transfer(refund)).toEqual({ amountMinor: 12_50n, destinationCurrency: "USD", destinationMinor: 12_50n });
      expect(await f.counts()).toEqual(before);
      await expectDomainError(ledger.transfer({ ...refund, amountMinor: 12_51n }), "already_exists", "ID_REUSED", "transfer_id");
      await expectDomainError(ledger.transfer({ ...refund, transferId: `${uid()}:capture` }), "invalid_argument", "RESERVED_ID", "transfer_id");
      const tooMuch = { ...refund, transferId: `tr_${uid()}`, amountMinor: 7_51n };
      const err = await expectDomainError(ledger.transfer(tooMuch), "failed_precondition", "INSUFFICIENT_FUNDS", "amount");
      expect(err.metadata).toEqual({ available_minor: "750" });
      expect(await f.counts()).toEqual(before);
      expect(await f.bal(merchant.id)).toEqual({ posted: 17_50n, pending: 10_00n, available: 7_50n });
      await ledger.transfer({ ...tooMuch, amountMinor: 7_50n });
      expect(await f.bal(merchant.id)).toEqual({ posted: 10_00n, pending: 10_00n, available: 0n });
      const entries = (await ledger.entries(customer.id, 1, "")).entries;
      expect(entries[0]).toMatchObject({ transferId: tooMuch.transferId, direction: "CREDIT", amountMinor: 7_50n, kind: "transfer" });
    });

    it("a credit's transfer_id cannot be reused for a transfer", async () => {
      const a = await f.funded(10_00n);
      const b = await f.open();
      const transferId = `cr_${uid()}`;
      await ledger.credit({ transferId, accountId: a.id, currency: "USD", amountMinor: 1_00n });
      await expectDomainError(ledger.transfer({ transferId, fromAccountId: a.id, toAccountId: b.id, currency: "USD", amountMinor: 1_00n, fx: undefined }), "already_exists", "ID_REUSED", "transfer_id");
      expect(await f.bal(a.id)).toEqual({ posted: 11_00n, pending: 0n, available: 11_00n });
    });

    it("across currencies converts half-even through liquidity; bad requests write nothing", async () => {
      const usd = await f.funded(20_00n, "USD");
      const eur = await f.open("EUR");
      const base = { transferId: `tr_${uid()}`, fromAccountId: usd.id, toAccountId: eur.id, currency: "USD", amountMinor: 10_05n, fx: { rate: "0.9215", quoteId: "q_tr" } };
      const before = await f.counts();
      await expectDomainError(ledger.transfer({ ...base, fx: undefined }), "invalid_argument", "FX_REQUIRED", "fx.rate");
      await expectDomainError(ledger.transfer({ ...base, toAccountId: usd.id }), "invalid_argument", "SAME_ACCOUNT", "to_account_id");
      await expectDomainError(ledger.transfer({ ...base, currency: "EUR" }), "invalid_argument", "CURRENCY_MISMATCH", "amount.currency");
      await expectDomainError(ledger.transfer({ ...base, fromAccountId: "acc_missing" }), "not_found", "ACCOUNT_NOT_FOUND", "from_account_id");
      await expectDomainError(ledger.transfer({ ...base, toAccountId: "acc_missing" }), "not_found", "ACCOUNT_NOT_FOUND", "to_account_id");
      await expectDomainError(ledger.transfer({ ...base, amountMinor: 20_01n }), "failed_precondition", "INSUFFICIENT_FUNDS", "amount");
      expect(await f.counts()).toEqual(before);
      // 10.05 USD × 0.9215 = 9.261075 EUR -> 9.26
      expect(oracleConvert(10_05n, "USD", "0.9215", "EUR")).toBe(9_26n);
      expect(await ledger.transfer(base)).toEqual({ amountMinor: 10_05n, destinationCurrency: "EUR", destinationMinor: 9_26n });
      expect(await f.bal(usd.id)).toEqual({ posted: 9_95n, pending: 0n, available: 9_95n });
      expect(await f.bal(eur.id)).toEqual({ posted: 9_26n, pending: 0n, available: 9_26n });
    });
  });

  describe("entries", () => {
    it("lists an account's entries newest first, page by page", async () => {
      const a = await f.open();
      const b = await f.open();
      const amounts = [1n, 2n, 3n, 4n, 5n, 6n, 7n];
      for (const m of amounts) await f.fund(a, m * 1_00n);
      await ledger.capture((await f.reserve(a, b, 50n)).id, undefined);
      // Newest first: the capture debit, then the credits from last to first.
      const expected = [{ d: "DEBIT", m: 50n, k: "capture" }, ...[...amounts].reverse().map((m) => ({ d: "CREDIT", m: m * 1_00n, k: "credit" }))];
      const seen: { d: string; m: bigint; k: string }[] = [];
      const ids: bigint[] = [];
      const tokens: string[] = [];
      let token = "";
      for (let page = 0; page < 10; page++) {
        const res = await ledger.entries(a.id, 3, token);
        expect(res.entries.length).toBeLessThanOrEqual(3);
        for (const e of res.entries) {
          expect(e.accountId).toBe(a.id);
          seen.push({ d: e.direction, m: e.amountMinor, k: e.kind });
          ids.push(e.id);
        }
        tokens.push(res.nextPageToken);
        token = res.nextPageToken;
        if (token === "") break;
      }
      expect(seen).toEqual(expected);
      expect(tokens.length).toBe(3);
      expect(tokens[2]).toBe("");
      expect([...ids].sort((x, y) => (x > y ? -1 : x < y ? 1 : 0))).toEqual(ids);
      // Default page size covers all 8; an exact fit has no next page.
      expect((await ledger.entries(a.id, 0, "")).entries).toHaveLength(8);
      expect((await ledger.entries(a.id, 8, "")).nextPageToken).toBe("");
      expect((await ledger.entries(b.id, 10, "")).entries.map((e) => e.direction)).toEqual(["CREDIT"]);
      await expectDomainError(ledger.entries(a.id, 3, "abc"), "invalid_argument", "INVALID_PAGE_TOKEN", "page_token");
      await expectDomainError(ledger.entries("acc_missing", 3, ""), "not_found", "ACCOUNT_NOT_FOUND");
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Model-based property test: random operations on a few USD accounts, compared step by step
// with a small in-memory model of the ledger's rules.

type Op =
  | { t: "credit"; acct: number; amount: bigint }
  | { t: "reserve"; from: number; to: number; amount: bigint; ttlMin: number; capture: boolean }
  | { t: "capture"; hold: number; percent: number | null }
  | { t: "release"; hold: number }
  | { t: "transfer"; from: number; to: number; amount: bigint }
  | { t: "replay"; write: number; tamper: boolean }
  | { t: "tick"; minutes: number };

const ACCOUNTS = 3;
const amountArb = fc.bigInt({ min: 1n, max: 60_00n });
/** Two accounts, different nine times in ten (the same account is an error worth hitting now and then). */
const pairArb = fc.tuple(fc.nat(ACCOUNTS - 1), fc.integer({ min: 0, max: 9 })).map(([from, d]) => ({ from, to: d === 0 ? from : (from + 1 + (d % (ACCOUNTS - 1))) % ACCOUNTS }));
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: fc.record({ t: fc.constant("credit" as const), acct: fc.nat(ACCOUNTS - 1), amount: fc.bigInt({ min: 1n, max: 100_00n }) }), weight: 2 },
  { arbitrary: fc.record({ pair: pairArb, amount: amountArb, ttlMin: fc.integer({ min: 1, max: 120 }), capture: fc.boolean() }).map(({ pair, ...rest }) => ({ t: "reserve" as const, ...pair, ...rest })), weight: 5 },
  { arbitrary: fc.record({ t: fc.constant("capture" as const), hold: fc.nat(), percent: fc.option(fc.integer({ min: 1, max: 120 }), { nil: null }) }), weight: 4 },
  { arbitrary: fc.record({ t: fc.constant("release" as const), hold: fc.nat() }), weight: 2 },
  { arbitrary: fc.record({ pair: pairArb, amount: amountArb }).map(({ pair, amount }) => ({ t: "transfer" as const, ...pair, amount })), weight: 2 },
  { arbitrary: fc.record({ t: fc.constant("replay" as const), write: fc.nat(), tamper: fc.boolean() }), weight: 2 },
  { arbitrary: fc.record({ t: fc.constant("tick" as const), minutes: fc.integer({ min: 0, max: 90 }) }), weight: 1 },
);
/** Opening balances (0 = none), then the operations. */
const runArb = fc.record({
  opening: fc.array(fc.bigInt({ min: 0n, max: 300_00n }), { minLength: ACCOUNTS, maxLength: ACCOUNTS }),
  ops: fc.array(opArb, { minLength: 1, maxLength: 40, size: "max" }),
});

interface ModelHold {
  id: string;
  from: number;
  to: number;
  amount: bigint;
  expiresAt: number;
  status: Hold["status"];
  captured: bigint | null;
}

/** A write that carries a caller id, kept so it can be replayed. */
type Write =
  | { t: "credit"; id: string; acct: number; amount: bigint }
  | { t: "reserve"; id: string; from: number; to: number; amount: bigint; ttlMin: number; capture: boolean }
  | { t: "transfer"; id: string; from: number; to: number; amount: bigint };

class Model {
  posted: bigint[] = Array.from({ length: ACCOUNTS }, () => 0n);
  pending: bigint[] = Array.from({ length: ACCOUNTS }, () => 0n);
  holds = new Map<string, ModelHold>();
  /** Content of every transfer id that was written, by id. */
  transfers = new Map<string, string>();
  constructor(public now: number) {}

  available(i: number): bigint {
    return this.posted[i]! - this.pending[i]!;
  }
  move(from: number, to: number, amount: bigint): void {
    this.posted[from]! -= amount;
    this.posted[to]! += amount;
  }
}

/** Outcome: an error reason, or a summary of the success the model predicts. */
type Outcome = { error: string } | { ok: string };

function apply(m: Model, w: Write | Exclude<Op, { t: "credit" | "reserve" | "transfer" | "replay" }>, holdIds: string[]): Outcome {
  switch (w.t) {
    case "credit": {
      const content = `credit|${w.acct}|${w.amount}`;
      const earlier = m.transfers.get(w.id);
      if (earlier !== undefined) return earlier === content ? { ok: `posted ${m.posted[w.acct]}` } : { error: "ID_REUSED" };
      m.transfers.set(w.id, content);
      m.posted[w.acct]! += w.amount;
      return { ok: `posted ${m.posted[w.acct]}` };
    }
    case "reserve": {
      const earlier = m.holds.get(w.id);
      if (earlier) {
        const same = earlier.from === w.from && earlier.to === w.to && earlier.amount === w.amount;
        if (!same) return { error: "ID_REUSED" };
        // Asked to capture, a hold placed without capture is captured whole now.
        if (!w.capture) return { ok: `hold ${earlier.status} ${earlier.amount}` };
        if (earlier.status === "PENDING" && earlier.expiresAt <= m.now) return { error: "HOLD_EXPIRED" };
        if (earlier.status === "CAPTURED") return earlier.captured === earlier.amount ? { ok: `hold CAPTURED ${earlier.amount}` } : { error: "HOLD_CAPTURED" };
        if (earlier.status !== "PENDING") return { error: `HOLD_${earlier.status}` };
        m.pending[earlier.from]! -= earlier.amount;
        m.move(earlier.from, earlier.to, earlier.amount);
        earlier.status = "CAPTURED";
        earlier.captured = earlier.amount;
        return { ok: `hold CAPTURED ${earlier.amount}` };
      }
      if (w.from === w.to) return { error: "SAME_ACCOUNT" };
      if (m.available(w.from) < w.amount) return { error: "INSUFFICIENT_FUNDS" };
      const hold: ModelHold = { id: w.id, from: w.from, to: w.to, amount: w.amount, expiresAt: m.now + w.ttlMin * MINUTE, status: "PENDING", captured: null };
      m.holds.set(w.id, hold);
      if (w.capture) {
        m.move(w.from, w.to, w.amount);
        hold.status = "CAPTURED";
        hold.captured = w.amount;
      } else {
        m.pending[w.from]! += w.amount;
      }
      return { ok: `hold ${hold.status} ${w.amount}` };
    }
    case "transfer": {
      if (w.from === w.to) return { error: "SAME_ACCOUNT" };
      const content = `transfer|${w.from}|${w.to}|${w.amount}`;
      const earlier = m.transfers.get(w.id);
      if (earlier !== undefined) return earlier === content ? { ok: "transferred" } : { error: "ID_REUSED" };
      if (m.available(w.from) < w.amount) return { error: "INSUFFICIENT_FUNDS" };
      m.transfers.set(w.id, content);
      m.move(w.from, w.to, w.amount);
      return { ok: "transferred" };
    }
    case "capture": {
      const h = m.holds.get(holdIds[w.hold % Math.max(holdIds.length, 1)] ?? "");
      if (!h) return { error: "HOLD_NOT_FOUND" };
      const amount = w.percent === null ? undefined : maxBig(1n, (h.amount * BigInt(w.percent)) / 100n);
      if (h.status === "PENDING" && h.expiresAt <= m.now) return { error: "HOLD_EXPIRED" }; // the expiry rolls back with the error
      if (h.status === "CAPTURED") return amount === undefined || amount === h.captured ? { ok: `hold CAPTURED ${h.captured}` } : { error: "HOLD_CAPTURED" };
      if (h.status !== "PENDING") return { error: `HOLD_${h.status}` };
      const captured = amount ?? h.amount;
      if (captured > h.amount) return { error: "CAPTURE_EXCEEDS_HOLD" };
      m.pending[h.from]! -= h.amount;
      m.move(h.from, h.to, captured);
      h.status = "CAPTURED";
      h.captured = captured;
      return { ok: `hold CAPTURED ${captured}` };
    }
    case "release": {
      const h = m.holds.get(holdIds[w.hold % Math.max(holdIds.length, 1)] ?? "");
      if (!h) return { error: "HOLD_NOT_FOUND" };
      if (h.status === "PENDING") {
        m.pending[h.from]! -= h.amount;
        h.status = h.expiresAt <= m.now ? "EXPIRED" : "RELEASED";
      }
      if (h.status === "CAPTURED") return { error: "HOLD_CAPTURED" };
      return { ok: `hold ${h.status} null` };
    }
    case "tick": {
      m.now += w.minutes * MINUTE;
      let n = 0;
      for (const h of m.holds.values()) {
        if (h.status === "PENDING" && h.expiresAt <= m.now) {
          h.status = "EXPIRED";
          m.pending[h.from]! -= h.amount;
          n++;
        }
      }
      return { ok: `expired ${n}` };
    }
  }
}

const maxBig = (a: bigint, b: bigint) => (a > b ? a : b);

describe.each(backends)("ledger model on $name", (backend) => {
  const dbs = testDatabases(backend, "ledger_model");
  const clock = new Clock();
  let db: Database;
  let ledger: Ledger;

  beforeAll(async () => {
    db = await dbs.open(dbs.newSchema());
    await migrateLedger(db);
    ledger = new Ledger(db, clock.now);
  });
  afterEach(async () => {
    if (ledger) expect(await ledger.reconcile()).toEqual([]);
  });
  afterAll(() => dbs.cleanup());

  async function real(w: Write | Exclude<Op, { t: "credit" | "reserve" | "transfer" | "replay" }>, accounts: Account[], holdIds: string[]): Promise<Outcome> {
    const acct = (i: number) => accounts[i]!.id;
    const hold = (i: number) => holdIds[i % Math.max(holdIds.length, 1)] ?? "h_none";
    const summary = (h: Hold) => ({ ok: `hold ${h.status} ${h.status === "PENDING" ? h.amountMinor : h.capturedMinor}` });
    try {
      switch (w.t) {
        case "credit":
          return { ok: `posted ${(await ledger.credit({ transferId: w.id, accountId: acct(w.acct), currency: "USD", amountMinor: w.amount })).postedMinor}` };
        case "reserve": {
          const h = await ledger.reserve({ holdId: w.id, accountId: acct(w.from), destinationAccountId: acct(w.to), currency: "USD", amountMinor: w.amount, fx: undefined, ttlMs: w.ttlMin * MINUTE, capture: w.capture });
          return { ok: `hold ${h.status} ${h.amountMinor}` };
        }
        case "transfer":
          await ledger.transfer({ transferId: w.id, fromAccountId: acct(w.from), toAccountId: acct(w.to), currency: "USD", amountMinor: w.amount, fx: undefined });
          return { ok: "transferred" };
        case "capture": {
          const id = hold(w.hold);
          let amount: bigint | undefined;
          if (w.percent !== null) {
            const held = await ledger.hold(id).then((h) => h.amountMinor, () => 1n);
            amount = maxBig(1n, (held * BigInt(w.percent)) / 100n);
          }
          return summary(await ledger.capture(id, amount));
        }
        case "release": {
          const h = await ledger.release(hold(w.hold));
          return { ok: `hold ${h.status} ${h.capturedMinor}` };
        }
        case "tick":
          clock.advance(w.minutes * MINUTE);
          return { ok: `expired ${await ledger.expireHolds()}` };
      }
    } catch (err) {
      if (err instanceof DomainError) return { error: err.reason };
      throw err;
    }
  }

  it("random credit/reserve/capture/release/transfer/expiry sequences match the model and reconcile", async () => {
    await fc.assert(
      fc.asyncProperty(runArb, async ({ opening, ops }) => {
        // Past every earlier run's holds (ttl <= 2h), swept: this run's expiries are its own.
        clock.advance(DAY);
        await ledger.expireHolds();
        const run = uid();
        const accounts: Account[] = [];
        for (let i = 0; i < ACCOUNTS; i++) accounts.push(await ledger.openAccount({ requestId: `m_${run}_${i}`, ownerId: `own_${run}`, currency: "USD" }));
        const model = new Model(clock.t);
        const writes: Write[] = [];
        const holdIds: string[] = [];
        for (const [acct, amount] of opening.entries()) {
          if (amount === 0n) continue;
          const w: Write = { t: "credit", id: `open_${run}_${acct}`, acct, amount };
          expect(await real(w, accounts, holdIds)).toEqual(apply(model, w, holdIds));
        }
        for (const [step, op] of ops.entries()) {
          let w: Write | Exclude<Op, { t: "credit" | "reserve" | "transfer" | "replay" }>;
          if (op.t === "replay") {
            const earlier = writes[op.write % Math.max(writes.length, 1)];
            if (!earlier) continue;
            w = op.tamper ? { ...earlier, amount: earlier.amount + 1n } : earlier;
          } else if (op.t === "credit" || op.t === "reserve" || op.t === "transfer") {
            w = { ...op, id: `${op.t}_${run}_${step}` };
            writes.push(w);
            if (w.t === "reserve") holdIds.push(w.id);
          } else {
            w = op;
          }
          const expected = apply(model, w, holdIds);
          const got = await real(w, accounts, holdIds);
          expect({ step, op: w, got }).toEqual({ step, op: w, got: expected });
        }
        for (const [i, a] of accounts.entries()) {
          const now = await ledger.account(a.id);
          expect({ i, posted: now.postedMinor, pending: now.pendingMinor }).toEqual({ i, posted: model.posted[i], pending: model.pending[i] });
          expect(now.postedMinor - now.pendingMinor).toBeGreaterThanOrEqual(0n);
        }
        expect(await ledger.reconcile()).toEqual([]);
      }),
      { numRuns: backend.name === "postgres" ? 50 : 60 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Concurrency: the no-overdraft rule and idempotency must hold when requests race. On
// PostgreSQL they really run in parallel over a 50-connection pool; PGlite serialises them,
// and must still be exact.

/** `work`, or a clear failure (instead of the test's timeout) when it is still running after `ms`: a lock-order deadlock costs ~1 s per retry. */
async function within<T>(ms: number, what: string, work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} still running after ${ms} ms (lock waits or deadlock retries?)`)), ms);
  });
  try {
    return await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
  }
}

describe.each(backends)("ledger under concurrency on $name", (backend) => {
  const dbs = testDatabases(backend, "ledger_conc");
  const clock = new Clock();
  let db: Database;
  let ledger: Ledger;
  const f = fixtures(() => ({ db, ledger }));

  beforeAll(async () => {
    // A pool big enough for real contention (testDatabases uses 25); cleanup() still drops the schema.
    db = await openDatabase({ url: backend.url, dataDir: "memory://", schema: dbs.newSchema(), poolSize: 50 });
    await migrateLedger(db);
    ledger = new Ledger(db, clock.now);
  });
  afterEach(async () => {
    if (ledger) expect(await ledger.reconcile()).toEqual([]);
  });
  afterAll(async () => {
    await db?.close();
    await dbs.cleanup();
  });

  it("250 concurrent 1.00 USD reserves against 137.00 USD: exactly 137 succeed", async () => {
    const a = await f.funded(137_00n);
    const b = await f.open();
    const results = await within(20_000, "250 reserves", Promise.allSettled(Array.from({ length: 250 }, (_, i) => f.reserve(a, b, 1_00n, { holdId: `race_${a.id}_${i}` }))));
    const won = results.filter((r) => r.status === "fulfilled");
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    const reasons = new Set(lost.map((r) => (r.reason instanceof DomainError ? r.reason.reason : String(r.reason))));
    expect({ won: won.length, lost: lost.length, reasons: [...reasons] }).toEqual({ won: 137, lost: 113, reasons: ["INSUFFICIENT_FUNDS"] });
    expect(await f.bal(a.id)).toEqual({ posted: 137_00n, pending: 137_00n, available: 0n });
    const { rows } = await db.query<{ n: bigint }>("SELECT count(*) AS n FROM holds WHERE account_id = $1 AND status = 'PENDING'", [a.id]);
    expect(rows[0]!.n).toBe(137n);
  });

  it("250 concurrent 1.00 USD reserve-and-captures against 137.00 USD: exactly 137 succeed", async () => {
    const a = await f.funded(137_00n);
    const b = await f.open();
    const results = await within(20_000, "250 reserve-and-captures", Promise.allSettled(Array.from({ length: 250 }, (_, i) => f.reserve(a, b, 1_00n, { holdId: `race_c_${a.id}_${i}`, capture: true }))));
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    const reasons = new Set(lost.map((r) => (r.reason instanceof DomainError ? r.reason.reason : String(r.reason))));
    expect({ won: results.length - lost.length, lost: lost.length, reasons: [...reasons] }).toEqual({ won: 137, lost: 113, reasons: ["INSUFFICIENT_FUNDS"] });
    expect(await f.bal(a.id)).toEqual({ posted: 0n, pending: 0n, available: 0n });
    expect(await f.bal(b.id)).toEqual({ posted: 137_00n, pending: 0n, available: 137_00n });
  });

  it("concurrent reserve-and-captures in opposite directions, across currencies, all succeed and reconcile", async () => {
    const usd = await f.funded(1000_00n, "USD");
    const eur = await f.funded(1000_00n, "EUR");
    const fx = (rate: string) => ({ rate, quoteId: `q_${uid()}` });
    const ops = Array.from({ length: 40 }, (_, i) => [f.reserve(usd, eur, BigInt(100 + i), { capture: true, fx: fx("0.9") }), f.reserve(eur, usd, BigInt(100 + i), { capture: true, fx: fx("1.1") })]).flat();
    const results = await within(15_000, "80 opposite reserve-and-captures", Promise.allSettled(ops));
    expect(results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => String(r.reason))).toEqual([]);
  });

  it("50 concurrent reserves with the same hold id return one hold and hold once", async () => {
    const a = await f.funded(10_00n);
    const b = await f.open();
    const holdId = `dup_${uid()}`;
    const results = await Promise.all(Array.from({ length: 50 }, () => f.reserve(a, b, 3_00n, { holdId })));
    for (const h of results) expect(h).toEqual(results[0]);
    expect(await f.bal(a.id)).toEqual({ posted: 10_00n, pending: 3_00n, available: 7_00n });
  });

  it("concurrent duplicates of a credit and of an account opening have one effect", async () => {
    const req = { requestId: `req_${uid()}`, ownerId: `own_${uid()}`, currency: "USD" };
    const opened = await Promise.allSettled(Array.from({ length: 20 }, () => ledger.openAccount(req)));
    const failures = opened.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => String(r.reason));
    expect(failures).toEqual([]);
    const ids = new Set(opened.map((r) => (r.status === "fulfilled" ? r.value.id : "")));
    expect(ids.size).toBe(1);
    const account = await ledger.account([...ids][0]!);
    const credit = { transferId: `cr_${uid()}`, accountId: account.id, currency: "USD", amountMinor: 5_00n };
    await Promise.all(Array.from({ length: 30 }, () => ledger.credit(credit)));
    expect(await f.bal(account.id)).toEqual({ posted: 5_00n, pending: 0n, available: 5_00n });
  });

  it("concurrent captures in opposite directions (A->B and B->A) all succeed and reconcile", async () => {
    const n = 60;
    const a = await f.funded(1000_00n);
    const b = await f.funded(1000_00n);
    const ab = await Promise.all(Array.from({ length: n }, (_, i) => f.reserve(a, b, BigInt(100 + i))));
    const ba = await Promise.all(Array.from({ length: n }, (_, i) => f.reserve(b, a, BigInt(200 + i))));
    const interleaved = ab.flatMap((h, i) => [h, ba[i]!]);
    const results = await within(15_000, "120 opposite captures", Promise.allSettled(interleaved.map((h) => ledger.capture(h.id, undefined))));
    const failures = results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => String(r.reason));
    expect(failures).toEqual([]);
    const sumAb = ab.reduce((s, h) => s + h.amountMinor, 0n);
    const sumBa = ba.reduce((s, h) => s + h.amountMinor, 0n);
    expect(await f.bal(a.id)).toEqual({ posted: 1000_00n - sumAb + sumBa, pending: 0n, available: 1000_00n - sumAb + sumBa });
    expect(await f.bal(b.id)).toEqual({ posted: 1000_00n + sumAb - sumBa, pending: 0n, available: 1000_00n + sumAb - sumBa });
  });

  it("concurrent transfers in opposite directions, racing reserves, never overdraw and reconcile", async () => {
    const a = await f.funded(50_00n);
    const b = await f.funded(50_00n);
    const c = await f.open();
    const ops: Promise<unknown>[] = [];
    for (let i = 0; i < 40; i++) {
      ops.push(ledger.transfer({ transferId: `tab_${uid()}`, fromAccountId: a.id, toAccountId: b.id, currency: "USD", amountMinor: 3_00n, fx: undefined }));
      ops.push(ledger.transfer({ transferId: `tba_${uid()}`, fromAccountId: b.id, toAccountId: a.id, currency: "USD", amountMinor: 2_00n, fx: undefined }));
      ops.push(f.reserve(a, c, 1_00n));
    }
    const results = await within(15_000, "120 opposite transfers and reserves", Promise.allSettled(ops));
    const unexpected = results
      .filter((r): r is PromiseRejectedResult => r.status === "rejected")
      .filter((r) => !(r.reason instanceof DomainError && r.reason.reason === "INSUFFICIENT_FUNDS"))
      .map((r) => String(r.reason));
    expect(unexpected).toEqual([]);
    for (const acc of [a, b]) expect((await f.bal(acc.id)).available).toBeGreaterThanOrEqual(0n);
    const total = (await f.bal(a.id)).posted + (await f.bal(b.id)).posted + (await f.bal(c.id)).posted;
    expect(total).toBe(100_00n);
  });
});
