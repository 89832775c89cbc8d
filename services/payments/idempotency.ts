// Idempotency keys, as the best public payment APIs define them: the same key with the same
// request replays the first response (failures included) with no second effect; the same key
// with another request is an error; a duplicate arriving while the first is still running is
// ABORTED. Keys are per merchant and kept for at least 24 hours.
import { createHash } from "node:crypto";
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorDetailSchema } from "../gen/paygate/common/v1/common_pb.js";
import type { Database } from "../runtime/db/database.js";
import { DomainError, invalidArgument, isTransient, toConnectError } from "../runtime/errors.js";
import { IDEMPOTENCY_HEADER, REPLAYED_HEADER } from "../runtime/rpc/headers.js";

/** Stores a key's response ($3) and unlocks it. */
const COMPLETE = "UPDATE idempotency_keys SET response = $3, locked_until = NULL WHERE merchant_id = $1 AND key = $2";


interface StoredError {
  code: Code;
  message: string;
  reason: string;
  field: string;
  metadata: Record<string, string>;
}

/**
 * A key this request holds. The request's own last write may store the response with its
 * outcome (PaymentStore.transition does, given a KeyCompletion): one statement fewer, and no
 * moment where the outcome is written but the key still says "in progress".
 */
export interface ClaimedKey {
  merchantId: string;
  key: string;
  /** Set by the write that stored the response; run() then has nothing left to write. */
  responseStored: boolean;
}

/**
 * A request's first write, made in the claim's own statement when the key is new: CTEs given
 * the scope a new key gets, the number of their first parameter and the FROM clause yielding
 * one row exactly when the key is new; the CTE named `first` yields a row when it wrote.
 */
export type FirstWrite = (scope: string, firstParam: number, from: string) => { ctes: string; params: unknown[] };

export interface IdempotencyOptions {
  /** How long a key is remembered. */
  retentionMs: number;
  /** How long a request may hold its key before a retry may take it over (a crashed process). */
  lockMs: number;
  now: () => Date;
}

export class IdempotencyKeys {
  constructor(
    private readonly db: Database,
    private readonly opts: IdempotencyOptions,
  ) {}

