// Shared fixtures for the wallet ledger tests: the migrations, a clock the test moves, and a
// helper that awaits an expected DomainError.
import { fileURLToPath } from "node:url";
import { expect } from "vitest";
import type { Database } from "../../services/runtime/db/database.js";
import { DomainError } from "../../services/runtime/errors.js";
import { migrate } from "../../services/runtime/db/migrate.js";

export const LEDGER_MIGRATIONS = fileURLToPath(new URL("../../services/wallet/migrations", import.meta.url));

/** 2030-03-01T12:00:00Z: far from the machine's clock, so a test that used `new Date()` would show. */
export const T0 = Date.parse("2030-03-01T12:00:00.000Z");
export const MINUTE = 60_000;
export const HOUR = 60 * MINUTE;

/** A clock the test moves; pass `clock.now` to `new Ledger(db, clock.now)`. */
export class Clock {
  constructor(public t = T0) {}
  readonly now = (): Date => new Date(this.t);
  advance(ms: number): void {
    this.t += ms;
  }
}

export async function migrateLedger(db: Database): Promise<void> {
  const { applied } = await migrate(db, LEDGER_MIGRATIONS);
  expect(applied).toContain("001_ledger.sql");
}

/** Awaits `call`, which must reject with a DomainError; returns it. */
export async function domainError(call: Promise<unknown>): Promise<DomainError> {
  let outcome: unknown;
  try {
    await call;
  } catch (err) {
    outcome = err;
  }
  if (outcome === undefined) throw new Error("expected the call to fail with a DomainError, it succeeded");
  if (!(outcome instanceof DomainError)) throw new Error(`expected a DomainError, got: ${String(outcome)}`, { cause: outcome });
  return outcome;
}

/** Asserts the error's kind, reason and (when given) field. */
export async function expectDomainError(call: Promise<unknown>, kind: DomainError["kind"], reason: string, field?: string): Promise<DomainError> {
  const err = await domainError(call);
  expect({ kind: err.kind, reason: err.reason }).toEqual({ kind, reason });
  if (field !== undefined) expect(err.field).toBe(field);
  return err;
}
