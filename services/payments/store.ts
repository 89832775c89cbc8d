// Payments, refunds and events in the database. Every state change is a conditional UPDATE
// (only from a state that may legally lead to the new one) plus its event, in one transaction.
// This module owns the payments, payment_events and refunds tables: every statement on them
// is written here, also the part a key's claim embeds (creationWithClaim).
import { toBinary } from "@bufbuild/protobuf";
import { PaymentSchema } from "../gen/paygate/payments/v1/payments_pb.js";
import type { Database, Queryable } from "../runtime/db/database.js";
import { DomainError, failedPrecondition, invalidArgument, notFound } from "../runtime/errors.js";
import { newId } from "../runtime/ids.js";
import { keepResponse, type HeldKey, type WriteWithClaim } from "./idempotency.js";
import { recordStatus } from "./metrics.js";
import { paymentMessage, resumable, TRANSITIONS, type PaymentRecord, type Status } from "./payment.js";
import { compose, join, query, sql, type Sql } from "./sql.js";

/** An idempotency key whose response a payment's final write stores, and that response given the payment as written. */
export interface KeyCompletion {
  key: HeldKey;
  response: (p: PaymentRecord) => Uint8Array;
}

/**
 * Whether a write leaving a payment as `p` ends the request's work: given a KeyCompletion,
 * such a write keeps the request's response under its key (see transition).
 */
export const endsRequest = (p: Pick<PaymentRecord, "status" | "captureMethod">): boolean => !resumable(p);

interface PaymentRow {
  id: string;
  merchant_id: string;
  merchant_reference: string;
  source_account_id: string;
  destination_account_id: string;
  currency: string;
  amount_minor: bigint;
  settlement_currency: string | null;
  settlement_minor: bigint | null;
  fx_rate: string | null;
  fx_quote_id: string | null;
  capture_method: "AUTOMATIC" | "MANUAL";
  status: Status;
  captured_minor: bigint;
  settlement_captured_minor: bigint;
  refunded_minor: bigint;
  settlement_refunded_minor: bigint;
  failure_reason: string;
  failure_message: string;
  risk_decision_id: string;
  risk_score: number;
  metadata: Record<string, string> | string;
  version: bigint;
  created_at: Date;
  updated_at: Date;
}

const fromRow = (r: PaymentRow): PaymentRecord => ({
  id: r.id,
  merchantId: r.merchant_id,
  merchantReference: r.merchant_reference,
  sourceAccountId: r.source_account_id,
  destinationAccountId: r.destination_account_id,
  currency: r.currency,
  amountMinor: r.amount_minor,
  settlementCurrency: r.settlement_currency ?? "",
  settlementMinor: r.settlement_minor,
  fxRate: r.fx_rate,
  fxQuoteId: r.fx_quote_id,
  captureMethod: r.capture_method,
  status: r.status,
  capturedMinor: r.captured_minor,
  settlementCapturedMinor: r.settlement_captured_minor,
  refundedMinor: r.refunded_minor,
  settlementRefundedMinor: r.settlement_refunded_minor,
  failureReason: r.failure_reason,
  failureMessage: r.failure_message,
  riskDecisionId: r.risk_decision_id,
  riskScore: r.risk_score,
  metadata: typeof r.metadata === "string" ? (JSON.parse(r.metadata) as Record<string, string>) : r.metadata,
  version: r.version,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
});

/** Columns a state change or saga step may set (camelCase field -> column). */
const COLUMNS = {
  settlementCurrency: "settlement_currency",
  settlementMinor: "settlement_minor",
  fxRate: "fx_rate",
  fxQuoteId: "fx_quote_id",
  capturedMinor: "captured_minor",
  settlementCapturedMinor: "settlement_captured_minor",
  refundedMinor: "refunded_minor",
  settlementRefundedMinor: "settlement_refunded_minor",
  failureReason: "failure_reason",
  failureMessage: "failure_message",
  riskDecisionId: "risk_decision_id",
  riskScore: "risk_score",
} as const;

export type PaymentPatch = Partial<Pick<PaymentRecord, keyof typeof COLUMNS>>;

/** One legal transition: the state reached, its event type, and the fields it sets. */
export interface Step {
  to: Status;
  event: string;
  patch?: PaymentPatch;
}

export interface StoredEvent {
  seq: bigint;
  id: string;
  merchantId: string;
  paymentId: string;
  type: string;
  payment: Uint8Array;
  occurredAt: Date;
}

export interface RefundRecord {
  id: string;
  paymentId: string;
  amountMinor: bigint;
  settlementMinor: bigint;
  reason: string;
  createdAt: Date;
}