  /**
   * Runs `fn` once per (merchant, key). `request` identifies the request (its canonical
   * fingerprint input); `schema` is the response type, stored to replay.
   */
  async run<S extends DescMessage>(
    merchantId: string,
    key: string,
    request: unknown,
    schema: S,
    /**
     * `scope` names this use of the key (merchant, key, when first claimed) and stays the
     * same when a retry takes over from an attempt that died; undefined without a key. A
     * write that derives its ids from it finds what the dead attempt already created.
     * `claimed` is the key (undefined without one), for a write that stores the response;
     * `firstWritten` says whether `firstWrite` was made with the claim.
     */
    fn: (scope: string | undefined, claimed: ClaimedKey | undefined, firstWritten: boolean) => Promise<MessageShape<S>>,
    firstWrite?: FirstWrite,
    /**
     * Whether a response is final and may be kept for the key (all are, unless told). One
     * that is not (a payment paused half-way) is answered but not kept: a retry sees how the
     * work stands then, never a frozen intermediate answer.
     */
    final: (response: MessageShape<S>) => boolean = () => true,
  ): Promise<{ response: MessageShape<S>; replayed: boolean }> {
    if (key === "") return { response: await fn(undefined, undefined, false), replayed: false };
    if (key.length > 255) throw invalidArgument("INVALID_IDEMPOTENCY_KEY", IDEMPOTENCY_HEADER, `${IDEMPOTENCY_HEADER}: at most 255 characters`);
    const hash = createHash("sha256").update(JSON.stringify(request, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v))).digest("hex");
    const now = this.opts.now();
    const lockedUntil = new Date(now.getTime() + this.opts.lockMs);
    // Taking over an attempt that died (same request, no result, lock run out) keeps the
    // key's created_at: the scope stays the same. An expired key starts afresh.
    const scope = (createdAt: Date) => `${merchantId}\u0000${key}\u0000${createdAt.toISOString()}`;
    // A new key (or an expired one starting afresh) gets created_at = now ($5): only then is
    // the first write made, in the scope that key has.
    const write = firstWrite?.(scope(now), 7, "FROM claim WHERE claim.created_at = $5");
    const claimed = await this.db.query<{ created_at: Date; first_written: boolean }>(
      `WITH claim AS (
         INSERT INTO idempotency_keys (merchant_id, key, request_hash, locked_until, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (merchant_id, key) DO UPDATE
           SET request_hash = EXCLUDED.request_hash, response = NULL, error = NULL, locked_until = EXCLUDED.locked_until,
               created_at = CASE WHEN idempotency_keys.expires_at <= $5 THEN EXCLUDED.created_at ELSE idempotency_keys.created_at END,
               expires_at = EXCLUDED.expires_at
           WHERE idempotency_keys.expires_at <= $5
              OR (idempotency_keys.request_hash = EXCLUDED.request_hash AND idempotency_keys.response IS NULL
                  AND idempotency_keys.error IS NULL AND idempotency_keys.locked_until <= $5)
         RETURNING created_at)${write ? `, ${write.ctes}` : ""}
       SELECT created_at, ${write ? "EXISTS (SELECT 1 FROM first)" : "false"} AS first_written FROM claim`,
      [merchantId, key, hash, lockedUntil, now, new Date(now.getTime() + this.opts.retentionMs), ...(write?.params ?? [])],
    );
    const first = claimed.rows[0];
    if (claimed.rowCount === 0 || !first) return { response: await this.replay(merchantId, key, hash, schema), replayed: true };
    try {
      const claimedKey: ClaimedKey = { merchantId, key, responseStored: false };
      const response = await fn(scope(new Date(first.created_at)), claimedKey, first.first_written);
      if (!claimedKey.responseStored) {
        if (final(response)) await this.db.query(COMPLETE, [merchantId, key, toBinary(schema, response)]);
        else await this.unlock(merchantId, key);
      }
      return { response, replayed: false };
    } catch (err) {
      const stored = storable(err);
      if (stored) {
        await this.db.query("UPDATE idempotency_keys SET error = $3, locked_until = NULL WHERE merchant_id = $1 AND key = $2", [merchantId, key, JSON.stringify(stored)]);
      } else {
        await this.unlock(merchantId, key);
      }
      throw err;
    }
  }

  /**
   * Unlocked, not forgotten: a retry of the same request runs again in the same scope (and
   * finds what this attempt may already have created).
   */
  private async unlock(merchantId: string, key: string): Promise<void> {
    await this.db.query("UPDATE idempotency_keys SET locked_until = $3 WHERE merchant_id = $1 AND key = $2 AND response IS NULL AND error IS NULL", [merchantId, key, this.opts.now()]);
  }

  /** Deletes keys past their retention; returns how many. */
  async purgeExpired(): Promise<number> {
    return (await this.db.query("DELETE FROM idempotency_keys WHERE expires_at <= $1", [this.opts.now()])).rowCount;
  }

  private async replay<S extends DescMessage>(merchantId: string, key: string, hash: string, schema: S): Promise<MessageShape<S>> {
    const { rows } = await this.db.query<{ request_hash: string; response: Uint8Array | null; error: StoredError | string | null }>(
      "SELECT request_hash, response, error FROM idempotency_keys WHERE merchant_id = $1 AND key = $2",
      [merchantId, key],
    );
    const row = rows[0];
    if (!row) throw new ConnectError("idempotency key vanished while it was read; retry", Code.Aborted);
    if (row.request_hash !== hash) {
      throw invalidArgument("IDEMPOTENCY_KEY_REUSED", IDEMPOTENCY_HEADER, `${IDEMPOTENCY_HEADER}: ${JSON.stringify(key)} was already used with a different request`);
    }
    if (row.response) return fromBinary(schema, row.response);
    if (row.error) {
      const e = typeof row.error === "string" ? (JSON.parse(row.error) as StoredError) : row.error;
      // Marked in the error's metadata: the caller sees it as a header (Connect) or trailer (gRPC).
      const marked = new Headers({ [REPLAYED_HEADER]: "true" });
      throw new ConnectError(e.message, e.code, marked, [{ desc: ErrorDetailSchema, value: create(ErrorDetailSchema, { reason: e.reason, field: e.field, metadata: e.metadata }) }]);
    }
    throw new DomainError("aborted", "IDEMPOTENCY_KEY_IN_USE", `${IDEMPOTENCY_HEADER}: a request with key ${JSON.stringify(key)} is still in progress`, IDEMPOTENCY_HEADER);
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
