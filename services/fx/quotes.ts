// Quotes, persisted: created open, then used once (before expiry) or left to expire.
import type { Database } from "../runtime/db/database.js";
import { DomainError, failedPrecondition, notFound } from "../runtime/errors.js";

export interface QuoteRecord {
  id: string;
  fromCurrency: string;
  toCurrency: string;
  amountMinor: bigint;
  convertedMinor: bigint;
  midRate: string;
  spreadBps: number;
  rate: string;
  createdAt: Date;
  expiresAt: Date;
  usedAt: Date | null;
  usedReference: string | null;
}

interface QuoteRow {
  id: string;
  from_currency: string;
  to_currency: string;
  amount_minor: bigint;
  converted_minor: bigint;
  mid_rate: string;
  spread_bps: number;
  rate: string;
  created_at: Date;
  expires_at: Date;
  used_at: Date | null;
  used_reference: string | null;
}

const fromRow = (r: QuoteRow): QuoteRecord => ({
  id: r.id,
  fromCurrency: r.from_currency,
  toCurrency: r.to_currency,
  amountMinor: r.amount_minor,
  convertedMinor: r.converted_minor,
  midRate: r.mid_rate,
  spreadBps: r.spread_bps,
  rate: r.rate,
  createdAt: r.created_at,
  expiresAt: r.expires_at,
  usedAt: r.used_at,
  usedReference: r.used_reference,
});

export class QuoteStore {
  constructor(private readonly db: Database) {}

  async insert(q: QuoteRecord): Promise<void> {
    await this.db.query(
      `INSERT INTO quotes (id, from_currency, to_currency, amount_minor, converted_minor, mid_rate, spread_bps, rate, created_at, expires_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
      [q.id, q.fromCurrency, q.toCurrency, q.amountMinor, q.convertedMinor, q.midRate, q.spreadBps, q.rate, q.createdAt, q.expiresAt],
    );
  }

  /**
   * Inserts a quote already used by its `usedReference`, once per reference: returns `q`, or
   * the quote an earlier request with that reference made when it was for the same amount and
   * currencies (a retry). Another request with the reference is ALREADY_EXISTS.
   */
  async insertUsed(q: QuoteRecord): Promise<QuoteRecord> {
    const { rowCount } = await this.db.query(
      `INSERT INTO quotes (id, from_currency, to_currency, amount_minor, converted_minor, mid_rate, spread_bps, rate, created_at, expires_at, used_at, used_reference, created_for)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)
       ON CONFLICT (created_for) WHERE created_for IS NOT NULL DO NOTHING`,
      [q.id, q.fromCurrency, q.toCurrency, q.amountMinor, q.convertedMinor, q.midRate, q.spreadBps, q.rate, q.createdAt, q.expiresAt, q.usedAt, q.usedReference],
    );
    if (rowCount > 0) return q;
    const { rows } = await this.db.query<QuoteRow>("SELECT * FROM quotes WHERE created_for = $1", [q.usedReference]);
    const earlier = fromRow(rows[0]!);
    if (earlier.fromCurrency !== q.fromCurrency || earlier.toCurrency !== q.toCurrency || earlier.amountMinor !== q.amountMinor) {
      throw new DomainError("already_exists", "QUOTE_REFERENCE_REUSED", `use_reference: ${JSON.stringify(q.usedReference)} already has a quote for another amount or currency`, "use_reference");
    }
    return earlier;
  }

  async get(id: string): Promise<QuoteRecord> {
    const { rows } = await this.db.query<QuoteRow>("SELECT * FROM quotes WHERE id = $1", [id]);
    const row = rows[0];
    if (!row) throw notFound("QUOTE_NOT_FOUND", `quote_id: no quote ${JSON.stringify(id)}`, "quote_id");
    return fromRow(row);
  }

  /**
   * Marks the quote used by `reference`, atomically: of concurrent users exactly one wins.
   * Using it again with the same reference returns it unchanged (a retried call); any other
   * use after that, or after expiry, is a FAILED_PRECONDITION naming which.
   */
  async use(id: string, reference: string, now: Date): Promise<QuoteRecord> {
    const { rows } = await this.db.query<QuoteRow>(
      `UPDATE quotes SET used_at = $3, used_reference = $2
       WHERE id = $1 AND used_at IS NULL AND expires_at > $3
       RETURNING *`,
      [id, reference, now],
    );
    if (rows[0]) return fromRow(rows[0]);
    const quote = await this.get(id);
    if (quote.usedAt && reference !== "" && quote.usedReference === reference) return quote;
    if (quote.usedAt) {
      throw failedPrecondition("QUOTE_ALREADY_USED", `quote_id: quote ${id} was already used at ${quote.usedAt.toISOString()}`, "quote_id");
    }
    throw failedPrecondition("QUOTE_EXPIRED", `quote_id: quote ${id} expired at ${quote.expiresAt.toISOString()}`, "quote_id", {
      expired_at: quote.expiresAt.toISOString(),
    });
  }
}
