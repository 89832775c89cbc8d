// The recovery sweep against a real payments store and a scripted saga: it resumes stalled
// payments in parallel up to its limit and never above it, drains a backlog bigger than one
// claim in one sweep, lets no failing or paused payment hold up the rest (nor tries it twice
// in a sweep), does not spin on payments an upstream still holds up, starts a resume only
// while its lease is fresh, never runs two sweeps at once, and stops cleanly; and — on
// PostgreSQL, where replicas really run at once — two replicas sweeping one database resume
// every payment exactly once.
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CallOptions } from "@connectrpc/connect";
import type { Database } from "../../services/runtime/db/database.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { migrate } from "../../services/runtime/db/migrate.js";
import type { PaymentRecord } from "../../services/payments/payment.js";
import { startRecovery, type Recovery, type RecoveryOptions } from "../../services/payments/recovery.js";
import { PaymentStore } from "../../services/payments/store.js";
import { paymentRecord as payment } from "../support/payments.js";
import { storageBackends, testDatabases } from "../support/postgres.js";
import { sleep, waitFor } from "../support/stack.js";

const MIGRATIONS = fileURLToPath(new URL("../../services/payments/migrations", import.meta.url));
const LEASE_MS = 60_000;
/** Long enough that no timed sweep runs during a test that sweeps by hand. */
const NEVER_MS = 600_000;
const silent = createLogger("recovery-test", "silent");
const noKeys = { purgeExpired: async () => 0 };

/** Finishes a claimed payment as a saga that got through would: AUTHORIZED and CAPTURED in one write. */
const capture = (store: PaymentStore, p: PaymentRecord) =>
  store.transition(p, [
    { to: "AUTHORIZED", event: "payment.authorized" },
    { to: "CAPTURED", event: "payment.captured", patch: { capturedMinor: p.amountMinor, settlementCapturedMinor: p.amountMinor } },
  ]);

/** A saga scripted per payment; it counts runs, the runs under way, and the most at once. */
function scriptedSaga(script: (p: PaymentRecord, call: CallOptions) => Promise<PaymentRecord>) {
  const saga = {
    runs: new Map<string, number>(),
    active: 0,
    maxActive: 0,
    async run(p: PaymentRecord, call: CallOptions): Promise<PaymentRecord> {
      saga.runs.set(p.id, (saga.runs.get(p.id) ?? 0) + 1);
      saga.maxActive = Math.max(saga.maxActive, ++saga.active);
      try {
        return await script(p, call);
      } finally {
        saga.active--;
      }
    },
  };
  return saga;
}

