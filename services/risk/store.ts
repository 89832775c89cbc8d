// Decisions, persisted. Decisions of one account are recorded one after another, so velocity
// windows count every earlier payment even when payments arrive concurrently: optimistically
// (read the facts, record only if no other decision of the account was recorded since), and
// under a per-account lock when that loses a race. What this replica last read or recorded of
// an account is kept, so its next decision needs no read: recorded only if the account is
// still at the version kept, it is as exact as one made from a read.
import { Code, ConnectError } from "@connectrpc/connect";
import { LRUCache } from "lru-cache";
import { SQLSTATE, sqlState, type Database, type Queryable } from "../runtime/db/database.js";
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

/** An account's decisions as of `version` (0: none yet): when first seen, and those inside the longest velocity window, oldest first. */
interface AccountState {
  version: bigint;
  firstSeen: Date | undefined;
  recent: { at: Date; baseMinor: bigint | null; paymentId: string }[];
}

/** How many accounts' states a store keeps: those scored least recently make way. */
const STATES_KEPT = 10_000;

export class DecisionStore {
  /** Per account, its state as this store last read or recorded it; `statesKept` at most. */
  private readonly states: LRUCache<string, AccountState>;

  constructor(
    private readonly db: Database,
    statesKept = STATES_KEPT,
  ) {
    this.states = new LRUCache<string, AccountState>({ max: statesKept });
  }

  async byId(id: string): Promise<DecisionRecord | undefined> {
    return one(this.db, "SELECT * FROM decisions WHERE id = $1", [id]);
  }

  async byPayment(paymentId: string): Promise<DecisionRecord | undefined> {
    return one(this.db, "SELECT * FROM decisions WHERE payment_id = $1", [paymentId]);
  }

  /**
   * Decides for a payment of `accountId` and records a new decision: from the account's state
   * kept from this store's last read or record of it when there is one (one statement), else
   * reads the facts, decides, and records (two statements, no transaction). A decision is
   * recorded only if no other decision of the account was recorded since its facts; losing
   * that race it is made again from a read, holding the account's lock, where only lock-free
   * attempts already under way can still come between.
   */
  async score(paymentId: string, accountId: string, now: () => Date, since: (now: Date) => Date[], decide: Decide): Promise<{ record: DecisionRecord; isNew: boolean }> {
    const kept = this.states.get(accountId);
    // A payment among the kept decisions is a retry: the read finds its decision.
    if (kept && !kept.recent.some((d) => d.paymentId === paymentId)) {
      const at = now();
      const windows = since(at);
      const decided = decide({ earlier: undefined, firstSeen: kept.firstSeen ?? at, windows: countWindows(kept.recent, windows) }, at);
      if (await this.record(this.db, accountId, kept, decided.record, windows, true)) return decided;
    }
    this.states.delete(accountId);
    // Inside the locked transaction nothing is kept: it is not committed when recorded.
    const attempt = async (q: Queryable, keep: boolean) => {
      const at = now();
      const windows = since(at);
      const read = await facts(q, paymentId, accountId, at, windows);
      const decided = decide(read.facts, at);
      return !decided.isNew || (await this.record(q, accountId, read.state, decided.record, windows, keep)) ? decided : undefined;
    };
    const lockFree = await attempt(this.db, true);
    if (lockFree) return lockFree;
    return this.db.transaction(async (tx) => {
      await tx.query("SELECT pg_advisory_xact_lock(hashtext($1))", [`risk:${accountId}`]);
      for (let tries = 1; ; tries++) {
        const decided = await attempt(tx, false);
        if (decided) return decided;
        if (tries === MAX_LOCKED_TRIES) throw new ConnectError(`risk: account ${accountId} is being scored by too many callers at once; retry`, Code.Aborted);
      }
    });
  }

