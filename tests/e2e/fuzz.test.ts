// Malformed input against every port of a running Paygate: the api-gateway's port (public
// RPCs, REST routes, admin routes), each service's RPC port and each admin port, in every
// protocol they speak (Connect JSON/binary unary and streaming, gRPC, gRPC-Web binary and
// text, REST, plain HTTP) over raw HTTP/1.1 (net.Socket, so nothing normalises the request)
// and HTTP/2 (node:http2, no Connect client: it would refuse to send malformed things).
//
// Every answer must be a refusal a client can act on: a 4xx, or a code such as
// INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, UNIMPLEMENTED, RESOURCE_EXHAUSTED or
// DEADLINE_EXCEEDED. Failures: a 5xx other than the documented 501 (unimplemented, unknown
// compression) and 504 (deadline), gRPC/Connect INTERNAL, UNKNOWN, UNAVAILABLE or DATA_LOSS,
// no answer within the client's timeout, a stream or connection dropped without an answer,
// and an answer showing internals (stack frames, source paths, SQL or database errors).
// Some classes have a stricter expectation: integers in non-canonical JSON form and malformed
// REST amounts are INVALID_ARGUMENT (HTTP 400).
// Afterwards every server still answers its health checks and a real call, no balance moved
// and the ledger reconciles.
//
// The requests come from fast-check with a fixed seed (PAYGATE_FUZZ_SEED overrides it), plus a
// fixed corpus of known-nasty inputs. Every failure is collected; the report groups them by
// class and shows the requests that caused them, so each is reproducible.
import { writeFileSync } from "node:fs";
import http2 from "node:http2";
import net from "node:net";
import { gzipSync } from "node:zlib";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { fromJson, toBinary, type DescMessage, type DescService, type JsonValue } from "@bufbuild/protobuf";
import { Health } from "../../services/gen/health/v1/health_pb.js";
import { FxService } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { PaymentsService } from "../../services/gen/paygate/payments/v1/payments_pb.js";
import { RiskService } from "../../services/gen/paygate/risk/v1/risk_pb.js";
import { WalletService } from "../../services/gen/paygate/wallet/v1/wallet_pb.js";
import { DEMO_MERCHANTS } from "../../services/gateway/demo.js";
import { ACME, GLOBEX, balanceOf, gatewayClients, startStack, type Stack } from "../support/stack.js";

vi.setConfig({ testTimeout: 240_000, hookTimeout: 180_000 });

const SEED = Number(process.env.PAYGATE_FUZZ_SEED ?? 20_250_611);
/** Generated requests per RPC port (the gateway gets as many again for its REST routes). */
const RUNS_PER_RPC_PORT = 550;
const RUNS_PER_ADMIN_PORT = 150;
/** A request with no complete answer by then is sent again once the others are done. */
const CLIENT_TIMEOUT_MS = 3_000;
/** A request with no complete answer by then, sent again without the load, hangs. */
const HANG_TIMEOUT_MS = 15_000;
const CONCURRENCY = 16;

const DEMO_CURRENCIES = ["usd", "eur", "gbp", "jpy", "idr", "kwd"];
const DEMO_ACCOUNTS = DEMO_MERCHANTS.flatMap((m) => DEMO_CURRENCIES.map((c) => `${m.id}_${c}`));

// ---------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------

interface Rpc {
  /** "/paygate.fx.v1.FxService/Convert" */
  path: string;
  name: string;
  input: DescMessage;
  streaming: boolean;
}

interface Target {
  name: string;
  kind: "gateway" | "rpc" | "admin";
  port: number;
  rpcs: Rpc[];
}

function rpcsOf(services: DescService[]): Rpc[] {
  return services.flatMap((s) =>
    s.methods
      // Health/Watch streams until the client leaves: it has no malformed form worth the wait.
      .filter((m) => !(s.typeName === Health.typeName && m.name === "Watch"))
      .map((m) => ({ path: `/${s.typeName}/${m.name}`, name: m.name, input: m.input, streaming: m.methodKind !== "unary" })),
  );
}

// ---------------------------------------------------------------------------------------
// Requests and answers
// ---------------------------------------------------------------------------------------

/** How an answer is read: which protocol's status it carries. */
type Reading = "connect" | "connect-stream" | "grpc" | "grpc-web" | "grpc-web-text" | "http" | "rest";

interface Request {
  method: string;
  path: string;
  headers: [string, string][];
  body: Buffer;
}

interface FuzzCase {
  /** The class of damage, e.g. "JSON integer in non-canonical form". */
  label: string;
  /** The particular form within the class, shown in the report. */
  variant: string;
  wire: "h1" | "h2";
  reading: Reading;
  request: Request;
  /** HTTP/1.1 only: these exact bytes instead of a request built from `request`. */
  raw?: Buffer;
  /** A stricter outcome than "a refusal a client can act on". */
  expectInvalidArgument?: boolean;
}

interface Sent extends FuzzCase {
  target: Target;
}

interface Answer {
  status: number | undefined;
  headers: Record<string, string>;
  trailers: Record<string, string>;
  body: Buffer;
  timedOut: boolean;
  /** Why the exchange ended without a complete answer (reset, closed, ...). */
  error: string | undefined;
  /** How long the client waited. */
  waitedMs: number;
  /** The HTTP/2 client refused to send the request (not the server's doing: skipped). */
  unsendable?: string;
  rstCode?: number;
}

/** The request as bytes on an HTTP/1.1 connection. */
function h1Bytes(target: Target, c: FuzzCase): Buffer {
  if (c.raw) return c.raw;
  const { method, path, headers, body } = c.request;
  let head = `${method} ${path} HTTP/1.1\r\nhost: 127.0.0.1:${target.port}\r\n`;
  for (const [name, value] of headers) head += `${name}: ${value}\r\n`;
  if (body.length > 0 || method === "POST" || method === "PUT") head += `content-length: ${body.length}\r\n`;
  head += "connection: close\r\n\r\n";
  return Buffer.concat([Buffer.from(head, "utf8"), body]);
}

/** Sends bytes on a fresh TCP connection and reads one HTTP/1.1 response. */
function h1Exchange(port: number, bytes: Buffer, isHead: boolean, timeoutMs: number): Promise<Answer> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    let received = Buffer.alloc(0);
    let settled = false;
    let lastError: string | undefined;
    const finish = (timedOut: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      const parsed = parseH1(received, isHead, !timedOut);
      resolve({
        status: parsed.status,
        headers: parsed.headers,
        trailers: parsed.trailers,
        body: parsed.body,
        timedOut: timedOut && !parsed.complete,
        waitedMs: timeoutMs,
        error: parsed.complete ? undefined : (lastError ?? (parsed.status === undefined ? "connection closed before a response" : "connection closed mid-response")),
      });
    };
    const timer = setTimeout(() => finish(true), timeoutMs);
    socket.on("data", (d: Buffer) => {
      received = Buffer.concat([received, d]);
      if (parseH1(received, isHead).complete) finish(false);
    });
    socket.on("error", (err) => (lastError = `socket error ${(err as NodeJS.ErrnoException).code ?? err.message}`));
    socket.on("close", () => finish(false));
    // The server may answer (413, 400) and close before a large body is written: keep reading.
    socket.write(bytes, () => {});
  });
}

interface ParsedH1 {
  complete: boolean;
  status: number | undefined;
  headers: Record<string, string>;
  trailers: Record<string, string>;
  body: Buffer;
}

/** Header lines ("name: value") into a map, repeated names joined. */
function headerLines(lines: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    out[name] = name in out ? `${out[name]}, ${value}` : value;
  }
  return out;
}

/**
 * One HTTP/1.1 response (1xx skipped) out of `buf`; complete when its framing says so, or,
 * for a body without length or chunking, when the server closed the connection (`closed`).
 */
function parseH1(buf: Buffer, isHead: boolean, closed = false): ParsedH1 {
  let offset = 0;
  for (;;) {
    const end = buf.indexOf("\r\n\r\n", offset);
    if (end < 0) return { complete: false, status: undefined, headers: {}, trailers: {}, body: Buffer.alloc(0) };
    const lines = buf.subarray(offset, end).toString("latin1").split("\r\n");
    const status = Number(/^HTTP\/\d(?:\.\d)? (\d{3})/.exec(lines[0] ?? "")?.[1] ?? NaN);
    const headers = headerLines(lines.slice(1));
    const bodyStart = end + 4;
    if (Number.isNaN(status)) return { complete: false, status: undefined, headers, trailers: {}, body: buf.subarray(bodyStart) };
    if (status >= 100 && status < 200) {
      offset = bodyStart;
      continue;
    }
    const rest = buf.subarray(bodyStart);
    if (isHead || status === 204 || status === 304) return { complete: true, status, headers, trailers: {}, body: Buffer.alloc(0) };
    if (/chunked/i.test(headers["transfer-encoding"] ?? "")) {
      const chunks: Buffer[] = [];
      let at = 0;
      for (;;) {
        const lineEnd = rest.indexOf("\r\n", at);
        if (lineEnd < 0) return { complete: false, status, headers, trailers: {}, body: Buffer.concat(chunks) };
        const size = Number.parseInt(rest.subarray(at, lineEnd).toString("latin1"), 16);
        if (Number.isNaN(size)) return { complete: false, status, headers, trailers: {}, body: Buffer.concat(chunks) };
        if (size === 0) {
          // The last chunk, then trailer lines, then an empty line.
          const trailerEnd = rest.indexOf("\r\n\r\n", lineEnd);
          const emptyTrailers = rest.subarray(lineEnd, lineEnd + 4).toString("latin1") === "\r\n\r\n";
          if (trailerEnd < 0 && !emptyTrailers) return { complete: false, status, headers, trailers: {}, body: Buffer.concat(chunks) };
          const trailers = emptyTrailers ? {} : headerLines(rest.subarray(lineEnd + 2, trailerEnd).toString("latin1").split("\r\n"));
          return { complete: true, status, headers, trailers, body: Buffer.concat(chunks) };
        }
        if (rest.length < lineEnd + 2 + size + 2) return { complete: false, status, headers, trailers: {}, body: Buffer.concat(chunks) };
        chunks.push(rest.subarray(lineEnd + 2, lineEnd + 2 + size));
        at = lineEnd + 2 + size + 2;
      }
    }
    const length = headers["content-length"];
    if (length !== undefined) {
      const n = Number(length);
      return { complete: rest.length >= n, status, headers, trailers: {}, body: rest.subarray(0, n) };
    }
    return { complete: closed, status, headers, trailers: {}, body: rest };
  }
}

