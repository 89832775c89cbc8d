// The payments store: state changes at the version read (a stale copy changes nothing),
// several steps in one write with one event each, a new payment inserted with its idempotency
// key's claim and the response stored with the outcome, the lease dropped when a payment
// leaves the states the recovery sweep resumes, and — on PostgreSQL, where replicas really
// run at once — several payments replicas sweeping one database never taking the same payment.
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { create, fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { CreatePaymentResponseSchema, PaymentSchema, PaymentStatus } from "../../services/gen/paygate/payments/v1/payments_pb.js";
import { DomainError } from "../../services/runtime/errors.js";
import type { Database } from "../../services/runtime/db/database.js";
import { migrate } from "../../services/runtime/db/migrate.js";
import { paymentRecord as payment } from "../support/payments.js";
import { IdempotencyKeys, type ClaimWrite } from "../../services/payments/idempotency.js";
import type { PaymentRecord } from "../../services/payments/payment.js";
import { endsRequest, PaymentStore } from "../../services/payments/store.js";
import { storageBackends, testDatabases } from "../support/postgres.js";

const MIGRATIONS = fileURLToPath(new URL("../../services/payments/migrations", import.meta.url));
const LEASE_MS = 60_000;
async function rejection(p: Promise<unknown>): Promise<DomainError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(DomainError);
  return err as DomainError;
}

