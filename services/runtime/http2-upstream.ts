// One HTTP/2 session to an upstream, opened on first use and opened again after it closes or
// the upstream sends GOAWAY (calls running on the old one finish there). Used by the unary
// transport (upstream.ts) and the gateway's relay, which also write the deadline headers of
// their calls with the encoders below.
import http2 from "node:http2";

export class Http2Upstream {
  private current: http2.ClientHttp2Session | undefined;

  constructor(private readonly url: string) {}

  session(): http2.ClientHttp2Session {
    if (this.current && !this.current.closed && !this.current.destroyed) return this.current;
    const s = http2.connect(this.url);
    s.on("error", () => {}); // every stream on it fails with the error too, and is answered there
    const forget = () => {
      if (this.current === s) this.current = undefined;
    };
    s.once("close", forget);
    s.once("goaway", forget);
    this.current = s;
    return s;
  }

  close(): void {
    this.current?.close();
    this.current = undefined;
  }
}

/**
 * The longest deadline passed on, in ms. Node.js fires a timer longer than 2^31-1 ms (about
 * 24.8 days) at once, so a longer deadline would expire immediately at the next hop; this
 * stays below that with the encoders' rounding up included.
 */
export const MAX_TIMEOUT_MS = 2_000_000_000;

/** gRPC timeout units, finest first, in nanoseconds. Minutes and hours are never needed below MAX_TIMEOUT_MS. */
const GRPC_UNITS: [unit: string, ns: number][] = [
  ["n", 1],
  ["u", 1e3],
  ["m", 1e6],
  ["S", 1e9],
];
const GRPC_MAX_VALUE = 99_999_999; // TimeoutValue is at most 8 ASCII digits

/**
 * A grpc-timeout header for the `ms` (> 0, fractions included) left of a deadline: the finest
 * unit whose value fits in 8 digits, rounded up, so time left is never sent as none.
 * 29842.03 ms is "29842030u", 4000 ms "4000000u", 0.0004 ms "400n".
 */
export function grpcTimeout(ms: number): string {
  // Whole nanoseconds, rounded up; float noise (9u parses as 0.009000000000000001 ms) is not a nanosecond more.
  const ns = Math.max(1, Math.ceil(Math.min(ms, MAX_TIMEOUT_MS) * 1e6 - 1e-3));
  const [unit, size] = GRPC_UNITS.find(([, unitNs]) => Math.ceil(ns / unitNs) <= GRPC_MAX_VALUE) ?? GRPC_UNITS[GRPC_UNITS.length - 1]!;
  return `${Math.ceil(ns / size)}${unit}`;
}

/** A connect-timeout-ms header for the `ms` (> 0, fractions included) left of a deadline: whole ms (at most 10 digits), rounded up. */
export function connectTimeout(ms: number): string {
  return String(Math.max(1, Math.ceil(Math.min(ms, MAX_TIMEOUT_MS))));
}
