// The Database abstraction behaves the same on PGlite and PostgreSQL: transactions, bigint
// for int8, and (embedded) data that survives a restart.
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openDatabase } from "../../services/runtime/db/database.js";
import type { Database } from "../../services/runtime/db/database.js";
import { storageBackends, testDatabases } from "../support/postgres.js";

const backends = storageBackends();

describe.each(backends)("database on $name", (backend) => {
  const dbs = testDatabases(backend, "db");
  let db: Database;
  beforeAll(async () => {
    db = await dbs.open(dbs.newSchema());
    await db.exec("CREATE TABLE items (id int8 PRIMARY KEY, label text NOT NULL); CREATE TABLE counters (n int8 NOT NULL)");
  });
  afterAll(() => dbs.cleanup());

  const labels = async (ids: bigint[]) =>
    (await db.query<{ label: string }>("SELECT label FROM items WHERE id = ANY($1::int8[]) ORDER BY id", [ids.map(String)])).rows.map((r) => r.label);

  it("is the backend it was asked for", () => {
    expect(db.backend).toBe(backend.name);
  });

  it("transaction() commits when the function returns", async () => {
    const result = await db.transaction(async (tx) => {
      await tx.query("INSERT INTO items VALUES ($1, $2)", [1n, "one"]);
      await tx.exec("INSERT INTO items VALUES (2, 'two'); INSERT INTO items VALUES (3, 'three')");
      return "done";
    });
    expect(result).toBe("done");
    expect(await labels([1n, 2n, 3n])).toEqual(["one", "two", "three"]);
  });

  it("transaction() rolls everything back when the function throws, and rethrows", async () => {
    const boom = new Error("boom");
    await expect(
      db.transaction(async (tx) => {
        await tx.query("INSERT INTO items VALUES ($1, $2)", [10n, "ten"]);
        await tx.exec("INSERT INTO items VALUES (11, 'eleven')");
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect(await labels([10n, 11n])).toEqual([]);
  });

  it("transaction() rolls back when a statement fails part-way", async () => {
    await expect(
      db.transaction(async (tx) => {
        await tx.query("INSERT INTO items VALUES ($1, $2)", [20n, "twenty"]);
        await tx.query("INSERT INTO items VALUES ($1, $2)", [20n, "duplicate key"]);
      }),
    ).rejects.toThrow(/duplicate key/);
    expect(await labels([20n])).toEqual([]);
    // The connection is usable again afterwards.
    await db.transaction((tx) => tx.query("INSERT INTO items VALUES ($1, $2)", [20n, "twenty"]));
    expect(await labels([20n])).toEqual(["twenty"]);
  });

  it("returns int8 as bigint, small or beyond 2^53, and takes bigint parameters exactly", async () => {
    const big = 9007199254740993n; // 2^53 + 1: not representable as a JS number
    const min = -9223372036854775808n;
    await db.query("INSERT INTO counters VALUES ($1), ($2), ($3)", [big, min, 5n]);
    const { rows } = await db.query<{ n: unknown }>("SELECT n FROM counters ORDER BY n");
    expect(rows.map((r) => r.n)).toEqual([min, 5n, big]);
    const literal = await db.query<{ big: unknown; small: unknown; count: unknown }>(
      "SELECT 9007199254740993::int8 AS big, 7::int8 AS small, count(*) AS count FROM counters",
    );
    expect(literal.rows[0]).toEqual({ big, small: 7n, count: 3n });
  });
});

describe("embedded PGlite on disk", () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), "paygate-pglite-"));
  afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

  it("keeps committed data across a close and reopen (survives restarts)", async () => {
    const first = await openDatabase({ dataDir, schema: "fx" });
    await first.exec("CREATE TABLE kept (id int8 PRIMARY KEY)");
    await first.transaction((tx) => tx.query("INSERT INTO kept VALUES ($1)", [9007199254740993n]));
    await first.close();

    const second = await openDatabase({ dataDir, schema: "fx" });
    try {
      expect((await second.query("SELECT id FROM kept")).rows).toEqual([{ id: 9007199254740993n }]);
    } finally {
      await second.close();
    }
  });
});

describe.each(backends)("row counts on $name", (backend) => {
  const dbs = testDatabases(backend, "dbcount");
  afterAll(() => dbs.cleanup());

  it("counts as pg does: rows returned, else rows affected (also for WITH ... SELECT)", async () => {
    const db = await dbs.open(dbs.newSchema());
    await db.exec("CREATE TABLE things (id int8 PRIMARY KEY)");
    expect((await db.query("INSERT INTO things VALUES ($1), ($2)", [1n, 2n])).rowCount).toBe(2);
    expect((await db.query("WITH added AS (INSERT INTO things VALUES ($1) RETURNING id) SELECT id FROM added", [3n])).rowCount).toBe(1);
    expect((await db.query("WITH added AS (INSERT INTO things VALUES ($1) ON CONFLICT DO NOTHING RETURNING id) SELECT id FROM added", [3n])).rowCount).toBe(0);
    expect((await db.query("UPDATE things SET id = id + 10 WHERE id < $1", [3n])).rowCount).toBe(2);
  });
});

// PostgreSQL runs parameterised statements as prepared statements; when another replica's
// migration changes a table's columns, a connection's prepared `SELECT *` would fail from then
// on ("cached plan must not change result type"): that connection is dropped and the work runs again.
describe.each(backends.filter((b) => b.url !== undefined))("prepared statements after a schema change on $name", (backend) => {
  const dbs = testDatabases(backend, "dbstale");
  afterAll(() => dbs.cleanup());

  it("a statement prepared before a column was added still runs after it, alone and in a transaction", async () => {
    const schema = dbs.newSchema();
    const db = await dbs.open(schema);
    const migrator = await dbs.open(schema);
    await db.exec("CREATE TABLE widgets (id int8 PRIMARY KEY)");
    await db.query("INSERT INTO widgets VALUES ($1)", [1n]);
    const read = () => db.query<Record<string, unknown>>("SELECT * FROM widgets WHERE id = $1", [1n]);
    const inTx = () => db.transaction((tx) => tx.query<Record<string, unknown>>("SELECT * FROM widgets WHERE id = $1", [1n]));
    // Prepared on several of the pool's connections.
    await Promise.all(Array.from({ length: 5 }, () => Promise.all([read(), inTx()])));
    await migrator.exec("ALTER TABLE widgets ADD COLUMN label text NOT NULL DEFAULT 'new'");
    for (let i = 0; i < 10; i++) {
      expect((await read()).rows).toEqual([{ id: 1n, label: "new" }]);
      expect((await inTx()).rows).toEqual([{ id: 1n, label: "new" }]);
    }
  });
});

// Replicas of a service start together and each opens (creates) the same schema.
describe.each(backends.filter((b) => b.url !== undefined))("database on $name, opened by replicas at once", (backend) => {
  const dbs = testDatabases(backend, "dbopen");
  afterAll(() => dbs.cleanup());

  it("lets concurrent openDatabase calls on one fresh schema all succeed", async () => {
    // A race, so several fresh schemas; each round costs a few milliseconds.
    for (let round = 0; round < 20; round++) {
      const schema = dbs.newSchema();
      const replicas = await Promise.all([dbs.open(schema), dbs.open(schema), dbs.open(schema)]);
      expect(replicas).toHaveLength(3);
    }
  });
});