describe.each(storageBackends())("payments store on $name", (backend) => {
  const dbs = testDatabases(backend, "paystore");
  let db: Database;
  let store: PaymentStore;

  beforeAll(async () => {
    db = await dbs.open(dbs.newSchema());
    await migrate(db, MIGRATIONS);
    store = new PaymentStore(db, () => new Date(), () => {});
  });
  afterAll(() => dbs.cleanup());

  const events = async (id: string) =>
    (await db.query<{ type: string; payment: Uint8Array }>("SELECT type, payment FROM payment_events WHERE payment_id = $1 ORDER BY seq", [id])).rows.map((r) => ({
      type: r.type,
      status: PaymentStatus[fromBinary(PaymentSchema, r.payment).status],
    }));
  const lease = async (id: string) => (await db.query<{ lease_owner: string | null }>("SELECT lease_owner FROM payments WHERE id = $1", [id])).rows[0]?.lease_owner;

  it("creates a payment once per id, with its created event", async () => {
    const p = payment();
    expect(await store.create(p, "me", LEASE_MS)).toEqual(p);
    expect(await store.create({ ...p, amountMinor: 5_00n }, "other", LEASE_MS)).toBeUndefined();
    expect((await store.get(p.id)).amountMinor).toBe(1_00n);
    expect(await events(p.id)).toEqual([{ type: "payment.created", status: "PENDING" }]);
  });

  it("moves along a path of legal steps in one write: one event per step, each with its own snapshot, and the lease dropped", async () => {
    const p = (await store.create(payment(), "me", LEASE_MS))!;
    const moved = await store.transition(p, [
      { to: "AUTHORIZED", event: "payment.authorized", patch: { riskDecisionId: "rd_1", riskScore: 7 } },
      { to: "CAPTURED", event: "payment.captured", patch: { capturedMinor: 1_00n, settlementCapturedMinor: 1_00n } },
    ]);
    expect(moved).toMatchObject({ status: "CAPTURED", riskDecisionId: "rd_1", capturedMinor: 1_00n, version: 1n });
    expect(await store.get(p.id)).toEqual(moved);
    expect(await events(p.id)).toEqual([
      { type: "payment.created", status: "PENDING" },
      { type: "payment.authorized", status: "AUTHORIZED" },
      { type: "payment.captured", status: "CAPTURED" },
    ]);
    expect(await lease(p.id)).toBeNull();
  });

  it("leaving the states the sweep resumes drops the lease: a manual payment once authorized; an automatic one authorized keeps it", async () => {
    const p = (await store.create(payment({ captureMethod: "MANUAL" }), "me", LEASE_MS))!;
    await store.transition(p, { to: "AUTHORIZED", event: "payment.authorized" });
    expect(await lease(p.id)).toBeNull();
    const auto = (await store.create(payment(), "me", LEASE_MS))!;
    await store.transition(auto, { to: "AUTHORIZED", event: "payment.authorized" });
    expect(await lease(auto.id)).toBe("me");
  });

  it("a write from a stale copy changes nothing: ABORTED CONCURRENT_UPDATE while the state still allows the step, ILLEGAL_TRANSITION once it does not", async () => {
    const p = (await store.create(payment({ captureMethod: "MANUAL" }), "me", LEASE_MS))!;
    // Another writer changes the payment without moving it (as a replica's write would).
    await db.query("UPDATE payments SET risk_score = 3, version = version + 1 WHERE id = $1", [p.id]);
    const patched = await store.get(p.id);
    expect(patched.version).toBe(1n);
    const stale = await rejection(store.transition(p, { to: "AUTHORIZED", event: "payment.authorized" }));
    expect([stale.kind, stale.reason]).toEqual(["aborted", "CONCURRENT_UPDATE"]);
    const authorized = await store.transition(patched, { to: "AUTHORIZED", event: "payment.authorized" });
    const late = await rejection(store.transition(patched, { to: "AUTHORIZED", event: "payment.authorized" }));
    expect([late.kind, late.reason, late.metadata]).toEqual(["failed_precondition", "ILLEGAL_TRANSITION", { status: "AUTHORIZED" }]);
    expect(await store.get(p.id)).toEqual(authorized);
    expect((await events(p.id)).map((e) => e.type)).toEqual(["payment.created", "payment.authorized"]);
  });

  it("a payment in a final state (FAILED, CANCELED, REFUNDED) never moves again: every step out is refused and nothing is written", async () => {
    const failed = await store.transition((await store.create(payment(), "me", LEASE_MS))!, { to: "FAILED", event: "payment.failed" });
    const manual = (await store.create(payment({ captureMethod: "MANUAL" }), "me", LEASE_MS))!;
    const canceled = await store.transition(manual, [
      { to: "AUTHORIZED", event: "payment.authorized" },
      { to: "CANCELED", event: "payment.canceled" },
    ]);
    const refunded = await store.transition((await store.create(payment(), "me", LEASE_MS))!, [
      { to: "AUTHORIZED", event: "payment.authorized" },
      { to: "CAPTURED", event: "payment.captured", patch: { capturedMinor: 1_00n, settlementCapturedMinor: 1_00n } },
      { to: "REFUNDED", event: "payment.refunded", patch: { refundedMinor: 1_00n } },
    ]);
    const every = ["PENDING", "AUTHORIZED", "CAPTURED", "PARTIALLY_REFUNDED", "REFUNDED", "CANCELED", "FAILED"] as const;
    for (const final of [failed, canceled, refunded]) {
      const before = await events(final.id);
      for (const to of every) {
        const refused = await rejection(store.transition(final, { to, event: "payment.moved" }));
        expect([refused.reason, refused.metadata], `${final.status} -> ${to}`).toEqual(["ILLEGAL_TRANSITION", { status: final.status }]);
      }
      expect(await store.get(final.id)).toEqual(final);
      expect(await events(final.id)).toEqual(before);
    }
  });

  it("refuses an illegal path before writing anything, and a missing payment is NOT_FOUND", async () => {
    const p = (await store.create(payment(), "me", LEASE_MS))!;
    const illegal = await rejection(store.transition(p, { to: "REFUNDED", event: "payment.refunded" }));
    expect([illegal.kind, illegal.reason]).toEqual(["failed_precondition", "ILLEGAL_TRANSITION"]);
    expect(await store.get(p.id)).toEqual(p);
    const missing = await rejection(store.transition(payment(), { to: "FAILED", event: "payment.failed" }));
    expect([missing.kind, missing.reason]).toEqual(["not_found", "PAYMENT_NOT_FOUND"]);
  });

  it("stores a request's response under its key in the write that ends the request's work, and only then", async () => {
    const key = async (k: string) =>
      (await db.query<{ response: Uint8Array | null; locked_until: Date | null }>("SELECT response, locked_until FROM idempotency_keys WHERE merchant_id = 'm' AND key = $1", [k])).rows[0];
    const claim = async (k: string) => {
      await db.query("INSERT INTO idempotency_keys (merchant_id, key, request_hash, locked_until, created_at, expires_at) VALUES ('m', $1, 'h', now() + interval '1 minute', now(), now() + interval '1 day')", [k]);
      return { key: { merchantId: "m", key: k }, response: (moved: PaymentRecord) => new TextEncoder().encode(`${moved.id} ${moved.status}`) };
    };
    // A step that leaves the payment resumable (automatic capture, AUTHORIZED) does not end the work.
    const p = (await store.create(payment(), "me", LEASE_MS))!;
    const authorizing = await claim("k1");
    const authorized = await store.transition(p, { to: "AUTHORIZED", event: "payment.authorized" }, { complete: authorizing });
    expect(endsRequest(authorized)).toBe(false);
    expect((await key("k1"))?.response).toBeNull();
    const capturing = await claim("k2");
    // A stale copy moves nothing and completes nothing.
    await rejection(store.transition(p, { to: "FAILED", event: "payment.failed" }, { complete: capturing }));
    expect((await key("k2"))?.response).toBeNull();
    const captured = await store.transition(authorized, { to: "CAPTURED", event: "payment.captured", patch: { capturedMinor: 1_00n, settlementCapturedMinor: 1_00n } }, { complete: capturing });
    expect(endsRequest(captured)).toBe(true);
    const stored = await key("k2");
    expect(new TextDecoder().decode(stored!.response!)).toBe(`${p.id} CAPTURED`);
    expect(stored!.locked_until).toBeNull();
  });

  it("inserts a new payment in the statement that claims a new idempotency key; a key taken over from a dead attempt does not", async () => {
    let now = new Date("2031-01-01T00:00:00.000Z");
    const keys = new IdempotencyKeys(db, { retentionMs: 24 * 3_600_000, lockMs: 1_000, now: () => now });
    const statements: string[] = [];
    const counted = new IdempotencyKeys({ ...db, query: (sql, params) => (statements.push(sql), db.query(sql, params)) }, { retentionMs: 24 * 3_600_000, lockMs: 1_000, now: () => now });
    const key = `k_${Math.random().toString(36).slice(2)}`;
    let made: PaymentRecord | undefined;
    const withClaim: ClaimWrite<PaymentRecord> = (scope, newKey) => {
      made = payment({ id: `pay_${scope.length}_${Math.random().toString(36).slice(2)}` });
      return store.creationWithClaim(made, "me", LEASE_MS, newKey);
    };
    const seen: { scope: string | undefined; firstWritten: boolean }[] = [];
    const transient = new ConnectError("upstream down", Code.Unavailable);
    // A new key: the payment is inserted with the claim, in one statement; the run then fails for now.
    await expect(
      counted.run("m", key, { a: 1 }, CreatePaymentResponseSchema, async ({ scope, writtenWithClaim }) => {
        seen.push({ scope, firstWritten: writtenWithClaim !== undefined });
        throw transient;
      }, { withClaim }),
    ).rejects.toBe(transient);
    expect(statements).toHaveLength(2); // the claim with the insert, then the key unlocked after the failure
    expect(seen[0]!.firstWritten).toBe(true);
    expect((await store.get(made!.id)).status).toBe("PENDING");
    // The retry takes the key over in the same scope: nothing is inserted with the claim.
    now = new Date(now.getTime() + 1);
    const first = made!;
    await keys.run("m", key, { a: 1 }, CreatePaymentResponseSchema, async ({ scope, writtenWithClaim }) => {
      seen.push({ scope, firstWritten: writtenWithClaim !== undefined });
      return { response: create(CreatePaymentResponseSchema, {}), kept: false };
    }, { withClaim });
    expect(seen[1]).toEqual({ scope: seen[0]!.scope, firstWritten: false });
    await expect(store.get(made!.id)).rejects.toThrow(/no payment/);
    expect((await store.get(first.id)).id).toBe(first.id);
  });

  it("keeps a key for its retention: replayed until the last moment, then run afresh, and purged only once past it", async () => {
    const DAY = 24 * 3_600_000;
    // Earlier than every other key here, so a purge can only find this one.
    let now = new Date("2020-03-01T00:00:00.000Z");
    const keys = new IdempotencyKeys(db, { retentionMs: DAY, lockMs: 1_000, now: () => now });
    const key = `k_${Math.random().toString(36).slice(2)}`;
    let runs = 0;
    const run = () =>
      keys.run("retention", key, { a: 1 }, CreatePaymentResponseSchema, async () => {
        runs++;
        return { response: create(CreatePaymentResponseSchema, { payment: { id: `pay_${runs}` } }), kept: false };
      });
    const stored = async () => (await db.query<{ n: string }>("SELECT count(*)::text AS n FROM idempotency_keys WHERE merchant_id = 'retention' AND key = $1", [key])).rows[0]!.n;

    expect((await run()).response.payment?.id).toBe("pay_1");
    now = new Date(now.getTime() + DAY - 1);
    expect(await keys.purgeExpired()).toBe(0);
    expect(await stored()).toBe("1");
    const late = await run();
    expect([late.replayed, late.response.payment?.id, runs]).toEqual([true, "pay_1", 1]);

    now = new Date(now.getTime() + 1);
    expect(await keys.purgeExpired()).toBe(1);
    expect(await stored()).toBe("0");
    const fresh = await run();
    expect([fresh.replayed, fresh.response.payment?.id, runs]).toEqual([false, "pay_2", 2]);
  });

  it("runs `also` in the same transaction: when it throws, the step and its event are rolled back", async () => {
    const p = (await store.create(payment(), "me", LEASE_MS))!;
    const boom = new Error("boom");
    await expect(store.transition(p, { to: "FAILED", event: "payment.failed" }, { also: async () => Promise.reject(boom) })).rejects.toBe(boom);
    expect(await store.get(p.id)).toEqual(p);
    expect((await events(p.id)).map((e) => e.type)).toEqual(["payment.created"]);
  });
});

