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

/** What a decision transaction can read and write. */
export interface ScoringTx {
  byPayment(paymentId: string): Promise<DecisionRecord | undefined>;
  /** When the account was first seen (recording `now` if never). */
  firstSeen(accountId: string, now: Date): Promise<Date>;
  /** Earlier decisions of the account since `since`: count and sum of known base amounts. */
  window(accountId: string, since: Date): Promise<{ count: number; sumMinor: bigint }>;
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
        byPayment: (paymentId) => one(q, "SELECT * FROM decisions WHERE payment_id = $1", [paymentId]),
        async firstSeen(account, now) {
          await q.query("INSERT INTO accounts_seen (account_id, first_seen_at) VALUES ($1, $2) ON CONFLICT (account_id) DO NOTHING", [account, now]);
          const { rows } = await q.query<{ first_seen_at: Date }>("SELECT first_seen_at FROM accounts_seen WHERE account_id = $1", [account]);
          return rows[0]!.first_seen_at;
        },
        async window(account, since) {
          const { rows } = await q.query<{ count: bigint; sum: bigint }>(
            "SELECT count(*)::int8 AS count, coalesce(sum(base_amount_minor), 0)::int8 AS sum FROM decisions WHERE account_id = $1 AND created_at > $2",
            [account, since],
          );
          return { count: Number(rows[0]!.count), sumMinor: rows[0]!.sum };
        },
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

async function one(q: Queryable, sql: string, params: unknown[]): Promise<DecisionRecord | undefined> {
  const { rows } = await q.query<DecisionRow>(sql, params);
  return rows[0] && fromRow(rows[0]);
}
