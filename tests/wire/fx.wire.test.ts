// The fx service as its process starts it (startFx: port 0, in-memory database, a market
// ticking every 50 ms), called over real sockets on ONE port with every protocol Paygate
// promises: Connect JSON over HTTP/1.1 with plain fetch, Connect binary/JSON over HTTP/1.1
// and HTTP/2, gRPC with connect-node and with grpc-js (an independent implementation that
// knows only the .proto files), gRPC-Web; reflection for grpcurl and buf curl; health;
// the request size limit; garbage on the port; no internals in error responses.
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import type * as grpc from "@grpc/grpc-js";
import { Decimal } from "decimal.js";
import { fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { ErrorDetailSchema } from "../../services/gen/paygate/common/v1/common_pb.js";
import { FxService, QuoteStatus, RoundingMode, type ConvertResponse } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { startFx } from "../../services/fx/main.js";
import type { RunningServer } from "../../services/runtime/rpc/server.js";
import {
  bufBin,
  findGrpcurl,
  FxGrpc,
  grpcBidiAll,
  grpcClient,
  grpcErrorDetails,
  grpcServerStream,
  grpcUnary,
  HealthGrpc,
  hostPort,
  isServiceError,
  rawExchange,
  ReflectionV1alphaGrpc,
  ReflectionV1Grpc,
  rejectionOf,
  runTool,
  within,
} from "../support/wire.js";

vi.setConfig({ testTimeout: 30_000, hookTimeout: 60_000 });

const MAX_REQUEST_BYTES = 2048;
const D = Decimal.clone({ precision: 500, rounding: Decimal.ROUND_HALF_EVEN, toExpNeg: -9e15, toExpPos: 9e15 });

let server: RunningServer;
const grpcClients: grpc.Client[] = [];

beforeAll(async () => {
  server = await startFx({
    FX_PORT: "0",
    FX_ADMIN_PORT: "0",
    DATA_DIR: "memory://",
    LOG_LEVEL: "silent",
    FX_MARKET_TICK_MS: "50",
    MAX_REQUEST_BYTES: String(MAX_REQUEST_BYTES),
    SHUTDOWN_TIMEOUT_MS: "2000",
  });
});

afterAll(async () => {
  for (const c of grpcClients) c.close();
  await server?.shutdown();
});

function grpcJs(ctor: grpc.ServiceClientConstructor): grpc.Client {
  const c = grpcClient(ctor, server.url);
  grpcClients.push(c);
  return c;
}

/** POST a Connect unary JSON request with fetch (HTTP/1.1). */
async function postJson(method: string, body: string | object, headers: Record<string, string> = {}) {
  const res = await fetch(`${server.url}/paygate.fx.v1.FxService/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, contentType: res.headers.get("content-type"), text, json: JSON.parse(text) as Record<string, any> };
}

/** amount (minor units of an exponent-2 currency) x rate, in minor units of a currency with exponent toExp. */
function expectExact(amountMinor: string, fromExp: number, toExp: number, rate: string, converted: string, residue: string) {
  const exact = new D(amountMinor).mul(rate).mul(new D(10).pow(toExp - fromExp));
  expect(new D(converted).add(residue).eq(exact), `${converted} + ${residue} = ${exact.toFixed()}`).toBe(true);
  expect(new D(residue).abs().lte(0.5)).toBe(true);
  expect(converted).toBe(exact.toDecimalPlaces(0, Decimal.ROUND_HALF_EVEN).toFixed());
}

/** Things an error response must never contain: stack frames, source paths, SQL. */
const INTERNALS = /(\bat\s+[\w.<>]+\s+\(|\n\s+at\s|\.ts:\d+|node_modules|\bSELECT\b|\bINSERT\b|\bUPDATE\b|\bFROM quotes\b|pglite|invalid byte sequence)/i;

// ---------------------------------------------------------------------------------------

describe("Connect JSON over HTTP/1.1 with plain fetch", () => {
  it("Convert answers 200 with an exact conversion", async () => {
    const res = await postJson("Convert", { amount: { currency: "USD", amountMinor: "123456" }, toCurrency: "JPY" });
    expect(res.status, res.text).toBe(200);
    expect(res.contentType).toBe("application/json");
    const body = res.json;
    expect(body.source).toEqual({ currency: "USD", amountMinor: "123456" });
    expect(body.converted.currency).toBe("JPY");
    expect(body.rounding).toBe("ROUNDING_MODE_HALF_EVEN");
    expect(typeof body.rate).toBe("string");
    expect(Date.parse(body.rateAsOf)).not.toBeNaN();
    expectExact("123456", 2, 0, body.rate, body.converted.amountMinor, body.residueMinor);
  });

  it("takes decimal_amount in proto JSON (camelCase or snake_case names) and a rounding by name", async () => {
    for (const body of [
      { decimalAmount: { currency: "KWD", value: "12.345" }, toCurrency: "USD", rounding: "ROUNDING_MODE_DOWN" },
      { decimal_amount: { currency: "KWD", value: "12.345" }, to_currency: "USD", rounding: "ROUNDING_MODE_DOWN" },
    ]) {
      const res = await postJson("Convert", body);
      expect(res.status, res.text).toBe(200);
      expect(res.json.source).toEqual({ currency: "KWD", amountMinor: "12345" });
      expect(res.json.rounding).toBe("ROUNDING_MODE_DOWN");
      const exact = new D("12345").mul(res.json.rate).div(10);
      expect(res.json.converted.amountMinor).toBe(exact.toDecimalPlaces(0, Decimal.ROUND_DOWN).toFixed());
    }
  });

  it("a bad currency is HTTP 400 with code invalid_argument and the ErrorDetail (debug and binary)", async () => {
    const res = await postJson("Convert", { amount: { currency: "usd", amountMinor: "100" }, toCurrency: "JPY" });
    expect(res.status).toBe(400);
    expect(res.contentType).toBe("application/json");
    expect(res.json.code).toBe("invalid_argument");
    expect(res.json.message).toContain("amount.currency");
    expect(res.json.details).toHaveLength(1);
    const [detail] = res.json.details as { type: string; value: string; debug?: Record<string, unknown> }[];
    expect(detail?.type).toBe("paygate.common.v1.ErrorDetail");
    expect(detail?.debug).toEqual({ reason: "UNKNOWN_CURRENCY", field: "amount.currency" });
    const decoded = fromBinary(ErrorDetailSchema, Buffer.from(detail!.value, "base64"));
    expect(decoded).toMatchObject({ reason: "UNKNOWN_CURRENCY", field: "amount.currency" });
    expect(res.text).not.toMatch(INTERNALS);
  });

  it("maps codes to the documented HTTP statuses (not_found 404, failed_precondition 400)", async () => {
    const missing = await postJson("GetQuote", { quoteId: "qt_missing" });
    expect([missing.status, missing.json.code]).toEqual([404, "not_found"]);
    const created = await postJson("CreateQuote", { amount: { currency: "USD", amountMinor: "1000" }, toCurrency: "EUR" });
    expect(created.status, created.text).toBe(200);
    const id = created.json.quote.id as string;
    expect((await postJson("Convert", { quoteId: id, reference: "a" })).status).toBe(200);
    const reused = await postJson("Convert", { quoteId: id, reference: "b" });
    expect([reused.status, reused.json.code]).toEqual([400, "failed_precondition"]);
    expect(reused.json.details[0].debug).toEqual({ reason: "QUOTE_ALREADY_USED", field: "quote_id" });
  });

  it("rejects an unknown JSON field with invalid_argument naming the field", async () => {
    const top = await postJson("Convert", { amount: { currency: "USD", amountMinor: "100" }, toCurrency: "JPY", bogusField: 1 });
    expect(top.status).toBe(400);
    expect(top.json.code).toBe("invalid_argument");
    expect(top.json.message).toContain("bogusField");
    const nested = await postJson("Convert", { amount: { currency: "USD", amountMinor: "100", cents: 5 }, toCurrency: "JPY" });
    expect(nested.status).toBe(400);
    expect(nested.json.code).toBe("invalid_argument");
    expect(nested.json.message).toContain("cents");
  });

  it("rejects a request larger than MAX_REQUEST_BYTES with resource_exhausted (HTTP 429); one just under passes", async () => {
    const body = (reference: string) => JSON.stringify({ amount: { currency: "USD", amountMinor: "100" }, toCurrency: "JPY", reference });
    const under = body("x".repeat(MAX_REQUEST_BYTES - body("").length));
    expect(Buffer.byteLength(under)).toBe(MAX_REQUEST_BYTES);
    const ok = await postJson("Convert", under);
    expect(ok.status, ok.text).toBe(200);
    const over = await postJson("Convert", body("x".repeat(MAX_REQUEST_BYTES)));
    expect(over.status).toBe(429);
    expect(over.json.code).toBe("resource_exhausted");
    expect(over.text).not.toMatch(INTERNALS);
  });
});

// ---------------------------------------------------------------------------------------

const transports: [string, () => Transport][] = [
  ["Connect binary, HTTP/1.1", () => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", useBinaryFormat: true })],
  ["Connect JSON, HTTP/1.1", () => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", useBinaryFormat: false })],
  ["Connect binary, HTTP/2", () => createConnectTransport({ baseUrl: server.url, httpVersion: "2", useBinaryFormat: true })],
  ["Connect JSON, HTTP/2", () => createConnectTransport({ baseUrl: server.url, httpVersion: "2", useBinaryFormat: false })],
  ["gRPC, HTTP/2", () => createGrpcTransport({ baseUrl: server.url })],
  ["gRPC-Web binary, HTTP/1.1", () => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1", useBinaryFormat: true })],
  ["gRPC-Web JSON, HTTP/1.1", () => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1", useBinaryFormat: false })],
  ["gRPC-Web binary, HTTP/2", () => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "2", useBinaryFormat: true })],
];

describe.each(transports)("connect-node client: %s", (_name, makeTransport) => {
  let client: Client<typeof FxService>;
  beforeAll(() => {
    client = createClient(FxService, makeTransport());
  });

  it("Convert is exact", async () => {
    const res: ConvertResponse = await client.convert({ source: { case: "amount", value: { currency: "USD", amountMinor: 98_765n } }, toCurrency: "KWD" });
    expect(res.source).toMatchObject({ currency: "USD", amountMinor: 98_765n });
    expect(res.rounding).toBe(RoundingMode.HALF_EVEN);
    expectExact("98765", 2, 3, res.rate, res.converted!.amountMinor.toString(), res.residueMinor);
  });

  it("a bad input is INVALID_ARGUMENT with the typed ErrorDetail", async () => {
    const err = ConnectError.from(
      await rejectionOf(client.convert({ source: { case: "decimalAmount", value: { currency: "JPY", value: "1.5" } }, toCurrency: "USD" })),
    );
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.findDetails(ErrorDetailSchema)).toEqual([expect.objectContaining({ reason: "TOO_MANY_DECIMALS", field: "decimal_amount.value" })]);
    expect(err.rawMessage).toContain("decimal_amount.value");
  });

  it("StreamRates sends the snapshot and then live ticks", async () => {
    const abort = new AbortController();
    const got: { asOf: number; rates: string[] }[] = [];
    try {
      await within(
        (async () => {
          for await (const msg of client.streamRates({ baseCurrency: "USD", quoteCurrencies: ["JPY", "EUR"] }, { signal: abort.signal })) {
            got.push({ asOf: Number(msg.rates[0]!.asOf!.seconds) * 1000 + msg.rates[0]!.asOf!.nanos / 1e6, rates: msg.rates.map((r) => r.quoteCurrency) });
            if (got.length === 3) break;
          }
        })(),
        15_000,
        "three StreamRates messages",
      );
    } finally {
      abort.abort();
    }
    expect(got.map((g) => g.rates)).toEqual([["JPY", "EUR"], ["JPY", "EUR"], ["JPY", "EUR"]]);
    expect(got[2]!.asOf).toBeGreaterThanOrEqual(got[1]!.asOf);
  });

  it("a request over MAX_REQUEST_BYTES is RESOURCE_EXHAUSTED", async () => {
    const err = ConnectError.from(
      await rejectionOf(
        client.convert({ source: { case: "amount", value: { currency: "USD", amountMinor: 1n } }, toCurrency: "JPY", reference: "r".repeat(MAX_REQUEST_BYTES + 10) }),
      ),
    );
    expect(Code[err.code], err.message).toBe(Code[Code.ResourceExhausted]);
  });
});

describe("quotes over the network", () => {
  it("CreateQuote, Convert with it once, GetQuote USED (gRPC)", async () => {
    const client = createClient(FxService, createGrpcTransport({ baseUrl: server.url }));
    const { quote } = await client.createQuote({ source: { case: "decimalAmount", value: { currency: "GBP", value: "250.00" } }, toCurrency: "JPY" });
    expect(quote?.status).toBe(QuoteStatus.OPEN);
    expect(new D(quote!.rate).eq(new D(quote!.midRate).mul(10_000 - quote!.spreadBps).div(10_000))).toBe(true);
    const used = await client.convert({ quoteId: quote!.id, reference: "wire-1" });
    expect(used).toMatchObject({ rate: quote!.rate, quoteId: quote!.id, converted: { currency: "JPY", amountMinor: quote!.converted!.amountMinor } });
    expect(await client.convert({ quoteId: quote!.id, reference: "wire-1" })).toEqual(used);
    const err = ConnectError.from(await rejectionOf(client.convert({ quoteId: quote!.id, reference: "wire-2" })));
    expect(err.code).toBe(Code.FailedPrecondition);
    expect(err.findDetails(ErrorDetailSchema)[0]?.reason).toBe("QUOTE_ALREADY_USED");
    expect((await client.getQuote({ quoteId: quote!.id })).quote).toMatchObject({ status: QuoteStatus.USED, usedReference: "wire-1" });
  });
});

// ---------------------------------------------------------------------------------------

interface GrpcMoney {
  currency: string;
  amount_minor: string;
}
interface GrpcConvertResponse {
  source: GrpcMoney;
  converted: GrpcMoney;
  rate: string;
  residue_minor: string;
  quote_id: string;
  rounding: string;
}
interface GrpcRate {
  base_currency: string;
  quote_currency: string;
  mid_rate: string;
  as_of: { seconds: string; nanos: number };
  source: string;
}

describe("gRPC with grpc-js (independent implementation, .proto files only)", () => {
  it("unary Convert", async () => {
    const fx = grpcJs(FxGrpc);
    const res = await grpcUnary<GrpcConvertResponse>(fx, "Convert", { amount: { currency: "EUR", amount_minor: "5000" }, to_currency: "BHD", rounding: "ROUNDING_MODE_HALF_EVEN" }, 10_000);
    expect(res.source).toEqual({ currency: "EUR", amount_minor: "5000" });
    expect(res.converted.currency).toBe("BHD");
    expect(res.rounding).toBe("ROUNDING_MODE_HALF_EVEN");
    expectExact("5000", 2, 3, res.rate, res.converted.amount_minor, res.residue_minor);
  });

  it("errors carry the status code and the ErrorDetail in grpc-status-details-bin", async () => {
    const fx = grpcJs(FxGrpc);
    const err = await rejectionOf(grpcUnary(fx, "Convert", { amount: { currency: "XAF", amount_minor: "100" }, to_currency: "USD" }, 10_000));
    expect(isServiceError(err)).toBe(true);
    const se = err as grpc.ServiceError;
    expect(se.code).toBe(3); // INVALID_ARGUMENT
    expect(se.details).toContain("amount.currency");
    expect(grpcErrorDetails(se)).toEqual([expect.objectContaining({ reason: "UNSUPPORTED_CURRENCY", field: "amount.currency" })]);

    const big = await rejectionOf(grpcUnary(fx, "Convert", { amount: { currency: "USD", amount_minor: "1" }, to_currency: "JPY", reference: "r".repeat(MAX_REQUEST_BYTES) }, 10_000));
    expect((big as grpc.ServiceError).code).toBe(8); // RESOURCE_EXHAUSTED
  });

  it("server-streaming StreamRates: two messages, then cancel", async () => {
    const fx = grpcJs(FxGrpc);
    const call = grpcServerStream<{ rates: GrpcRate[] }>(fx, "StreamRates", { base_currency: "EUR", quote_currencies: ["USD", "JPY"] });
    const messages: { rates: GrpcRate[] }[] = [];
    const ended = await within(
      new Promise<{ code: number }>((resolve, reject) => {
        call.on("data", (m: { rates: GrpcRate[] }) => {
          messages.push(m);
          if (messages.length === 2) call.cancel();
        });
        call.on("error", (e: grpc.ServiceError) => resolve({ code: e.code }));
        call.on("end", () => reject(new Error("stream ended by the server before cancel")));
      }),
      15_000,
      "two StreamRates messages",
    );
    expect(ended.code).toBe(1); // CANCELLED, by us
    expect(messages).toHaveLength(2);
    for (const m of messages) {
      expect(m.rates.map((r) => [r.base_currency, r.quote_currency])).toEqual([
        ["EUR", "USD"],
        ["EUR", "JPY"],
      ]);
      for (const r of m.rates) expect(new D(r.mid_rate).gt(0)).toBe(true);
    }
    // The second message is a market tick, not the snapshot again.
    expect(messages[1]!.rates[0]!.source).toBe("simulated-market");
  });

  it("health Check: SERVING for the server and for FxService, NOT_FOUND for an unknown service", async () => {
    const health = grpcJs(HealthGrpc);
    expect(await grpcUnary(health, "Check", { service: "" }, 10_000)).toEqual({ status: "SERVING" });
    expect(await grpcUnary(health, "Check", { service: "paygate.fx.v1.FxService" }, 10_000)).toEqual({ status: "SERVING" });
    const err = await rejectionOf(grpcUnary(health, "Check", { service: "no.such.Service" }, 10_000));
    expect((err as grpc.ServiceError).code).toBe(5);
  });

  it.each([
    ["v1", ReflectionV1Grpc],
    ["v1alpha", ReflectionV1alphaGrpc],
  ])("reflection %s lists the services and serves the fx descriptor", async (_v, ctor) => {
    const reflection = grpcJs(ctor);
    type Answer = { list_services_response?: { service: { name: string }[] }; file_descriptor_response?: { file_descriptor_proto: Uint8Array[] } };
    const [list, file] = await grpcBidiAll<Answer>(reflection, "ServerReflectionInfo", [
      { list_services: "*" },
      { file_containing_symbol: "paygate.fx.v1.FxService" },
    ]);
    const names = list!.list_services_response!.service.map((s) => s.name);
    expect(names).toEqual(expect.arrayContaining(["paygate.fx.v1.FxService", "grpc.health.v1.Health"]));
    const fd = fromBinary(FileDescriptorProtoSchema, file!.file_descriptor_response!.file_descriptor_proto[0]!);
    expect(fd.name).toBe("paygate/fx/v1/fx.proto");
    expect(fd.service[0]?.method.map((m) => m.name)).toEqual(["ListCurrencies", "GetRate", "Convert", "CreateQuote", "GetQuote", "StreamRates"]);
  });
});

// ---------------------------------------------------------------------------------------

describe("command-line clients through reflection (no .proto files)", () => {
  const grpcurl = findGrpcurl();
  if (grpcurl) {
    it("grpcurl list / describe / Convert / an error", async () => {
      const target = hostPort(server.url);
      const list = await runTool(grpcurl, ["-plaintext", target, "list"]);
      expect(list.code, list.stderr).toBe(0);
      expect(list.stdout.split("\n")).toEqual(expect.arrayContaining(["paygate.fx.v1.FxService", "grpc.health.v1.Health"]));

      const describeOut = await runTool(grpcurl, ["-plaintext", target, "describe", "paygate.fx.v1.FxService"]);
      expect(describeOut.code, describeOut.stderr).toBe(0);
      expect(describeOut.stdout).toContain("rpc Convert ( .paygate.fx.v1.ConvertRequest ) returns ( .paygate.fx.v1.ConvertResponse );");
      expect(describeOut.stdout).toContain("returns ( stream .paygate.fx.v1.StreamRatesResponse )");

      const call = await runTool(grpcurl, [
        "-plaintext",
        "-d",
        JSON.stringify({ amount: { currency: "USD", amount_minor: "1000" }, to_currency: "JPY" }),
        target,
        "paygate.fx.v1.FxService/Convert",
      ]);
      expect(call.code, call.stderr).toBe(0);
      const res = JSON.parse(call.stdout) as { source: { amountMinor: string }; converted: { currency: string; amountMinor: string }; rate: string; residueMinor: string };
      expect(res.converted.currency).toBe("JPY");
      expectExact("1000", 2, 0, res.rate, res.converted.amountMinor, res.residueMinor);

      const bad = await runTool(grpcurl, ["-plaintext", "-d", JSON.stringify({ amount: { currency: "XAF", amount_minor: "1" }, to_currency: "JPY" }), target, "paygate.fx.v1.FxService/Convert"]);
      expect(bad.code).toBe(64 + 3); // grpcurl exits 64 + status code
      expect(bad.stdout + bad.stderr).toContain("UNSUPPORTED_CURRENCY");
    }, 120_000);
  } else if (process.env.CI === "true") {
    it("grpcurl is installed (CI installs it with go install)", () => {
      expect.fail("grpcurl not found on PATH nor in $(go env GOPATH)/bin");
    });
  }

  it("buf curl --list-services and Convert over gRPC with no schema", async () => {
    const common = ["curl", "--protocol", "grpc", "--http2-prior-knowledge"];
    const list = await runTool(bufBin, [...common, "--list-services", server.url]);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout.split("\n")).toEqual(expect.arrayContaining(["paygate.fx.v1.FxService", "grpc.health.v1.Health"]));

    const call = await runTool(bufBin, [...common, "-d", JSON.stringify({ decimalAmount: { currency: "USD", value: "10.00" }, toCurrency: "KWD" }), `${server.url}/paygate.fx.v1.FxService/Convert`]);
    expect(call.code, call.stderr).toBe(0);
    const res = JSON.parse(call.stdout) as { converted: { currency: string; amountMinor: string }; rate: string; residueMinor: string };
    expect(res.converted.currency).toBe("KWD");
    expectExact("1000", 2, 3, res.rate, res.converted.amountMinor, res.residueMinor);

    const bad = await runTool(bufBin, [...common, "-d", JSON.stringify({ amount: { currency: "usd", amountMinor: "1" }, toCurrency: "KWD" }), `${server.url}/paygate.fx.v1.FxService/Convert`]);
    expect(bad.code).not.toBe(0);
    const err = JSON.parse(bad.stderr || bad.stdout) as { code: string; message: string };
    expect(err.code).toBe("invalid_argument");
    expect(err.message).toContain("amount.currency");
  }, 120_000);

});

// ---------------------------------------------------------------------------------------

describe("admin port", () => {
  it("/healthz 200, /readyz 200 with the database ok, unknown paths 404", async () => {
    const healthz = await fetch(`${server.adminUrl}/healthz`);
    expect(healthz.status).toBe(200);
    expect(await healthz.json()).toEqual({ status: "ok" });
    const readyz = await fetch(`${server.adminUrl}/readyz`);
    expect(readyz.status).toBe(200);
    expect(await readyz.json()).toEqual({ status: "ready", checks: { server: "ok", database: "ok" } });
    const nope = await fetch(`${server.adminUrl}/nope`);
    expect(nope.status).toBe(404);
    await nope.body?.cancel();
  });
});

describe("the one port under odd traffic", () => {
  const port = () => Number(new URL(server.url).port);

  it("an HTTP/1.1 request for an unknown path gets 404 at once", async () => {
    const r = await rawExchange(port(), "GET /nope HTTP/1.1\r\nHost: fx\r\n\r\n", { until: (t) => t.includes("\r\n\r\n") });
    expect(r.timedOut, r.received).toBe(false);
    expect(r.received).toMatch(/^HTTP\/1\.1 404 /);
  });

  it("garbage bytes get 400 and a closed connection, not a hang", async () => {
    const text = await rawExchange(port(), "hello, is this the payments desk?\r\n\r\n");
    expect(text.timedOut).toBe(false);
    expect(text.received).toMatch(/^HTTP\/1\.1 400 /);
    const binary = await rawExchange(port(), Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00]));
    expect(binary.timedOut).toBe(false);
    expect(binary.closedByServer).toBe(true);
  });

  it("an HTTP/2 preface followed by garbage is closed, not left hanging", async () => {
    const r = await rawExchange(port(), Buffer.concat([Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Buffer.from("not an http2 frame at all, sorry")]));
    expect(r.timedOut).toBe(false);
    expect(r.closedByServer).toBe(true);
  });

  it("still serves after all that", async () => {
    const res = await postJson("GetRate", { baseCurrency: "USD", quoteCurrency: "USD" });
    expect(res.status).toBe(200);
    expect(res.json.rate.midRate).toBe("1");
  });
});

describe("error responses never leak internals", () => {
  it("text PostgreSQL cannot store (a NUL byte) is refused before the database, naming the field (Connect JSON and gRPC)", async () => {
    const res = await postJson("GetQuote", { quoteId: "qt_\u0000" });
    expect(res.status).toBe(400);
    expect(res.json).toMatchObject({ code: "invalid_argument", message: "quote_id: must not contain the NUL character (U+0000)" });

    const fx = grpcJs(FxGrpc);
    const err = (await rejectionOf(grpcUnary(fx, "GetQuote", { quote_id: "qt_\u0000" }, 10_000))) as grpc.ServiceError;
    expect(err.code).toBe(3);
    expect(JSON.stringify(err.metadata.getMap())).not.toMatch(INTERNALS);
  });

  it("no error body contains a stack frame or SQL", async () => {
    const bodies = await Promise.all([
      postJson("Convert", "{not json"),
      postJson("Convert", { amount: { currency: "USD", amountMinor: "1" }, toCurrency: "JPY", nope: true }),
      postJson("Convert", { amount: { currency: "USD", amountMinor: "abc" }, toCurrency: "JPY" }),
      postJson("Convert", { quoteId: "qt_nope", reference: "x" }),
      postJson("CreateQuote", { amount: { currency: "USD", amountMinor: "1" }, toCurrency: "JPY", ttl: "999999s" }),
      postJson("Convert", { amount: { currency: "USD", amountMinor: "1" }, toCurrency: "JPY", reference: "z".repeat(4096) }),
      postJson("GetQuote", { quoteId: "\u0000" }),
      postJson("Convert", { quoteId: "qt_\u0000", reference: "\u0000" }),
    ]);
    for (const b of bodies) {
      expect(b.status, b.text).toBeGreaterThanOrEqual(400);
      expect(typeof b.json.code).toBe("string");
      expect(b.text).not.toMatch(INTERNALS);
    }
  });
});
