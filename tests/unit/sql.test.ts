// Named SQL parameters (services/payments/sql.ts): parts from different table owners put
// together into one statement, numbered only when sent.
import { describe, expect, it } from "vitest";
import type { Queryable } from "../../services/runtime/db/database.js";
import { compose, join, query, sql } from "../../services/payments/sql.js";

/** A database that records what it is sent. */
function recorder() {
  const sent: { text: string; values: unknown[] }[] = [];
  const db = { query: async (text: string, values: unknown[] = []) => (sent.push({ text, values }), { rows: [], rowCount: 0 }) } as unknown as Queryable;
  return { db, sent };
}

describe("named SQL parameters", () => {
  it("numbers parameters in order of first use, one number per name, and leaves ::type casts alone", async () => {
    const { db, sent } = recorder();
    await query(db, sql("SELECT :a::bigint, :b::text WHERE x = :a", { a: 1n, b: "two" }));
    expect(sent).toEqual([{ text: "SELECT $1::bigint, $2::text WHERE x = $1", values: [1n, "two"] }]);
  });

  it("puts parts together with their parameters, wherever each part lands in the text", async () => {
    const { db, sent } = recorder();
    const claim = sql("INSERT INTO keys VALUES (:key_id)", { key_id: "k1" });
    const insert = sql("INSERT INTO payments VALUES (:payment_id, :payment_amount)", { payment_id: "p1", payment_amount: 5n });
    await query(db, compose`WITH c AS (${claim}) ${insert}`);
    await query(db, compose`WITH p AS (${insert}) ${claim}`);
    expect(sent).toEqual([
      { text: "WITH c AS (INSERT INTO keys VALUES ($1)) INSERT INTO payments VALUES ($2, $3)", values: ["k1", "p1", 5n] },
      { text: "WITH p AS (INSERT INTO payments VALUES ($1, $2)) INSERT INTO keys VALUES ($3)", values: ["p1", 5n, "k1"] },
    ]);
  });

  it("an empty part splices nothing; join puts a separator between parts", async () => {
    const { db, sent } = recorder();
    const setting = join([sql("a = :a", { a: 1 }), sql("b = :b", { b: 2 })], ", ");
    await query(db, compose`UPDATE t SET ${setting}${""} WHERE id = ${sql(":id", { id: "x" })}`);
    expect(sent).toEqual([{ text: "UPDATE t SET a = $1, b = $2 WHERE id = $3", values: [1, 2, "x"] }]);
  });

  it("refuses two parts binding one name, a name with no value and a value no part uses", () => {
    const { db } = recorder();
    expect(() => compose`${sql(":id", { id: 1 })} ${sql(":id", { id: 2 })}`).toThrow("SQL parameter :id is bound by two parts of one statement");
    expect(() => query(db, sql("SELECT :missing"))).toThrow("SQL parameter :missing has no value");
    expect(() => query(db, sql("SELECT :a", { a: 1, b: 2 }))).toThrow("SQL parameters bound but not used: :b");
  });
});
