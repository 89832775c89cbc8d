// Versioned, forward-only schema migrations: `NNN_name.sql` files applied in order, all
// pending ones in one transaction (a failure leaves the schema as it was), each recorded with
// a checksum so an edited migration is caught instead of silently diverging. An advisory lock
// keeps replicas starting together from racing.
import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import type { Database } from "./database.js";

export interface MigrationResult {
  applied: string[];
}

const FILE_PATTERN = /^(\d{3,})_[a-z0-9_]+\.sql$/;

export async function migrate(db: Database, dir: string): Promise<MigrationResult> {
  const files = readdirSync(dir)
    .filter((f) => FILE_PATTERN.test(f))
    .sort();
  return db.transaction(async (tx) => {
    // Transaction-scoped: released at commit, whichever replica got it first.
    await tx.query("SELECT pg_advisory_xact_lock(hashtext(current_schema()))");
    await tx.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version text PRIMARY KEY,
      checksum text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now())`);
    const done = new Map(
      (await tx.query<{ version: string; checksum: string }>("SELECT version, checksum FROM schema_migrations")).rows.map((r) => [r.version, r.checksum]),
    );
    const applied: string[] = [];
    for (const file of files) {
      const sql = readFileSync(path.join(dir, file), "utf8");
      const checksum = createHash("sha256").update(sql).digest("hex");
      const recorded = done.get(file);
      if (recorded !== undefined) {
        if (recorded !== checksum) throw new Error(`migration ${file} was changed after it was applied`);
        continue;
      }
      await tx.exec(sql);
      await tx.query("INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)", [file, checksum]);
      applied.push(file);
    }
    return { applied };
  });
}
