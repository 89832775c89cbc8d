// The databases storage tests run against: embedded PGlite always, plus a real PostgreSQL
// when TEST_DATABASE_URL is set (.ci/run starts one). CI must never quietly skip Postgres.
import { randomBytes } from "node:crypto";
import pg from "pg";
import { IN_MEMORY, openDatabase } from "../../services/runtime/db/database.js";
import type { Database } from "../../services/runtime/db/database.js";

export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL || undefined;

export interface Backend {
  name: "pglite" | "postgres";
  url: string | undefined;
}

export function storageBackends(): Backend[] {
  const backends: Backend[] = [{ name: "pglite", url: undefined }];
  if (TEST_DATABASE_URL) {
    backends.push({ name: "postgres", url: TEST_DATABASE_URL });
  } else if (process.env.CI === "true") {
    throw new Error("TEST_DATABASE_URL is not set: under CI the storage tests must also run against PostgreSQL (see .ci/run)");
  } else {
    console.warn("TEST_DATABASE_URL not set: storage tests ran on PGlite only, PostgreSQL was NOT tested");
  }
  return backends;
}

/**
 * Opens databases for one test file on one backend. On PostgreSQL every schema it hands out
 * carries a random per-file prefix and is dropped by cleanup(), so reruns start clean; on
 * PGlite every open() is a separate in-memory database.
 */
export function testDatabases(backend: Backend, file: string) {
  const prefix = `t_${file}_${randomBytes(4).toString("hex")}`;
  const schemas: string[] = [];
  const opened: Database[] = [];
  return {
    backend,
    newSchema(): string {
      const schema = `${prefix}_${schemas.length}`;
      schemas.push(schema);
      return schema;
    },
    async open(schema: string, dataDir: string = IN_MEMORY): Promise<Database> {
      const db = await openDatabase({ url: backend.url, dataDir, schema, poolSize: 25 });
      opened.push(db);
      return db;
    },
    async cleanup(): Promise<void> {
      // close() twice is harmless for pg's Pool but throws on PGlite: tolerate tests that closed.
      await Promise.all(opened.map((db) => db.close().catch(() => {})));
      if (!backend.url || schemas.length === 0) return;
      const admin = new pg.Client({ connectionString: backend.url });
      await admin.connect();
      try {
        for (const schema of schemas) await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      } finally {
        await admin.end();
      }
    },
  };
}