describe.each(storageBackends())("recovery sweep on $name", (backend) => {
  const dbs = testDatabases(backend, "recovery");
  let db: Database;
  let store: PaymentStore;
  const recoveries: Recovery[] = [];

  beforeAll(async () => {
    db = await dbs.open(dbs.newSchema());
    await migrate(db, MIGRATIONS);
    store = new PaymentStore(db, () => new Date(), () => {});
  });
  afterAll(async () => {
    for (const r of recoveries) await r.stop();
    await dbs.cleanup();
  });

  const recovery = (opts: Partial<RecoveryOptions> & Pick<RecoveryOptions, "saga">) => {
    const r = startRecovery({ store, keys: noKeys, instanceId: "sweeper", leaseMs: LEASE_MS, intervalMs: NEVER_MS, concurrency: 4, batchSize: 10, timeoutMs: 1_000, logger: silent, ...opts });
    recoveries.push(r);
    return r;
  };
  /** `n` payments left PENDING by a process that died (its lease ran out). */
  const stalled = async (n: number) => {
    const ids: string[] = [];
    for (let i = 0; i < n; i++) ids.push((await store.create(payment(), "dead", -1))!.id);
    return ids;
  };
  const statuses = async (ids: string[]) =>
    (await db.query<{ status: string }>("SELECT status FROM payments WHERE id = ANY($1) ORDER BY id", [ids])).rows.map((r) => r.status);
  const leaseOwner = async (id: string) => (await db.query<{ lease_owner: string | null }>("SELECT lease_owner FROM payments WHERE id = $1", [id])).rows[0]?.lease_owner;
  /** Leaves no payment of this test stalled for the next one. */
  const finishAll = async () => {
    for (const p of await store.claimStalled("cleanup", LEASE_MS, 1_000)) await capture(store, p);
  };

  it("resumes up to `concurrency` payments at once and never more", async () => {
    const ids = await stalled(30);
    const gates: Array<() => void> = [];
    const saga = scriptedSaga(async (p) => {
      await new Promise<void>((r) => gates.push(r));
      return capture(store, p);
    });
    const sweep = recovery({ saga, concurrency: 4, batchSize: 10 }).sweep();
    let released = 0;
    while (released < ids.length) {
      // Four at once, but for the tail of each claim of ten.
      const expected = Math.min(4, 10 - (released % 10));
      await waitFor(() => gates.length === expected && saga.active === expected, "the sweep to fill its slots");
      await sleep(20); // room for one more to start, were the limit not kept
      expect(saga.active).toBe(expected);
      gates.shift()!();
      released++;
    }
    expect(await sweep).toEqual({ finished: 30, paused: 0, failed: 0, deferred: 0 });
    expect(saga.maxActive).toBe(4);
    expect([...saga.runs.values()]).toEqual(Array(30).fill(1));
    expect(await statuses(ids)).toEqual(Array(30).fill("CAPTURED"));
  });

  it("drains a backlog bigger than one claim in one timed sweep, claim after claim, without waiting for the next interval", async () => {
    const ids = await stalled(25);
    const saga = scriptedSaga((p) => capture(store, p));
    const claims: number[] = [];
    const counting = {
      claimStalled: async (...args: Parameters<PaymentStore["claimStalled"]>) => {
        const batch = await store.claimStalled(...args);
        claims.push(batch.length);
        return batch;
      },
      releaseLease: store.releaseLease.bind(store),
    };
    const sweeps: unknown[] = [];
    const logger = createLogger("recovery-test", "info", { write: (line: string) => void (JSON.parse(line).msg === "recovery sweep done" && sweeps.push(JSON.parse(line))) });
    const r = recovery({ saga, store: counting, logger, intervalMs: 300, concurrency: 3, batchSize: 10 });
    await waitFor(async () => (await statuses(ids)).every((s) => s === "CAPTURED"), "every payment to be captured");
    await r.stop();
    expect(sweeps).toEqual([expect.objectContaining({ finished: 25, paused: 0, failed: 0, deferred: 0 })]);
    expect(claims.slice(0, 3)).toEqual([10, 10, 5]);
    expect([...saga.runs.values()]).toEqual(Array(25).fill(1));
  });

  it("a payment whose resume throws or pauses again holds up none of the others, and is tried once per sweep", async () => {
    const ids = await stalled(12);
    const throwing = new Set([ids[0], ids[6]]);
    const paused = ids[3]!;
    const saga = scriptedSaga(async (p) => {
      if (throwing.has(p.id)) throw new Error("boom");
      if (p.id === paused) return store.get(p.id); // an upstream still down: the saga pauses
      return capture(store, p);
    });
    expect(await recovery({ saga, concurrency: 2, batchSize: 5 }).sweep()).toEqual({ finished: 9, paused: 1, failed: 2, deferred: 0 });
    expect(await statuses(ids.filter((id) => !throwing.has(id) && id !== paused))).toEqual(Array(9).fill("CAPTURED"));
    expect(await store.get(paused)).toMatchObject({ status: "PENDING" });
    expect(await leaseOwner(paused), "a payment still resumable is unleased for the next sweep").toBeNull();
    expect([...saga.runs.values()]).toEqual(Array(12).fill(1));
    await finishAll();
  });

  it("a claim in which no payment moved on (an upstream still down) ends the sweep until the next interval", async () => {
    const ids = await stalled(12);
    const saga = scriptedSaga((p) => store.get(p.id)); // every saga pauses
    expect(await recovery({ saga, concurrency: 2, batchSize: 5 }).sweep()).toEqual({ finished: 0, paused: 5, failed: 0, deferred: 0 });
    expect([...saga.runs.keys()]).toEqual(ids.slice(0, 5));
    for (const id of ids.slice(0, 5)) expect(await leaseOwner(id), "tried and given back").toBeNull();
    for (const id of ids.slice(5)) expect(await leaseOwner(id), "not claimed").toBe("dead");
    await finishAll();
  });

  it("starts a claimed payment only while its lease is fresh: the ones left waiting go back and are claimed again", async () => {
    const leaseMs = 1_000;
    const ids = await stalled(6);
    const leaseLeftAtStart: number[] = [];
    const saga = scriptedSaga(async (p) => {
      const startedAt = Date.now();
      const { rows } = await db.query<{ lease_until: Date }>("SELECT lease_until FROM payments WHERE id = $1", [p.id]);
      leaseLeftAtStart.push(rows[0]!.lease_until.getTime() - startedAt);
      await sleep(150); // longer than the fresh part of the lease (100 ms)
      return capture(store, p);
    });
    const report = await recovery({ saga, leaseMs, concurrency: 1, batchSize: 4 }).sweep();
    expect(report.finished).toBe(6);
    expect(report.deferred).toBeGreaterThan(0);
    expect(Math.min(...leaseLeftAtStart)).toBeGreaterThanOrEqual(leaseMs * 0.9 - 5);
    expect([...saga.runs.values()]).toEqual(Array(6).fill(1));
    expect(await statuses(ids)).toEqual(Array(6).fill("CAPTURED"));
  });

  it("a sweep asked for while one is under way joins it instead of running beside it", async () => {
    await stalled(6);
    const saga = scriptedSaga(async (p) => {
      await sleep(20);
      return capture(store, p);
    });
    const r = recovery({ saga, concurrency: 2, batchSize: 10 });
    const [first, second] = await Promise.all([r.sweep(), r.sweep()]);
    expect(first).toEqual({ finished: 6, paused: 0, failed: 0, deferred: 0 });
    expect(second).toEqual(first);
  });

  it("stopping cancels the running resumes (their sagas pause), gives back the unstarted claims, and starts no sweep after", async () => {
    const ids = await stalled(6);
    const saga = scriptedSaga(async (p, call) => {
      // Like the real saga: an aborted upstream call pauses the payment.
      await new Promise<void>((r) => call.signal!.addEventListener("abort", () => r(), { once: true }));
      return store.get(p.id);
    });
    const r = recovery({ saga, intervalMs: 20, concurrency: 2, batchSize: 10 });
    await waitFor(() => saga.active === 2, "two resumes under way");
    await r.stop();
    expect(saga.active).toBe(0);
    expect(saga.runs.size).toBe(2);
    await sleep(100);
    expect(saga.runs.size, "no sweep after stop").toBe(2);
    expect(await statuses(ids)).toEqual(Array(6).fill("PENDING"));
    for (const id of ids) expect(await leaseOwner(id)).toBeNull();
    await finishAll();
  });
});

