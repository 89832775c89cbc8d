/** Request header (gRPC metadata) carrying a client's idempotency key for a write. */
export const IDEMPOTENCY_HEADER = "idempotency-key";
/** Response header set when a response is the replay of an earlier request with the same key. */
export const REPLAYED_HEADER = "idempotent-replayed";