describe.each(storageBackends().filter((b) => b.url !== undefined))("payments replicas sweeping one database on $name", (backend) => {
  const dbs = testDatabases(backend, "paysweep");
  const replicas: PaymentStore[] = [];
  let db: Database;

  beforeAll(async () => {
    const schema = dbs.newSchema();
    db = await dbs.open(schema);
    await migrate(db, MIGRATIONS);
    // Each replica has its own pool, as separate processes would.
    for (let i = 0; i < 4; i++) replicas.push(new PaymentStore(await dbs.open(schema), () => new Date(), () => {}));
  });
  afterAll(() => dbs.cleanup());

  it("four replicas claiming stalled payments at once take each exactly once; live leases, manual authorizations and finished payments are left alone", async () => {
    const stalled: string[] = [];
    // Stalled: created by a process whose lease has run out.
    for (let i = 0; i < 60; i++) stalled.push((await replicas[0]!.create(payment(), "dead", -1))!.id);
    const authorizedAuto = (await replicas[0]!.create(payment(), "dead", -1))!;
    stalled.push((await replicas[0]!.transition(authorizedAuto, { to: "AUTHORIZED", event: "payment.authorized" })).id);
    const live = (await replicas[0]!.create(payment(), "alive", LEASE_MS))!.id;
    const manual = (await replicas[0]!.create(payment({ captureMethod: "MANUAL" }), "dead", -1))!;
    await replicas[0]!.transition(manual, { to: "AUTHORIZED", event: "payment.authorized" });
    const done = (await replicas[0]!.create(payment(), "dead", -1))!;
    await replicas[0]!.transition(done, { to: "FAILED", event: "payment.failed" });

    const claimed = new Map<string, string[]>();
    await Promise.all(
      replicas.map(async (replica, i) => {
        for (;;) {
          const batch = await replica.claimStalled(`replica-${i}`, LEASE_MS, 3);
          if (batch.length === 0) return;
          for (const p of batch) claimed.set(p.id, [...(claimed.get(p.id) ?? []), `replica-${i}`]);
        }
      }),
    );
    const mine = [...claimed.keys()].filter((id) => stalled.includes(id) || [live, manual.id, done.id].includes(id));
    expect(mine.sort()).toEqual([...stalled].sort());
    expect(mine.filter((id) => claimed.get(id)!.length !== 1)).toEqual([]);
  });

  it("of replicas claiming one payment at once, exactly one gets it", async () => {
    for (let round = 0; round < 20; round++) {
      const p = (await replicas[0]!.create(payment(), "dead", -1))!;
      const won = await Promise.all(replicas.map((r, i) => r.claim(p.id, `replica-${i}`, LEASE_MS)));
      expect(won.filter((x) => x !== undefined)).toHaveLength(1);
    }
  });
});
