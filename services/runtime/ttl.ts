import type { Duration } from "@bufbuild/protobuf/wkt";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { invalidArgument } from "./errors.js";

/** A request's `ttl` in ms: `defaultMs` when unset, INVALID_TTL unless in (0, maxMs]. */
export function readTtl(ttl: Duration | undefined, defaultMs: number, maxMs: number): number {
  if (!ttl) return defaultMs;
  const ms = durationMs(ttl);
  if (ms <= 0 || ms > maxMs) {
    throw invalidArgument("INVALID_TTL", "ttl", `ttl: must be more than 0s and at most ${maxMs / 1000}s`, { max_seconds: String(maxMs / 1000) });
  }
  return ms;
}
