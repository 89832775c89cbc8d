// One SQL dialect, two backends: real PostgreSQL through `pg` when DATABASE_URL is set,
// embedded PGlite (Postgres compiled to WebAssembly) otherwise. Each service keeps its
// tables in a schema of its own name, so services can share one PostgreSQL database and
// still never touch each other's tables.
import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { performance } from "node:perf_hooks";
import pg from "pg";
import { context, SpanKind, SpanStatusCode, trace, type Span } from "@opentelemetry/api";
import { DomainError } from "../errors.js";
import { gauge, histogram, counter } from "../observability/metrics.js";
import { contextAttributes, errorType, tracer } from "../observability/spans.js";

export interface Queryable {
  query<T = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<{ rows: T[]; rowCount: number }>;
  /** Runs a script of several statements (no parameters), e.g. a migration. */
  exec(sql: string): Promise<void>;
}

export interface Database extends Queryable {
  readonly backend: "postgres" | "pglite";
  /** Runs `fn` in one transaction: committed if it returns, rolled back if it throws. */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

export interface DatabaseOptions {
  /** PostgreSQL URL; embedded PGlite when undefined. */
  url?: string | undefined;
  /** Folder under which PGlite keeps `<schema>/` (survives restarts). */
  dataDir: string;
  /** The service's schema, e.g. "fx". */
  schema: string;
  /** Pool size for PostgreSQL. */
  poolSize?: number;
}

const INT8_OID = 20;

/** The PostgreSQL error codes (SQLSTATE) Paygate acts on. */
export const SQLSTATE = {
  numericValueOutOfRange: "22003",
  uniqueViolation: "23505",
  checkViolation: "23514",
  serializationFailure: "40001",
  deadlockDetected: "40P01",
  featureNotSupported: "0A000",
} as const;

/** The SQLSTATE of a database error (undefined for anything else). */
export const sqlState = (err: unknown): string | undefined => {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
};

/** A transaction aborted by a deadlock or a serialization failure: run again. */
const RETRYABLE = new Set<string>([SQLSTATE.deadlockDetected, SQLSTATE.serializationFailure]);
const MAX_ATTEMPTS = 5;

/**
 * A prepared statement whose result type a schema change altered (another replica migrated:
 * "cached plan must not change result type", 0A000) fails on its connection from then on.
 * Such a connection is dropped and the work runs again on another.
 */
const isStalePlan = (err: unknown) => sqlState(err) === SQLSTATE.featureNotSupported;
/** DATA_DIR value that keeps an embedded database in memory only. */
export const IN_MEMORY = "memory://";

// Metrics (Prometheus naming; the labels are fixed sets):
//   db_query_duration_seconds{operation="query"}        one statement (query()), inside a
//                                                        transaction or not; exec() scripts
//                                                        (migrations) are not timed
//   db_query_duration_seconds{operation="transaction"}  a whole transaction() call: waiting
//                                                        for a connection, every attempt
//   db_transactions_total{outcome="commit"|"rollback"|"retry"}   retry: an attempt rolled
//                                                        back by a deadlock or serialization
//                                                        failure and run again
//   db_pool_connections{state="total"|"idle"|"waiting"} PostgreSQL pool, read at scrape time
//                                                        (summed over the process's open pools;
//                                                        one per service process)
const dbDuration = histogram("db_query_duration_seconds", "Duration of database queries and whole transactions, in seconds.", ["operation"]);
const dbTransactions = counter("db_transactions_total", "Database transactions by outcome (retry: an attempt aborted by a deadlock or serialization failure, run again).", [
  "outcome",
]);
// Open pools, on globalThis so the gauge's collect() sees them even if this module is
// evaluated twice in one process (the gauge is registered once).
const POOLS = Symbol.for("paygate.db.pools");
const pools: Set<pg.Pool> = ((globalThis as Record<symbol, unknown>)[POOLS] ??= new Set<pg.Pool>()) as Set<pg.Pool>;
gauge("db_pool_connections", "PostgreSQL pool connections: total open, idle, and callers waiting for one.", ["state"], function () {
  this.reset();
  if (pools.size === 0) return;
  let total = 0;
  let idle = 0;
  let waiting = 0;
  for (const p of pools) {
    total += p.totalCount;
    idle += p.idleCount;
    waiting += p.waitingCount;
  }
  this.set({ state: "total" }, total);
  this.set({ state: "idle" }, idle);
  this.set({ state: "waiting" }, waiting);
});

/** Times `run` into db_query_duration_seconds{operation}. */
async function timed<T>(operation: "query" | "transaction", run: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  try {
    return await run();
  } finally {
    dbDuration.observe({ operation }, (performance.now() - t0) / 1000);
  }
}

// Traces: a CLIENT span "db.transaction" per transaction() run, and "db.query" per query()
// outside a transaction (a transaction of its own), inside a traced request (a child of the
// RPC, REST or saga span; background sweeps outside any trace make none), with
// db.system / db.system.name = "postgresql", db.operation.name = "TRANSACTION" | "QUERY",
// paygate.db.schema, paygate.db.backend ("postgres" | "pglite"), paygate.db.outcome
// ("commit" | "rollback"), paygate.db.attempts (PostgreSQL retries) and the Paygate
// attributes of the enclosing code (paygate.payment_id...). Never SQL text or values.
// A rollback by a domain error (a refusal) is not a span error; any other failure is.
function traced<T>(backend: Database["backend"], schema: string, operation: "transaction" | "query", run: (span: Span | undefined) => Promise<T>): Promise<T> {
  const parent = context.active();
  if (trace.getSpan(parent) === undefined) return run(undefined);
  const span = tracer.startSpan(
    `db.${operation}`,
    {
      kind: SpanKind.CLIENT,
      attributes: {
        ...contextAttributes(parent),
        "db.system": "postgresql",
        "db.system.name": "postgresql",
        "db.operation.name": operation.toUpperCase(),
        "paygate.db.schema": schema,
        "paygate.db.backend": backend,
      },
    },
    parent,
  );
  return context.with(trace.setSpan(parent, span), () => run(span)).then(
    (result) => {
      span.setAttribute("paygate.db.outcome", "commit");
      span.end();
      return result;
    },
    (err: unknown) => {
      span.setAttribute("paygate.db.outcome", "rollback");
      if (!(err instanceof DomainError)) {
        span.setAttribute("error.type", errorType(err));
        span.setStatus({ code: SpanStatusCode.ERROR, message: errorType(err) });
      }
      span.end();
      throw err;
    },
  );
}

export async function openDatabase(opts: DatabaseOptions): Promise<Database> {
  if (!/^[a-z_][a-z0-9_]*$/.test(opts.schema)) throw new Error(`invalid schema name ${opts.schema}`);
  return opts.url ? openPostgres(opts.url, opts.schema, opts.poolSize ?? 10) : openPglite(opts.dataDir, opts.schema);
}

// Statements with parameters run as named prepared statements: PostgreSQL parses and plans
// each once per connection instead of on every call. The name is derived from the text (the
// texts are the code's own, so there are a bounded number of them).
const statementNames = new Map<string, string>();
function statementName(sql: string): string {
  let name = statementNames.get(sql);
  if (name === undefined) {
    name = `paygate_${createHash("sha256").update(sql).digest("hex").slice(0, 24)}`;
    statementNames.set(sql, name);
  }
  return name;
}

async function openPostgres(url: string, schema: string, max: number): Promise<Database> {
  // int8 comes back as bigint on both backends: money is never a JS number.
  const types = { getTypeParser: (oid: number, format?: "text" | "binary") => (oid === INT8_OID ? BigInt : pg.types.getTypeParser(oid, format)) } as pg.CustomTypesConfig;
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  try {
    // Replicas starting together would race on CREATE SCHEMA: one at a time (released by end()).
    await admin.query("SELECT pg_advisory_lock(hashtext('paygate.create_schema'))");
    await admin.query(`CREATE SCHEMA IF NOT EXISTS ${schema}`);
  } finally {
    await admin.end();
  }
  const pool = new pg.Pool({ connectionString: url, max, types, options: `-c search_path=${schema}` });
  // An idle client that dies (e.g. Postgres restarted) must not crash the process.
  pool.on("error", () => {});
  pools.add(pool);
  const query = <T>(client: pg.Pool | pg.PoolClient, sql: string, params?: unknown[]) =>
    timed("query", async () => {
      const r = await client.query({ text: sql, values: params, name: params?.length ? statementName(sql) : undefined });
      return { rows: r.rows as T[], rowCount: r.rowCount ?? 0 };
    });
  // Outside a transaction: one pooled connection per statement; a stale one is dropped (each
  // attempt drops one, so a pool's worth of attempts always ends on a fresh connection).
  const pooled = async <T>(sql: string, params?: unknown[]) => {
    for (let attempt = 1; ; attempt++) {
      const client = await pool.connect();
      let drop: Error | undefined;
      try {
        return await query<T>(client, sql, params);
      } catch (err) {
        if (!isStalePlan(err) || attempt > max) throw err;
        drop = err as Error;
      } finally {
        client.release(drop);
      }
    }
  };
  return {
    backend: "postgres",
    query: (sql, params) => traced("postgres", schema, "query", () => pooled(sql, params)),
    exec: async (sql) => void (await pool.query(sql)),
    transaction: (fn) =>
      traced("postgres", schema, "transaction", (span) =>
        timed("transaction", async () => {
          for (let attempt = 1; ; attempt++) {
            span?.setAttribute("paygate.db.attempts", attempt);
            const client = await pool.connect();
            let drop: Error | undefined;
            try {
              await client.query("BEGIN");
              const result = await fn({ query: (sql, params) => query(client, sql, params), exec: async (sql) => void (await client.query(sql)) });
              await client.query("COMMIT");
              dbTransactions.inc({ outcome: "commit" });
              return result;
            } catch (err) {
              await client.query("ROLLBACK").catch(() => {});
              if (isStalePlan(err)) drop = err as Error;
              // A deadlock, a serialization failure or a stale statement aborts a transaction
              // that did nothing wrong: run it again (all its effects were rolled back).
              if (attempt < MAX_ATTEMPTS && (RETRYABLE.has(sqlState(err) ?? "") || drop)) {
                dbTransactions.inc({ outcome: "retry" });
                continue;
              }
              dbTransactions.inc({ outcome: "rollback" });
              throw err;
            } finally {
              client.release(drop);
            }
          }
        }),
      ),
    close: async () => {
      pools.delete(pool);
      await pool.end();
    },
  };
}

async function openPglite(dataDir: string, schema: string): Promise<Database> {
  let location = dataDir;
  if (dataDir !== IN_MEMORY) {
    location = path.resolve(dataDir, schema);
    mkdirSync(location, { recursive: true });
  }
  // PGlite's own int8 parser gives a JS number when the value is small: always bigint here.
  const db = await PGlite.create(location, { parsers: { [INT8_OID]: (text: string) => BigInt(text) } });
  await db.exec(`CREATE SCHEMA IF NOT EXISTS ${schema}; SET search_path TO ${schema}`);
  const query = <T>(q: Pick<PGlite, "query">, sql: string, params?: unknown[]) =>
    timed("query", async () => {
      const r = await q.query<T>(sql, params);
      // As pg counts: the rows returned, else the rows affected (PGlite reports 0 affected
      // for a WITH ... SELECT that returns rows).
      return { rows: r.rows, rowCount: r.rows.length > 0 ? r.rows.length : (r.affectedRows ?? 0) };
    });
  return {
    backend: "pglite",
    query: (sql, params) => traced("pglite", schema, "query", () => query(db, sql, params)),
    exec: async (sql) => void (await db.exec(sql)),
    // PGlite is one connection: its transaction() also serialises concurrent callers.
    transaction: (fn) =>
      traced("pglite", schema, "transaction", () =>
        timed("transaction", async () => {
          try {
            const result = await db.transaction((tx) => fn({ query: (sql, params) => query(tx, sql, params), exec: async (sql) => void (await tx.exec(sql)) }));
            dbTransactions.inc({ outcome: "commit" });
            return result;
          } catch (err) {
            dbTransactions.inc({ outcome: "rollback" });
            throw err;
          }
        }),
      ),
    close: () => db.close(),
  };
}

/** Readiness of the database: it answers a trivial query. */
export function databaseReady(db: Database): { name: string; check: () => Promise<void> } {
  return { name: "database", check: async () => void (await db.query("SELECT 1")) };
}