/** Sends the request on a fresh HTTP/2 connection and reads the answer, trailers included. */
function h2Exchange(port: number, c: FuzzCase, timeoutMs: number): Promise<Answer> {
  return new Promise((resolve) => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    let settled = false;
    let status: number | undefined;
    let headers: Record<string, string> = {};
    let trailers: Record<string, string> = {};
    const chunks: Buffer[] = [];
    let ended = false;
    let error: string | undefined;
    let stream: http2.ClientHttp2Stream | undefined;
    const finish = (timedOut: boolean, unsendable?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const rstCode = stream?.rstCode;
      stream?.destroy();
      session.destroy();
      const complete = status !== undefined && ended;
      resolve({
        status,
        headers,
        trailers,
        body: Buffer.concat(chunks),
        timedOut: timedOut && !complete,
        waitedMs: timeoutMs,
        error: complete ? undefined : (error ?? (status === undefined ? `stream closed before a response (RST_STREAM code ${rstCode ?? "none"})` : `stream closed mid-response (RST_STREAM code ${rstCode ?? "none"})`)),
        ...(unsendable ? { unsendable } : {}),
        ...(rstCode ? { rstCode } : {}),
      });
    };
    const timer = setTimeout(() => finish(true), timeoutMs);
    session.on("error", (err) => {
      error ??= `session error ${(err as NodeJS.ErrnoException).code ?? err.message}`;
      finish(false);
    });
    session.on("goaway", (code) => (error ??= `GOAWAY code ${code}`));
    const out: http2.OutgoingHttpHeaders = { ":method": c.request.method, ":path": c.request.path };
    for (const [name, value] of c.request.headers) {
      const key = name.toLowerCase();
      const prior = out[key];
      out[key] = prior === undefined ? value : [...(Array.isArray(prior) ? prior : [String(prior)]), value];
    }
    try {
      stream = session.request(out, { endStream: false });
    } catch (err) {
      return finish(false, err instanceof Error ? err.message : String(err));
    }
    stream.on("response", (h) => {
      status = Number(h[":status"]);
      headers = flatHeaders(h);
    });
    stream.on("trailers", (t) => (trailers = flatHeaders(t)));
    stream.on("data", (d: Buffer) => chunks.push(d));
    stream.on("end", () => {
      ended = true;
      finish(false);
    });
    stream.on("error", (err) => (error ??= `stream error ${(err as NodeJS.ErrnoException).code ?? err.message}`));
    stream.on("close", () => finish(false));
    stream.end(c.request.body);
  });
}

function flatHeaders(h: http2.IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(h)) if (value !== undefined) out[name] = Array.isArray(value) ? value.join(", ") : String(value);
  return out;
}

async function send(c: Sent, timeoutMs = CLIENT_TIMEOUT_MS): Promise<Answer> {
  if (c.wire === "h1") return h1Exchange(c.target.port, h1Bytes(c.target, c), c.request.method === "HEAD", timeoutMs);
  return h2Exchange(c.target.port, c, timeoutMs);
}

// ---------------------------------------------------------------------------------------
// Judging an answer
// ---------------------------------------------------------------------------------------

/** gRPC codes no malformed request may get (their HTTP equivalents are 500 and 503). */
const BAD_GRPC = new Map([
  [2, "UNKNOWN"],
  [13, "INTERNAL"],
  [14, "UNAVAILABLE"],
  [15, "DATA_LOSS"],
]);
const BAD_CONNECT = new Set(["unknown", "internal", "unavailable", "data_loss"]);
/** Documented 5xx: 501 (unimplemented, unsupported compression) and 504 (deadline). */
const DOCUMENTED_5XX = new Set([501, 504]);

