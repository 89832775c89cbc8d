// HTTP/2 sessions to an upstream, shared by the unary transport (upstream.ts) and the gateway's
// relay (which also write the deadline headers of their calls with the encoders below).
//
// An upstream named by a host name gets one session per address the name resolves to, and
// calls take them in turn: behind a headless Kubernetes Service the name resolves to every
// ready replica, so each takes a share of the calls (one session to a Service's virtual IP
// would give all of them to the one replica that connection landed on). The name is resolved
// again every few seconds: a new replica gets calls within that time, a removed one is left
// (its session closed after its calls finish). A session is opened on first use and opened
// again after it closes or its server sends GOAWAY (calls running on the old one finish
// there). An upstream named by an IP address gets one session.
//
// A replica that is shutting down says GOAWAY while DNS answers (cached for up to their TTL,
// 30 s on kind and in most clusters) may still list it: an address whose server said GOAWAY,
// ended the session, or could not be reached is held out of the turn until the name no
// longer resolves to it, or for HOLD_OUT_MS (the same replica back at the same address), so
// calls are not sent to a replica that is gone. While a connection is being made, calls go to
// the connections that are up (if any), so one to an address that no longer answers holds
// no call until its connect timeout. When every address is held out (DNS still lists only
// replicas that are gone) the one held out longest is tried: the chart's minReadySeconds keeps
// a rollout from getting there. A call that never reached its replica is sent again by the
// callers (MAX_REFUSED_ATTEMPTS).
//
// Each session sends a PING every few seconds; one not answered in time ends the session (a
// peer that vanished without closing the connection would otherwise hold calls until their
// deadlines), and the next call opens a new one.
import { promises as dns } from "node:dns";
import http2 from "node:http2";
import net from "node:net";

/** How often a host name is resolved again. */
const RESOLVE_EVERY_MS = 5_000;
/** The longest an address is held out of the turn (see above). */
const HOLD_OUT_MS = 60_000;
/** A session not connected by then is given up (an address that is gone can take minutes to fail). */
const CONNECT_TIMEOUT_MS = 5_000;
/** Keep-alive: a PING this often, and the session ended when one is not answered in time. */
const PING_EVERY_MS = 15_000;
const PING_TIMEOUT_MS = 10_000;

/**
 * How many times a call is sent when it never reached its replica. A replica shutting down
 * says GOAWAY; calls this side had started but not yet sent when that arrived are refused by
 * the HTTP/2 layer here, and a connection to a replica that is gone fails before its calls
 * are sent: each goes to the next replica in turn.
 */
export const MAX_REFUSED_ATTEMPTS = 3;

/**
 * Whether `stream`, closed, never reached the upstream, so that sending it again is safe: it
 * was refused (REFUSED_STREAM guarantees that, RFC 9113 section 8.7), or it never left (its
 * connection failed before it was sent).
 */
export function wasRefused(stream: http2.ClientHttp2Stream): boolean {
  return stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM || stream.pending;
}

export interface Http2UpstreamOptions {
  resolve?: Resolver;
  resolveEveryMs?: number;
  /** How a connection to an address is opened (net.connect by default). */
  connect?: (address: string, port: number) => net.Socket;
  pingEveryMs?: number;
  pingTimeoutMs?: number;
}

export type Resolver = (host: string) => Promise<string[]>;

/** Every address of `host`, IPv4 ones only when it has any (a server may listen on one family). */
const resolveAll: Resolver = async (host) => {
  const found = (await dns.lookup(host, { all: true })).map((a) => a.address);
  const v4 = found.filter((a) => net.isIPv4(a));
  return v4.length > 0 ? v4 : found;
};

/** A session and the calls running on it. */
interface Connection {
  session: http2.ClientHttp2Session;
  calls: number;
  /** No longer taken for new calls: closed once its last call ends. */
  retired: boolean;
}

export class Http2Upstream {
  private readonly origin: string;
  private readonly port: number;
  /** Connections by address ("" for the one opened by name, before the name resolves). */
  private readonly connections = new Map<string, Connection>();
  private addresses: string[] = [];
  /** Addresses held out of the turn, with when they come back (performance.now()). */
  private readonly heldOut = new Map<string, number>();
  private turn = 0;
  /** The turn among connections that are up, for calls that skip one being made. */
  private upTurn = 0;
  private readonly timer: NodeJS.Timeout | undefined;
  private readonly pingEveryMs: number;
  private readonly pingTimeoutMs: number;
  private readonly connect: (address: string, port: number) => net.Socket;

