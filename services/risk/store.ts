// Decisions, persisted. Scoring an account runs under a per-account transaction lock so
// velocity windows count every earlier payment even when payments arrive concurrently.
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
 * What a decision transaction reads, in one statement: the decision already recorded for the
 * payment (and then nothing else), or the facts for a new one.
 */
export type ScoringFacts =
  | { earlier: DecisionRecord }
  | {
      earlier: undefined;
      /** When the account was first seen (recorded as `now` if never). */
      firstSeen: Date;
      /** Per `since` (same order): earlier decisions of the account after it, count and sum of known base amounts. */
      windows: { count: number; sumMinor: bigint }[];
    };

/** What a decision transaction can read and write. */
export interface ScoringTx {
  facts(paymentId: string, accountId: string, now: Date, since: Date[]): Promise<ScoringFacts>;
  insert(d: DecisionRecord): Promise<void>;
}

export class DecisionStore {
  constructor(private readonly db: Database) {}

  async byId(id: string): Promise<DecisionRecord | undefined> {
    return one(this.db, "SELECT * FROM decisions WHERE id = $1", [id]);
  }

  async byPayment(paymentId: string): Promise<DecisionRecord | undefined> {
    return one(this.db, "SELECT * FROM decisions WHERE payment_id = $1", [paymentId]);
  }

  /** Runs `fn` in a transaction holding the account's lock (released at commit). */
  scoring<T>(accountId: string, fn: (tx: ScoringTx) => Promise<T>): Promise<T> {
    return this.db.transaction(async (q) => {
      await q.query("SELECT pg_advisory_xact_lock(hashtext($1))", [`risk:${accountId}`]);
      return fn({
        facts: (paymentId, account, now, since) => facts(q, paymentId, account, now, since),
        async insert(d) {
          await q.query(
            `INSERT INTO decisions (id, payment_id, merchant_id, account_id, destination_account_id, currency, amount_minor, account_currency,
               base_currency, base_amount_minor, score, outcome, shadow_score, shadow_outcome, reasons, rules_version, request_hash, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)`,
            [d.id, d.paymentId, d.merchantId, d.accountId, d.destinationAccountId, d.currency, d.amountMinor, d.accountCurrency, d.baseCurrency,
              d.baseAmountMinor, d.score, d.outcome, d.shadowScore, d.shadowOutcome, JSON.stringify(d.reasons), d.rulesVersion, d.requestHash, d.createdAt],
          );
        },
      });
    });
  }
}

/**
 * One statement for everything a decision needs: the payment's earlier decision (its row, or
 * nulls), the account's first sighting and a count and a sum per velocity window, all windows
 * read in one pass over the largest through decisions_account_recent.
 * First sighting: the INSERT records `now` unless the account has a row; its RETURNING is empty
 * then, and the SELECT beside it sees the table as it was before the INSERT, so exactly one of
 * the two has the date. (A refused call rolls back, so it records no sighting.)
 */
async function facts(q: Queryable, paymentId: string, accountId: string, now: Date, since: Date[]): Promise<ScoringFacts> {
  const params: unknown[] = [paymentId, accountId, now];
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
  const { rows } = await q.query<DecisionRow & { first_seen_at: Date } & Record<`${"count" | "sum"}_${number}`, bigint>>(
    `WITH seen AS (INSERT INTO accounts_seen (account_id, first_seen_at) VALUES ($2, $3) ON CONFLICT (account_id) DO NOTHING RETURNING first_seen_at)
     SELECT *, coalesce((SELECT first_seen_at FROM seen), (SELECT first_seen_at FROM accounts_seen WHERE account_id = $2)) AS first_seen_at
     FROM (SELECT) AS one LEFT JOIN decisions AS earlier ON earlier.payment_id = $1 ${recent}`,
    params,
  );
  const row = rows[0]!;
  if (row.id !== null) return { earlier: fromRow(row) };
  return {
    earlier: undefined,
    firstSeen: row.first_seen_at,
    windows: since.map((_, i) => ({ count: Number(row[`count_${i}`]), sumMinor: row[`sum_${i}`]! })),
  };
}

async function one(q: Queryable, sql: string, params: unknown[]): Promise<DecisionRecord | undefined> {
  const { rows } = await q.query<DecisionRow>(sql, params);
  return rows[0] && fromRow(rows[0]);
}
