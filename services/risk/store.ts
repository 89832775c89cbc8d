// Decisions, persisted. Decisions of one account are recorded one after another, so velocity
// windows count every earlier payment even when payments arrive concurrently: optimistically
// (read the facts, record only if no other decision of the account was recorded since), and
// under a per-account lock when that loses a race.
import { Code, ConnectError } from "@connectrpc/connect";
import type { Database, Queryable } from "../runtime/db.js";
import type { Outcome, Reason } from "./rules.js";

export interface DecisionRecord {
  id: string;
  paymentId: string;
  merchantId: string;
  accountId: string;
  destinationAccountId: string;
  currency: string;
  amountMinor: bigint;
  accountCurrency: string;
  baseCurrency: string;
  baseAmountMinor: bigint | null;
  score: number;
  outcome: Outcome;
  shadowScore: number;
  shadowOutcome: Outcome;
  reasons: Reason[];
  rulesVersion: string;
  requestHash: string;
  createdAt: Date;
}

interface DecisionRow {
  id: string;
  payment_id: string;
  merchant_id: string;
  account_id: string;
  destination_account_id: string;
  currency: string;
  amount_minor: bigint;
  account_currency: string;
  base_currency: string;
  base_amount_minor: bigint | null;
  score: number;
  outcome: Outcome;
  shadow_score: number;
  shadow_outcome: Outcome;
  reasons: Reason[] | string;
  rules_version: string;
  request_hash: string;
  created_at: Date;
}

const fromRow = (r: DecisionRow): DecisionRecord => ({
  id: r.id,
  paymentId: r.payment_id,
  merchantId: r.merchant_id,
  accountId: r.account_id,
  destinationAccountId: r.destination_account_id,
  currency: r.currency,
  amountMinor: r.amount_minor,
  accountCurrency: r.account_currency,
  baseCurrency: r.base_currency,
  baseAmountMinor: r.base_amount_minor,
  score: r.score,
  outcome: r.outcome,
  shadowScore: r.shadow_score,
  shadowOutcome: r.shadow_outcome,
  reasons: typeof r.reasons === "string" ? (JSON.parse(r.reasons) as Reason[]) : r.reasons,
  rulesVersion: r.rules_version,
  requestHash: r.request_hash,
  createdAt: r.created_at,
});

/**
 * What a decision reads, in one statement: the decision already recorded for the payment (and
 * then nothing else), or the facts for a new one.
 */
export type ScoringFacts =
  | { earlier: DecisionRecord }
  | {
      earlier: undefined;
      /** When the account was first seen (`now` if never). */
      firstSeen: Date;
      /** Per `since` (same order): earlier decisions of the account after it, count and sum of known base amounts. */
      windows: { count: number; sumMinor: bigint }[];
    };

/** Makes a decision from the facts: the earlier one, or a new one to record. */
export type Decide = (facts: ScoringFacts, now: Date) => { record: DecisionRecord; isNew: boolean };

export class DecisionStore {
  constructor(private readonly db: Database) {}

  async byId(id: string): Promise<DecisionRecord | undefined> {
    return one(this.db, "SELECT * FROM decisions WHERE id = $1", [id]);
  }

  async byPayment(paymentId: string): Promise<DecisionRecord | undefined> {
    return one(this.db, "SELECT * FROM decisions WHERE payment_id = $1", [paymentId]);
  }

  /**
   * Decides for a payment of `accountId` and records a new decision: reads the facts, decides,
   * and records unless another decision of the account was recorded since the read (two
   * statements, no transaction). Losing that race it tries again holding the account's lock,
   * where only lock-free attempts already under way can still come between.
   */
  async score(paymentId: string, accountId: string, now: () => Date, since: (now: Date) => Date[], decide: Decide): Promise<{ record: DecisionRecord; isNew: boolean }> {
    const attempt = async (q: Queryable) => {
      const at = now();
      const read = await facts(q, paymentId, accountId, at, since(at));
      const decided = decide(read.facts, at);
      return !decided.isNew || (await recordAfter(q, decided.record, read.version)) ? decided : undefined;
    };
    const lockFree = await attempt(this.db);
    if (lockFree) return lockFree;
    return this.db.transaction(async (tx) => {
      await tx.query("SELECT pg_advisory_xact_lock(hashtext($1))", [`risk:${accountId}`]);
      for (let tries = 1; ; tries++) {
        const decided = await attempt(tx);
        if (decided) return decided;
        if (tries === MAX_LOCKED_TRIES) throw new ConnectError(`risk: account ${accountId} is being scored by too many callers at once; retry`, Code.Aborted);
      }
    });
  }
}