/** Internals an answer must never show. */
const LEAKS: [string, RegExp][] = [
  ["a stack frame", / {4}at |\bat [\w$.<>]+ \(|\bat (?:async )?(?:file:\/\/)?\/[^\s)]+:\d+:\d+/],
  ["a source path", /node_modules|file:\/\/|\/[\w.-]+\/[\w./-]*\.(?:ts|js|mjs|cjs)(?::\d+)?\b/],
  ["a JavaScript error name", /\b(?:TypeError|RangeError|ReferenceError)\b/],
  ["a Node.js error code", /\bERR_[A-Z][A-Z_]{3,}\b/],
  ["SQL", /\bSELECT\b|\bINSERT\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b|\bRETURNING\b|\bON CONFLICT\b/],
  ["a database error", /syntax error|\brelation\b|\bpg\b|pglite|SQLSTATE|byte sequence for encoding|violates .*constraint|duplicate key|invalid input syntax|\bcolumn "|out of range for type|unterminated quoted/i],
];

/** A generated text that would look like a leak when an answer echoes it (never generated). */
const looksLikeLeak = (s: string) => LEAKS.some(([, re]) => re.test(s));

interface Problem {
  /** Short and stable: what went wrong (groups the report). */
  kind: string;
  detail: string;
}

function bodyText(body: Buffer): string {
  return body.toString("utf8");
}

/** The frames of an enveloped body (gRPC-Web, Connect streaming): [flags, payload]. */
function frames(body: Buffer): [number, Buffer][] {
  const out: [number, Buffer][] = [];
  let at = 0;
  while (at + 5 <= body.length) {
    const flags = body[at]!;
    const length = body.readUInt32BE(at + 1);
    out.push([flags, body.subarray(at + 5, at + 5 + length)]);
    at += 5 + length;
  }
  return out;
}

/** grpc-web-text bodies are base64, possibly several concatenated padded chunks. */
function decodeWebText(body: Buffer): Buffer {
  const text = body.toString("latin1").replace(/\s+/g, "");
  const parts = text.match(/[^=]+=*/g) ?? [];
  return Buffer.concat(parts.map((p) => Buffer.from(p, "base64")));
}

/** gRPC status and message of an answer, from headers, trailers or a gRPC-Web trailer frame. */
function grpcStatus(c: FuzzCase, a: Answer): { code: number | undefined; message: string } {
  let fields: Record<string, string> = { ...a.headers, ...a.trailers };
  if ((c.reading === "grpc-web" || c.reading === "grpc-web-text") && fields["grpc-status"] === undefined) {
    const body = c.reading === "grpc-web-text" ? decodeWebText(a.body) : a.body;
    const trailer = frames(body).find(([flags]) => (flags & 0x80) !== 0);
    if (trailer) fields = { ...fields, ...headerLines(trailer[1].toString("utf8").split("\r\n")) };
  }
  const raw = fields["grpc-status"];
  let message = fields["grpc-message"] ?? "";
  try {
    message = decodeURIComponent(message);
  } catch {
    // left as sent
  }
  return { code: raw === undefined ? undefined : Number(raw), message };
}

/**
 * The Connect error code of an answer ("" for none): a unary error body {"code"}, a REST
 * error {"error": {"code"}}, or a streaming end-of-stream frame {"error": {"code"}}.
 */
function connectCode(c: FuzzCase, a: Answer): string {
  const codeIn = (text: string): string => {
    try {
      const json = JSON.parse(text) as { code?: unknown; error?: unknown };
      const err = json.error !== null && typeof json.error === "object" ? (json.error as { code?: unknown }) : json;
      return typeof err.code === "string" ? err.code : "";
    } catch {
      return "";
    }
  };
  if (c.reading === "connect-stream" && a.status === 200) {
    const end = frames(a.body).find(([flags]) => (flags & 0x02) !== 0);
    return end ? codeIn(end[1].toString("utf8")) : "";
  }
  return a.status === 200 ? "" : codeIn(bodyText(a.body));
}

/** Everything a client could read in an answer, for the leak check. */
function answerText(c: FuzzCase, a: Answer): string {
  const parts = [...Object.entries(a.headers), ...Object.entries(a.trailers)].map(([k, v]) => `${k}: ${v}`);
  parts.push(bodyText(a.body));
  if (c.reading === "grpc-web-text") parts.push(decodeWebText(a.body).toString("utf8"));
  const grpc = grpcStatus(c, a);
  parts.push(grpc.message);
  const details = a.trailers["grpc-status-details-bin"] ?? a.headers["grpc-status-details-bin"];
  if (details) parts.push(Buffer.from(details, "base64").toString("latin1"));
  return parts.join("\n");
}

/** Size of a request's header section as HPACK counts it (name + value + 32 per field). */
const headerSectionBytes = (c: FuzzCase) =>
  [[":method", c.request.method], [":path", c.request.path], ...c.request.headers].reduce((n, [k, v]) => n + Buffer.byteLength(k!) + Buffer.byteLength(v!) + 32, 0);

/** HTTP/2 error codes (RFC 9113 §7) by number. */
const RST_NAMES = ["NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"];
const rstName = (code: number) => `${RST_NAMES[code] ?? "code"} ${code}`;

function judge(c: FuzzCase, a: Answer): Problem[] {
  const problems: Problem[] = [];
  const summary = describeAnswer(c, a);
  if (a.timedOut) return [{ kind: `no answer within ${a.waitedMs} ms (hang)`, detail: summary }];
  if (a.status === undefined) {
    // RFC 9113: a malformed HTTP/2 request is answered RST_STREAM(PROTOCOL_ERROR) (§8.1.1), and
    // a header section larger than the server takes may be refused with a stream error (§10.5.1).
    if (c.wire === "h2" && a.rstCode === http2.constants.NGHTTP2_PROTOCOL_ERROR) return [];
    if (c.wire === "h2" && a.rstCode !== undefined && a.rstCode !== http2.constants.NGHTTP2_INTERNAL_ERROR && headerSectionBytes(c) > 64 * 1024) return [];
    return [{ kind: `dropped without an answer${a.rstCode ? ` (RST_STREAM ${rstName(a.rstCode)})` : ""}`, detail: summary }];
  }
  if (a.error !== undefined) problems.push({ kind: `answer cut off${a.rstCode ? ` (RST_STREAM ${rstName(a.rstCode)})` : ""}`, detail: summary });
  if (a.status >= 500 && !DOCUMENTED_5XX.has(a.status)) problems.push({ kind: `HTTP ${a.status}`, detail: summary });

  let invalidArgument: boolean;
  if (c.reading === "grpc" || c.reading === "grpc-web" || c.reading === "grpc-web-text") {
    const { code } = grpcStatus(c, a);
    if (code === undefined && a.status === 200 && a.error === undefined) problems.push({ kind: "no grpc-status", detail: summary });
    if (code !== undefined && BAD_GRPC.has(code)) problems.push({ kind: `grpc-status ${code} ${BAD_GRPC.get(code)}`, detail: summary });
    invalidArgument = code === 3;
  } else if (c.reading === "connect" || c.reading === "connect-stream" || c.reading === "rest") {
    const code = connectCode(c, a);
    if (BAD_CONNECT.has(code)) problems.push({ kind: `code "${code}"`, detail: summary });
    invalidArgument = code === "invalid_argument" && (c.reading === "connect-stream" || a.status === 400);
  } else {
    invalidArgument = a.status === 400;
  }
  if (c.expectInvalidArgument && !invalidArgument) problems.push({ kind: "not refused as INVALID_ARGUMENT", detail: summary });

  const text = answerText(c, a);
  for (const [what, re] of LEAKS) {
    const m = re.exec(text);
    if (m) problems.push({ kind: `leaks ${what}`, detail: `${summary}\n      leaked: ${JSON.stringify(text.slice(Math.max(0, m.index - 80), m.index + 120))}` });
  }
  return problems;
}

// ---------------------------------------------------------------------------------------
// Showing requests and answers
// ---------------------------------------------------------------------------------------

/** Printable form of bytes: JSON-escaped text when mostly text, else hex; long ones cut. */
function showBytes(b: Buffer, max = 600): string {
  if (b.length === 0) return '""';
  const head = b.subarray(0, max);
  const text = head.toString("latin1");
  const printable = text.replace(/[^\x20-\x7e\r\n\t]/g, "").length / text.length;
  const shown = printable > 0.8 ? JSON.stringify(head.toString("utf8")) : `hex:${head.toString("hex")}`;
  return b.length > max ? `${shown}…(${b.length} bytes in all)` : shown;
}

function describeRequest(c: Sent): string {
  const where = `${c.target.name} 127.0.0.1:${c.target.port}`;
  if (c.wire === "h1") return `HTTP/1.1 raw bytes to ${where}: ${showBytes(h1Bytes(c.target, c), 900)}`;
  const headers = Object.fromEntries([[":method", c.request.method], [":path", c.request.path], ...c.request.headers]);
  return `HTTP/2 to ${where}: headers ${JSON.stringify(headers).slice(0, 900)} body ${showBytes(c.request.body)}`;
}

function describeAnswer(c: FuzzCase, a: Answer): string {
  const parts: string[] = [];
  parts.push(a.status === undefined ? "no status" : `HTTP ${a.status}`);
  if (c.reading.startsWith("grpc")) {
    const g = grpcStatus(c, a);
    if (g.code !== undefined) parts.push(`grpc-status ${g.code}${BAD_GRPC.has(g.code) ? ` ${BAD_GRPC.get(g.code)}` : ""} grpc-message ${JSON.stringify(g.message.slice(0, 300))}`);
  }
  if (a.headers["content-type"]) parts.push(`content-type ${a.headers["content-type"]}`);
  const body = c.reading === "grpc-web-text" ? decodeWebText(a.body) : a.body;
  if (body.length > 0) parts.push(`body ${showBytes(body, 400)}`);
  if (a.error) parts.push(`(${a.error})`);
  if (a.rstCode) parts.push(`(RST_STREAM ${rstName(a.rstCode)})`);
  if (a.timedOut) parts.push(`(nothing complete after ${a.waitedMs} ms)`);
  return parts.join(" ");
}

// ---------------------------------------------------------------------------------------
// Building blocks of malformed input
// ---------------------------------------------------------------------------------------

/** A JSON value written as this exact text (numbers JSON.stringify cannot produce). */
class RawJson {
  constructor(readonly text: string) {}
}
type Json = JsonValue | RawJson | Json[] | { [key: string]: Json };

function jsonText(v: Json): string {
  if (v instanceof RawJson) return v.text;
  if (Array.isArray(v)) return `[${v.map(jsonText).join(",")}]`;
  if (v !== null && typeof v === "object") return `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}:${jsonText(x)}`).join(",")}}`;
  return JSON.stringify(v);
}

const clone = (v: Json): Json => (v instanceof RawJson ? v : Array.isArray(v) ? v.map(clone) : v !== null && typeof v === "object" ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, clone(x)])) : v);

/** Paths to every leaf of a JSON object. */
function leafPaths(v: Json, prefix: string[] = []): string[][] {
  if (v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof RawJson)) {
    const out = Object.entries(v).flatMap(([k, x]) => leafPaths(x, [...prefix, k]));
    return out.length > 0 ? out : [prefix];
  }
  return [prefix];
}

function setAt(v: Json, path: string[], value: Json): Json {
  if (path.length === 0) return value;
  const copy = clone(v) as { [key: string]: Json };
  let at = copy;
  for (const key of path.slice(0, -1)) {
    const next = at[key];
    if (next === null || typeof next !== "object" || Array.isArray(next) || next instanceof RawJson) at[key] = {};
    at = at[key] as { [key: string]: Json };
  }
  at[path[path.length - 1]!] = value;
  return copy;
}

const usd = (minor: string): Json => ({ currency: "USD", amount_minor: minor });

/**
 * A request each method would accept, pointing only at accounts whose balances cannot move:
 * payments from an empty account, credits to an account that does not exist, holds and
 * transfers out of the empty account. Damage is applied on top of it.
 */
function templates(fuzzSource: string, fuzzDestination: string): Record<string, { [key: string]: Json }> {
  return {
    CreatePayment: { source_account_id: fuzzSource, destination_account_id: fuzzDestination, amount: usd("100"), merchant_reference: "fuzz-ref" },
    GetPayment: { payment_id: "pay_fuzz_missing" },
    ListPayments: { page_size: 5 },
    CapturePayment: { payment_id: "pay_fuzz_missing", amount: usd("100") },
    CancelPayment: { payment_id: "pay_fuzz_missing", reason: "fuzz" },
    RefundPayment: { payment_id: "pay_fuzz_missing", amount: usd("100"), reason: "fuzz" },
    WatchPayment: { payment_id: "pay_fuzz_missing" },
    StreamPaymentEvents: { after_sequence: "0" },
    ListCurrencies: { tradable_only: true },
    GetRate: { base_currency: "USD", quote_currency: "EUR" },
    Convert: { amount: usd("100"), to_currency: "EUR" },
    CreateQuote: { amount: usd("100"), to_currency: "EUR" },
    GetQuote: { quote_id: "qt_fuzz_missing" },
    StreamRates: { base_currency: "USD", quote_currencies: ["EUR"] },
    OpenAccount: { request_id: "fuzz-open", owner_id: "fuzz", currency: "USD", account_id: "fuzz_opened" },
    GetAccount: { account_id: "acme_usd" },
    ListAccounts: { owner_id: "acme" },
    Credit: { transfer_id: "fuzz-credit", account_id: "fuzz_missing_account", amount: usd("100") },
    Reserve: { hold_id: "fuzz-hold", account_id: fuzzSource, destination_account_id: fuzzDestination, amount: usd("100") },
    Capture: { hold_id: "fuzz-hold-missing", amount: usd("100") },
    Release: { hold_id: "fuzz-hold-missing" },
    GetHold: { hold_id: "fuzz-hold-missing" },
    Transfer: { transfer_id: "fuzz-transfer", from_account_id: fuzzSource, to_account_id: fuzzDestination, amount: usd("100") },
    GetBalance: { account_id: "acme_usd" },
    ListEntries: { account_id: "acme_usd", page_size: 5 },
    Score: { payment_id: "fuzz-score", account_id: "acme_usd", amount: usd("100"), merchant_id: "acme" },
    GetDecision: { decision_id: "dec_fuzz_missing" },
    Check: { service: "" },
    List: {},
  };
}

/** Integer fields of the templates, by path, and whether they are 64-bit. */
const INTEGER_FIELDS: { path: string[]; int64: boolean }[] = [
  { path: ["amount", "amount_minor"], int64: true },
  { path: ["after_sequence"], int64: true },
  { path: ["page_size"], int64: false },
];

/**
 * Integers in JSON that are not canonical: each must be INVALID_ARGUMENT. Paygate holds its
 * 64-bit integers (money) to plain decimal digits; for 32-bit ones only what no ProtoJSON
 * reading accepts counts (some take exponents, a '+' or a trailing '.' there: `int64Only`).
 */
const NON_CANONICAL_INTEGERS: { value: Json; int64Only?: boolean }[] = [
  { value: "0x10" },
  { value: "0X1F" },
  { value: "0b11" },
  { value: "0o17" },
  { value: " 5" },
  { value: "5 " },
  { value: "\t5" },
  { value: "\n5" },
  { value: "+5", int64Only: true },
  { value: "1e3", int64Only: true },
  { value: "1E2", int64Only: true },
  { value: "5.0", int64Only: true },
  { value: "5.", int64Only: true },
  { value: ".5" },
  { value: "" },
  { value: "1_000" },
  { value: "1,000" },
  { value: "٥" },
  { value: "５" },
  { value: "5n" },
  { value: "NaN" },
  { value: "Infinity" },
  { value: "-Infinity" },
  { value: "--5" },
  { value: "9223372036854775808" },
  { value: "-9223372036854775809" },
  { value: "18446744073709551616" },
  { value: new RawJson("9007199254740993") },
  { value: new RawJson("18014398509481985") },
  { value: new RawJson("1e21") },
  { value: new RawJson("1e400") },
  { value: new RawJson("-9007199254740993") },
  { value: new RawJson("5.5") },
  { value: new RawJson("1e-3") },
];

/** The integer fields a template has, with the non-canonical forms each must refuse. */
function nonCanonicalIntegers(template: Json): { path: string[]; value: Json; variant: string }[] {
  const present = new Set(leafPaths(template).map((p) => p.join(".")));
  return INTEGER_FIELDS.filter((f) => present.has(f.path.join("."))).flatMap((f) =>
    NON_CANONICAL_INTEGERS.filter((n) => f.int64 || !n.int64Only).map((n) => ({
      path: f.path,
      value: n.value,
      variant: `${f.int64 ? "int64" : "int32"} ${f.path.join(".")} = ${n.value instanceof RawJson ? n.value.text : JSON.stringify(n.value)}`,
    })),
  );
}

/** Strings the services must take apart safely. Never text that would look like a leak. */
const NASTY_STRINGS = [
  "\u0000",
  "acme_usd\u0000",
  "\u0000acme_usd",
  "\ud800",
  "\udfff",
  "a\ud800b",
  "\udc00\ud800",
  "表",
  "PAY-表",
  "акме_usd",
  "💸",
  "\u202eusd_emca",
  "\ufeff",
  "\uffff",
  "\u0085\u2028\u2029",
  "\r\n",
  "\u0007\u001b[31m",
  "'\"\\",
  "%00",
  "%ZZ",
  "../../etc/passwd",
  "${jndi:x}",
  "' OR '1'='1",
  "acme_usd'--",
  "acme_usd; DROP TABLE x",
  "\\x00",
  "é".normalize("NFD"),
  " acme_usd ",
];

const nastyText: fc.Arbitrary<string> = fc
  .oneof(
    { weight: 4, arbitrary: fc.constantFrom(...NASTY_STRINGS) },
    { weight: 2, arbitrary: fc.string({ unit: "binary", maxLength: 24 }) },
    { weight: 1, arbitrary: fc.string({ unit: "grapheme", maxLength: 24 }) },
    { weight: 1, arbitrary: fc.string({ unit: fc.integer({ min: 0, max: 0x1f }).map((n) => String.fromCharCode(n)), minLength: 1, maxLength: 8 }) },
    // Lone and reversed surrogates mixed into text.
    { weight: 1, arbitrary: fc.array(fc.integer({ min: 0xd800, max: 0xdfff }), { minLength: 1, maxLength: 4 }).map((cs) => `id_${String.fromCharCode(...cs)}`) },
    { weight: 1, arbitrary: fc.integer({ min: 256, max: 70_000 }).map((n) => "x".repeat(n)) },
  )
  .filter((s) => !looksLikeLeak(s));

/** 8 MiB of spaces, gzipped to a few KiB: decompression must stop at the size limit. */
const GZIP_BOMB = gzipSync(Buffer.alloc(8 << 20, 0x20));

const envelope = (flags: number, payload: Buffer, declared = payload.length): Buffer => {
  const head = Buffer.alloc(5);
  head.writeUInt8(flags, 0);
  head.writeUInt32BE(declared >>> 0, 1);
  return Buffer.concat([head, payload]);
};

/** Protobuf wire bytes no message decodes (or decodes only by luck). */
function binaryDamage(valid: Buffer): fc.Arbitrary<{ variant: string; bytes: Buffer }> {
  const b = (variant: string, ...bytes: number[]) => ({ variant, bytes: Buffer.from(bytes) });
  return fc.oneof(
    fc.constantFrom(
      b("ff ff ff 01 02", 0xff, 0xff, 0xff, 0x01, 0x02),
      b("varint overflow", 0x08, ...new Array<number>(11).fill(0xff)),
      b("field number 0", 0x00, 0x01),
      b("length past the end", 0x0a, 0x7f, 0x61),
      b("length-delimited length overflow", 0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f),
      b("invalid UTF-8 in a string field", 0x0a, 0x02, 0xc3, 0x28),
      b("UTF-8 encoded surrogate in a string field", 0x0a, 0x03, 0xed, 0xa0, 0x80),
      b("NUL in a string field", 0x0a, 0x03, 0x61, 0x00, 0x62),
      b("wrong wire type for a string field", 0x0d, 0x01, 0x02, 0x03, 0x04),
      b("unterminated group", 0x0b, 0x08, 0x01),
      b("stray end-group tag", 0x0c),
      b("reserved wire type 6", 0x0e, 0x01),
      b("reserved wire type 7", 0x0f, 0x01),
      b("message field holding garbage", 0x1a, 0x03, 0xff, 0xff, 0xff),
      b("truncated tag", 0x80),
    ),
    fc.uint8Array({ minLength: 1, maxLength: 64 }).map((bytes) => ({ variant: "random bytes", bytes: Buffer.from(bytes) })),
    fc.integer({ min: 1, max: Math.max(1, valid.length - 1) }).map((n) => ({ variant: "valid message truncated", bytes: valid.subarray(0, n) })),
    fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })).map(([at, x]) => {
      const copy = Buffer.from(valid.length > 0 ? valid : Buffer.from([0x0a, 0x00]));
      copy[at % copy.length] = copy[at % copy.length]! ^ x;
      return { variant: "valid message with a byte flipped", bytes: copy };
    }),
  );
}

interface JsonDamage {
  variant: string;
  body: Buffer;
  expectInvalidArgument: boolean;
}

/** JSON request bodies damaged in every way a client can damage them. */
function jsonDamage(template: { [key: string]: Json }): fc.Arbitrary<JsonDamage> {
  const paths = leafPaths(template).filter((p) => p.length > 0);
  const stringPaths = paths.length > 0 ? paths : [["id"]];
  const integers = nonCanonicalIntegers(template);
  const text = jsonText(template);
  const body = (variant: string, t: string, expectInvalidArgument = false): JsonDamage => ({ variant, body: Buffer.from(t, "utf8"), expectInvalidArgument });
  const arbitraries: fc.Arbitrary<JsonDamage>[] = [
    fc.tuple(fc.constantFrom(...stringPaths), nastyText).map(([p, s]) => body(`nasty string in ${p.join(".")}`, jsonText(setAt(template, p, s)))),
    fc
      .tuple(
        fc.constantFrom(...stringPaths),
        fc.constantFrom<Json>(0, -1, 1.5, true, false, null, [], {}, ["x"], { x: 1 }, new RawJson("1e999"), "x".repeat(10)),
      )
      .map(([p, v]) => body(`wrong type in ${p.join(".")}`, jsonText(setAt(template, p, v)))),
    fc.integer({ min: 1, max: Math.max(1, text.length - 1) }).map((n) => body("truncated JSON", text.slice(0, n), true)),
    fc.constantFrom(
      body("empty body", ""),
      body("null", "null"),
      body("array", "[]"),
      body("string", '"x"'),
      body("number", "1"),
      body("not JSON", "{garbage", true),
      body("single quotes", "{'a':1}", true),
      body("trailing comma", `${text.slice(0, -1)},}`, true),
      body("comment", `/* c */${text}`, true),
      body("NUL byte in the JSON text", `${text.slice(0, 1)}\u0000${text.slice(1)}`, true),
      body("unknown field", `${text.slice(0, -1)}${text.length > 2 ? "," : ""}"zz_unknown":1}`),
      body("duplicate key of another type", `${text.slice(0, -1)}${text.length > 2 ? "," : ""}"${stringPaths[0]![0]}":{"a":[1]}}`),
      body("deeply nested arrays", `{"${stringPaths[0]![0]}":${"[".repeat(50_000)}${"]".repeat(50_000)}}`),
      body("deeply nested objects", `${'{"a":'.repeat(20_000)}1${"}".repeat(20_000)}`),
      body("lone surrogate escape in a key", `{"\\ud800":1}`),
      body("invalid escape", `{"${stringPaths[0]![0]}":"\\x41"}`, true),
      body("unterminated string", `{"${stringPaths[0]![0]}":"abc`, true),
      body("BOM before JSON", `\ufeff${text}`),
    ),
    fc.uint8Array({ minLength: 1, maxLength: 48 }).map((bytes) => ({ variant: "random bytes as JSON", body: Buffer.from(bytes), expectInvalidArgument: false })),
    fc.constant({
      variant: "invalid UTF-8 in a string",
      body: Buffer.concat([Buffer.from(`{"${stringPaths[0]![0]}":"`), Buffer.from([0xc3, 0x28, 0xff]), Buffer.from('"}')]),
      expectInvalidArgument: false,
    }),
  ];
  if (integers.length > 0) {
    arbitraries.push(fc.constantFrom(...integers).map((n) => body(n.variant, jsonText(setAt(template, n.path, n.value)), true)));
  }
  return fc.oneof(...arbitraries);
}