describe.each(storageBackends().filter((b) => b.url !== undefined))("recovery sweeps of two replicas on one database on $name", (backend) => {
  const dbs = testDatabases(backend, "recoveryreplicas");
  const replicas: PaymentStore[] = [];
  const recoveries: Recovery[] = [];

  beforeAll(async () => {
    const schema = dbs.newSchema();
    await migrate(await dbs.open(schema), MIGRATIONS);
    // Each replica has its own pool, as separate processes would.
    for (let i = 0; i < 2; i++) replicas.push(new PaymentStore(await dbs.open(schema), () => new Date(), () => {}));
  });
  afterAll(async () => {
    for (const r of recoveries) await r.stop();
    await dbs.cleanup();
  });

  it("two replicas sweeping at once resume every stalled payment exactly once between them", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 300; i++) ids.push((await replicas[0]!.create(payment(), "dead", -1))!.id);
    const resumedBy = new Map<string, string[]>();
    const sweepers = replicas.map((store, i) => {
      const saga = scriptedSaga(async (p) => {
        resumedBy.set(p.id, [...(resumedBy.get(p.id) ?? []), `replica-${i}`]);
        return capture(store, p);
      });
      // Small claims and quick resumes: the two replicas claim often, and at the same moments.
      const r = startRecovery({ store, saga, keys: noKeys, instanceId: `replica-${i}`, leaseMs: LEASE_MS, intervalMs: NEVER_MS, concurrency: 4, batchSize: 4, timeoutMs: 1_000, logger: silent });
      recoveries.push(r);
      return r;
    });
    const reports = await Promise.all(sweepers.map((r) => r.sweep()));
    expect([...resumedBy.keys()].sort()).toEqual([...ids].sort());
    expect(ids.filter((id) => resumedBy.get(id)!.length !== 1), "payments resumed more than once").toEqual([]);
    expect(reports.every((r) => r.finished > 0), "both replicas took part").toBe(true);
    expect(reports.reduce((n, r) => n + r.finished, 0)).toBe(300);
  });
});