  /**
   * Records `d` if the account is still at `state`'s version, and with `keep` keeps the state
   * that follows (pruned to `windows`); false when another decision got in first, or one for
   * this payment exists already.
   */
  private async record(q: Queryable, accountId: string, state: AccountState, d: DecisionRecord, windows: Date[], keep: boolean): Promise<boolean> {
    const recorded = await recordAfter(q, d, state.version).catch((err: unknown) => {
      if (sqlState(err) === SQLSTATE.uniqueViolation) return false; // decisions_payment_id_key
      throw err;
    });
    if (!recorded || !keep) return recorded;
    const oldest = Math.min(...windows.map((w) => w.getTime()));
    const recent = [...state.recent, { at: d.createdAt, baseMinor: d.baseAmountMinor, paymentId: d.paymentId }].filter((r) => r.at.getTime() > oldest);
    this.states.set(accountId, { version: state.version + 1n, firstSeen: state.firstSeen ?? d.createdAt, recent });
    return true;
  }
}

/** Per window start (same order): the decisions after it, counted, and their known base amounts summed. */
function countWindows(recent: AccountState["recent"], since: Date[]): { count: number; sumMinor: bigint }[] {
  return since.map((s) => {
    const inside = recent.filter((r) => r.at.getTime() > s.getTime());
    return { count: inside.length, sumMinor: inside.reduce((sum, r) => sum + (r.baseMinor ?? 0n), 0n) };
  });
}

/** Tries under the account's lock before giving up (each loss means a lock-free attempt won). */
const MAX_LOCKED_TRIES = 50;

/**
 * One statement for everything a decision needs: the payment's earlier decision (its row, or
 * nulls), the account's first sighting and version, and its decisions inside the longest
 * velocity window (through decisions_account_recent), from which each window is counted.
 */
async function facts(q: Queryable, paymentId: string, accountId: string, now: Date, since: Date[]): Promise<{ facts: ScoringFacts; state: AccountState }> {
  const oldest = since.length > 0 ? new Date(Math.min(...since.map((d) => d.getTime()))) : now;
  const { rows } = await q.query<DecisionRow & { first_seen_at: Date | null; version: bigint | null; recent: { at: string; base: string | null; payment: string }[] | string }>(
    `SELECT earlier.*, seen.first_seen_at, seen.version,
       (SELECT coalesce(json_agg(json_build_object('at', r.created_at, 'base', r.base_amount_minor::text, 'payment', r.payment_id) ORDER BY r.created_at, r.id), '[]')
        FROM decisions r WHERE r.account_id = $2 AND r.created_at > $3) AS recent
     FROM (SELECT) AS one LEFT JOIN decisions AS earlier ON earlier.payment_id = $1
       LEFT JOIN accounts_seen AS seen ON seen.account_id = $2`,
    [paymentId, accountId, oldest],
  );
  const row = rows[0]!;
  const listed = typeof row.recent === "string" ? (JSON.parse(row.recent) as Exclude<typeof row.recent, string>) : row.recent;
  const recent = listed.map((r) => ({ at: new Date(r.at), baseMinor: r.base === null ? null : BigInt(r.base), paymentId: r.payment }));
  const state: AccountState = { version: row.version ?? 0n, firstSeen: row.first_seen_at ?? undefined, recent };
  if (row.id !== null) return { facts: { earlier: fromRow(row) }, state };
  return { facts: { earlier: undefined, firstSeen: row.first_seen_at ?? now, windows: countWindows(recent, since) }, state };
}

/**
 * Records a decision if the account is still at `version` (0: no decision yet), moving it on
 * (a first decision also records the sighting, at the decision's time); false when another
 * decision of the account got in first (nothing written).
 */
async function recordAfter(q: Queryable, d: DecisionRecord, version: bigint): Promise<boolean> {
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
      d.baseAmountMinor, d.score, d.outcome, d.shadowScore, d.shadowOutcome, JSON.stringify(d.reasons), d.rulesVersion, d.requestHash, d.createdAt, version],
  );
  return rowCount > 0;
}

async function one(q: Queryable, sql: string, params: unknown[]): Promise<DecisionRecord | undefined> {
  const { rows } = await q.query<DecisionRow>(sql, params);
  return rows[0] && fromRow(rows[0]);
}