/** Tries under the account's lock before giving up (each loss means a lock-free attempt won). */
const MAX_LOCKED_TRIES = 50;

/**
 * One statement for everything a decision needs: the payment's earlier decision (its row, or
 * nulls), the account's first sighting and version, and a count and a sum per velocity
 * window, all windows read in one pass over the largest through decisions_account_recent.
 */
async function facts(q: Queryable, paymentId: string, accountId: string, now: Date, since: Date[]): Promise<{ facts: ScoringFacts; version: bigint | null }> {
  const params: unknown[] = [paymentId, accountId];
  const arg = (value: unknown) => `$${params.push(value)}::timestamptz`;
  let recent = "";
  if (since.length > 0) {
    const oldest = arg(new Date(Math.min(...since.map((d) => d.getTime()))));
    const columns = since.map((s, i) => {
      const inside = `created_at > ${arg(s)}`;
      return `count(*) FILTER (WHERE ${inside})::int8 AS count_${i}, coalesce(sum(base_amount_minor) FILTER (WHERE ${inside}), 0)::int8 AS sum_${i}`;
    });
    recent = `CROSS JOIN (SELECT ${columns.join(", ")} FROM decisions WHERE account_id = $2 AND created_at > ${oldest}) AS recent`;
  }
  const { rows } = await q.query<DecisionRow & { first_seen_at: Date | null; version: bigint | null } & Record<`${"count" | "sum"}_${number}`, bigint>>(
    `SELECT earlier.*, seen.first_seen_at, seen.version ${recent ? ", recent.*" : ""}
     FROM (SELECT) AS one LEFT JOIN decisions AS earlier ON earlier.payment_id = $1
       LEFT JOIN accounts_seen AS seen ON seen.account_id = $2 ${recent}`,
    params,
  );
  const row = rows[0]!;
  if (row.id !== null) return { facts: { earlier: fromRow(row) }, version: row.version };
  return {
    facts: {
      earlier: undefined,
      firstSeen: row.first_seen_at ?? now,
      windows: since.map((_, i) => ({ count: Number(row[`count_${i}`]), sumMinor: row[`sum_${i}`]! })),
    },
    version: row.version,
  };
}

/**
 * Records a decision if the account is still at `version` (null: never seen), moving it on
 * (a first decision also records the sighting, at the decision's time); false when another
 * decision of the account got in first (nothing written).
 */
async function recordAfter(q: Queryable, d: DecisionRecord, version: bigint | null): Promise<boolean> {
  const { rowCount } = await q.query(
    `WITH seen AS (
       INSERT INTO accounts_seen AS s (account_id, first_seen_at, version) VALUES ($4, $18, 1)
       ON CONFLICT (account_id) DO UPDATE SET version = s.version + 1 WHERE s.version = $19::int8
       RETURNING 1)
     INSERT INTO decisions (id, payment_id, merchant_id, account_id, destination_account_id, currency, amount_minor, account_currency,
       base_currency, base_amount_minor, score, outcome, shadow_score, shadow_outcome, reasons, rules_version, request_hash, created_at)
     SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::int8, $8::text, $9::text, $10::int8, $11::int4, $12::text,
       $13::int4, $14::text, $15::jsonb, $16::text, $17::text, $18::timestamptz
     FROM seen`,
    [d.id, d.paymentId, d.merchantId, d.accountId, d.destinationAccountId, d.currency, d.amountMinor, d.accountCurrency, d.baseCurrency,
      d.baseAmountMinor, d.score, d.outcome, d.shadowScore, d.shadowOutcome, JSON.stringify(d.reasons), d.rulesVersion, d.requestHash, d.createdAt, version ?? -1n],
  );
  return rowCount > 0;
}

async function one(q: Queryable, sql: string, params: unknown[]): Promise<DecisionRecord | undefined> {
  const { rows } = await q.query<DecisionRow>(sql, params);
  return rows[0] && fromRow(rows[0]);
}