const BAD_TIMEOUTS_GRPC = ["0m", "1n", "99999999999m", "abc", "1.5m", "-1m", "1", "m", "1x", "123456789S", " 1m", "1m ", "0x10m", "１m", "1e3m", ""];
const BAD_TIMEOUTS_CONNECT = ["abc", "-1", "1.5", "99999999999", "0x10", " 5", "1e3", "", "+5", "99999999999999999999"];

/** Request headers (gRPC metadata) a client can garble; a request carries one set. */
const METADATA_DAMAGE: [string, string][][] = [
  [["idempotency-key", "\u00e9t\u00e9"]],
  [["idempotency-key", ""]],
  [["idempotency-key", "k".repeat(5000)]],
  [["idempotency-key", "a\u0000b"]],
  [["x-trace-bin", "!!!not base64"]],
  [["grpc-status-details-bin", "zz"]],
  [["traceparent", `00-${"z".repeat(32)}-${"z".repeat(16)}-01`]],
  [["traceparent", `ff-${"0".repeat(32)}-${"0".repeat(16)}-01`]],
  [["traceparent", "garbage"], ["tracestate", "=,=,="]],
  [["tracestate", "a=".repeat(2000)]],
  [["paygate-merchant-id", "globex"]],
  [["paygate-merchant-id", "\u00e9"]],
  [["authorization", "Bearer"]],
  [["authorization", "Bearer  "]],
  [["authorization", `Bearer ${"k".repeat(9000)}`]],
  [["authorization", "Bearer pgk_\u00e9"]],
  [["authorization", `Bearer ${ACME.apiKey} extra`]],
  [["authorization", `Bearer ${ACME.apiKey}`], ["authorization", `Bearer ${GLOBEX.apiKey}`]],
  [["x-api-key", ""]],
  [["grpc-accept-encoding", "zz, ,,gzip;q=x"]],
  [["accept-encoding", "br;q=abc"]],
  [["connect-accept-encoding", "zstd"]],
];

const showMetadata = (m: [string, string][]) => JSON.stringify(m).slice(0, 120);

const auth = (key: string | undefined): [string, string][] => (key === undefined ? [] : [["authorization", `Bearer ${key}`]]);

/** Who a request claims to be: the demo merchant's key (or, inside, its merchant header), none, or a wrong key. */
type Caller = "merchant" | "anonymous" | "wrong-key";
const callers = fc.constantFrom<Caller>("merchant", "merchant", "anonymous", "wrong-key");

/** What identifies the caller on a target: an API key on the gateway, the merchant header inside. */
function callerHeaders(target: Target, caller: Caller): [string, string][] {
  if (target.kind === "gateway") return caller === "merchant" ? auth(ACME.apiKey) : caller === "wrong-key" ? auth("pgk_not_a_key") : [];
  if (target.name === "payments" && caller === "merchant") return [["paygate-merchant-id", ACME.id]];
  return [];
}

// ---------------------------------------------------------------------------------------
// Generators, one per protocol
// ---------------------------------------------------------------------------------------

interface Context {
  templates: Record<string, { [key: string]: Json }>;
  fuzzSource: string;
  fuzzDestination: string;
}

function templateOf(ctx: Context, rpc: Rpc): { json: { [key: string]: Json }; binary: Buffer } {
  const json = ctx.templates[rpc.name] ?? {};
  return { json, binary: Buffer.from(toBinary(rpc.input, fromJson(rpc.input, JSON.parse(jsonText(json)) as JsonValue))) };
}

const unaryRpcs = (t: Target) => t.rpcs.filter((r) => !r.streaming);