export class PaymentStore {
  constructor(
    private readonly db: Database,
    private readonly now: () => Date,
    /** Called after a transaction that wrote events commits (wakes local streams). */
    private readonly onEvents: () => void,
  ) {}

  /**
   * Inserts a new payment leased to `leaseOwner`, with its "payment.created" event, in one
   * statement; undefined when a payment with its id exists already.
   */
  async create(p: PaymentRecord, leaseOwner: string, leaseMs: number): Promise<PaymentRecord | undefined> {
    const { rowCount } = await query(this.db, compose`WITH ${insertion(p, leaseOwner, leaseMs)} SELECT id FROM created`);
    if (rowCount === 0) return undefined;
    this.created(p);
    return p;
  }

  /**
   * create() made in the statement that claims a new idempotency key (see WriteWithClaim):
   * `p` and its event are inserted once per row of `newKey`. Call created() once that
   * statement says it wrote.
   */
  creationWithClaim(p: PaymentRecord, leaseOwner: string, leaseMs: number, newKey: string): WriteWithClaim<PaymentRecord> {
    return { ctes: insertion(p, leaseOwner, leaseMs, newKey), wrote: "created", value: p };
  }

  /** What follows a new payment's insert: its status counted, event followers woken. */
  created(p: PaymentRecord): void {
    this.onEvents();
    recordStatus(p);
  }

  async get(id: string, merchantId?: string): Promise<PaymentRecord> {
    const { rows } = await this.db.query<PaymentRow>("SELECT * FROM payments WHERE id = $1", [id]);
    const row = rows[0];
    // Another merchant's payment is reported exactly like a missing one.
    if (!row || (merchantId !== undefined && merchantId !== "" && row.merchant_id !== merchantId)) {
      throw notFound("PAYMENT_NOT_FOUND", `payment_id: no payment ${JSON.stringify(id)}`, "payment_id");
    }
    return fromRow(row);
  }

  /** Leases one payment to `owner` if no live lease holds it; undefined otherwise. */
  async claim(id: string, owner: string, leaseMs: number): Promise<PaymentRecord | undefined> {
    const now = this.now();
    const { rows } = await this.db.query<PaymentRow>(
      "UPDATE payments SET lease_owner = $2, lease_until = $3 WHERE id = $1 AND (lease_until IS NULL OR lease_until < $4) RETURNING *",
      [id, owner, new Date(now.getTime() + leaseMs), now],
    );
    return rows[0] && fromRow(rows[0]);
  }

  /**
   * Moves payment `p` (as read, at its version) along `steps`, each a legal transition with
   * its event and the fields it sets, in one statement that also records the events; runs
   * `also` in the same transaction when given (e.g. inserting a refund). Leaving the states
   * the recovery sweep resumes also drops the saga's lease. A payment changed since it was
   * read is ABORTED CONCURRENT_UPDATE, or FAILED_PRECONDITION when its state no longer leads
   * to the first step. With `complete`, a move that leaves the payment where the request's
   * work ends (endsRequest) also stores the request's response under its idempotency key.
   */
  async transition(p: PaymentRecord, steps: Step | Step[], opts: { also?: (tx: Queryable, moved: PaymentRecord) => Promise<void>; complete?: KeyCompletion | undefined } = {}): Promise<PaymentRecord> {
    const { also, complete } = opts;
    const path = Array.isArray(steps) ? steps : [steps];
    const now = this.now();
    // What the payment looks like after each step: the snapshots its events carry.
    const snapshots: PaymentRecord[] = [];
    let from = p.status;
    let current: PaymentRecord = p;
    for (const step of path) {
      if (!TRANSITIONS[from].includes(step.to)) throw illegal(p.id, from, step.to);
      current = { ...current, ...step.patch, status: step.to, version: p.version + 1n, updatedAt: now };
      snapshots.push(current);
      from = step.to;
    }
    const patch: PaymentPatch = Object.assign({}, ...path.map((s) => s.patch));
    const ends = endsRequest(current);
    const setting = join(
      [
        sql("status = :moved_status, version = version + 1, updated_at = :moved_at", { moved_status: current.status, moved_at: now }),
        ...assignments(patch),
        ...(ends ? [sql("lease_owner = NULL, lease_until = NULL")] : []),
      ],
      ", ",
    );
    const atVersion = sql("id = :moved_id AND version = :moved_version", { moved_id: p.id, moved_version: p.version });
    const events = path.map((step, i) =>
      sql(`(:event_id_${i}::text, :event_type_${i}::text, :event_payment_${i}::bytea, ${i})`, {
        [`event_id_${i}`]: newId("evt"),
        [`event_type_${i}`]: step.event,
        [`event_payment_${i}`]: toBinary(PaymentSchema, paymentMessage(snapshots[i]!)),
      }),
    );
    const kept = complete && ends ? compose`, ${keepResponse(complete.key, complete.response(current), "moved")}` : "";
    const statement = compose`WITH moved AS (UPDATE payments SET ${setting} WHERE ${atVersion} RETURNING merchant_id)${kept}
      INSERT INTO payment_events (id, merchant_id, payment_id, type, payment, occurred_at)
      SELECT e.id, moved.merchant_id, :moved_id, e.type, e.payment, :moved_at FROM moved, (VALUES ${join(events, ", ")}) AS e(id, type, payment, n) ORDER BY e.n`;
    const write = async (q: Queryable) => {
      const { rowCount } = await query(q, statement);
      if (rowCount === 0) await this.explainMiss(q, p, path[0]!.to);
      await also?.(q, current);
    };
    await (also ? this.db.transaction(write) : write(this.db));
    this.onEvents();
    for (const snapshot of snapshots) recordStatus(snapshot, snapshot === current ? p.refundedMinor : undefined);
    return current;
  }

