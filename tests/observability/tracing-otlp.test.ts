// Tracing is configured by the standard OTEL_* variables alone, in a real service process:
//   - none set: no exporter, nothing is sent (not even to the default localhost:4318);
//   - OTEL_EXPORTER_OTLP_ENDPOINT: spans arrive as OTLP/HTTP protobuf at <endpoint>/v1/traces,
//     the last ones flushed when the process stops on SIGTERM;
//   - OTEL_EXPORTER_OTLP_TRACES_ENDPOINT + OTEL_EXPORTER_OTLP_PROTOCOL=http/json +
//     OTEL_SERVICE_NAME: OTLP JSON at exactly that URL, with that service name;
//   - OTEL_EXPORTER_OTLP_PROTOCOL=grpc: OTLP/gRPC to the collector's TraceService/Export;
//   - OTEL_PROPAGATORS, OTEL_NODE_RESOURCE_DETECTORS and OTEL_LOG_LEVEL: the SDK's own
//     choices (b3 headers continue a trace; the resource holds what the named detectors find;
//     the SDK's diagnostics are JSON log lines, nothing else reaches stdout);
//   - a protocol no OTLP exporter speaks stops start-up with a clear message (exit 2);
//   - the five services as five processes (as `npm start` runs them) with one
//     OTEL_EXPORTER_OTLP_ENDPOINT: one CreatePayment is one trace holding spans of five
//     resources (service.name gateway, payments, risk, fx, wallet).
// The receivers are tiny HTTP (for gRPC, HTTP/2) servers on 127.0.0.1; the single-service
// cases use the fx process (`node --import tsx services/fx/main.ts`), the smallest one with a
// database.
import type { ChildProcess } from "node:child_process";
import { spawnService } from "../../scripts/service-process.js";
import { randomBytes } from "node:crypto";
import http from "node:http";
import http2 from "node:http2";
import os from "node:os";
import { afterEach, describe, expect, it, vi } from "vitest";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { FxService } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { PaymentsService, PaymentStatus } from "../../services/gen/paygate/payments/v1/payments_pb.js";
import { ConfigError } from "../../services/runtime/config.js";
import { exportersFromEnv } from "../../services/runtime/observability/tracing.js";
import { freePort } from "../support/ports.js";
import { ACME, bearer, repoRoot, sleep, waitFor } from "../support/stack.js";

vi.setConfig({ testTimeout: 60_000 });

interface Post {
  path: string;
  contentType: string;
  body: Buffer;
}

interface Receiver {
  url: string;
  posts: Post[];
  close(): Promise<void>;
}

