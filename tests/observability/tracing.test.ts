// One CreatePayment is one trace: the five services started in this process (as their
// processes start them), an in-memory span exporter added to the process's tracer provider,
// one cross-currency payment through the gateway (gRPC, and once over the REST route), and
// then the spans of that one trace id: a SERVER span in every service, every hop a CLIENT
// span whose child is the next SERVER span (traceparent carried on the wire), the saga
// steps and the database transactions as children carrying the payment's id, merchant and
// currency, no API key anywhere, and the services' log lines carrying the same trace id.
//
// All five services share one process here, so one tracer provider (and one resource):
// spans are told apart by their names and rpc.service, and the two CreatePayment SERVER
// spans (gateway, payments) by their parents.
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { SpanKind } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import type { Interceptor } from "@connectrpc/connect";
import { CaptureMethod, PaymentStatus } from "../../services/gen/paygate/payments/v1/payments_pb.js";
import { addSpanProcessor, flushTracing, tracingInfo } from "../../services/runtime/observability/tracing.js";
import { storageBackends } from "../support/postgres.js";
import { ACME, GLOBEX, gatewayClients, minor, startStack, waitFor, type Stack } from "../support/stack.js";

vi.setConfig({ testTimeout: 60_000, hookTimeout: 180_000 });

// Every service's log lines, as written (the services create their loggers themselves).
const logs = vi.hoisted(() => ({ lines: [] as string[] }));
vi.mock("../../services/runtime/observability/logger.js", async (importOriginal) => {
  const real = await importOriginal<typeof import("../../services/runtime/observability/logger.js")>();
  const sink = { write: (line: string) => void logs.lines.push(line) };
  return { ...real, createLogger: (service: string, level: string) => real.createLogger(service, level, sink) };
});

const exporter = new InMemorySpanExporter();
addSpanProcessor(new SimpleSpanProcessor(exporter));

const PAYMENTS = "paygate.payments.v1.PaymentsService";
const RISK = "paygate.risk.v1.RiskService";
const FX = "paygate.fx.v1.FxService";
const WALLET = "paygate.wallet.v1.WalletService";

/** A client-side trace context: the gateway's SERVER span must continue it. */
function clientTraceparent() {
  const traceId = randomBytes(16).toString("hex");
  const spanId = randomBytes(8).toString("hex");
  return { traceId, spanId, header: `00-${traceId}-${spanId}-01` };
}

const withHeader =
  (name: string, value: string): Interceptor =>
  (next) =>
  (req) => {
    req.header.set(name, value);
    return next(req);
  };

const idOf = (s: ReadableSpan) => s.spanContext().spanId;
const parentOf = (s: ReadableSpan) => s.parentSpanContext?.spanId;

/** The finished spans of one trace, once `expected` of them are there and stay so. */
async function traceOf(traceId: string, done: (spans: ReadableSpan[]) => boolean): Promise<ReadableSpan[]> {
  await flushTracing();
  return waitFor(() => {
    const spans = exporter.getFinishedSpans().filter((s) => s.spanContext().traceId === traceId);
    return done(spans) ? spans : undefined;
  }, `the spans of trace ${traceId}`);
}

/** The spans of a trace arranged for questions: by name, children of, ancestors of. */
function tree(spans: ReadableSpan[]) {
  const byId = new Map(spans.map((s) => [idOf(s), s]));
  const named = (name: string, kind?: SpanKind) => spans.filter((s) => s.name === name && (kind === undefined || s.kind === kind));
  const one = (name: string, kind?: SpanKind) => {
    const found = named(name, kind);
    expect(found, `exactly one span ${name}${kind === undefined ? "" : ` of kind ${SpanKind[kind]}`}`).toHaveLength(1);
    return found[0]!;
  };
  const parent = (s: ReadableSpan) => byId.get(parentOf(s) ?? "");
  const children = (s: ReadableSpan) => spans.filter((c) => parentOf(c) === idOf(s));
  const ancestors = (s: ReadableSpan) => {
    const out: ReadableSpan[] = [];
    for (let p = parent(s); p; p = parent(p)) out.push(p);
    return out;
  };
  return { byId, named, one, parent, children, ancestors };
}