  /** Why a write at `p.version` matched nothing: the payment is gone, moved on, or changed. */
  private async explainMiss(q: Queryable, p: PaymentRecord, to: Status): Promise<never> {
    const { rows } = await q.query<{ status: Status }>("SELECT status FROM payments WHERE id = $1", [p.id]);
    const status = rows[0]?.status;
    if (!status) throw notFound("PAYMENT_NOT_FOUND", `payment_id: no payment ${JSON.stringify(p.id)}`, "payment_id");
    if (TRANSITIONS[status].includes(to)) throw concurrentUpdate(p.id);
    throw illegal(p.id, status, to);
  }

  async list(merchantId: string, status: Status | undefined, pageSize: number, pageToken: string): Promise<{ payments: PaymentRecord[]; nextPageToken: string }> {
    const size = Math.min(Math.max(pageSize || 20, 1), 100);
    let cursor: { at: Date; id: string } | undefined;
    if (pageToken !== "") {
      const [at, id] = Buffer.from(pageToken, "base64url").toString().split("|");
      if (!at || !id || Number.isNaN(Date.parse(at))) throw invalidArgument("INVALID_PAGE_TOKEN", "page_token", "page_token: not a token this service issued");
      cursor = { at: new Date(at), id };
    }
    const { rows } = await this.db.query<PaymentRow>(
      `SELECT * FROM payments WHERE merchant_id = $1 AND ($2::text IS NULL OR status = $2)
         AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
       ORDER BY created_at DESC, id DESC LIMIT $5`,
      [merchantId, status ?? null, cursor?.at ?? null, cursor?.id ?? "", size + 1],
    );
    const payments = rows.slice(0, size).map(fromRow);
    const last = payments[payments.length - 1];
    const nextPageToken = rows.length > size && last ? Buffer.from(`${last.createdAt.toISOString()}|${last.id}`).toString("base64url") : "";
    return { payments, nextPageToken };
  }

  async insertRefund(tx: Queryable, r: RefundRecord): Promise<void> {
    await tx.query("INSERT INTO refunds (id, payment_id, amount_minor, settlement_minor, reason, created_at) VALUES ($1, $2, $3, $4, $5, $6)", [
      r.id, r.paymentId, r.amountMinor, r.settlementMinor, r.reason, r.createdAt,
    ]);
  }

  /**
   * Takes over payments whose saga stopped half-way (their lease ran out: the process
   * driving them died or gave up), leasing them to `owner`; oldest first, and with `after`
   * only those that come after that payment in this order, so a sweep taking batch after
   * batch meets each payment once. SKIP LOCKED lets several replicas sweep at once without
   * ever taking the same payment.
   */
  async claimStalled(owner: string, leaseMs: number, limit: number, after?: Pick<PaymentRecord, "createdAt" | "id">): Promise<PaymentRecord[]> {
    const now = this.now();
    const { rows } = await this.db.query<PaymentRow>(
      `WITH claimed AS (
         UPDATE payments SET lease_owner = $1, lease_until = $2
         WHERE id IN (
           SELECT id FROM payments
           WHERE (status = 'PENDING' OR (status = 'AUTHORIZED' AND capture_method = 'AUTOMATIC'))
             AND (lease_until IS NULL OR lease_until < $3)
             AND ($5::timestamptz IS NULL OR (created_at, id) > ($5, $6::text))
           ORDER BY created_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
         RETURNING *)
       SELECT * FROM claimed ORDER BY created_at, id`,
      [owner, new Date(now.getTime() + leaseMs), now, limit, after?.createdAt ?? null, after?.id ?? ""],
    );
    return rows.map(fromRow);
  }

