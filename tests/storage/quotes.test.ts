// The FX quote store on both backends: exact round trip, use-once semantics and errors, and
// exactly one winner among concurrent users of one quote (row locking on PostgreSQL).
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Database } from "../../services/runtime/db/database.js";
import { DomainError } from "../../services/runtime/errors.js";
import { migrate } from "../../services/runtime/db/migrate.js";
import { QuoteStore } from "../../services/fx/quotes.js";
import type { QuoteRecord } from "../../services/fx/quotes.js";
import { storageBackends, testDatabases } from "../support/postgres.js";

const FX_MIGRATIONS = fileURLToPath(new URL("../../services/fx/migrations", import.meta.url));
const T0 = new Date("2030-03-01T12:00:00.123Z");
const at = (ms: number) => new Date(T0.getTime() + ms);

let serial = 0;
function newQuote(overrides: Partial<QuoteRecord> = {}): QuoteRecord {
  return {
    id: `qt_${++serial}_${Math.random().toString(36).slice(2, 8)}`,
    fromCurrency: "EUR",
    toCurrency: "JPY",
    amountMinor: 9007199254740993n, // beyond 2^53: must not pass through a JS number
    convertedMinor: 1_462_395_012_345_678_901n,
    midRate: "162.3500000000", // trailing zeros are part of the exact value's text
    spreadBps: 25,
    rate: "161.944125",
    createdAt: T0,
    expiresAt: at(30_000),
    usedAt: null,
    usedReference: null,
    ...overrides,
  };
}

/** The DomainError `promise` rejects with; fails the test if it resolves or throws anything else. */
async function domainError(promise: Promise<unknown>): Promise<DomainError> {
  const outcome = await promise.then(
    (value) => ({ value }),
    (error: unknown) => ({ error }),
  );
  if (!("error" in outcome)) throw new Error(`expected a DomainError, got ${JSON.stringify(outcome.value, (_k, v: unknown) => (typeof v === "bigint" ? `${v}n` : v))}`);
  expect(outcome.error).toBeInstanceOf(DomainError);
  return outcome.error as DomainError;
}

describe.each(storageBackends())("quote store on $name", (backend) => {
  const dbs = testDatabases(backend, "quotes");
  let db: Database;
  let store: QuoteStore;
  beforeAll(async () => {
    db = await dbs.open(dbs.newSchema());
    await migrate(db, FX_MIGRATIONS);
    store = new QuoteStore(db);
  });
  afterAll(() => dbs.cleanup());

  it("reads back exactly what it stored: numeric rates as the same strings, amounts as bigint", async () => {
    const quote = newQuote();
    await store.insert(quote);
    const read = await store.get(quote.id);
    expect(read).toEqual(quote);
    expect(typeof read.amountMinor).toBe("bigint");
    expect(read.amountMinor).toBe(9007199254740993n);
    expect(read.midRate).toBe("162.3500000000");
    expect(read.createdAt.toISOString()).toBe("2030-03-01T12:00:00.123Z");
  });

  it("rejects a duplicate quote id", async () => {
    const quote = newQuote();
    await store.insert(quote);
    await expect(store.insert({ ...quote, rate: "1" })).rejects.toThrow(/duplicate key/);
    expect((await store.get(quote.id)).rate).toBe(quote.rate);
  });

  it("lets a quote be used once, and a retry with the same reference gets the same answer", async () => {
    const quote = newQuote();
    await store.insert(quote);

    const used = await store.use(quote.id, "pay_1", at(1_000));
    expect(used).toEqual({ ...quote, usedAt: at(1_000), usedReference: "pay_1" });
    expect(await store.get(quote.id)).toEqual(used);

    // A retried call, even after expiry, changes nothing and succeeds.
    expect(await store.use(quote.id, "pay_1", at(2_000))).toEqual(used);
    expect(await store.use(quote.id, "pay_1", at(60_000))).toEqual(used);
  });

  it("refuses a second use by another reference with QUOTE_ALREADY_USED", async () => {
    const quote = newQuote();
    await store.insert(quote);
    await store.use(quote.id, "pay_1", at(1_000));

    const err = await domainError(store.use(quote.id, "pay_2", at(2_000)));
    expect(err).toMatchObject({ kind: "failed_precondition", reason: "QUOTE_ALREADY_USED", field: "quote_id" });
    // Still already-used, not expired, once past the expiry.
    expect((await domainError(store.use(quote.id, "pay_2", at(60_000)))).reason).toBe("QUOTE_ALREADY_USED");
    expect((await store.get(quote.id)).usedReference).toBe("pay_1");
  });

  it("refuses an expired quote with QUOTE_EXPIRED, at and after the expiry instant, and leaves it unused", async () => {
    const quote = newQuote();
    await store.insert(quote);

    for (const now of [quote.expiresAt, at(31_000)]) {
      const err = await domainError(store.use(quote.id, "pay_1", now));
      expect(err).toMatchObject({
        kind: "failed_precondition",
        reason: "QUOTE_EXPIRED",
        field: "quote_id",
        metadata: { expired_at: quote.expiresAt.toISOString() },
      });
    }
    const stored = await store.get(quote.id);
    expect(stored.usedAt).toBeNull();
    expect(stored.usedReference).toBeNull();
    // One millisecond before expiry it is still good.
    expect((await store.use(quote.id, "pay_1", at(29_999))).usedReference).toBe("pay_1");
  });

  it("reports an unknown quote id as QUOTE_NOT_FOUND", async () => {
    for (const attempt of [store.get("qt_missing"), store.use("qt_missing", "pay_1", T0)]) {
      expect(await domainError(attempt)).toMatchObject({ kind: "not_found", reason: "QUOTE_NOT_FOUND", field: "quote_id" });
    }
  });

  it("lets exactly one of 20 concurrent users with different references win", async () => {
    // A few quotes at once, each raced by 20 callers (on PostgreSQL, over 20+ connections).
    const quotes = [newQuote(), newQuote(), newQuote()];
    for (const quote of quotes) await store.insert(quote);

    await Promise.all(
      quotes.map(async (quote) => {
        const references = Array.from({ length: 20 }, (_, i) => `pay_${i}`);
        const outcomes = await Promise.allSettled(references.map((ref) => store.use(quote.id, ref, at(1_000))));

        const winners = outcomes.flatMap((o) => (o.status === "fulfilled" ? [o.value] : []));
        expect(winners).toHaveLength(1);
        const losers = outcomes.flatMap((o) => (o.status === "rejected" ? [o.reason as unknown] : []));
        expect(losers).toHaveLength(19);
        for (const loser of losers) {
          expect(loser).toBeInstanceOf(DomainError);
          expect((loser as DomainError).reason).toBe("QUOTE_ALREADY_USED");
        }
        const winner = winners[0];
        expect(references).toContain(winner?.usedReference);
        expect((await store.get(quote.id)).usedReference).toBe(winner?.usedReference);
      }),
    );
  });
});
