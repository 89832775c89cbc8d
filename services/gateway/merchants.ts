// Merchants and API-key authentication. Keys are compared by their SHA-256, so a leaked
// database does not leak usable keys; lookups are cached briefly to keep auth off the
// database on the hot path.
import { createHash, randomBytes } from "node:crypto";
import { LRUCache } from "lru-cache";
import type { Database } from "../runtime/db/database.js";
import { DomainError } from "../runtime/errors.js";

export interface Merchant {
  id: string;
  name: string;
}

const MAX_CACHED = 10_000;

const hashKey = (key: string) => createHash("sha256").update(key).digest("hex");

/** A new random API key for a merchant: "pgk_<merchant>_<32 random hex>". */
export const newApiKey = (merchantId: string) => `pgk_${merchantId}_${randomBytes(16).toString("hex")}`;

/** Who owns an API key: its merchant, or none (an unknown or revoked key). */
interface KeyOwner {
  merchant: Merchant | undefined;
}

export class Merchants {
  /**
   * Owners by key hash, for `cacheMs` after each was read, unknown and revoked keys too:
   * bounded, whatever keys are tried. A failed read is not kept. Concurrent misses for one
   * key share one read.
   */
  private readonly owners: LRUCache<string, KeyOwner>;

  constructor(
    private readonly db: Database,
    cacheMs = 30_000,
  ) {
    this.owners = new LRUCache<string, KeyOwner>({
      max: MAX_CACHED,
      ttl: cacheMs,
      // A read evicted while in flight still answers the requests waiting for it.
      ignoreFetchAbort: true,
      fetchMethod: async (hash) => {
        const { rows } = await db.query<Merchant>(
          "SELECT m.id, m.name FROM api_keys k JOIN merchants m ON m.id = k.merchant_id WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
          [hash],
        );
        return { merchant: rows[0] };
      },
    });
  }

  /** Creates the merchant if missing and registers `apiKey` for it (both idempotent). */
  async ensure(merchant: Merchant, apiKey: string): Promise<void> {
    await this.db.transaction(async (tx) => {
      await tx.query("INSERT INTO merchants (id, name, created_at) VALUES ($1, $2, now()) ON CONFLICT (id) DO NOTHING", [merchant.id, merchant.name]);
      await tx.query("INSERT INTO api_keys (key_hash, merchant_id, prefix, created_at) VALUES ($1, $2, $3, now()) ON CONFLICT (key_hash) DO NOTHING", [
        hashKey(apiKey),
        merchant.id,
        apiKey.slice(0, 12),
      ]);
    });
  }

  /** The merchant owning `apiKey`; UNAUTHENTICATED when there is none or it is revoked. */
  async authenticate(apiKey: string | undefined): Promise<Merchant> {
    if (!apiKey) throw unauthenticated("an API key is required: send 'Authorization: Bearer <key>'");
    const merchant = (await this.owners.fetch(hashKey(apiKey)))?.merchant;
    if (!merchant) throw unauthenticated("the API key is not valid");
    return merchant;
  }
}

function unauthenticated(message: string): DomainError {
  return new DomainError("unauthenticated", "INVALID_API_KEY", message);
}

/** The key from `Authorization: Bearer <key>` or `X-Api-Key: <key>`. */
export function apiKeyFrom(header: (name: string) => string | null | undefined): string | undefined {
  const auth = header("authorization");
  if (auth) {
    const match = /^Bearer\s+(\S+)$/i.exec(auth);
    return match?.[1];
  }
  return header("x-api-key") ?? undefined;
}