  async releaseLease(id: string, owner: string): Promise<void> {
    await this.db.query("UPDATE payments SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2", [id, owner]);
  }

  async eventsAfter(filter: { merchantId?: string; paymentId?: string }, afterSeq: bigint, limit = 100): Promise<StoredEvent[]> {
    const { rows } = await this.db.query<{ seq: bigint; id: string; merchant_id: string; payment_id: string; type: string; payment: Uint8Array; occurred_at: Date }>(
      `SELECT * FROM payment_events WHERE seq > $1 AND ($2::text IS NULL OR merchant_id = $2) AND ($3::text IS NULL OR payment_id = $3) ORDER BY seq LIMIT $4`,
      [afterSeq, filter.merchantId ?? null, filter.paymentId ?? null, limit],
    );
    return rows.map((r) => ({ seq: r.seq, id: r.id, merchantId: r.merchant_id, paymentId: r.payment_id, type: r.type, payment: r.payment, occurredAt: r.occurred_at }));
  }

  async lastEventSeq(): Promise<bigint> {
    const { rows } = await this.db.query<{ seq: bigint | null }>("SELECT max(seq) AS seq FROM payment_events");
    return rows[0]?.seq ?? 0n;
  }
}

/** `column = :set_column` for each field `patch` sets. */
function assignments(patch: PaymentPatch): Sql[] {
  return Object.entries(COLUMNS)
    .filter(([field]) => patch[field as keyof PaymentPatch] !== undefined)
    .map(([field, column]) => sql(`${column} = :set_${column}`, { [`set_${column}`]: patch[field as keyof PaymentPatch] }));
}

/**
 * The statement part inserting `p` (leased to `leaseOwner`) and its "payment.created" event,
 * once, or once per row of the relation `source` when given (a CTE of the same statement).
 * The CTE `created` returns the id when the payment was inserted (none when it existed).
 */
function insertion(p: PaymentRecord, leaseOwner: string, leaseMs: number, source?: string): Sql {
  return sql(
    `created AS (
         INSERT INTO payments (id, merchant_id, merchant_reference, source_account_id, destination_account_id, currency, amount_minor,
           settlement_currency, settlement_minor, capture_method, status, metadata, lease_owner, lease_until, version, created_at, updated_at)
         SELECT :payment_id::text, :payment_merchant_id::text, :payment_merchant_reference::text, :payment_source_account_id::text,
           :payment_destination_account_id::text, :payment_currency::text, :payment_amount_minor::int8, :payment_settlement_currency::text,
           :payment_settlement_minor::int8, :payment_capture_method::text, 'PENDING', :payment_metadata::jsonb, :payment_lease_owner::text,
           :payment_lease_until::timestamptz, 0, :payment_created_at::timestamptz, :payment_created_at::timestamptz${source ? ` FROM ${source}` : ""}
         ON CONFLICT (id) DO NOTHING RETURNING id),
       created_event AS (
         INSERT INTO payment_events (id, merchant_id, payment_id, type, payment, occurred_at)
         SELECT :created_event_id::text, :payment_merchant_id::text, id, 'payment.created', :created_event_payment::bytea, :payment_created_at::timestamptz FROM created)`,
    {
      payment_id: p.id,
      payment_merchant_id: p.merchantId,
      payment_merchant_reference: p.merchantReference,
      payment_source_account_id: p.sourceAccountId,
      payment_destination_account_id: p.destinationAccountId,
      payment_currency: p.currency,
      payment_amount_minor: p.amountMinor,
      payment_settlement_currency: p.settlementCurrency,
      payment_settlement_minor: p.settlementMinor,
      payment_capture_method: p.captureMethod,
      payment_metadata: JSON.stringify(p.metadata),
      payment_lease_owner: leaseOwner,
      payment_lease_until: new Date(p.createdAt.getTime() + leaseMs),
      payment_created_at: p.createdAt,
      created_event_id: newId("evt"),
      created_event_payment: toBinary(PaymentSchema, paymentMessage(p)),
    },
  );
}

const concurrentUpdate = (id: string) => new DomainError("aborted", "CONCURRENT_UPDATE", `payment ${id} changed while this request ran; retry`, "payment_id");

const illegal = (id: string, from: Status, to: Status) => failedPrecondition("ILLEGAL_TRANSITION", `payment ${id} is ${from} and cannot become ${to}`, "payment_id", { status: from });
