// Versioned migrations on both backends: applied once and recorded, edits refused, failures
// rolled back whole, and replicas migrating one schema at the same time serialised.
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { Database, Queryable } from "../../services/runtime/db/database.js";
import { migrate } from "../../services/runtime/db/migrate.js";
import { storageBackends, testDatabases } from "../support/postgres.js";

const tempDirs: string[] = [];
afterAll(() => tempDirs.forEach((dir) => rmSync(dir, { recursive: true, force: true })));

function migrationDir(files: Record<string, string>): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), "paygate-migrations-"));
  tempDirs.push(dir);
  writeFiles(dir, files);
  return dir;
}

function writeFiles(dir: string, files: Record<string, string>): void {
  for (const [name, sql] of Object.entries(files)) writeFileSync(path.join(dir, name), sql);
}

async function tables(db: Queryable): Promise<string[]> {
  const { rows } = await db.query<{ table_name: string }>(
    "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY table_name",
  );
  return rows.map((r) => r.table_name);
}

async function recorded(db: Queryable): Promise<{ version: string; checksum: string }[]> {
  return (await db.query<{ version: string; checksum: string }>("SELECT version, checksum FROM schema_migrations ORDER BY version")).rows;
}

const sha256 = (text: string) => createHash("sha256").update(text).digest("hex");

const WIDGETS = "CREATE TABLE widgets (id int PRIMARY KEY);\n";
const GADGETS = "CREATE TABLE gadgets (id int PRIMARY KEY);\nINSERT INTO gadgets VALUES (1), (2);\n";

describe.each(storageBackends())("migrate on $name", (backend) => {
  const dbs = testDatabases(backend, "migrate");
  afterAll(() => dbs.cleanup());
  const fresh = (): Promise<Database> => dbs.open(dbs.newSchema());
  const gadgetCount = async (db: Queryable) => (await db.query<{ n: bigint }>("SELECT count(*) AS n FROM gadgets")).rows[0]?.n;

  it("applies pending migrations in order, records them with checksums, and applies nothing on a rerun", async () => {
    const db = await fresh();
    // Files not named NNN_name.sql are not migrations.
    const dir = migrationDir({ "002_gadgets.sql": GADGETS, "001_widgets.sql": WIDGETS, "README.md": "not sql", "9_short.sql": "BOOM" });

    expect(await migrate(db, dir)).toEqual({ applied: ["001_widgets.sql", "002_gadgets.sql"] });
    expect(await tables(db)).toEqual(["gadgets", "schema_migrations", "widgets"]);
    expect(await recorded(db)).toEqual([
      { version: "001_widgets.sql", checksum: sha256(WIDGETS) },
      { version: "002_gadgets.sql", checksum: sha256(GADGETS) },
    ]);

    expect(await migrate(db, dir)).toEqual({ applied: [] });
    expect(await gadgetCount(db)).toBe(2n); // the INSERT did not run twice
    expect(await recorded(db)).toHaveLength(2);
  });

  it("applies only the migration added since the last run", async () => {
    const db = await fresh();
    const dir = migrationDir({ "001_widgets.sql": WIDGETS });
    expect(await migrate(db, dir)).toEqual({ applied: ["001_widgets.sql"] });
    writeFiles(dir, { "002_gadgets.sql": GADGETS });
    expect(await migrate(db, dir)).toEqual({ applied: ["002_gadgets.sql"] });
    expect((await recorded(db)).map((r) => r.version)).toEqual(["001_widgets.sql", "002_gadgets.sql"]);
  });

  it("refuses a migration that was changed after it was applied, and applies nothing else", async () => {
    const db = await fresh();
    const dir = migrationDir({ "001_widgets.sql": WIDGETS });
    await migrate(db, dir);
    writeFiles(dir, { "001_widgets.sql": `${WIDGETS}ALTER TABLE widgets ADD COLUMN name text;\n`, "002_gadgets.sql": GADGETS });

    await expect(migrate(db, dir)).rejects.toThrow("migration 001_widgets.sql was changed after it was applied");
    expect(await tables(db)).toEqual(["schema_migrations", "widgets"]);
    expect(await recorded(db)).toEqual([{ version: "001_widgets.sql", checksum: sha256(WIDGETS) }]);
  });

  it("leaves nothing of a failing migration behind: no table, no record", async () => {
    const db = await fresh();
    const dir = migrationDir({ "001_widgets.sql": WIDGETS });
    await migrate(db, dir);
    // The first statement succeeds, the second fails: the whole migration must be undone.
    writeFiles(dir, { "002_gadgets.sql": "CREATE TABLE gadgets (id int PRIMARY KEY);\nINSERT INTO gadgets VALUES ('not a number');\n" });

    await expect(migrate(db, dir)).rejects.toThrow(/invalid input syntax for type integer/);
    expect(await tables(db)).toEqual(["schema_migrations", "widgets"]);
    expect((await recorded(db)).map((r) => r.version)).toEqual(["001_widgets.sql"]);

    // The SQL itself succeeds but recording it fails (the version is taken): the SQL's effects
    // must go too, which only a transaction around SQL and record together guarantees.
    writeFiles(dir, {
      "002_gadgets.sql": "CREATE TABLE gadgets (id int PRIMARY KEY);\nINSERT INTO schema_migrations (version, checksum) VALUES ('002_gadgets.sql', 'x');\n",
    });
    await expect(migrate(db, dir)).rejects.toThrow(/duplicate key/);
    expect(await tables(db)).toEqual(["schema_migrations", "widgets"]);
    expect((await recorded(db)).map((r) => r.version)).toEqual(["001_widgets.sql"]);

    // Once fixed, it applies normally.
    writeFiles(dir, { "002_gadgets.sql": GADGETS });
    expect(await migrate(db, dir)).toEqual({ applied: ["002_gadgets.sql"] });
    expect(await gadgetCount(db)).toBe(2n);
  });

  it("applies each migration exactly once when two replicas migrate one fresh schema at the same time", async () => {
    const dir = migrationDir({ "001_widgets.sql": WIDGETS, "002_gadgets.sql": GADGETS });
    // The race is on a fresh schema, so try a few; PGlite is one connection and serialises anyway.
    const rounds = backend.url ? 10 : 1;
    for (let round = 0; round < rounds; round++) {
      const schema = dbs.newSchema();
      // On PostgreSQL two pools, as two processes would have; on PGlite one handle, called twice.
      const first = await dbs.open(schema);
      const second = backend.url ? await dbs.open(schema) : first;

      const results = await Promise.all([migrate(first, dir), migrate(second, dir)]);
      expect(results.flatMap((r) => r.applied).sort()).toEqual(["001_widgets.sql", "002_gadgets.sql"]);
      expect((await recorded(first)).map((r) => r.version)).toEqual(["001_widgets.sql", "002_gadgets.sql"]);
      expect(await gadgetCount(second)).toBe(2n);
    }
  });
});
