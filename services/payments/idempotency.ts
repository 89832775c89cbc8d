// Idempotency keys, as the best public payment APIs define them: the same key with the same
// request replays the first response (failures included) with no second effect; the same key
// with another request is an error; a duplicate arriving while the first is still running is
// ABORTED. Keys are per merchant and kept for at least 24 hours.
//
// This module owns the idempotency_keys table: every statement on it is written here, also
// the two that share a round trip with a payment's write (a new payment inserted with its
// key's claim, see WriteWithClaim; the write that ends a request keeping its response, see
// keepResponse).
import { createHash } from "node:crypto";
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorDetailSchema } from "../gen/paygate/common/v1/common_pb.js";
import type { Database } from "../runtime/db/database.js";
import { DomainError, invalidArgument, isTransient, toConnectError } from "../runtime/errors.js";
import { IDEMPOTENCY_HEADER, REPLAYED_HEADER } from "../runtime/rpc/headers.js";
import { compose, query, sql, type Sql } from "./sql.js";

interface StoredError {
  code: Code;
  message: string;
  reason: string;
  field: string;
  metadata: Record<string, string>;
}

/** A key a request holds while its work runs. */
export interface HeldKey {
  merchantId: string;
  key: string;
}

/**
 * A write made in the statement that claims a key, only when the key is new (or, expired,
 * starts afresh): CTEs reading `FROM` the relation ClaimWrite is given as `newKey` (one row
 * when the key is new, none otherwise), the one named `wrote` returning a row when it wrote;
 * `value` is what it writes.
 */
export interface WriteWithClaim<T> {
  ctes: Sql;
  wrote: string;
  value: T;
}

/** Builds the write made with a new key's claim, given the scope a new key gets (see Attempt.scope). */
export type ClaimWrite<T> = (scope: string, newKey: string) => WriteWithClaim<T>;

/** What a request's work runs with. */
export interface Attempt<T> {
  /** The key held (undefined without one), under which the write that ends the work may keep the response. */
  key: HeldKey | undefined;
  /**
   * Names this use of the key (merchant, key, when first claimed) and stays the same when a
   * retry takes over from an attempt that died; undefined without a key. A write that
   * derives its ids from it finds what the dead attempt already created.
   */
  scope: string | undefined;
  /** What the write made with the claim wrote; undefined when none was made. */
  writtenWithClaim: T | undefined;
}

/** A request's response, and whether the write that ended its work already kept it under the key. */
export interface Answer<R> {
  response: R;
  kept: boolean;
}

export interface RunOptions<R, T> {
  /** A write to make in the claim's own statement when the key is new. */
  withClaim?: ClaimWrite<T> | undefined;
  /**
   * Whether a response is final and may be kept for the key (all are, unless told). One
   * that is not (a payment paused half-way) is answered but not kept: a retry sees how the
   * work stands then, never a frozen intermediate answer.
   */
  final?: (response: R) => boolean;
}

export interface IdempotencyOptions {
  /** How long a key is remembered. */
  retentionMs: number;
  /** How long a request may hold its key before a retry may take it over (a crashed process). */
  lockMs: number;
  now: () => Date;
}

const WITHOUT_KEY: Attempt<never> = { key: undefined, scope: undefined, writtenWithClaim: undefined };

/**
 * The part of a statement keeping `response` under `key` and unlocking it, only when the
 * relation `guard` (a CTE of that statement, e.g. the payment write) yields a row.
 */
export function keepResponse(key: HeldKey, response: Uint8Array, guard: string): Sql {
  return sql(
    `kept_response AS (
       UPDATE idempotency_keys SET response = :kept_response, locked_until = NULL
       WHERE merchant_id = :kept_merchant_id AND key = :kept_key AND EXISTS (SELECT 1 FROM ${guard}))`,
    { kept_response: response, kept_merchant_id: key.merchantId, kept_key: key.key },
  );
}

export class IdempotencyKeys {
  constructor(
    private readonly db: Database,
    private readonly opts: IdempotencyOptions,
  ) {}

