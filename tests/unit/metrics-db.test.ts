// Database metrics of services/runtime/db/database.ts, on both backends (PGlite always, PostgreSQL
// when TEST_DATABASE_URL is set): db_query_duration_seconds{operation},
// db_transactions_total{outcome} and, for PostgreSQL, db_pool_connections{state}. Values are
// read from the process registry, as /metrics would serve them, before and after.
import { afterAll, describe, expect, it, vi } from "vitest";
import type { Database } from "../../services/runtime/db/database.js";
import { registry } from "../../services/runtime/observability/metrics.js";
import { storageBackends, testDatabases } from "../support/postgres.js";

vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 });

type Values = Map<string, number>;

/** Every sample of `name` (histograms: _count, _sum, _bucket), keyed by sample name + sorted labels. */
async function read(name: string): Promise<Values> {
  const metric = registry.getSingleMetric(name);
  if (!metric) throw new Error(`${name} is not registered`);
  const out: Values = new Map();
  for (const v of (await metric.get()).values) {
    const labels = Object.entries(v.labels)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([k, x]) => `${k}=${String(x)}`)
      .join(",");
    out.set(`${(v as { metricName?: string }).metricName ?? name}{${labels}}`, v.value);
  }
  return out;
}

const diff = (before: Values, after: Values, key: string) => (after.get(key) ?? 0) - (before.get(key) ?? 0);

const QUERY_COUNT = "db_query_duration_seconds_count{operation=query}";
const TX_COUNT = "db_query_duration_seconds_count{operation=transaction}";
const TX_SUM = "db_query_duration_seconds_sum{operation=transaction}";
const outcome = (o: string) => `db_transactions_total{outcome=${o}}`;

const backends = storageBackends();
const cleanups: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of cleanups) await c();
});

describe.each(backends)("database metrics on $name", (backend) => {
  // Serialization retries and pool gauges exist only on PostgreSQL: those tests are defined there only.
  const postgresOnly = (name: string, fn: () => Promise<void>) => {
    if (backend.name === "postgres") it(name, fn);
  };
  const dbs = testDatabases(backend, "metrics");
  cleanups.push(() => dbs.cleanup());
  let db: Database;

  it("time queries and transactions, and count commits and rollbacks", async () => {
    db = await dbs.open(dbs.newSchema());
    await db.exec("CREATE TABLE t (id int PRIMARY KEY)");
    const before = new Map([...(await read("db_query_duration_seconds")), ...(await read("db_transactions_total"))]);

    await db.query("SELECT 1");
    await db.query("INSERT INTO t VALUES ($1)", [1]);
    await db.transaction(async (tx) => {
      await tx.query("INSERT INTO t VALUES ($1)", [2]);
      await tx.query("SELECT pg_sleep(0.05)");
    });
    await expect(
      db.transaction(async (tx) => {
        await tx.query("INSERT INTO t VALUES ($1)", [3]);
        throw new Error("changed my mind");
      }),
    ).rejects.toThrow("changed my mind");
    // A statement that fails inside a transaction rolls it back too.
    await expect(db.transaction((tx) => tx.query("INSERT INTO t VALUES ($1)", [1]))).rejects.toThrow();

    const after = new Map([...(await read("db_query_duration_seconds")), ...(await read("db_transactions_total"))]);
    expect({
      queries: diff(before, after, QUERY_COUNT),
      transactions: diff(before, after, TX_COUNT),
      commit: diff(before, after, outcome("commit")),
      rollback: diff(before, after, outcome("rollback")),
      retry: diff(before, after, outcome("retry")),
    }).toEqual({ queries: 2 + 2 + 1 + 1, transactions: 3, commit: 1, rollback: 2, retry: 0 });
    expect(diff(before, after, TX_SUM)).toBeGreaterThanOrEqual(0.045);
    expect((await db.query<{ id: number }>("SELECT id FROM t ORDER BY id")).rows.map((r) => r.id)).toEqual([1, 2]);
  });

  postgresOnly("count a transaction retried after a serialization failure as retry, then commit", async () => {
    const before = await read("db_transactions_total");
    let attempts = 0;
    const result = await db.transaction(async (tx) => {
      attempts++;
      await tx.query("SELECT 1");
      if (attempts === 1) throw Object.assign(new Error("could not serialize access"), { code: "40001" });
      return "done";
    });
    expect(result).toBe("done");
    const after = await read("db_transactions_total");
    expect({ retry: diff(before, after, outcome("retry")), commit: diff(before, after, outcome("commit")), rollback: diff(before, after, outcome("rollback")) }).toEqual({
      retry: 1,
      commit: 1,
      rollback: 0,
    });
  });

  postgresOnly("report the pool's total, idle and waiting connections at scrape time", async () => {
    await db.close(); // the only other pool of this process: its idle connections would time out mid-test
    const pooled = await dbs.open(dbs.newSchema());
    // testDatabases opens pools of 25: hold 25 transactions open, and 2 more callers wait.
    const base = await read("db_pool_connections");
    const state = async (s: string) => (await read("db_pool_connections")).get(`db_pool_connections{state=${s}}`) ?? 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const running = Array.from({ length: 27 }, () => pooled.transaction(async (tx) => void (await tx.query("SELECT 1"), await gate)));
    await vi.waitFor(async () => expect(await state("waiting")).toBe((base.get("db_pool_connections{state=waiting}") ?? 0) + 2), { timeout: 20_000 });
    const during = await read("db_pool_connections");
    expect(diff(base, during, "db_pool_connections{state=total}")).toBe(25);
    expect(diff(base, during, "db_pool_connections{state=idle}")).toBe(0);
    release();
    await Promise.all(running);
    const after = await read("db_pool_connections");
    expect(diff(base, after, "db_pool_connections{state=waiting}")).toBe(0);
    expect(diff(base, after, "db_pool_connections{state=idle}")).toBe(diff(base, after, "db_pool_connections{state=total}"));
    expect(diff(base, after, "db_pool_connections{state=total}")).toBeGreaterThan(0);
    // A closed pool no longer counts.
    await pooled.close();
    const closed = await read("db_pool_connections");
    expect(closed.get("db_pool_connections{state=total}") ?? 0).toBe(base.get("db_pool_connections{state=total}") ?? 0);
  });
});
