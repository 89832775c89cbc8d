// Malformed requests get INVALID_ARGUMENT (HTTP 400) in the caller's protocol, never INTERNAL,
// a 500 or a dead process, and never reach the implementation: undecodable protobuf, a message
// flagged compressed with no compression named, a body that is not the gzip it claims, int64
// JSON in any form but a decimal integer, NUL or lone surrogates in text; a request the
// server cannot even build a URL for is a 400, and a handler that throws is a 500 for that
// request alone.
import http2 from "node:http2";
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { create, toBinary } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import { ReserveRequestSchema, WalletService, type ReserveRequest } from "../../services/gen/paygate/wallet/v1/wallet_pb.js";
import { openDatabase, type Database } from "../../services/runtime/db/database.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { startServer, type RunningServer } from "../../services/runtime/rpc/server.js";
import { rawExchange } from "../support/wire.js";

vi.setConfig({ testTimeout: 30_000, hookTimeout: 30_000 });

const RESERVE = "/paygate.wallet.v1.WalletService/Reserve";

interface Answer {
  status: number;
  headers: http2.IncomingHttpHeaders;
  body: string;
  trailers: http2.IncomingHttpHeaders;
}

describe("malformed requests", () => {
  let server: RunningServer;
  let port: number;
  const reached: ReserveRequest[] = [];

  let db: Database;

  beforeAll(async () => {
    db = await openDatabase({ dataDir: "memory://", schema: "malformed" });
    const routes = (router: ConnectRouter) =>
      router.service(WalletService, {
        async reserve(req) {
          reached.push(req);
          return {};
        },
        async release(_req, ctx) {
          await new Promise((r) => setTimeout(r, 50));
          // As a call downstream would: a passed deadline ends the call.
          ctx.signal.throwIfAborted();
          return {};
        },
        async getHold() {
          await db.query("SELECT * FROM no_such_table");
          return {};
        },
      });
    server = await startServer(
      {
        name: "malformed-test",
        services: [WalletService],
        routes,
        fallback: (req) => {
          if (req.url === "/throws") throw new Error("a handler's bug");
        },
      },
      { host: "127.0.0.1", port: 0, adminPort: 0, maxRequestBytes: 64 * 1024, shutdownTimeoutMs: 1000, drainDelayMs: 0, logger: createLogger("malformed-test", "silent") },
    );
    port = Number(new URL(server.url).port);
  });
  afterAll(async () => {
    await server?.shutdown();
    await db?.close();
  });

  function overHttp2(headers: Record<string, string>, body: Uint8Array | string, path = RESERVE): Promise<Answer> {
    return new Promise((resolve, reject) => {
      const session = http2.connect(server.url);
      session.on("error", reject);
      const stream = session.request({ ":method": "POST", ":path": path, ...headers });
      const answer: Answer = { status: 0, headers: {}, body: "", trailers: {} };
      stream.on("response", (h) => ((answer.headers = h), (answer.status = Number(h[":status"]))));
      stream.on("trailers", (t) => (answer.trailers = t));
      stream.on("data", (c: Buffer) => (answer.body += c.toString("latin1")));
      stream.on("end", () => {
        session.close();
        resolve(answer);
      });
      stream.on("error", reject);
      stream.end(body);
    });
  }

  async function overHttp1(headers: Record<string, string>, body: Uint8Array | string): Promise<{ status: number; body: string }> {
    const res = await fetch(`${server.url}${RESERVE}`, { method: "POST", headers, body });
    return { status: res.status, body: await res.text() };
  }

  const envelope = (flags: number, message: Uint8Array) => {
    const head = Buffer.alloc(5);
    head[0] = flags;
    head.writeUInt32BE(message.byteLength, 1);
    return Buffer.concat([head, message]);
  };
  /** The gRPC status: in the trailers, the headers (trailers-only), or gRPC-Web's trailer frame in the body. */
  const grpcStatus = (a: Answer) => a.trailers["grpc-status"] ?? a.headers["grpc-status"] ?? /grpc-status:\s*(\d+)/.exec(a.body)?.[1];
  const GARBAGE = Uint8Array.from([0xff, 0xff, 0xff, 0x01, 0x02]);
  const reserve = (amountMinor: unknown, holdId = "h1") => JSON.stringify({ hold_id: holdId, account_id: "a", amount: { currency: "USD", amount_minor: amountMinor } });

  it("undecodable protobuf is INVALID_ARGUMENT in every protocol", async () => {
    reached.length = 0;
    for (const answer of [await overHttp1({ "content-type": "application/proto" }, GARBAGE), await overHttp2({ "content-type": "application/proto" }, GARBAGE)]) {
      expect(answer.status).toBe(400);
      expect(JSON.parse(answer.body)).toMatchObject({ code: "invalid_argument", message: expect.stringContaining("paygate.wallet.v1.ReserveRequest") });
    }
    for (const type of ["application/grpc", "application/grpc-web+proto"]) {
      const answer = await overHttp2({ "content-type": type, te: "trailers" }, envelope(0, GARBAGE));
      expect(answer.status, type).toBe(200);
      expect(grpcStatus(answer), type).toBe("3");
    }
    // gRPC-Web's text variant is not served (415), so it cannot be damaged either.
    expect((await overHttp2({ "content-type": "application/grpc-web-text" }, envelope(0, GARBAGE).toString("base64"))).status).toBe(415);
    expect(reached).toEqual([]);
  });

  it("a message flagged compressed with no compression named, or not the gzip it claims to be, is INVALID_ARGUMENT", async () => {
    reached.length = 0;
    const valid = toBinary(ReserveRequestSchema, create(ReserveRequestSchema, { holdId: "h" }));
    const flagged = await overHttp2({ "content-type": "application/grpc", te: "trailers" }, envelope(1, valid));
    expect(grpcStatus(flagged)).toBe("3");
    expect(decodeURIComponent(String(flagged.trailers["grpc-message"] ?? flagged.headers["grpc-message"]))).toContain("names no compression");
    const notGzip = await overHttp2({ "content-type": "application/grpc", "grpc-encoding": "gzip", te: "trailers" }, envelope(1, Uint8Array.of(7)));
    expect(grpcStatus(notGzip)).toBe("3");
    for (const answer of [await overHttp1({ "content-type": "application/json", "content-encoding": "gzip" }, "x"), await overHttp2({ "content-type": "application/proto", "content-encoding": "gzip" }, "x")]) {
      expect(answer.status).toBe(400);
      expect(JSON.parse(answer.body)).toMatchObject({ code: "invalid_argument", message: "content-encoding: the message is not valid gzip data" });
    }
    // Real gzip still works.
    const gzipped = await overHttp1({ "content-type": "application/json", "content-encoding": "gzip" }, gzipSync(reserve("5")));
    expect(gzipped.status).toBe(200);
    expect(reached).toHaveLength(1);
  });

  it("an int64 in JSON is a decimal integer or an exact JSON number; hex, binary, octal, signs, padding and rounded numbers are refused naming the field", async () => {
    reached.length = 0;
    for (const bad of ["0x10", "0b11", "0o17", " 5", "5 ", "+5", "1e3", "5.0", "", "--5", "٣"]) {
      for (const answer of [await overHttp1({ "content-type": "application/json" }, reserve(bad)), await overHttp2({ "content-type": "application/json" }, reserve(bad))]) {
        expect(answer.status, JSON.stringify(bad)).toBe(400);
        const body = JSON.parse(answer.body) as { code: string; message: string };
        expect(body.code).toBe("invalid_argument");
        expect(body.message, JSON.stringify(bad)).toMatch(/^amount\.amount_minor: /);
      }
    }
    const rounded = await overHttp1({ "content-type": "application/json" }, `{"hold_id":"h","amount":{"currency":"USD","amount_minor":9007199254740993}}`);
    expect(rounded.status).toBe(400);
    expect(JSON.parse(rounded.body).message).toContain("send integers past 2^53 as decimal strings");
    const grpcJson = await overHttp2({ "content-type": "application/grpc+json", te: "trailers" }, envelope(0, Buffer.from(reserve("0x10"))));
    expect(grpcStatus(grpcJson)).toBe("3");
    expect(reached).toEqual([]);

    for (const good of ["16", "-16", "0", 16, "9223372036854775807"]) {
      expect((await overHttp1({ "content-type": "application/json" }, reserve(good))).status, String(good)).toBe(200);
    }
    expect(reached.map((r) => r.amount!.amountMinor)).toEqual([16n, -16n, 0n, 16n, 9223372036854775807n]);
  });

  it("NUL characters and lone surrogates in any text field are INVALID_ARGUMENT INVALID_TEXT naming the field; other Unicode passes", async () => {
    reached.length = 0;
    for (const holdId of ["\u0000", "h\u0000"]) {
      for (const answer of [await overHttp1({ "content-type": "application/json" }, reserve("5", holdId)), await overHttp2({ "content-type": "application/json" }, reserve("5", holdId))]) {
        expect(answer.status).toBe(400);
        expect(JSON.parse(answer.body)).toMatchObject({ code: "invalid_argument", message: "hold_id: must not contain the NUL character (U+0000)" });
      }
    }
    // protobuf's JSON reader refuses a lone surrogate itself, naming the field.
    const surrogate = await overHttp1({ "content-type": "application/json" }, reserve("5", "\ud800"));
    expect(surrogate.status).toBe(400);
    expect(JSON.parse(surrogate.body).message).toContain("ReserveRequest.hold_id");
    const nested = await overHttp1({ "content-type": "application/json" }, JSON.stringify({ hold_id: "h", amount: { currency: "US\u0000", amount_minor: "1" } }));
    expect(JSON.parse(nested.body).message).toMatch(/^amount\.currency: /);
    // Binary messages are checked too (the fast path's HTTP/2 Connect binary included).
    const binary = toBinary(ReserveRequestSchema, create(ReserveRequestSchema, { holdId: "x\u0000" }));
    expect((await overHttp2({ "content-type": "application/proto" }, binary)).status).toBe(400);
    expect(grpcStatus(await overHttp2({ "content-type": "application/grpc", te: "trailers" }, envelope(0, binary)))).toBe("3");
    expect(reached).toEqual([]);

    expect((await overHttp1({ "content-type": "application/json" }, reserve("5", "PAY-表-😀"))).status).toBe(200);
    expect(reached.map((r) => r.holdId)).toEqual(["PAY-表-😀"]);
  });

  it("a database failure is a bare INTERNAL: no SQL, no stack, in Connect and gRPC", async () => {
    const path = "/paygate.wallet.v1.WalletService/GetHold";
    const connect = await overHttp2({ "content-type": "application/json" }, "{}", path);
    expect(connect.status).toBe(500);
    expect(JSON.parse(connect.body)).toEqual({ code: "internal", message: "internal error" });
    const grpc = await overHttp2({ "content-type": "application/grpc", te: "trailers" }, envelope(0, new Uint8Array()), path);
    expect(grpcStatus(grpc)).toBe("13");
    expect(JSON.stringify(grpc)).not.toMatch(/no_such_table|SELECT|\bat /);
  });

  it("an error message quoting the request is fit to send: a lone surrogate or 30,000 characters do not break gRPC's grpc-message", async () => {
    const surrogateKey = await overHttp2({ "content-type": "application/grpc+json", te: "trailers" }, envelope(0, Buffer.from('{"\\ud800":1}')));
    expect(grpcStatus(surrogateKey)).toBe("3");
    const long = await overHttp2({ "content-type": "application/grpc+json", te: "trailers" }, envelope(0, Buffer.from(JSON.stringify({ ["x".repeat(30_000)]: 1 }))));
    expect(grpcStatus(long)).toBe("3");
    expect(decodeURIComponent(String(long.trailers["grpc-message"] ?? long.headers["grpc-message"])).length).toBeLessThanOrEqual(500);
    const int32 = await overHttp2({ "content-type": "application/json" }, JSON.stringify({ account_id: "a", page_size: "0x10" }), "/paygate.wallet.v1.WalletService/ListEntries");
    expect(int32.status).toBe(400);
    expect(JSON.parse(int32.body).message).toMatch(/^page_size: /);
  });

  it("a CONNECT (tunnel) request is answered 405, on the RPC and the admin port", async () => {
    for (const p of [port, Number(new URL(server.adminUrl).port)]) {
      const { received } = await rawExchange(p, "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n", { until: (r) => r.includes("\r\n\r\n") });
      expect(received).toMatch(/^HTTP\/1\.1 405 /);
    }
  });

  it("a deadline longer than a timer can wait is held to the longest one, not expired at once", async () => {
    const path = "/paygate.wallet.v1.WalletService/Release";
    const grpc = await overHttp2({ "content-type": "application/grpc", te: "trailers", "grpc-timeout": "99999999H" }, envelope(0, new Uint8Array()), path);
    expect(grpcStatus(grpc)).toBe("0");
    for (const type of ["application/proto", "application/json"]) {
      const body = type === "application/json" ? "{}" : "";
      const connect = await overHttp2({ "content-type": type, "connect-timeout-ms": "9999999999" }, body, path);
      expect(connect.status, type).toBe(200);
    }
  });

  it("a request with no usable Host is a 400 and a handler that throws is a 500; the server serves on", async () => {
    const badHost = await rawExchange(port, `POST ${RESERVE} HTTP/1.1\r\nHost: x:99999\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`, { until: (r) => r.includes("\r\n\r\n") });
    expect(badHost.received).toMatch(/^HTTP\/1\.1 400 /);
    const noHost = await rawExchange(port, `POST ${RESERVE} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`, { until: (r) => r.includes("\r\n\r\n") });
    expect(noHost.received).toMatch(/^HTTP\/1\.[01] 400 /);
    const thrown = await fetch(`${server.url}/throws`);
    expect(thrown.status).toBe(500);
    expect(await thrown.text()).not.toContain("a handler's bug");
    expect((await overHttp1({ "content-type": "application/json" }, reserve("5"))).status).toBe(200);
  });
});