/** Which service answered a SERVER span (one process holds all five: by rpc.service and parent). */
function serverOf(s: ReadableSpan, t: ReturnType<typeof tree>): string {
  const service = s.attributes["rpc.service"];
  if (service === PAYMENTS) return t.parent(s)?.kind === SpanKind.CLIENT ? "payments" : "gateway";
  if (service === RISK) return "risk";
  if (service === FX) return "fx";
  if (service === WALLET) return "wallet";
  if (s.attributes["http.request.method"] !== undefined) return "gateway";
  return `unknown ${s.name}`;
}

/** Every string in every attribute of every span. */
const attributeText = (spans: ReadableSpan[]) => spans.flatMap((s) => Object.entries(s.attributes).map(([k, v]) => `${s.name} ${k}=${String(v)}`));

/** Log lines (parsed) written with `traceId`. */
const linesOf = (traceId: string) =>
  logs.lines
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.trace_id === traceId);

describe.each(storageBackends())("one trace per payment ($name)", (backend) => {
  let stack: Stack;
  const debug = { LOG_LEVEL: "debug" };

  beforeAll(async () => {
    stack = await startStack({ backend, name: "tracing", env: { fx: debug, risk: debug, wallet: debug, payments: debug, gateway: debug } });
  });
  afterAll(async () => {
    await stack?.stop();
  });

  it("installs a tracer provider and, with no OTEL_* variables, no exporter", () => {
    const info = tracingInfo();
    expect(info, "a tracer provider is installed").toBeDefined();
    if (Object.keys(process.env).some((k) => k.startsWith("OTEL_"))) return; // the caller's own OTEL_* setup
    expect(info!.exporters).toEqual([]);
  });

  it("a cross-currency CreatePayment (gRPC) is one trace through gateway, payments, risk, fx and wallet", async () => {
    const src = await stack.fund(ACME.id, "USD", "500.00");
    const dst = await stack.fund(GLOBEX.id, "EUR", "0");
    const tp = clientTraceparent();
    const linesBefore = logs.lines.length;
    const clients = gatewayClients(stack.gatewayUrl, ACME.apiKey, "grpc");
    const { payment } = await clients.payments.createPayment(
      { sourceAccountId: src, destinationAccountId: dst, amount: { currency: "USD", amountMinor: minor("42.50", "USD") }, settlementCurrency: "EUR", merchantReference: "trace-1" },
      { headers: { traceparent: tp.header } },
    );
    expect(PaymentStatus[payment!.status]).toBe("CAPTURED");
    const paymentId = payment!.id;

    const spans = await traceOf(tp.traceId, (s) => s.some((x) => x.name === "saga.run") && s.some((x) => x.kind === SpanKind.SERVER && x.parentSpanContext?.spanId === tp.spanId));
    const t = tree(spans);
    if (process.env.DUMP_TRACE) {
      const print = (s: ReadableSpan, depth: number): void => {
        console.log(`${"  ".repeat(depth)}${SpanKind[s.kind]} ${s.name} ${JSON.stringify(s.attributes)}`);
        for (const c of t.children(s)) print(c, depth + 1);
      };
      for (const r of spans.filter((s) => t.parent(s) === undefined)) print(r, 0);
      console.log(logs.lines.slice(linesBefore).join(""));
    }

    // The gateway continues the caller's trace: its SERVER span's parent is the caller's span.
    const roots = spans.filter((s) => t.parent(s) === undefined);
    expect(roots.map((s) => s.name)).toEqual([`${PAYMENTS}/CreatePayment`]);
    const gateway = roots[0]!;
    expect(gateway.kind).toBe(SpanKind.SERVER);
    expect(parentOf(gateway)).toBe(tp.spanId);
    expect(gateway.parentSpanContext?.isRemote).toBe(true);
    expect(gateway.attributes).toMatchObject({ "rpc.system": "grpc", "rpc.service": PAYMENTS, "rpc.method": "CreatePayment", "paygate.rpc.protocol": "grpc", "rpc.grpc.status_code": 0 });

    // A SERVER span in every service, under one trace id.
    const servers = spans.filter((s) => s.kind === SpanKind.SERVER);
    const services = new Set(servers.map((s) => serverOf(s, t)));
    for (const svc of ["gateway", "payments", "risk", "fx", "wallet"]) expect(services, `a SERVER span of ${svc}`).toContain(svc);
    const names = new Set(servers.map((s) => s.name));
    for (const n of [`${PAYMENTS}/CreatePayment`, `${RISK}/Score`, `${FX}/CreateQuote`, `${WALLET}/Reserve`]) expect(names).toContain(n);
    expect(t.named(`${PAYMENTS}/CreatePayment`, SpanKind.SERVER)).toHaveLength(2); // gateway and payments

    // Every hop: a SERVER span's parent is a CLIENT span of the same RPC (carried by
    // traceparent), and that CLIENT span's parent is a span of the calling service.
    for (const server of servers.filter((s) => s !== gateway)) {
      const client = t.parent(server);
      expect(client, `the parent of ${server.name}`).toBeDefined();
      expect(client!.kind, `the parent of ${server.name}`).toBe(SpanKind.CLIENT);
      expect(client!.name).toBe(server.name);
      expect(client!.attributes).toMatchObject({ "rpc.system": "grpc", "rpc.service": server.attributes["rpc.service"], "rpc.method": server.attributes["rpc.method"], "rpc.grpc.status_code": 0 });
      expect(typeof client!.attributes["server.port"]).toBe("number");
      expect(t.parent(client!), `the caller of ${client!.name}`).toBeDefined();
      expect(server.attributes["rpc.grpc.status_code"]).toBe(0);
    }
    // No duplicate SERVER span for one call: each CLIENT span has exactly one SERVER child.
    for (const client of spans.filter((s) => s.kind === SpanKind.CLIENT && s.attributes["rpc.service"] !== undefined)) {
      expect(t.children(client).filter((c) => c.kind === SpanKind.SERVER), `SERVER children of ${client.name}`).toHaveLength(1);
    }
    // Nothing is left open, and nothing failed.
    expect(spans.every((s) => s.ended)).toBe(true);
    expect(spans.filter((s) => s.status.code === 2).map((s) => s.name)).toEqual([]);

    // The saga: a child of the payments SERVER span, its steps children of it, each with the
    // payment's attributes; the downstream calls are children of their step.
    const paymentsServer = t.named(`${PAYMENTS}/CreatePayment`, SpanKind.SERVER).find((s) => s !== gateway)!;
    const run = t.one("saga.run");
    expect(t.ancestors(run)).toContain(paymentsServer);
    const attrs = { "paygate.payment_id": paymentId, "paygate.merchant_id": ACME.id, "paygate.currency": "USD", "paygate.settlement_currency": "EUR" };
    expect(run.attributes).toMatchObject({ ...attrs, "paygate.payment_status": "CAPTURED" });
    const steps: [string, string][] = [
      ["saga.risk", `${RISK}/Score`],
      ["saga.fx_quote", `${FX}/CreateQuote`],
      ["saga.wallet_reserve_capture", `${WALLET}/Reserve`],
    ];
    for (const [name, rpc] of steps) {
      const step = t.one(name);
      expect(t.parent(step), `the parent of ${name}`).toBe(run);
      expect(step.attributes, name).toMatchObject(attrs);
      const call = t.children(step).filter((c) => c.kind === SpanKind.CLIENT);
      expect(call.map((c) => c.name), `the call made by ${name}`).toEqual([rpc]);
      expect(call[0]!.attributes["paygate.payment_id"]).toBe(paymentId);
    }
    // The risk SERVER span knows the payment from its request.
    expect(t.one(`${RISK}/Score`, SpanKind.SERVER).attributes["paygate.payment_id"]).toBe(paymentId);

    // Database work (transactions, and statements that are transactions of their own):
    // children in the same trace, the saga's carrying the payment.
    const txs = [...t.named("db.transaction"), ...t.named("db.query")];
    expect(txs.length).toBeGreaterThan(0);
    for (const tx of txs) {
      expect(tx.kind).toBe(SpanKind.CLIENT);
      expect(tx.attributes).toMatchObject({ "db.system": "postgresql", "db.system.name": "postgresql", "paygate.db.backend": backend.name, "paygate.db.outcome": "commit" });
      expect(t.parent(tx), "a transaction span has a parent in the trace").toBeDefined();
    }
    // The payments service's own transactions inside the saga carry the payment's attributes
    // (other services' transactions under it know the payment only when their request names it).
    const sagaTxs = txs.filter((tx) => t.ancestors(tx).includes(run) && tx.attributes["paygate.db.schema"] === "payments");
    expect(sagaTxs.length, "transactions of the payments service inside the saga").toBeGreaterThan(0);
    for (const tx of sagaTxs) expect(tx.attributes).toMatchObject({ "paygate.payment_id": paymentId, "paygate.merchant_id": ACME.id, "paygate.currency": "USD" });
    const riskTx = txs.filter((tx) => tx.attributes["paygate.db.schema"] === "risk");
    expect(riskTx.length).toBeGreaterThan(0);
    for (const tx of riskTx) expect(tx.attributes["paygate.payment_id"], "risk's transaction knows the payment from its request").toBe(paymentId);
    const schemas = new Set(txs.map((tx) => tx.attributes["paygate.db.schema"]));
    for (const schema of ["payments", "wallet", "risk"]) expect(schemas, `a transaction in ${schema}`).toContain(schema);

    // No API key, bearer token or header anywhere; no SQL text.
    const text = attributeText(spans);
    expect(text.filter((a) => a.includes(ACME.apiKey) || /bearer|authorization/i.test(a))).toEqual([]);
    expect(text.filter((a) => /\b(select|insert|update|delete)\b/i.test(a))).toEqual([]);

    // Logs: every line written for this request carries its trace id, in every service (the
    // services log at debug here: one "rpc" line per call, and the saga's outcome). Nothing
    // else runs in this process meanwhile, so every such line belongs to this request.
    const during = logs.lines.slice(linesBefore).map((l) => JSON.parse(l) as Record<string, unknown>);
    const ofRequest = during.filter((l) => l.msg === "rpc" || l.paymentId === paymentId);
    expect(ofRequest.length).toBeGreaterThanOrEqual(servers.length);
    expect(ofRequest.filter((l) => l.trace_id !== tp.traceId)).toEqual([]);
    const traced = linesOf(tp.traceId);
    expect(new Set(traced.map((l) => l.service))).toEqual(new Set(["gateway", "payments", "risk", "fx", "wallet"]));
    const processed = traced.find((l) => l.msg === "payment processed");
    expect(processed, "the payments service logs the outcome").toMatchObject({ paymentId, status: "CAPTURED", service: "payments" });
    expect(processed!.span_id).toBe(idOf(run));
    for (const l of traced) expect(t.byId.has(l.span_id as string), `the span of log line ${JSON.stringify(l)}`).toBe(true);
    expect(logs.lines.join("\n")).not.toContain(ACME.apiKey);
  });

  it("a payment over the REST route is one trace too, under a SERVER span of the route", async () => {
    const src = await stack.fund(ACME.id, "USD", "100.00");
    const dst = await stack.fund(GLOBEX.id, "USD", "0");
    const tp = clientTraceparent();
    const res = await fetch(`${stack.gatewayUrl}/payments`, {
      method: "POST",
      headers: { authorization: `Bearer ${ACME.apiKey}`, "content-type": "application/json", traceparent: tp.header },
      body: JSON.stringify({ id: `rest-${randomBytes(4).toString("hex")}`, currency: "USD", amount: 12.5, source_account: src, destination_account: dst }),
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { id: string; status: string };
    expect(body.status).toBe("CAPTURED");

    const spans = await traceOf(tp.traceId, (s) => s.some((x) => x.name === "saga.run") && s.some((x) => x.name === "POST /payments"));
    const t = tree(spans);
    const route = t.one("POST /payments");
    expect(route.kind).toBe(SpanKind.SERVER);
    expect(parentOf(route)).toBe(tp.spanId);
    expect(route.attributes).toMatchObject({ "http.request.method": "POST", "url.path": "/payments", "http.route": "/payments", "http.response.status_code": 200 });
    const call = t.one(`${PAYMENTS}/CreatePayment`, SpanKind.CLIENT);
    expect(t.parent(call)).toBe(route);
    const server = t.one(`${PAYMENTS}/CreatePayment`, SpanKind.SERVER);
    expect(t.parent(server)).toBe(call);
    expect(t.one("saga.run").attributes["paygate.payment_id"]).toBe(body.id);
    for (const name of ["saga.risk", "saga.wallet_reserve_capture"]) expect(t.ancestors(t.one(name))).toContain(route);
    expect(attributeText(spans).filter((a) => a.includes(ACME.apiKey) || /bearer|authorization/i.test(a))).toEqual([]);
  });

  it("a manual capture is a trace of its own whose saga step carries the payment", async () => {
    const src = await stack.fund(ACME.id, "USD", "100.00");
    const dst = await stack.fund(GLOBEX.id, "USD", "0");
    const clients = gatewayClients(stack.gatewayUrl, ACME.apiKey, "grpc");
    const { payment } = await clients.payments.createPayment({ sourceAccountId: src, destinationAccountId: dst, amount: { currency: "USD", amountMinor: 500n }, captureMethod: CaptureMethod.MANUAL });
    expect(PaymentStatus[payment!.status]).toBe("AUTHORIZED");
    const tp = clientTraceparent();
    await clients.payments.capturePayment({ paymentId: payment!.id }, { headers: { traceparent: tp.header } });
    const spans = await traceOf(tp.traceId, (s) => s.some((x) => x.name === "saga.wallet_capture") && s.some((x) => x.name === `${WALLET}/Capture` && x.kind === SpanKind.SERVER));
    const t = tree(spans);
    const capture = t.one("saga.wallet_capture");
    expect(capture.attributes).toMatchObject({ "paygate.payment_id": payment!.id, "paygate.merchant_id": ACME.id, "paygate.currency": "USD" });
    expect(t.ancestors(capture).map((s) => s.name)).toContain(`${PAYMENTS}/CapturePayment`);
    expect(t.parent(t.one(`${WALLET}/Capture`, SpanKind.SERVER))?.name).toBe(`${WALLET}/Capture`);
  });

  it("a request without a traceparent starts a new trace at the gateway; health checks make no spans", async () => {
    exporter.reset();
    const clients = gatewayClients(stack.gatewayUrl, ACME.apiKey, "connect");
    const { currencies } = await clients.fx.listCurrencies({});
    expect(currencies.length).toBeGreaterThan(0);
    await flushTracing();
    const spans = await waitFor(() => {
      const s = exporter.getFinishedSpans().filter((x) => x.name === `${FX}/ListCurrencies`);
      return s.length >= 3 ? s : undefined; // gateway SERVER, its CLIENT, fx SERVER
    }, "the ListCurrencies spans");
    const traceIds = new Set(spans.map((s) => s.spanContext().traceId));
    expect(traceIds.size).toBe(1);
    const root = spans.find((s) => s.parentSpanContext === undefined)!;
    expect(root.kind).toBe(SpanKind.SERVER);
    expect(root.attributes).toMatchObject({ "rpc.system": "connect_rpc", "paygate.rpc.protocol": "connect" });
    // Readiness polls and probes (grpc.health.v1.Health) are never traced.
    await fetch(`${stack.gatewayUrl}/readyz`);
    await flushTracing();
    expect(exporter.getFinishedSpans().filter((s) => String(s.attributes["rpc.service"] ?? "").startsWith("grpc.health") || String(s.attributes["url.path"] ?? "").endsWith("z"))).toEqual([]);
  });

  it("a refused call ends its spans with the code; a client error is not a SERVER span error", async () => {
    exporter.reset();
    const tp = clientTraceparent();
    const clients = gatewayClients(stack.gatewayUrl, ACME.apiKey, "grpc");
    await expect(clients.payments.getPayment({ paymentId: "pay_does_not_exist" }, { headers: { traceparent: tp.header } })).rejects.toThrow();
    const spans = await traceOf(tp.traceId, (s) => s.filter((x) => x.kind === SpanKind.SERVER).length >= 2);
    const t = tree(spans);
    const servers = t.named(`${PAYMENTS}/GetPayment`, SpanKind.SERVER);
    expect(servers).toHaveLength(2);
    for (const s of servers) {
      expect(s.attributes).toMatchObject({ "rpc.grpc.status_code": 5, "rpc.connect_rpc.error_code": "not_found" });
      expect(s.status.code, "NOT_FOUND is the caller's problem, not the server's").not.toBe(2);
    }
    // The gateway relays the call without reading its message; payments names the payment.
    const [gateway, payments] = [servers.find((s) => serverOf(s, t) === "gateway")!, servers.find((s) => serverOf(s, t) === "payments")!];
    expect(gateway.attributes["paygate.payment_id"]).toBeUndefined();
    expect(payments.attributes["paygate.payment_id"]).toBe("pay_does_not_exist");
    const client = t.one(`${PAYMENTS}/GetPayment`, SpanKind.CLIENT);
    expect(client.status.code, "for the caller it is an error").toBe(2);
    expect(client.attributes["error.type"]).toBe("not_found");
  });
});