/** Connect unary calls: damaged JSON and binary bodies, encodings, content types, timeouts, GET. */
function connectUnaryCases(target: Target, ctx: Context): fc.Arbitrary<FuzzCase> {
  return fc.constantFrom(...unaryRpcs(target)).chain((rpc) => {
    const t = templateOf(ctx, rpc);
    const base = (caller: Caller): [string, string][] => [...callerHeaders(target, caller), ["connect-protocol-version", "1"]];
    const wire = fc.constantFrom<"h1" | "h2">("h1", "h2");
    const post = (wireKind: "h1" | "h2", headers: [string, string][], body: Buffer) => ({ wire: wireKind, reading: "connect" as const, request: { method: "POST", path: rpc.path, headers, body } });
    return fc.oneof(
      { weight: 5, arbitrary: fc.tuple(wire, jsonDamage(t.json), callers).map(([w, d, caller]) => ({
        label: "Connect JSON body damaged",
        variant: d.variant,
        ...post(w, [...base(caller), ["content-type", "application/json"]], d.body),
        expectInvalidArgument: d.expectInvalidArgument && caller === "merchant",
      })) },
      { weight: 3, arbitrary: fc.tuple(wire, binaryDamage(t.binary), callers).map(([w, d, caller]) => ({
        label: "Connect binary body undecodable",
        variant: d.variant,
        ...post(w, [...base(caller), ["content-type", "application/proto"]], d.bytes),
      })) },
      { weight: 2, arbitrary: fc
        .tuple(
          wire,
          fc.constantFrom(
            { variant: "gzip declared, 1 byte body", encoding: "gzip", body: Buffer.from([0x1f]) },
            { variant: "gzip declared, plain JSON body", encoding: "gzip", body: Buffer.from(jsonText(t.json)) },
            { variant: "gzip declared, truncated gzip", encoding: "gzip", body: gzipSync(Buffer.from(jsonText(t.json))).subarray(0, 12) },
            { variant: "gzip of 8 MiB of spaces (bomb)", encoding: "gzip", body: GZIP_BOMB },
            { variant: "gzip of garbage", encoding: "gzip", body: gzipSync(Buffer.from([0xff, 0xfe, 0x00, 0x01])) },
            { variant: "br declared, garbage", encoding: "br", body: Buffer.from([0xff, 0xff, 0xff]) },
            { variant: "unknown encoding zstd", encoding: "zstd", body: Buffer.from(jsonText(t.json)) },
            { variant: "unknown encoding foo", encoding: "foo", body: Buffer.from(jsonText(t.json)) },
            { variant: "encoding list", encoding: "gzip, identity", body: Buffer.from(jsonText(t.json)) },
            { variant: "encoding GZIP upper case, garbage", encoding: "GZIP", body: Buffer.from([0x00]) },
            { variant: "empty encoding", encoding: "", body: Buffer.from(jsonText(t.json)) },
          ),
          callers,
        )
        .map(([w, e, caller]) => ({
          label: "Connect content encoding damaged",
          variant: e.variant,
          ...post(w, [...base(caller), ["content-type", "application/json"], ["content-encoding", e.encoding]], e.body),
        })) },
      { weight: 2, arbitrary: fc
        .tuple(
          wire,
          fc.constantFrom(
            "text/plain",
            "application/xml",
            "application/json; charset=latin1",
            "application/json; charset=utf-16",
            "application/jsonx",
            "application/proto; proto=x",
            "multipart/form-data; boundary=x",
            "application/x-www-form-urlencoded",
            "",
            "application/connect+json",
            "application/grpc",
            "*/*",
            "application/json\u0000",
          ),
          callers,
        )
        .map(([w, type, caller]) => ({
          label: "Connect request with a wrong content type",
          variant: JSON.stringify(type),
          ...post(w, [...base(caller), ...(type === "" ? [] : ([["content-type", type]] as [string, string][]))], Buffer.from(jsonText(t.json))),
        })) },
      { weight: 1, arbitrary: fc.tuple(wire, fc.constantFrom(...BAD_TIMEOUTS_CONNECT), callers).map(([w, timeout, caller]) => ({
        label: "Connect timeout header malformed",
        variant: JSON.stringify(timeout),
        ...post(w, [...base(caller), ["content-type", "application/json"], ["connect-timeout-ms", timeout]], Buffer.from(jsonText(t.json))),
      })) },
      { weight: 1, arbitrary: fc.tuple(wire, fc.constantFrom(...METADATA_DAMAGE), callers).map(([w, metadata, caller]) => ({
        label: "Connect request headers damaged",
        variant: showMetadata(metadata),
        ...post(w, [...base(caller), ["content-type", "application/json"], ...metadata], Buffer.from(jsonText(t.json))),
      })) },
      { weight: 1, arbitrary: fc.tuple(wire, fc.constantFrom("2", "0", "", "1.0", "v1", "abc")).map(([w, version]) => ({
        label: "Connect protocol version wrong",
        variant: JSON.stringify(version),
        ...post(w, [...callerHeaders(target, "merchant"), ["connect-protocol-version", version], ["content-type", "application/json"]], Buffer.from(jsonText(t.json))),
      })) },
      { weight: 1, arbitrary: fc.tuple(wire, fc.integer({ min: (1 << 20) + 1, max: (1 << 20) + 300_000 }), fc.constantFrom("application/json", "application/proto")).map(([w, size, type]) => ({
        label: "Connect body over the size limit",
        variant: `${type}, ${size} bytes`,
        ...post(w, [...base("merchant"), ["content-type", type]], type === "application/json" ? Buffer.from(`{"${Object.keys(t.json)[0] ?? "x"}":"${"x".repeat(size)}"}`) : longStringMessage(size)),
      })) },
      { weight: 2, arbitrary: fc
        .tuple(
          wire,
          fc.constantFrom(
            "encoding=json&message=%ZZ",
            "encoding=json&message={",
            "encoding=proto&base64=1&message=!!!",
            "encoding=proto&message=%FF%FF%FF%01%02",
            "encoding=xml&message=%7B%7D",
            "encoding=json&message=%7B%7D&compression=gzip",
            "encoding=json&message=%7B%7D&compression=zstd",
            "encoding=json&message=%7B%7D&connect=v2",
            "encoding=json&message=%7B%22a%22%3A%22%00%22%7D&connect=v1",
            "message=%7B%7D",
            "encoding=json",
            "encoding=json&message=%7B%7D&base64=maybe",
            "%",
          ),
        )
        .map(([w, query]) => ({
          label: "Connect GET with a malformed query",
          variant: query,
          wire: w,
          reading: "connect" as const,
          request: { method: "GET", path: `${rpc.path}?${query}`, headers: callerHeaders(target, "merchant"), body: Buffer.alloc(0) },
        })) },
    );
  });
}

/** A protobuf message whose field 1 is a string of `size` bytes. */
function longStringMessage(size: number): Buffer {
  return Buffer.concat([Buffer.from([0x0a]), varint(size), Buffer.alloc(size, 0x61)]);
}

