// The gateway's API-key lookups (services/gateway/merchants.ts): each key's owner is read once
// and reused for the cache time (unknown keys too), concurrent misses share one read, a failed
// read is not kept, and at most 10,000 keys are kept, the least recently used giving way.
import { createHash } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { Merchants, type Merchant } from "../../services/gateway/merchants.js";
import type { Database } from "../../services/runtime/db/database.js";

const ACME: Merchant = { id: "acme", name: "Acme" };
const ACME_KEY = "pgk_acme_0123456789abcdef0123456789abcdef";

/** A database knowing ACME_KEY only, counting the key lookups it answers; `before` runs first when set. */
function keysDb() {
  const owners = new Map([[createHash("sha256").update(ACME_KEY).digest("hex"), ACME]]);
  const state = { reads: 0, before: undefined as (() => Promise<void>) | undefined };
  const db = {
    async query(_sql: string, params: unknown[] = []) {
      state.reads++;
      await state.before?.();
      const owner = owners.get(String(params[0]));
      return { rows: owner ? [owner] : [], rowCount: owner ? 1 : 0 };
    },
  } as unknown as Database;
  return { db, state };
}

const refused = (p: Promise<unknown>) => p.then(() => "accepted", (err: unknown) => (err as { reason?: string }).reason);

describe("Merchants.authenticate", () => {
  it("reads a key's owner once for the cache time, an unknown key too, then reads it again", async () => {
    const { db, state } = keysDb();
    const merchants = new Merchants(db, 1_000);
    expect(await merchants.authenticate(ACME_KEY)).toEqual(ACME);
    expect(await merchants.authenticate(ACME_KEY)).toEqual(ACME);
    expect(await refused(merchants.authenticate("pgk_nobody"))).toBe("INVALID_API_KEY");
    expect(await refused(merchants.authenticate("pgk_nobody"))).toBe("INVALID_API_KEY");
    expect(state.reads).toBe(2);
    await sleep(1_100);
    expect(await merchants.authenticate(ACME_KEY)).toEqual(ACME);
    expect(await refused(merchants.authenticate("pgk_nobody"))).toBe("INVALID_API_KEY");
    expect(state.reads).toBe(4);
  });

  it("concurrent requests with one key share one read", async () => {
    const { db, state } = keysDb();
    const merchants = new Merchants(db);
    let answer = () => {};
    const answered = new Promise<void>((resolve) => (answer = resolve));
    state.before = () => answered;
    const waiting = Array.from({ length: 5 }, () => merchants.authenticate(ACME_KEY));
    const unknown = Array.from({ length: 3 }, () => refused(merchants.authenticate("pgk_nobody")));
    await sleep(10);
    expect(state.reads).toBe(2);
    answer();
    expect(await Promise.all(waiting)).toEqual(Array.from({ length: 5 }, () => ACME));
    expect(await Promise.all(unknown)).toEqual(["INVALID_API_KEY", "INVALID_API_KEY", "INVALID_API_KEY"]);
    expect(state.reads).toBe(2);
  });

  it("a failed read is not kept: the next request reads again", async () => {
    const { db, state } = keysDb();
    const merchants = new Merchants(db);
    state.before = () => Promise.reject(new Error("connection terminated"));
    await expect(merchants.authenticate(ACME_KEY)).rejects.toThrow("connection terminated");
    state.before = undefined;
    expect(await merchants.authenticate(ACME_KEY)).toEqual(ACME);
    expect(state.reads).toBe(2);
  });

  it("keeps 10,000 keys; one more and the least recently used gives way", async () => {
    const { db, state } = keysDb();
    const merchants = new Merchants(db);
    await merchants.authenticate(ACME_KEY);
    for (let i = 1; i < 10_000; i++) await refused(merchants.authenticate(`pgk_tried_${i}`));
    expect(state.reads).toBe(10_000);
    expect(await merchants.authenticate(ACME_KEY)).toEqual(ACME); // kept, and now the most recently used
    expect(state.reads).toBe(10_000);
    await refused(merchants.authenticate("pgk_tried_10000"));
    expect(state.reads).toBe(10_001);
    await refused(merchants.authenticate("pgk_tried_1")); // the least recently used: gave way
    expect(state.reads).toBe(10_002);
    expect(await merchants.authenticate(ACME_KEY)).toEqual(ACME);
    expect(state.reads).toBe(10_002);
  });
});
