/** Request header (gRPC metadata) carrying a client's idempotency key for a write. */
export const IDEMPOTENCY_HEADER = "idempotency-key";
/** Response header set when a response is the replay of an earlier request with the same key. */
export const REPLAYED_HEADER = "idempotent-replayed";
/**
 * Request header with the merchant the gateway authenticated (from the API key). Internal
 * services trust it as they trust a request's merchant_id: only the gateway is reachable
 * from outside, and it always sets this header itself.
 */
export const MERCHANT_HEADER = "paygate-merchant-id";