function varint(n: number): Buffer {
  const out: number[] = [];
  let v = n;
  while (v > 0x7f) {
    out.push((v & 0x7f) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return Buffer.from(out);
}

interface EnvelopeDamage {
  variant: string;
  body: Buffer;
  headers: [string, string][];
  /** Whether no server may read a message out of it (safe to send to a streaming method). */
  unreadable: boolean;
}

/** Envelopes (gRPC, gRPC-Web, Connect streaming) damaged in their framing or content. */
function envelopeDamage(valid: Buffer, encodingHeader: string): fc.Arbitrary<EnvelopeDamage> {
  const d = (variant: string, body: Buffer, unreadable: boolean, headers: [string, string][] = []): EnvelopeDamage => ({ variant, body, headers, unreadable });
  const validEnvelope = envelope(0, valid);
  return fc.oneof(
    fc.constantFrom(
      d("compressed flag without an encoding", envelope(1, valid), true),
      d("compressed flag, identity encoding", envelope(1, valid), true, [[encodingHeader, "identity"]]),
      d("gzip encoding, payload not gzip (1 byte)", envelope(1, Buffer.from([0x1f])), true, [[encodingHeader, "gzip"]]),
      d("gzip encoding, truncated gzip", envelope(1, gzipSync(valid).subarray(0, 10)), true, [[encodingHeader, "gzip"]]),
      d("unknown encoding zstd, compressed flag", envelope(1, valid), true, [[encodingHeader, "zstd"]]),
      d("unknown encoding foo", validEnvelope, false, [[encodingHeader, "foo"]]),
      d("gzip bomb (8 MiB of spaces)", envelope(1, GZIP_BOMB), true, [[encodingHeader, "gzip"]]),
      d("empty body", Buffer.alloc(0), true),
      d("length prefix 2^32-1", envelope(0, valid, 0xffffffff), true),
      d("length prefix 2^31", envelope(0, valid, 0x80000000), true),
      d("two messages on one request", Buffer.concat([validEnvelope, validEnvelope]), false),
      d("trailer flag 0x80 on a request", envelope(0x80, valid), false),
      d("end-stream flag 0x02 on a request", envelope(0x02, valid), false),
      d("all flag bits set", envelope(0xff, valid), true),
      d("flag bits 0x7e", envelope(0x7e, valid), false),
    ),
    fc.integer({ min: 1, max: 4 }).map((n) => d(`truncated envelope header (${n} of 5 bytes)`, validEnvelope.subarray(0, n), true)),
    fc.integer({ min: 1, max: 100_000 }).map((extra) => d("length prefix beyond the data", envelope(0, valid, valid.length + extra), true)),
    fc.integer({ min: 1, max: 64 }).map((short) => d("length prefix short of the data", envelope(0, valid, Math.max(0, valid.length - short)), false)),
    binaryDamage(valid).map((b) => d(`garbage protobuf in a valid envelope: ${b.variant}`, envelope(0, b.bytes), false)),
  );
}

/** gRPC over HTTP/2 (and, wrongly, over HTTP/1.1). */
function grpcCases(target: Target, ctx: Context): fc.Arbitrary<FuzzCase> {
  return fc.constantFrom(...target.rpcs).chain((rpc) => {
    const t = templateOf(ctx, rpc);
    const headers = (caller: Caller, type = "application/grpc"): [string, string][] => [...callerHeaders(target, caller), ["content-type", type], ["te", "trailers"]];
    const call = (label: string, variant: string, hs: [string, string][], body: Buffer, expectInvalidArgument = false): FuzzCase => ({
      label,
      variant,
      wire: "h2",
      reading: "grpc",
      request: { method: "POST", path: rpc.path, headers: hs, body },
      expectInvalidArgument,
    });
    const damaged = envelopeDamage(t.binary, "grpc-encoding").filter((e) => !rpc.streaming || e.unreadable);
    const options: fc.Arbitrary<FuzzCase>[] = [
      fc.tuple(damaged, callers).map(([e, caller]) => call("gRPC envelope damaged", e.variant, [...headers(caller), ...e.headers], e.body)),
    ];
    if (!rpc.streaming) {
      options.push(
        fc.tuple(fc.constantFrom(...BAD_TIMEOUTS_GRPC), callers).map(([timeout, caller]) =>
          call("gRPC timeout header malformed", JSON.stringify(timeout), [...headers(caller), ["grpc-timeout", timeout]], envelope(0, t.binary)),
        ),
        fc.tuple(jsonDamage(t.json), callers).map(([d, caller]) =>
          call("gRPC JSON (application/grpc+json) message damaged", d.variant, headers(caller, "application/grpc+json"), envelope(0, d.body), d.expectInvalidArgument && caller === "merchant"),
        ),
        fc.tuple(fc.constantFrom(...METADATA_DAMAGE), callers).map(([metadata, caller]) =>
          call("gRPC metadata damaged", showMetadata(metadata), [...headers(caller), ...metadata], envelope(0, t.binary)),
        ),
        fc.constantFrom("application/grpc+xml", "application/grpc+", "application/grpc; charset=x", "application/grpc+proto+json").map((type) =>
          call("gRPC with an unknown codec", type, headers("merchant", type), envelope(0, t.binary)),
        ),
        fc.constant({ ...call("gRPC over HTTP/1.1", "valid envelope", headers("merchant"), envelope(0, t.binary)), wire: "h1" as const }),
      );
    }
    return fc.oneof(...options);
  });
}

/** gRPC-Web, binary and text, over HTTP/1.1 and HTTP/2. */
function grpcWebCases(target: Target, ctx: Context): fc.Arbitrary<FuzzCase> {
  return fc.constantFrom(...target.rpcs).chain((rpc) => {
    const t = templateOf(ctx, rpc);
    const damaged = envelopeDamage(t.binary, "grpc-encoding").filter((e) => !rpc.streaming || e.unreadable);
    const textForms = fc.constantFrom(
      { variant: "invalid base64 characters", text: "!!!!****", unreadable: true },
      { variant: "base64 of a truncated envelope", text: envelope(0, t.binary).subarray(0, 3).toString("base64"), unreadable: true },
      { variant: "base64 padding in the middle", text: `AA==${envelope(0, t.binary).toString("base64")}`, unreadable: false },
      { variant: "base64 cut mid-quantum", text: envelope(0, t.binary).toString("base64").slice(0, 7), unreadable: true },
      { variant: "base64url alphabet", text: envelope(0, Buffer.from([0xfb, 0xff, 0xbf])).toString("base64url"), unreadable: false },
      { variant: "binary bytes as text", text: "\u0000\u0001\u00ff", unreadable: true },
    );
    const options: fc.Arbitrary<FuzzCase>[] = [
      fc
        .tuple(fc.constantFrom<"h1" | "h2">("h1", "h2"), damaged, fc.constantFrom("application/grpc-web+proto", "application/grpc-web"), callers)
        .map(([wire, e, type, caller]) => ({
          label: "gRPC-Web envelope damaged",
          variant: e.variant,
          wire,
          reading: "grpc-web" as const,
          request: { method: "POST", path: rpc.path, headers: [...callerHeaders(target, caller), ["content-type", type], ["x-grpc-web", "1"], ...e.headers] as [string, string][], body: e.body },
        })),
      fc
        .tuple(fc.constantFrom<"h1" | "h2">("h1", "h2"), fc.oneof(damaged.map((e) => ({ variant: `base64 of: ${e.variant}`, text: e.body.toString("base64"), unreadable: e.unreadable, headers: e.headers })), textForms.map((f) => ({ ...f, headers: [] as [string, string][] }))), callers)
        .filter(([, f]) => !rpc.streaming || f.unreadable)
        .map(([wire, f, caller]) => ({
          label: "gRPC-Web text body damaged",
          variant: f.variant,
          wire,
          reading: "grpc-web-text" as const,
          request: { method: "POST", path: rpc.path, headers: [...callerHeaders(target, caller), ["content-type", "application/grpc-web-text"], ...f.headers] as [string, string][], body: Buffer.from(f.text, "latin1") },
        })),
    ];
    if (!rpc.streaming) {
      options.push(
        fc.tuple(fc.constantFrom<"h1" | "h2">("h1", "h2"), fc.constantFrom(...BAD_TIMEOUTS_GRPC)).map(([wire, timeout]) => ({
          label: "gRPC-Web timeout header malformed",
          variant: JSON.stringify(timeout),
          wire,
          reading: "grpc-web" as const,
          request: { method: "POST", path: rpc.path, headers: [...callerHeaders(target, "merchant"), ["content-type", "application/grpc-web+proto"], ["grpc-timeout", timeout]] as [string, string][], body: envelope(0, t.binary) },
        })),
        fc.tuple(fc.constantFrom<"h1" | "h2">("h1", "h2"), jsonDamage(t.json)).map(([wire, d]) => ({
          label: "gRPC-Web JSON message damaged",
          variant: d.variant,
          wire,
          reading: "grpc-web" as const,
          request: { method: "POST", path: rpc.path, headers: [...callerHeaders(target, "merchant"), ["content-type", "application/grpc-web+json"]] as [string, string][], body: envelope(0, d.body) },
          expectInvalidArgument: d.expectInvalidArgument,
        })),
      );
    }
    return fc.oneof(...options);
  });
}

/** Connect streaming (application/connect+proto|json) to streaming methods, with unreadable envelopes. */
function connectStreamCases(target: Target, ctx: Context): fc.Arbitrary<FuzzCase> | undefined {
  const streams = target.rpcs.filter((r) => r.streaming);
  if (streams.length === 0) return undefined;
  return fc.constantFrom(...streams).chain((rpc) => {
    const t = templateOf(ctx, rpc);
    return fc
      .tuple(fc.constantFrom<"h1" | "h2">("h1", "h2"), envelopeDamage(t.binary, "connect-content-encoding").filter((e) => e.unreadable), callers)
      .map(([wire, e, caller]) => ({
        label: "Connect streaming envelope damaged",
        variant: e.variant,
        wire,
        reading: "connect-stream" as const,
        request: {
          method: "POST",
          path: rpc.path,
          headers: [...callerHeaders(target, caller), ["content-type", "application/connect+proto"], ["connect-protocol-version", "1"], ...e.headers] as [string, string][],
          body: e.body,
        },
      }));
  });
}

const PATH_PREFIXES = [
  "/balance/",
  "/payments/",
  "/payments",
  "/rate?base=",
  "/rate?quote=EUR&base=",
  "/convert?from=USD&to=EUR&amount=",
  "/convert?to=EUR&amount=1&from=",
  "/score",
  "/healthz",
  "/readyz",
  "/metrics",
  "/reconcile",
  "/",
  "//",
  "/index.html",
  "/paygate.wallet.v1.WalletService/GetBalance",
  "/paygate.payments.v1.PaymentsService/",
  "/grpc.health.v1.Health/Check",
  "",
];

/** Path pieces: broken percent escapes, raw non-ASCII, dot segments, very long runs. */
const pathPiece: fc.Arbitrary<string> = fc
  .oneof(
    fc.constantFrom("%ZZ", "%Z", "%", "%00", "%0", "%FF", "%C0%AF", "%ED%A0%80", "%E8%A1%A8", "%F4%90%80%80", "%25", "%2F", "%2e%2e", "..", ".", "//", "?", "#", ";", "\\", "~", "*", "@", ":", "%u0041", "+", "%20"),
    fc.string({ unit: "grapheme", minLength: 1, maxLength: 6 }),
    fc.string({ unit: "binary", minLength: 1, maxLength: 6 }),
    fc.constantFrom("表", "é", "\u00a0", "\u0085", "💸"),
    fc.integer({ min: 1000, max: 12_000 }).map((n) => "a".repeat(n)),
    fc.integer({ min: 30, max: 400 }).map((n) => "%41".repeat(n)),
  )
  .filter((s) => !looksLikeLeak(s) && !/[\r\n ]/.test(s));

const METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "SEARCH", "LINK", "PURGE", "get", "FOO", "G-T", "MKCALENDAR", "QUERY"];

/** Odd request targets, methods and bodies on any port, over HTTP/1.1 (raw) and HTTP/2. */
function pathCases(target: Target): fc.Arbitrary<FuzzCase> {
  return fc
    .tuple(fc.constantFrom(...METHODS), fc.constantFrom(...PATH_PREFIXES), fc.array(pathPiece, { minLength: 1, maxLength: 4 }), callers, fc.constantFrom<"h1" | "h2">("h1", "h1", "h2"), fc.boolean())
    .map(([method, prefix, pieces, caller, wire, withBody]) => {
      const path = prefix + pieces.join("");
      const headers: [string, string][] = [...(target.kind === "gateway" ? callerHeaders(target, caller) : [])];
      if (withBody) headers.push(["content-type", "application/json"]);
      return {
        label: "odd request target or method",
        variant: `${method} ${prefix}…`,
        wire: target.kind === "admin" ? "h1" : wire,
        reading: target.kind === "admin" ? ("http" as const) : ("rest" as const),
        request: { method, path, headers, body: withBody ? Buffer.from('{"a":1}') : Buffer.alloc(0) },
      };
    })
    .filter((c) => !looksLikeLeak(c.request.path));
}

/** Request lines and framing no URL parser or HTTP parser should choke on (HTTP/1.1, raw bytes). */
function rawLineCases(target: Target): FuzzCase[] {
  const host = `host: 127.0.0.1:${target.port}\r\n`;
  const key = target.kind === "gateway" ? `authorization: Bearer ${ACME.apiKey}\r\n` : "";
  const lines: [string, string][] = [
    ["GET /balance/%ZZ", `GET /balance/%ZZ HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["GET /payments/%Z", `GET /payments/%Z HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["GET /balance/%", `GET /balance/% HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["GET /balance/%00", `GET /balance/%00 HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["GET /balance/acme_usd%00", `GET /balance/acme_usd%00 HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["GET /payments/%00", `GET /payments/%00 HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["GET /balance/%ED%A0%80 (encoded surrogate)", `GET /balance/%ED%A0%80 HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["GET /payments/PAY-%E8%A1%A8", `GET /payments/PAY-%E8%A1%A8 HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["GET /rate?base=%ZZ&quote=EUR", `GET /rate?base=%ZZ&quote=EUR HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["GET /rate?base=%00&quote=EUR", `GET /rate?base=%00&quote=EUR HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["GET /convert?from=USD&to=EUR&amount=1e999", `GET /convert?from=USD&to=EUR&amount=1e999 HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["GET /convert?from=USD&to=EUR&amount=%", `GET /convert?from=USD&to=EUR&amount=% HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["GET //", `GET // HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["GET //balance/acme_usd", `GET //balance/acme_usd HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["absolute form with port 99999", `GET http://x:99999/ HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["absolute form with an unclosed IPv6 bracket", `GET http://[::1/ HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["absolute form to /balance", `GET http://127.0.0.1/balance/acme_usd HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["absolute form, odd scheme", `GET foo://bar/healthz HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["asterisk form GET", `GET * HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["asterisk form OPTIONS", `OPTIONS * HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["authority form CONNECT", `CONNECT 127.0.0.1:1 HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["relative target without slash", `GET balance/acme_usd HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["raw UTF-8 in the target", `GET /balance/表 HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["raw Latin-1 byte in the target", `GET /balance/\u00e9 HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["HTTP/1.0 without Host", `GET /healthz HTTP/1.0\r\n\r\n`],
    ["HTTP/1.1 without Host", `GET /healthz HTTP/1.1\r\nconnection: close\r\n\r\n`],
    ["HTTP/9.9", `GET /healthz HTTP/9.9\r\n${host}connection: close\r\n\r\n`],
    ["HTTP/0.9 request", `GET /healthz\r\n\r\n`],
    ["lower-case method", `get /healthz HTTP/1.1\r\n${host}connection: close\r\n\r\n`],
    ["unknown method", `FROB /healthz HTTP/1.1\r\n${host}connection: close\r\n\r\n`],
    ["header without a colon", `GET /healthz HTTP/1.1\r\n${host}nonsense\r\nconnection: close\r\n\r\n`],
    ["NUL in a header value", `GET /healthz HTTP/1.1\r\n${host}x-a: b\u0000c\r\nconnection: close\r\n\r\n`],
    ["obs-fold header", `GET /healthz HTTP/1.1\r\n${host}x-a: b\r\n c\r\nconnection: close\r\n\r\n`],
    ["two Content-Length headers", `POST /score HTTP/1.1\r\n${host}${key}content-length: 2\r\ncontent-length: 3\r\nconnection: close\r\n\r\n{}`],
    ["Content-Length and chunked", `POST /score HTTP/1.1\r\n${host}${key}content-length: 2\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n0\r\n\r\n`],
    ["invalid chunk size", `POST /score HTTP/1.1\r\n${host}${key}transfer-encoding: chunked\r\nconnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n`],
    ["negative Content-Length", `POST /score HTTP/1.1\r\n${host}${key}content-length: -1\r\nconnection: close\r\n\r\n`],
    ["Content-Length not a number", `POST /score HTTP/1.1\r\n${host}${key}content-length: 1e3\r\nconnection: close\r\n\r\n`],
    ["Expect: 100-continue", `POST /score HTTP/1.1\r\n${host}${key}expect: 100-continue\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}`],
    ["Expect: something else", `POST /score HTTP/1.1\r\n${host}${key}expect: teapot\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}`],
    ["Upgrade to websocket", `GET /healthz HTTP/1.1\r\n${host}upgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n`],
    ["Upgrade to h2c", `GET /healthz HTTP/1.1\r\n${host}upgrade: h2c\r\nconnection: upgrade, http2-settings\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n`],
    ["header section over 16 KiB", `GET /healthz HTTP/1.1\r\n${host}x-big: ${"a".repeat(20_000)}\r\nconnection: close\r\n\r\n`],
    ["request target of 20 000 bytes", `GET /balance/${"a".repeat(20_000)} HTTP/1.1\r\n${host}${key}connection: close\r\n\r\n`],
    ["non-Latin-1 API key", `GET /balance/acme_usd HTTP/1.1\r\n${host}authorization: Bearer pgk_表\r\nconnection: close\r\n\r\n`],
    ["non-Latin-1 Idempotency-Key", `POST /payments HTTP/1.1\r\n${host}${key}idempotency-key: 表\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}`],
    ["pipelined garbage after a request", `GET /healthz HTTP/1.1\r\n${host}\r\n\u0000\u0001\u0002 garbage\r\n\r\n`],
  ];
  // An RPC port takes the HTTP/2 preface as the start of an HTTP/2 connection; an admin port
  // speaks HTTP/1.1 only and must refuse it.
  if (target.kind === "admin") lines.push(["HTTP/2 preface on an HTTP/1.1-only port", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]);
  return lines.map(([variant, text]) => ({
    label: "malformed HTTP/1.1 request line or framing",
    variant,
    wire: "h1" as const,
    reading: target.kind === "admin" ? ("http" as const) : ("rest" as const),
    request: { method: text.startsWith("HEAD") ? "HEAD" : "GET", path: "/", headers: [], body: Buffer.alloc(0) },
    raw: Buffer.from(text, "utf8"),
  }));
}

/** The REST amounts that are not plain decimals within the currency's exponent: each a 400. */
const BAD_REST_AMOUNTS: Json[] = [
  "0x10",
  "0b11",
  "0o17",
  " 5",
  "5 ",
  "+5",
  "1e3",
  "5e-1",
  "5.",
  ".5",
  "1,00",
  "1 000",
  "1.001",
  "5.0001",
  "NaN",
  "Infinity",
  "-",
  "",
  "٥",
  "99999999999999999999999",
  new RawJson("1e400"),
  new RawJson("-1e400"),
  new RawJson("9007199254740993"),
  new RawJson("12345678901234567890"),
  new RawJson("0.001"),
  new RawJson("1e-7"),
  true,
  {},
  [],
  null,
];

/** The gateway's REST routes with damaged bodies and parameters. */
function restCases(target: Target, ctx: Context): fc.Arbitrary<FuzzCase> {
  const paymentBody: { [key: string]: Json } = { id: "fuzz-rest", currency: "USD", amount: "1.00", source_account: ctx.fuzzSource, destination_account: ctx.fuzzDestination };
  const scoreBody: { [key: string]: Json } = { account: "acme_usd", amount: "1.00", currency: "USD" };
  const post = (path: string, body: Buffer, variant: string, expectInvalidArgument: boolean, wire: "h1" | "h2", caller: Caller = "merchant", type = "application/json"): FuzzCase => ({
    label: `REST POST ${path} damaged`,
    variant,
    wire,
    reading: "rest",
    request: { method: "POST", path, headers: [...callerHeaders(target, caller), ...(type ? ([["content-type", type]] as [string, string][]) : [])], body },
    expectInvalidArgument: expectInvalidArgument && caller === "merchant",
  });
  const wire = fc.constantFrom<"h1" | "h2">("h1", "h2");
  const routes = fc.constantFrom({ path: "/payments", body: paymentBody }, { path: "/score", body: scoreBody });
  return fc.oneof(
    {
      weight: 3,
      arbitrary: fc.tuple(routes, fc.constantFrom(...BAD_REST_AMOUNTS), wire).map(([r, amount, w]) =>
        post(r.path, Buffer.from(jsonText(setAt(r.body, ["amount"], amount))), `amount ${amount instanceof RawJson ? amount.text : JSON.stringify(amount)}`, true, w),
      ),
    },
    {
      weight: 3,
      arbitrary: fc.tuple(routes, wire).chain(([r, w]) =>
        jsonDamage(r.body).map((d) => post(r.path, d.body, d.variant, d.expectInvalidArgument, w)),
      ),
    },
    {
      weight: 2,
      arbitrary: fc.tuple(routes, fc.constantFrom(...Object.keys(paymentBody)), nastyText, wire).map(([r, field, s, w]) =>
        post(r.path, Buffer.from(jsonText(setAt(r.body, [field in r.body ? field : "id"], s))), `nasty string in ${field}`, false, w),
      ),
    },
    {
      weight: 1,
      arbitrary: fc.tuple(routes, fc.constantFrom("text/plain", "", "application/x-www-form-urlencoded", "application/json; charset=utf-16"), wire).map(([r, type, w]) =>
        post(r.path, Buffer.from(jsonText(r.body)), `content type ${JSON.stringify(type)}`, false, w, "merchant", type),
      ),
    },
    {
      weight: 1,
      arbitrary: fc.tuple(routes, fc.integer({ min: 65 * 1024, max: 300 * 1024 }), wire).map(([r, size, w]) =>
        post(r.path, Buffer.from(jsonText(setAt(r.body, ["id"], "x".repeat(size)))), `body of ${size} bytes`, false, w),
      ),
    },
    {
      weight: 2,
      arbitrary: fc
        .tuple(fc.constantFrom("/balance/", "/payments/", "/rate?quote=EUR&base=", "/rate?base=USD&quote=", "/convert?to=EUR&amount=1&from=", "/convert?from=USD&to=EUR&amount="), nastyText, wire, callers)
        .map(([prefix, s, w, caller]) => ({
          label: `REST GET ${prefix.replace(/[?=].*$/, "")} with a nasty parameter`,
          variant: "percent-encoded nasty text",
          wire: w,
          reading: "rest" as const,
          request: { method: "GET", path: prefix + encodeLoosely(s), headers: callerHeaders(target, caller), body: Buffer.alloc(0) },
        })),
    },
  );
}

/** Percent-encodes like a careless client: UTF-8 when it can, raw %uXXXX for lone surrogates. */
function encodeLoosely(s: string): string {
  try {
    return encodeURIComponent(s);
  } catch {
    return [...s].map((ch) => (/[\ud800-\udfff]/.test(ch) ? `%u${ch.charCodeAt(0).toString(16)}` : encodeURIComponent(ch))).join("");
  }
}

/** Requests to an admin port: odd methods, paths, queries and bodies. */
function adminCases(target: Target): fc.Arbitrary<FuzzCase> {
  return fc.oneof(
    pathCases(target),
    fc
      .tuple(fc.constantFrom("/healthz", "/readyz", "/metrics", "/reconcile"), fc.constantFrom(...METHODS), fc.constantFrom("", "?%ZZ", "?a=%00", "?format=x", "#x", "/", "/..", "%00"), fc.uint8Array({ maxLength: 64 }))
      .map(([path, method, suffix, body]) => ({
        label: "admin route with an odd method, suffix or body",
        variant: `${method} ${path}${suffix}`,
        wire: "h1" as const,
        reading: "http" as const,
        request: { method, path: path + suffix, headers: body.length > 0 ? ([["content-type", "application/octet-stream"]] as [string, string][]) : [], body: Buffer.from(body) },
      })),
  );
}

/** The fixed corpus: the known-nasty inputs every run sends, whatever the seed. */
function corpus(target: Target, ctx: Context): FuzzCase[] {
  const cases: FuzzCase[] = [...rawLineCases(target)];
  if (target.kind === "admin") return cases;
  const key = callerHeaders(target, "merchant");
  for (const rpc of unaryRpcs(target)) {
    const t = templateOf(ctx, rpc);
    for (const wire of ["h1", "h2"] as const) {
      cases.push({
        label: "Connect binary body undecodable",
        variant: "ff ff ff 01 02",
        wire,
        reading: "connect",
        request: { method: "POST", path: rpc.path, headers: [...key, ["content-type", "application/proto"]], body: Buffer.from([0xff, 0xff, 0xff, 0x01, 0x02]) },
      });
      cases.push({
        label: "Connect content encoding damaged",
        variant: "gzip declared, 1 byte body",
        wire,
        reading: "connect",
        request: { method: "POST", path: rpc.path, headers: [...key, ["content-type", "application/json"], ["content-encoding", "gzip"]], body: Buffer.from([0x1f]) },
      });
    }
    cases.push({
      label: "gRPC envelope damaged",
      variant: "compressed flag without an encoding",
      wire: "h2",
      reading: "grpc",
      request: { method: "POST", path: rpc.path, headers: [...key, ["content-type", "application/grpc"], ["te", "trailers"]], body: envelope(1, t.binary) },
    });
    for (const timeout of ["0m", "1n", "99999999999m", "abc", "1.5m"]) {
      cases.push({
        label: "gRPC timeout header malformed",
        variant: JSON.stringify(timeout),
        wire: "h2",
        reading: "grpc",
        request: { method: "POST", path: rpc.path, headers: [...key, ["content-type", "application/grpc"], ["te", "trailers"], ["grpc-timeout", timeout]], body: envelope(0, t.binary) },
      });
    }
    // Every non-canonical integer form on every integer field, in Connect JSON.
    for (const n of nonCanonicalIntegers(t.json)) {
      cases.push({
        label: "Connect JSON body damaged",
        variant: n.variant,
        wire: "h1",
        reading: "connect",
        request: { method: "POST", path: rpc.path, headers: [...key, ["content-type", "application/json"]], body: Buffer.from(jsonText(setAt(t.json, n.path, n.value))) },
        expectInvalidArgument: true,
      });
    }
    if (!rpc.streaming) {
      // Error messages carry the input: a lone surrogate must survive percent-encoding in
      // grpc-message, and a long input must not outgrow the trailers.
      const longValue = (p: string[]) => jsonText(setAt(t.json, p, "x".repeat(70_000)));
      const firstString = leafPaths(t.json).find((q) => typeof getAt(t.json, q) === "string");
      const bodies: [string, Buffer][] = [["lone surrogate escape in a key", Buffer.from('{"\\ud800":1}')]];
      if (firstString) bodies.push([`70 000 characters in ${firstString.join(".")}`, Buffer.from(longValue(firstString))]);
      for (const [variant, json] of bodies) {
        cases.push({
          label: "gRPC JSON (application/grpc+json) message damaged",
          variant,
          wire: "h2",
          reading: "grpc",
          request: { method: "POST", path: rpc.path, headers: [...key, ["content-type", "application/grpc+json"], ["te", "trailers"]], body: envelope(0, json) },
        });
        cases.push({
          label: "gRPC-Web JSON message damaged",
          variant,
          wire: "h1",
          reading: "grpc-web",
          request: { method: "POST", path: rpc.path, headers: [...key, ["content-type", "application/grpc-web+json"]], body: envelope(0, json) },
        });
      }
    }
    // NUL and lone surrogates in every string field of the template.
    for (const p of leafPaths(t.json).filter((q) => typeof getAt(t.json, q) === "string")) {
      for (const s of ["\u0000", `${String(getAt(t.json, p))}\u0000`, "\ud800", "PAY-表"]) {
        cases.push({
          label: "Connect JSON body damaged",
          variant: `nasty string in ${p.join(".")}`,
          wire: "h1",
          reading: "connect",
          request: { method: "POST", path: rpc.path, headers: [...key, ["content-type", "application/json"]], body: Buffer.from(jsonText(setAt(t.json, p, s))) },
        });
      }
    }
  }
  if (target.kind === "gateway") {
    const restPayment = (id: string) => Buffer.from(jsonText({ id, currency: "USD", amount: "1.00", source_account: ctx.fuzzSource, destination_account: ctx.fuzzDestination }));
    for (const id of ["\u0000", "PAY-\u0000", "\ud800", "PAY-表", "💸", "\u202e"]) {
      for (const wire of ["h1", "h2"] as const) {
        cases.push({
          label: "REST POST /payments damaged",
          variant: `nasty string in id`,
          wire,
          reading: "rest",
          request: { method: "POST", path: "/payments", headers: [...key, ["content-type", "application/json"]], body: restPayment(id) },
        });
      }
    }
    for (const account of ["\u0000", "acme_usd\u0000", "\ud800"]) {
      cases.push({
        label: "REST POST /score damaged",
        variant: "nasty string in account",
        wire: "h1",
        reading: "rest",
        request: { method: "POST", path: "/score", headers: [...key, ["content-type", "application/json"]], body: Buffer.from(jsonText({ account, amount: "1.00", currency: "USD" })) },
      });
    }
  }
  return cases;
}

function getAt(v: Json, path: string[]): Json | undefined {
  let at: Json | undefined = v;
  for (const key of path) at = at !== null && typeof at === "object" && !Array.isArray(at) && !(at instanceof RawJson) ? at[key] : undefined;
  return at;
}

/** Every case for a target: the corpus, then `runs` generated ones (fixed seed per target). */
function casesFor(target: Target, ctx: Context, runs: number, seed: number): FuzzCase[] {
  const fixed = corpus(target, ctx);
  let arbitrary: fc.Arbitrary<FuzzCase>;
  if (target.kind === "admin") arbitrary = adminCases(target);
  else {
    const parts: fc.Arbitrary<FuzzCase>[] = [connectUnaryCases(target, ctx), grpcCases(target, ctx), grpcWebCases(target, ctx), pathCases(target)];
    const streams = connectStreamCases(target, ctx);
    if (streams) parts.push(streams);
    arbitrary = fc.oneof(...parts);
  }
  const generated = fc.sample(arbitrary, { seed, numRuns: runs });
  if (target.kind === "gateway") generated.push(...fc.sample(restCases(target, ctx), { seed: seed + 1, numRuns: runs }));
  return [...fixed, ...generated];
}

// ---------------------------------------------------------------------------------------
// Running and reporting
// ---------------------------------------------------------------------------------------

interface Failure {
  sent: Sent;
  problem: Problem;
}

/** Runs `work` over `items` with at most `limit` at a time. */
async function pool<T>(items: T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < items.length) await work(items[next++]!);
    }),
  );
}

function report(failures: Failure[], total: number, skipped: number): string {
  const groups = new Map<string, Failure[]>();
  for (const f of failures) {
    const key = `${f.sent.label} -> ${f.problem.kind}`;
    groups.set(key, [...(groups.get(key) ?? []), f]);
  }
  const lines = [
    `${failures.length} failures in ${groups.size} classes, out of ${total} requests (${skipped} the HTTP/2 client refused to send), seed ${SEED}.`,
    `The same requests again: PAYGATE_FUZZ_SEED=${SEED}; every exchange written to a file: PAYGATE_FUZZ_LOG=<file>.`,
  ];
  let n = 0;
  for (const [key, fs] of [...groups].sort((a, b) => b[1].length - a[1].length)) {
    const targets = [...new Set(fs.map((f) => f.sent.target.name))].join(", ");
    const protocols = [...new Set(fs.map((f) => `${f.sent.reading}/${f.sent.wire}`))].join(", ");
    const variants = [...new Set(fs.map((f) => f.sent.variant))];
    lines.push(``, `[${++n}] ${key} — ${fs.length}× on ${targets} (${protocols})`);
    lines.push(`    forms: ${variants.slice(0, 25).map((v) => JSON.stringify(v)).join(", ")}${variants.length > 25 ? `, … (${variants.length} in all)` : ""}`);
    for (const f of pickExamples(fs)) lines.push(`    request: ${describeRequest(f.sent)}`, `      -> ${f.problem.detail}`);
  }
  return lines.join("\n");
}

/** Up to three examples: different targets and forms first. */
function pickExamples(fs: Failure[]): Failure[] {
  const seen = new Set<string>();
  const out: Failure[] = [];
  for (const f of fs) {
    const k = `${f.sent.target.name}|${f.sent.variant}`;
    if (seen.has(k)) continue;
    seen.add(k);
    out.push(f);
    if (out.length === 3) break;
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

describe("malformed requests to every port of a running Paygate (pglite)", () => {
  let stack: Stack;
  let targets: Target[];
  let ctx: Context;

  const port = (url: string) => Number(new URL(url).port);

  beforeAll(async () => {
    stack = await startStack({ backend: { name: "pglite", url: undefined }, name: "fuzz" });
    // Payments out of an empty account fail for funds; nothing the fuzz sends can move money unnoticed.
    const fuzzSource = await stack.fund(ACME.id, "USD", "0");
    const fuzzDestination = await stack.fund(GLOBEX.id, "USD", "0");
    ctx = { templates: templates(fuzzSource, fuzzDestination), fuzzSource, fuzzDestination };
    const payments = stack.payments!;
    targets = [
      { name: "gateway", kind: "gateway", port: port(stack.gateway.url), rpcs: rpcsOf([PaymentsService, FxService, WalletService, Health]) },
      { name: "payments", kind: "rpc", port: port(payments.url), rpcs: rpcsOf([PaymentsService, Health]) },
      { name: "fx", kind: "rpc", port: port(stack.fx.url), rpcs: rpcsOf([FxService, Health]) },
      { name: "wallet", kind: "rpc", port: port(stack.wallet.url), rpcs: rpcsOf([WalletService, Health]) },
      { name: "risk", kind: "rpc", port: port(stack.risk.url), rpcs: rpcsOf([RiskService, Health]) },
      { name: "payments-admin", kind: "admin", port: port(payments.adminUrl), rpcs: [] },
      { name: "fx-admin", kind: "admin", port: port(stack.fx.adminUrl), rpcs: [] },
      { name: "wallet-admin", kind: "admin", port: port(stack.wallet.adminUrl), rpcs: [] },
      { name: "risk-admin", kind: "admin", port: port(stack.risk.adminUrl), rpcs: [] },
    ];
  });
  afterAll(async () => {
    await stack?.stop();
  });

  /** Every demo account and both fuzz accounts, as posted/pending/available. */
  async function balances(): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const account of [...DEMO_ACCOUNTS, ctx.fuzzSource, ctx.fuzzDestination]) {
      const b = await balanceOf(stack.internalWallet, account);
      out[account] = `posted ${b.posted} pending ${b.pending} available ${b.available}`;
    }
    return out;
  }

  it("answers every malformed request with a clean refusal, stays up, moves no money and keeps the books balanced", async () => {
    const before = await balances();
    const started = Date.now();

    const all: Sent[] = targets.flatMap((target, i) =>
      casesFor(target, ctx, target.kind === "admin" ? RUNS_PER_ADMIN_PORT : RUNS_PER_RPC_PORT, SEED + i * 1000).map((c) => ({ ...c, target })),
    );
    const failures: Failure[] = [];
    // PAYGATE_FUZZ_LOG=<file> keeps every exchange (one JSON line each) for a closer look.
    const exchanges: string[] | undefined = process.env.PAYGATE_FUZZ_LOG ? [] : undefined;
    let skipped = 0;
    const record = (sent: Sent, answer: Answer) => {
      const problems = judge(sent, answer);
      for (const problem of problems) failures.push({ sent, problem });
      exchanges?.push(JSON.stringify({ label: sent.label, variant: sent.variant, request: describeRequest(sent), answer: describeAnswer(sent, answer), problems: problems.map((p) => p.kind) }));
    };
    const slow: Sent[] = [];
    await pool(all, CONCURRENCY, async (sent) => {
      const answer = await send(sent);
      if (answer.unsendable !== undefined) skipped++;
      else if (answer.timedOut) slow.push(sent);
      else record(sent, answer);
    });
    // Under load a slow answer is not yet a hang: once the load is gone, with more time, it must come.
    await Promise.all(slow.map(async (sent) => record(sent, await send(sent, HANG_TIMEOUT_MS))));
    if (exchanges) writeFileSync(process.env.PAYGATE_FUZZ_LOG!, `${exchanges.join("\n")}\n`);

    // Still alive: each server's health endpoints, and a real call through the gateway.
    const after: string[] = [];
    for (const url of [stack.gateway.url, ...targets.filter((t) => t.kind === "admin").map((t) => `http://127.0.0.1:${t.port}`)]) {
      for (const probe of ["/healthz", "/readyz"]) {
        const res = await fetch(`${url}${probe}`, { signal: AbortSignal.timeout(CLIENT_TIMEOUT_MS) }).catch((err: unknown) => err as Error);
        if (res instanceof Error || res.status !== 200) after.push(`${url}${probe} answered ${res instanceof Error ? res.message : `HTTP ${res.status}`} after the fuzz`);
      }
    }
    const acme = gatewayClients(stack.gatewayUrl, ACME.apiKey);
    await acme.wallet.getBalance({ accountId: "acme_usd" }, { timeoutMs: CLIENT_TIMEOUT_MS }).catch((err: unknown) => after.push(`GetBalance through the gateway failed after the fuzz: ${String(err)}`));
    for (const rpcTarget of targets.filter((t) => t.kind !== "admin")) {
      const health: Sent = {
        label: "health check",
        variant: "after the fuzz",
        wire: "h2",
        reading: "grpc",
        request: { method: "POST", path: "/grpc.health.v1.Health/Check", headers: [["content-type", "application/grpc"], ["te", "trailers"]], body: envelope(0, Buffer.alloc(0)) },
        target: rpcTarget,
      };
      const a = await send(health);
      if (grpcStatus(health, a).code !== 0) after.push(`${rpcTarget.name}: gRPC health check after the fuzz answered ${describeAnswer(health, a)}`);
    }

    const afterBalances = await balances();
    const moved = Object.keys(before).filter((k) => before[k] !== afterBalances[k]).map((k) => `${k}: ${before[k]} -> ${afterBalances[k]}`);
    const unreconciled = await stack.reconcile();
    const seconds = ((Date.now() - started) / 1000).toFixed(1);

    const problems = [
      ...(failures.length > 0 ? [report(failures, all.length, skipped)] : []),
      ...after,
      ...(moved.length > 0 ? [`balances moved during the fuzz:\n  ${moved.join("\n  ")}`] : []),
      ...(unreconciled.length > 0 ? [`the ledger does not reconcile:\n  ${unreconciled.join("\n  ")}`] : []),
    ];
    expect(problems.length === 0, `${all.length} malformed requests in ${seconds} s\n${problems.join("\n\n")}\n`).toBe(true);
  });

  it("takes a REST payment whose id is Unicode text outside Latin-1", async () => {
    const src = await stack.fund(ACME.id, "USD", "10.00");
    const dst = await stack.fund(GLOBEX.id, "USD", "0");
    const body = Buffer.from(JSON.stringify({ id: "PAY-表-💸", currency: "USD", amount: "1.25", source_account: src, destination_account: dst }));
    const request: Sent = {
      label: "Unicode payment id",
      variant: "PAY-表-💸",
      wire: "h1",
      reading: "rest",
      request: { method: "POST", path: "/payments", headers: [...auth(ACME.apiKey), ["content-type", "application/json"]], body },
      target: targets[0]!,
    };
    const first = await send(request);
    const again = await send(request);
    const shown = (a: Answer) => `${describeRequest(request)}\n  -> ${describeAnswer(request, a)}`;
    expect(first.status, shown(first)).toBe(200);
    const payment = JSON.parse(bodyText(first.body)) as { id: string; status: string; reference: string };
    expect({ status: payment.status, reference: payment.reference }, shown(first)).toEqual({ status: "CAPTURED", reference: "PAY-表-💸" });
    // The same id again is the same payment, replayed.
    expect(again.status, shown(again)).toBe(200);
    expect((JSON.parse(bodyText(again.body)) as { id: string }).id).toBe(payment.id);
    expect(await balanceOf(stack.internalWallet, src)).toEqual({ posted: 875n, pending: 0n, available: 875n });
    expect(await balanceOf(stack.internalWallet, dst)).toEqual({ posted: 125n, pending: 0n, available: 125n });
    expect(await stack.reconcile()).toEqual([]);
  });
});