  constructor(url: string, opts: Http2UpstreamOptions = {}) {
    this.connect = opts.connect ?? ((host, port) => net.connect({ host, port }));
    this.pingEveryMs = opts.pingEveryMs ?? PING_EVERY_MS;
    this.pingTimeoutMs = opts.pingTimeoutMs ?? PING_TIMEOUT_MS;
    const target = new URL(url);
    this.origin = target.origin;
    this.port = Number(target.port || 80);
    const host = target.hostname.replace(/^\[|\]$/g, "");
    if (net.isIP(host) !== 0) return;
    const resolve = opts.resolve ?? resolveAll;
    const refresh = () => void resolve(host).then((found) => this.use(found), () => {}); // unresolvable: calls keep going by name
    refresh();
    this.timer = setInterval(refresh, opts.resolveEveryMs ?? RESOLVE_EVERY_MS).unref();
  }

  /** A call (an HTTP/2 stream) to the next address in turn; throws when no stream can be opened. */
  request(headers: http2.OutgoingHttpHeaders): http2.ClientHttp2Stream {
    let c = this.connection(this.nextAddress());
    // A connection still being made (a new replica, or one that may be gone: DNS answers lag)
    // takes no call while another is up: the call goes there, and this one joins the turn
    // once connected.
    if (c.session.connecting) c = this.connected() ?? c;
    const stream = c.session.request(headers);
    c.calls++;
    stream.once("close", () => {
      // Closing a session while a call's HEADERS wait to be sent would refuse that call: a
      // retired session is closed only once its calls have ended.
      if (--c.calls === 0 && c.retired) c.session.close();
    });
    return stream;
  }

  /** A connection that is up, taking them in turn; undefined when there is none. */
  private connected(): Connection | undefined {
    const up = [...this.connections.values()].filter((c) => !c.session.connecting && !c.session.closed && !c.session.destroyed);
    return up.length === 0 ? undefined : up[this.upTurn++ % up.length];
  }

  private connection(address: string): Connection {
    const open = this.connections.get(address);
    if (open && !open.session.closed && !open.session.destroyed) return open;
    const s = address === "" ? http2.connect(this.origin) : http2.connect(this.origin, { createConnection: () => this.connect(address, this.port) });
    const c: Connection = { session: s, calls: 0, retired: false };
    s.on("error", () => {}); // every stream on it fails with the error too, and is answered there
    const connecting = setTimeout(() => s.destroy(new Error(`no connection within ${CONNECT_TIMEOUT_MS} ms`)), CONNECT_TIMEOUT_MS).unref();
    s.once("connect", () => clearTimeout(connecting));
    const keepAlive = setInterval(() => this.ping(s), this.pingEveryMs).unref();
    // Ended by the server or the network while still in use (this class takes a connection
    // out of the map before retiring it): the address is held out.
    const ended = () => {
      clearTimeout(connecting);
      clearInterval(keepAlive);
      if (this.connections.get(address) !== c) return;
      this.connections.delete(address);
      if (address !== "") this.heldOut.set(address, performance.now() + HOLD_OUT_MS);
    };
    s.once("close", ended);
    s.once("goaway", ended);
    this.connections.set(address, c);
    return c;
  }

  /** A PING on `s`; no answer within pingTimeoutMs ends it. */
  private ping(s: http2.ClientHttp2Session): void {
    if (s.connecting || s.closed || s.destroyed) return;
    const unanswered = setTimeout(() => s.destroy(new Error(`no PING answer within ${this.pingTimeoutMs} ms`)), this.pingTimeoutMs).unref();
    const sent = s.ping((err) => {
      clearTimeout(unanswered);
      if (err && !s.destroyed) s.destroy(err);
    });
    if (!sent) clearTimeout(unanswered); // earlier PINGs still out: their timers decide
  }

  /** The next address in turn that is not held out ("" while the name is unresolved or an IP). */
  private nextAddress(): string {
    const n = this.addresses.length;
    if (n === 0) return "";
    const now = performance.now();
    for (let i = 0; i < n; i++) {
      const address = this.addresses[this.turn++ % n]!;
      const until = this.heldOut.get(address);
      if (until === undefined) return address;
      if (until <= now) {
        this.heldOut.delete(address);
        return address;
      }
    }
    // All held out: one of them rather than none, the one held out longest (the likeliest back).
    return this.addresses.reduce((a, b) => (this.heldOut.get(b)! < this.heldOut.get(a)! ? b : a));
  }

  /** Takes the addresses a resolution found; connections to the others end once their calls have. */
  private use(found: string[]): void {
    if (found.length === 0) return;
    this.addresses = [...new Set(found)].sort();
    for (const address of this.heldOut.keys()) if (!this.addresses.includes(address)) this.heldOut.delete(address);
    for (const [address, c] of this.connections) if (!this.addresses.includes(address)) this.retire(address, c);
  }

  private retire(address: string, c: Connection): void {
    this.connections.delete(address);
    c.retired = true;
    if (c.calls === 0) c.session.close();
  }

  close(): void {
    clearInterval(this.timer);
    for (const [address, c] of this.connections) this.retire(address, c);
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