  /**
   * Runs `work` once per (merchant, key). `request` identifies the request (its canonical
   * fingerprint input); `schema` is the response type, stored to replay.
   */
  async run<S extends DescMessage, T = never>(
    merchantId: string,
    key: string,
    request: unknown,
    schema: S,
    work: (attempt: Attempt<T>) => Promise<Answer<MessageShape<S>>>,
    opts: RunOptions<MessageShape<S>, T> = {},
  ): Promise<{ response: MessageShape<S>; replayed: boolean }> {
    if (key === "") return { response: (await work(WITHOUT_KEY)).response, replayed: false };
    if (key.length > 255) throw invalidArgument("INVALID_IDEMPOTENCY_KEY", IDEMPOTENCY_HEADER, `${IDEMPOTENCY_HEADER}: at most 255 characters`);
    const final = opts.final ?? (() => true);
    const held: HeldKey = { merchantId, key };
    const hash = createHash("sha256").update(JSON.stringify(request, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v))).digest("hex");
    const attempt = await this.claim(held, hash, opts.withClaim);
    if (!attempt) return { response: await this.replay(held, hash, schema), replayed: true };
    try {
      const answer = await work(attempt);
      if (!answer.kept) await (final(answer.response) ? this.keep(held, toBinary(schema, answer.response)) : this.unlock(held));
      return { response: answer.response, replayed: false };
    } catch (err) {
      await this.refuse(held, err);
      throw err;
    }
  }

  /**
   * Takes the key for this request in one statement, with `withClaim`'s write when the key is
   * new; undefined when the key is not to be taken (answered, in use, or another request's:
   * replay() says which).
   */
  private async claim<T>(held: HeldKey, hash: string, withClaim: ClaimWrite<T> | undefined): Promise<Attempt<T> | undefined> {
    const now = this.opts.now();
    // Taking over an attempt that died (same request, no result, lock run out) keeps the
    // key's created_at: the scope stays the same. An expired key starts afresh.
    const scope = (createdAt: Date) => `${held.merchantId}\u0000${held.key}\u0000${createdAt.toISOString()}`;
    const claim = sql(
      `claim AS (
         INSERT INTO idempotency_keys (merchant_id, key, request_hash, locked_until, created_at, expires_at)
         VALUES (:claim_merchant_id, :claim_key, :claim_request_hash, :claim_locked_until, :claim_now, :claim_expires_at)
         ON CONFLICT (merchant_id, key) DO UPDATE
           SET request_hash = EXCLUDED.request_hash, response = NULL, error = NULL, locked_until = EXCLUDED.locked_until,
               created_at = CASE WHEN idempotency_keys.expires_at <= :claim_now THEN EXCLUDED.created_at ELSE idempotency_keys.created_at END,
               expires_at = EXCLUDED.expires_at
           WHERE idempotency_keys.expires_at <= :claim_now
              OR (idempotency_keys.request_hash = EXCLUDED.request_hash AND idempotency_keys.response IS NULL
                  AND idempotency_keys.error IS NULL AND idempotency_keys.locked_until <= :claim_now)
         RETURNING created_at)`,
      {
        claim_merchant_id: held.merchantId,
        claim_key: held.key,
        claim_request_hash: hash,
        claim_locked_until: new Date(now.getTime() + this.opts.lockMs),
        claim_now: now,
        claim_expires_at: new Date(now.getTime() + this.opts.retentionMs),
      },
    );
    // A new key (or an expired one starting afresh) gets created_at = now: only then is the
    // write made, in the scope that key has.
    const write = withClaim?.(scope(now), "new_key");
    const statement = write
      ? compose`WITH ${claim}, new_key AS (SELECT FROM claim WHERE claim.created_at = :claim_now), ${write.ctes}
         SELECT created_at, EXISTS (SELECT 1 FROM ${sql(write.wrote)}) AS wrote FROM claim`
      : compose`WITH ${claim} SELECT created_at, false AS wrote FROM claim`;
    const { rows } = await query<{ created_at: Date; wrote: boolean }>(this.db, statement);
    const claimed = rows[0];
    if (!claimed) return undefined;
    return { key: held, scope: scope(new Date(claimed.created_at)), writtenWithClaim: claimed.wrote ? write?.value : undefined };
  }

  /** Keeps a request's final response under its key and unlocks it. */
  private async keep(held: HeldKey, response: Uint8Array): Promise<void> {
    await this.db.query("UPDATE idempotency_keys SET response = $3, locked_until = NULL WHERE merchant_id = $1 AND key = $2", [held.merchantId, held.key, response]);
  }

  /** Ends a request's hold on its key after `err`: kept to replay, or unlocked when worth retrying. */
  private async refuse(held: HeldKey, err: unknown): Promise<void> {
    const stored = storable(err);
    if (stored) {
      await this.db.query("UPDATE idempotency_keys SET error = $3, locked_until = NULL WHERE merchant_id = $1 AND key = $2", [held.merchantId, held.key, JSON.stringify(stored)]);
    } else {
      await this.unlock(held);
    }
  }

  /**
   * Unlocked, not forgotten: a retry of the same request runs again in the same scope (and
   * finds what this attempt may already have created).
   */
  private async unlock(held: HeldKey): Promise<void> {
    await this.db.query("UPDATE idempotency_keys SET locked_until = $3 WHERE merchant_id = $1 AND key = $2 AND response IS NULL AND error IS NULL", [held.merchantId, held.key, this.opts.now()]);
  }

  /** Deletes keys past their retention; returns how many. */
  async purgeExpired(): Promise<number> {
    return (await this.db.query("DELETE FROM idempotency_keys WHERE expires_at <= $1", [this.opts.now()])).rowCount;
  }

  /** The kept answer of a key this request could not take: its response, its error thrown again, or why there is none. */
  private async replay<S extends DescMessage>(held: HeldKey, hash: string, schema: S): Promise<MessageShape<S>> {
    const { rows } = await this.db.query<{ request_hash: string; response: Uint8Array | null; error: StoredError | string | null }>(
      "SELECT request_hash, response, error FROM idempotency_keys WHERE merchant_id = $1 AND key = $2",
      [held.merchantId, held.key],
    );
    const row = rows[0];
    if (!row) throw new ConnectError("idempotency key vanished while it was read; retry", Code.Aborted);
    if (row.request_hash !== hash) {
      throw invalidArgument("IDEMPOTENCY_KEY_REUSED", IDEMPOTENCY_HEADER, `${IDEMPOTENCY_HEADER}: ${JSON.stringify(held.key)} was already used with a different request`);
    }
    if (row.response) return fromBinary(schema, row.response);
    if (row.error) {
      const e = typeof row.error === "string" ? (JSON.parse(row.error) as StoredError) : row.error;
      // Marked in the error's metadata: the caller sees it as a header (Connect) or trailer (gRPC).
      const marked = new Headers({ [REPLAYED_HEADER]: "true" });
      throw new ConnectError(e.message, e.code, marked, [{ desc: ErrorDetailSchema, value: create(ErrorDetailSchema, { reason: e.reason, field: e.field, metadata: e.metadata }) }]);
    }
    throw new DomainError("aborted", "IDEMPOTENCY_KEY_IN_USE", `${IDEMPOTENCY_HEADER}: a request with key ${JSON.stringify(held.key)} is still in progress`, IDEMPOTENCY_HEADER);
  }
}

/** The error to replay for this key, or undefined when it is transient (the key is unlocked). */
function storable(err: unknown): StoredError | undefined {
  const connect = err instanceof DomainError ? toConnectError(err) : err instanceof ConnectError ? err : undefined;
  // Errors worth retrying are not kept: the key is unlocked so a retry runs the request again.
  if (!connect || isTransient(connect)) return undefined;
  const detail = connect.findDetails(ErrorDetailSchema)[0];
  return { code: connect.code, message: connect.rawMessage, reason: detail?.reason ?? "", field: detail?.field ?? "", metadata: detail?.metadata ?? {} };
}