/** An OTLP/HTTP receiver: records every request, answers 200 with an empty body. */
async function startReceiver(port = 0, host = "127.0.0.1"): Promise<Receiver> {
  const posts: Post[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      posts.push({ path: `${req.method} ${req.url}`, contentType: req.headers["content-type"] ?? "", body: Buffer.concat(chunks) });
      const json = (req.headers["content-type"] ?? "").includes("json");
      res.writeHead(200, { "content-type": json ? "application/json" : "application/x-protobuf" });
      res.end(json ? "{}" : undefined);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const { port: bound } = server.address() as import("node:net").AddressInfo;
  return {
    url: `http://${host.includes(":") ? `[${host}]` : host}:${bound}`,
    posts,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/** An OTLP/gRPC receiver (HTTP/2 without TLS): records every request, answers an empty message with grpc-status 0. */
async function startGrpcReceiver(): Promise<Receiver> {
  const posts: Post[] = [];
  const server = http2.createServer();
  server.on("stream", (stream, headers) => {
    const chunks: Buffer[] = [];
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("end", () => {
      posts.push({ path: `${String(headers[":method"])} ${String(headers[":path"])}`, contentType: String(headers["content-type"] ?? ""), body: Buffer.concat(chunks) });
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      stream.end(Buffer.alloc(5)); // one uncompressed message of length 0: an empty ExportTraceServiceResponse
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as import("node:net").AddressInfo;
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => sessions.add(s));
  return {
    url: `http://127.0.0.1:${port}`,
    posts,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sessions) s.destroy();
        server.close(() => r());
      }),
  };
}

interface Service {
  child: ChildProcess;
  url: string;
  /** Parsed JSON log lines written to stdout so far. */
  logs(): Record<string, unknown>[];
  stdout(): string;
  stderr(): string;
  exited: Promise<number | null>;
}

const children: ChildProcess[] = [];
const receivers: Receiver[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  for (const r of receivers.splice(0)) await r.close();
});

type Fx = Service;

/** A service as its own process (`services/<name>/main.ts`), with only `env` and the basics in its environment. */
function startProcess(name: string, port: number, env: Record<string, string>): Service {
  let stdout = "";
  let stderr = "";
  const spawned = spawnService(`services/${name}/main.ts`, {
    cwd: repoRoot,
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? os.tmpdir(), HOST: "127.0.0.1", DATA_DIR: "memory://", LOG_LEVEL: "info", ...env },
    onLine: (line, stream) => (stream === "stdout" ? (stdout += `${line}\n`) : (stderr += `${line}\n`)),
  });
  const { child } = spawned;
  children.push(child);
  const exited = spawned.exited.then(({ code }) => code);
  return {
    child,
    url: `http://127.0.0.1:${port}`,
    logs: () =>
      stdout
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    stdout: () => stdout,
    stderr: () => stderr,
    exited,
  };
}

/** The fx service as its own process, with only `otel` (and what it needs to run) in its environment. */
async function startFxProcess(otel: Record<string, string>): Promise<Fx> {
  const port = await freePort();
  return startProcess("fx", port, { FX_PORT: String(port), FX_ADMIN_PORT: String(await freePort()), FX_MARKET_TICK_MS: "0", ...otel });
}

async function ready(svc: Service, name = "fx"): Promise<void> {
  await waitFor(
    () => {
      if (svc.child.exitCode !== null) throw new Error(`${name} exited early (${svc.child.exitCode}):\n${svc.stderr()}`);
      return svc.logs().some((l) => l.msg === `${name} listening`);
    },
    `the ${name} process to listen`,
    60_000,
    50,
    (err) => err instanceof Error && err.message.startsWith(`${name} exited`),
  );
}

/** Calls fx (Connect, HTTP/1.1) in a trace of the test's own (W3C traceparent unless `headers` carry it); returns its trace id. */
async function callFx(fx: Fx, traceId = randomBytes(16).toString("hex"), headers: Record<string, string> = { traceparent: `00-${traceId}-${randomBytes(8).toString("hex")}-01` }): Promise<string> {
  const client = createClient(FxService, createConnectTransport({ baseUrl: fx.url, httpVersion: "1.1" }));
  const { currencies } = await client.listCurrencies({}, { headers });
  expect(currencies.length).toBeGreaterThan(0);
  return traceId;
}

async function stop(fx: Fx): Promise<number | null> {
  fx.child.kill("SIGTERM");
  return fx.exited;
}

/**
 * Runs fx exporting to `receiver` (with `otel` added) with a batch delay longer than the test,
 * so that only the shutdown flush can deliver its spans; calls it, stops it with SIGTERM, and
 * checks that what arrived at `path` is the protobuf of the call's SERVER span. The requests
 * received at `path` and the process, for the caller's own checks.
 */
async function exportedOnSigterm(receiver: Receiver, otel: Record<string, string>, exporter: string, path: string) {
  const fx = await startFxProcess({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_BSP_SCHEDULE_DELAY: "600000", ...otel });
  await ready(fx);
  expect(fx.logs().find((l) => l.msg === "fx listening")).toMatchObject({ traceExporters: [exporter] });
  const traceId = await callFx(fx);
  expect(receiver.posts).toEqual([]);
  expect(await stop(fx)).toBe(0);
  const posts = receiver.posts.filter((p) => p.path === path);
  expect(posts.length, `requests received: ${receiver.posts.map((p) => p.path).join(", ")}`).toBeGreaterThan(0);
  const body = Buffer.concat(posts.map((p) => p.body));
  // Protobuf: the trace id as 16 raw bytes, names and attribute values as plain strings.
  expect(body.includes(Buffer.from(traceId, "hex")), "the call's trace id").toBe(true);
  expect(body.includes(Buffer.from("paygate.fx.v1.FxService/ListCurrencies")), "the SERVER span's name").toBe(true);
  expect(body.includes(Buffer.from("service.name")) && body.includes(Buffer.from("fx")), "the resource names the service").toBe(true);
  return { posts, fx };
}

describe("tracing configured by OTEL_* variables (a real fx process)", () => {
  it("with no OTEL_* variable there is no exporter and nothing is sent, not even to the default localhost:4318", async () => {
    // Listen where an SDK with the specification's defaults would send (when the port is free here).
    const defaults: Receiver[] = [];
    for (const host of ["127.0.0.1", "::1"]) {
      const r = await startReceiver(4318, host).catch(() => undefined);
      if (r) defaults.push(r), receivers.push(r);
    }
    const fx = await startFxProcess({});
    await ready(fx);
    expect(fx.logs().find((l) => l.msg === "fx listening")).toMatchObject({ traceExporters: [] });
    await callFx(fx);
    await callFx(fx);
    expect(await stop(fx)).toBe(0);
    await sleep(200);
    expect(defaults.flatMap((r) => r.posts)).toEqual([]);
    expect(fx.stderr()).toBe("");
  });

  it("OTEL_EXPORTER_OTLP_ENDPOINT: OTLP/HTTP protobuf arrives at /v1/traces, flushed on SIGTERM", async () => {
    const receiver = await startReceiver();
    receivers.push(receiver);
    const { posts } = await exportedOnSigterm(receiver, {}, "otlp http/protobuf", "POST /v1/traces");
    expect(posts[0]!.contentType).toBe("application/x-protobuf");
  });

  it("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT with http/json and OTEL_SERVICE_NAME: OTLP JSON at that exact URL, batched while running", async () => {
    const receiver = await startReceiver();
    receivers.push(receiver);
    const fx = await startFxProcess({
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${receiver.url}/collector/traces`,
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
      OTEL_SERVICE_NAME: "fx-under-test",
      OTEL_BSP_SCHEDULE_DELAY: "100",
    });
    await ready(fx);
    expect(fx.logs().find((l) => l.msg === "fx listening")).toMatchObject({ traceExporters: ["otlp http/json"] });
    const traceId = await callFx(fx);
    type OtlpJson = {
      resourceSpans: { resource: { attributes: { key: string; value: { stringValue?: string } }[] }; scopeSpans: { spans: { traceId: string; name: string; kind: number; attributes: { key: string }[] }[] }[] }[];
    };
    const payload = await waitFor(() => {
      const p = receiver.posts.find((x) => x.path === "POST /collector/traces");
      return p ? p : undefined;
    }, "an OTLP JSON export while the process runs");
    expect(payload.contentType).toBe("application/json");
    const json = JSON.parse(payload.body.toString("utf8")) as OtlpJson;
    const rs = json.resourceSpans[0]!;
    expect(rs.resource.attributes.find((a) => a.key === "service.name")?.value.stringValue).toBe("fx-under-test");
    const spans = rs.scopeSpans.flatMap((s) => s.spans);
    const server = spans.find((s) => s.traceId === traceId);
    expect(server).toMatchObject({ name: "paygate.fx.v1.FxService/ListCurrencies", kind: 2 /* SERVER */ });
    expect(server!.attributes.map((a) => a.key)).toEqual(expect.arrayContaining(["rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code"]));
    expect(await stop(fx)).toBe(0);
  });

  it("five service processes, one endpoint: one CreatePayment is one trace with spans of all five services", async () => {
    const receiver = await startReceiver();
    receivers.push(receiver);
    const otel = { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL: "http/json", OTEL_BSP_SCHEDULE_DELAY: "200" };
    const port: Record<string, number> = {};
    for (const n of ["fx", "wallet", "risk", "payments", "gateway"]) port[n] = await freePort();
    const url = (n: string) => `http://127.0.0.1:${port[n]}`;
    const admin = async () => String(await freePort());
    const started: [string, Service][] = [];
    const up = async (name: string, env: Record<string, string>) => {
      const svc = startProcess(name, port[name]!, { ...otel, ...env });
      started.push([name, svc]);
      return svc;
    };
    await Promise.all([
      up("fx", { FX_PORT: String(port.fx), FX_ADMIN_PORT: await admin(), FX_MARKET_TICK_MS: "0" }),
      up("wallet", { WALLET_PORT: String(port.wallet), WALLET_ADMIN_PORT: await admin() }),
      up("risk", { RISK_PORT: String(port.risk), RISK_ADMIN_PORT: await admin(), FX_URL: url("fx") }),
      up("payments", { PAYMENTS_PORT: String(port.payments), PAYMENTS_ADMIN_PORT: await admin(), FX_URL: url("fx"), WALLET_URL: url("wallet"), RISK_URL: url("risk") }),
      up("gateway", { GATEWAY_PORT: String(port.gateway), GATEWAY_DEMO_DATA: "true", PAYMENTS_URL: url("payments"), FX_URL: url("fx"), WALLET_URL: url("wallet"), RISK_URL: url("risk") }),
    ]);
    for (const [name, svc] of started) await ready(svc, name);
    // The gateway logs "demo data ready" once the demo accounts exist.
    const gateway = started.find(([n]) => n === "gateway")![1];
    await waitFor(() => gateway.logs().some((l) => l.msg === "demo data ready"), "the demo data", 60_000);

    const traceId = randomBytes(16).toString("hex");
    const payments = createClient(PaymentsService, createConnectTransport({ baseUrl: url("gateway"), httpVersion: "1.1", interceptors: [bearer(ACME.apiKey)] }));
    const { payment } = await payments.createPayment(
      { sourceAccountId: "acme_usd", destinationAccountId: "globex_eur", amount: { currency: "USD", amountMinor: 1999n }, settlementCurrency: "EUR" },
      { headers: { traceparent: `00-${traceId}-${randomBytes(8).toString("hex")}-01` } },
    );
    expect(PaymentStatus[payment!.status]).toBe("CAPTURED");
    for (const [, svc] of started.reverse()) {
      svc.child.kill("SIGTERM");
      expect(await svc.exited).toBe(0);
    }

    type Json = { resourceSpans: { resource: { attributes: { key: string; value: { stringValue?: string } }[] }; scopeSpans: { spans: { traceId: string; name: string; kind: number }[] }[] }[] };
    const spansByService = new Map<string, string[]>();
    for (const post of receiver.posts.filter((p) => p.path === "POST /v1/traces")) {
      for (const rs of (JSON.parse(post.body.toString("utf8")) as Json).resourceSpans) {
        const service = rs.resource.attributes.find((a) => a.key === "service.name")?.value.stringValue ?? "?";
        for (const span of rs.scopeSpans.flatMap((s) => s.spans).filter((x) => x.traceId === traceId)) {
          spansByService.set(service, [...(spansByService.get(service) ?? []), span.name]);
        }
      }
    }
    expect([...spansByService.keys()].sort()).toEqual(["fx", "gateway", "payments", "risk", "wallet"]);
    expect(spansByService.get("gateway")).toContain("paygate.payments.v1.PaymentsService/CreatePayment");
    expect(spansByService.get("payments")).toEqual(expect.arrayContaining(["saga.run", "saga.risk", "saga.fx_quote", "saga.wallet_reserve_capture", "db.query"]));
    expect(spansByService.get("risk")).toEqual(expect.arrayContaining(["paygate.risk.v1.RiskService/Score", "db.query"]));
    expect(spansByService.get("fx")).toEqual(expect.arrayContaining(["paygate.fx.v1.FxService/CreateQuote", "db.query"]));
    expect(spansByService.get("wallet")).toContain("paygate.wallet.v1.WalletService/Reserve");
    // The hold in one statement, or (first use of a currency pair) in a transaction.
    expect(spansByService.get("wallet")!.some((name) => name === "db.query" || name === "db.transaction")).toBe(true);
    expect(receiver.posts.map((p) => p.body.toString("utf8")).join("")).not.toContain(ACME.apiKey);
  });

  it("OTEL_EXPORTER_OTLP_PROTOCOL=grpc: OTLP/gRPC arrives at the collector's TraceService/Export, flushed on SIGTERM", async () => {
    const receiver = await startGrpcReceiver();
    receivers.push(receiver);
    const { posts, fx } = await exportedOnSigterm(receiver, { OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" }, "otlp grpc", "POST /opentelemetry.proto.collector.trace.v1.TraceService/Export");
    expect(posts[0]!.contentType).toMatch(/^application\/grpc/);
    expect(fx.stderr()).toBe("");
  });

  it("OTEL_PROPAGATORS, OTEL_NODE_RESOURCE_DETECTORS and OTEL_LOG_LEVEL: b3 headers continue the caller's trace; the resource holds what the named detectors find; the SDK's diagnostics are log lines", async () => {
    const receiver = await startReceiver();
    receivers.push(receiver);
    const fx = await startFxProcess({
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
      OTEL_PROPAGATORS: "b3multi",
      OTEL_NODE_RESOURCE_DETECTORS: "env,host",
      OTEL_RESOURCE_ATTRIBUTES: "deployment.environment.name=tracing-test",
      OTEL_LOG_LEVEL: "debug",
      LOG_LEVEL: "debug",
    });
    await ready(fx);
    const traceId = randomBytes(16).toString("hex");
    const parentId = randomBytes(8).toString("hex");
    await callFx(fx, traceId, { "x-b3-traceid": traceId, "x-b3-spanid": parentId, "x-b3-sampled": "1" });
    expect(await stop(fx)).toBe(0);
    type Json = { resourceSpans: { resource: { attributes: { key: string; value: { stringValue?: string } }[] }; scopeSpans: { spans: { traceId: string; parentSpanId?: string; name: string }[] }[] }[] };
    const batches = receiver.posts.filter((p) => p.path === "POST /v1/traces").flatMap((p) => (JSON.parse(p.body.toString("utf8")) as Json).resourceSpans);
    const server = batches.flatMap((rs) => rs.scopeSpans.flatMap((s) => s.spans)).find((s) => s.traceId === traceId);
    expect(server, "the SERVER span continues the b3 trace").toMatchObject({ name: "paygate.fx.v1.FxService/ListCurrencies", parentSpanId: parentId });
    const resource = new Map(batches[0]!.resource.attributes.map((a) => [a.key, a.value.stringValue]));
    expect(resource.get("service.name")).toBe("fx");
    expect(resource.get("service.namespace")).toBe("paygate");
    expect(resource.get("deployment.environment.name")).toBe("tracing-test");
    expect(resource.get("host.name"), "the host detector ran").toBe(os.hostname());
    expect(resource.has("process.pid"), "the process detector was not named").toBe(false);
    // Nothing but JSON log lines on stdout, the SDK's own words among them.
    expect(fx.stdout().split("\n").filter((l) => l !== "" && !l.startsWith("{"))).toEqual([]);
    expect(fx.logs().filter((l) => String(l.msg).startsWith("opentelemetry: ")).length).toBeGreaterThan(0);
    expect(fx.stderr()).toBe("");
  });

  it("a protocol no OTLP exporter speaks stops start-up with a clear message", async () => {
    const fx = await startFxProcess({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4317", OTEL_EXPORTER_OTLP_PROTOCOL: "thrift" });
    expect(await fx.exited).toBe(2);
    expect(fx.stderr()).toContain("OTEL_EXPORTER_OTLP_PROTOCOL: expected http/protobuf or http/json");
    expect(fx.stderr()).not.toContain("    at "); // a message, not a stack trace
  });
});

describe("exportersFromEnv", () => {
  const saved = { ...process.env };
  afterEach(() => {
    for (const k of Object.keys(process.env)) if (k.startsWith("OTEL_") && !(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  });
  const withEnv = (vars: Record<string, string>) => {
    for (const k of Object.keys(process.env)) if (k.startsWith("OTEL_")) delete process.env[k];
    Object.assign(process.env, vars);
    return exportersFromEnv();
  };

  it("reads the standard variables", () => {
    expect(withEnv({})).toEqual([]);
    expect(withEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: "" }), "empty is unset").toEqual([]);
    expect(withEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318" })).toEqual([{ kind: "otlp", protocol: "http/protobuf" }]);
    expect(withEnv({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://collector:4318/v1/traces", OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "http/json" })).toEqual([
      { kind: "otlp", protocol: "http/json" },
    ]);
    expect(withEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4317", OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" })).toEqual([{ kind: "otlp", protocol: "grpc" }]);
    expect(withEnv({ OTEL_TRACES_EXPORTER: "otlp" }), "named explicitly: the default endpoint").toEqual([{ kind: "otlp", protocol: "http/protobuf" }]);
    expect(withEnv({ OTEL_TRACES_EXPORTER: "console, otlp" })).toEqual([{ kind: "console" }, { kind: "otlp", protocol: "http/protobuf" }]);
    expect(withEnv({ OTEL_TRACES_EXPORTER: "none", OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318" })).toEqual([]);
  });

  it("refuses what it cannot honour, naming the variable", () => {
    expect(() => withEnv({ OTEL_TRACES_EXPORTER: "zipkin" })).toThrow(ConfigError);
    expect(() => withEnv({ OTEL_TRACES_EXPORTER: "zipkin" })).toThrow(/OTEL_TRACES_EXPORTER: expected otlp, console or none, got "zipkin"/);
    expect(() => withEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4317", OTEL_EXPORTER_OTLP_PROTOCOL: "thrift" })).toThrow(/OTEL_EXPORTER_OTLP_PROTOCOL/);
  });
});
