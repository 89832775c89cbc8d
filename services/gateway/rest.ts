// The REST compatibility routes of the original gateway, on the same port as the RPC API:
//   POST /payments   {"id","currency","amount","source_account","destination_account"}
//   GET  /payments/{id}   GET /rate?base=&quote=   GET /convert?from=&to=&amount=
//   GET  /balance/{id}    POST /score {"account","amount","currency"}
// Each route runs the same public API implementation an RPC would (same auth, ownership,
// idempotency and errors); amounts are decimals in major units, converted exactly.
import type http from "node:http";
import type http2 from "node:http2";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { create, type DescMethod, type DescService } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createContextValues, createHandlerContext, type Client, type HandlerContext } from "@connectrpc/connect";
import { codeToHttpStatus, codeToString } from "../runtime/rpc/connect-protocol.js";
import { ErrorDetailSchema } from "../gen/paygate/common/v1/common_pb.js";
import { ConvertRequestSchema, ConvertResponseSchema, FxService, GetRateRequestSchema, GetRateResponseSchema } from "../gen/paygate/fx/v1/fx_pb.js";
import {
  CaptureMethod,
  CreatePaymentRequestSchema,
  CreatePaymentResponseSchema,
  GetPaymentRequestSchema,
  GetPaymentResponseSchema,
  PaymentsService,
  PaymentStatus,
  type Payment,
} from "../gen/paygate/payments/v1/payments_pb.js";
import { Outcome, type RiskService } from "../gen/paygate/risk/v1/risk_pb.js";
import { GetAccountRequestSchema, GetBalanceRequestSchema, GetBalanceResponseSchema, WalletService } from "../gen/paygate/wallet/v1/wallet_pb.js";
import { DomainError, invalidArgument, toConnectError, type ErrorKind } from "../runtime/errors.js";
import { newId } from "../runtime/ids.js";
import { requireText } from "../runtime/rpc/text.js";
import type { Logger } from "../runtime/observability/logger.js";
import { formatMinor, money, parseJsonAmount } from "../runtime/money/money.js";
import { downstream } from "../runtime/rpc/upstream.js";
import { IDEMPOTENCY_HEADER, REPLAYED_HEADER } from "../runtime/rpc/headers.js";
import { apiKeyFrom, type Merchants } from "./merchants.js";
import { merchantKey, type publicApi } from "./public-api.js";

type Request = http.IncomingMessage | http2.Http2ServerRequest;
type Response = http.ServerResponse | http2.Http2ServerResponse;
type Api = ReturnType<typeof publicApi>;

const INDEX_HTML = readFileSync(new URL("./static/index.html", import.meta.url));
const MAX_BODY_BYTES = 64 * 1024;

export function restRoutes(api: Api, risk: Client<typeof RiskService>, merchants: Merchants, upstreamTimeoutMs: number, logger: Logger) {
  /** A handler context for calling the public API from a REST route, as an RPC would get. */
  async function context(req: Request, service: DescService, method: DescMethod): Promise<HandlerContext> {
    const header = (name: string) => headerValue(req, name);
    const merchant = await merchants.authenticate(apiKeyFrom(header));
    const key = header(IDEMPOTENCY_HEADER);
    return createHandlerContext({
      service,
      method,
      protocolName: "rest",
      requestMethod: req.method ?? "GET",
      url: req.url ?? "/",
      timeoutMs: upstreamTimeoutMs,
      requestHeader: key ? { [IDEMPOTENCY_HEADER]: key } : {},
      contextValues: createContextValues().set(merchantKey, merchant),
    });
  }

  /** A route answers a JSON body; it may add response headers to `headers`. */
  /** `param` names the field a route's path parameter is (in errors). */
  const routes: { method: string; pattern: RegExp; param?: string; handle: (req: Request, url: URL, params: string[], headers: Record<string, string>) => Promise<unknown> }[] = [
    {
      method: "POST",
      pattern: /^\/payments$/,
      async handle(req, _url, _params, headers) {
        const body = await jsonBody(req, ["id", "currency", "amount", "source_account", "destination_account", "settlement_currency", "capture_method"]);
        const id = requiredString(body, "id");
        const currency = requiredString(body, "currency");
        const amountMinor = parseJsonAmount(body.amount, currency, "amount");
        const captureMethod = body.capture_method === undefined ? "automatic" : requiredString(body, "capture_method");
        if (captureMethod !== "automatic" && captureMethod !== "manual") throw invalidArgument("INVALID_CAPTURE_METHOD", "capture_method", 'capture_method: "automatic" or "manual"');
        const ctx = await context(req, PaymentsService, PaymentsService.method.createPayment);
        // The client's payment id makes the request idempotent when no Idempotency-Key is sent.
        if (!ctx.requestHeader.has(IDEMPOTENCY_HEADER)) ctx.requestHeader.set(IDEMPOTENCY_HEADER, restPaymentKey(id));
        const request = create(CreatePaymentRequestSchema, {
          merchantReference: id,
          sourceAccountId: requiredString(body, "source_account"),
          destinationAccountId: requiredString(body, "destination_account"),
          amount: money(currency, amountMinor),
          settlementCurrency: optionalString(body, "settlement_currency"),
          captureMethod: captureMethod === "manual" ? CaptureMethod.MANUAL : CaptureMethod.AUTOMATIC,
        });
        try {
          const { payment } = create(CreatePaymentResponseSchema, await api.payments.createPayment(request, ctx));
          return paymentJson(payment!);
        } finally {
          // A replay is marked whether it repeats a payment or a refusal.
          const replayed = ctx.responseHeader.get(REPLAYED_HEADER);
          if (replayed) headers[REPLAYED_HEADER] = replayed;
        }
      },
    },
    {
      method: "GET",
      pattern: /^\/payments\/([^/]+)$/,
      param: "payment_id",
      async handle(req, _url, [id]) {
        const ctx = await context(req, PaymentsService, PaymentsService.method.getPayment);
        const { payment } = create(GetPaymentResponseSchema, await api.payments.getPayment(create(GetPaymentRequestSchema, { paymentId: id! }), ctx));
        return paymentJson(payment!);
      },
    },
    {
      method: "GET",
      pattern: /^\/rate$/,
      async handle(req, url) {
        const ctx = await context(req, FxService, FxService.method.getRate);
        const request = create(GetRateRequestSchema, { baseCurrency: queryParam(url, "base"), quoteCurrency: queryParam(url, "quote") });
        const { rate } = create(GetRateResponseSchema, await api.fx.getRate(request, ctx));
        return { base: rate!.baseCurrency, quote: rate!.quoteCurrency, rate: rate!.midRate, as_of: timestampDate(rate!.asOf!).toISOString(), source: rate!.source };
      },
    },
    {
      method: "GET",
      pattern: /^\/convert$/,
      async handle(req, url) {
        const from = queryParam(url, "from");
        const ctx = await context(req, FxService, FxService.method.convert);
        const request = create(ConvertRequestSchema, {
          source: { case: "decimalAmount", value: { currency: from, value: queryParam(url, "amount") } },
          toCurrency: queryParam(url, "to"),
        });
        // Errors name the query parameters, not the RPC fields behind them.
        const res = create(
          ConvertResponseSchema,
          await Promise.resolve(api.fx.convert(request, ctx)).catch((err: unknown) => {
            throw renameField(err, { "decimal_amount.value": "amount", "decimal_amount.currency": "from", to_currency: "to" });
          }),
        );
        return {
          from: res.source!.currency,
          to: res.converted!.currency,
          amount: formatMinor(res.source!.amountMinor, res.source!.currency),
          converted: formatMinor(res.converted!.amountMinor, res.converted!.currency),
          rate: res.rate,
        };
      },
    },
    {
      method: "GET",
      pattern: /^\/balance\/([^/]+)$/,
      param: "account_id",
      async handle(req, _url, [id]) {
        const ctx = await context(req, WalletService, WalletService.method.getBalance);
        const { balance } = create(GetBalanceResponseSchema, await api.wallet.getBalance(create(GetBalanceRequestSchema, { accountId: id! }), ctx));
        const c = balance!.posted!.currency;
        return {
          account_id: balance!.accountId,
          currency: c,
          available: formatMinor(balance!.available!.amountMinor, c),
          pending: formatMinor(balance!.pending!.amountMinor, c),
          posted: formatMinor(balance!.posted!.amountMinor, c),
        };
      },
    },
    {
      method: "POST",
      pattern: /^\/score$/,
      async handle(req) {
        const body = await jsonBody(req, ["account", "amount", "currency", "id"]);
        const currency = requiredString(body, "currency");
        const amountMinor = parseJsonAmount(body.amount, currency, "amount");
        const account = requiredString(body, "account");
        const ctx = await context(req, PaymentsService, PaymentsService.method.createPayment);
        // Scores the account's own payments only: the merchant must own it.
        await api.wallet.getAccount(create(GetAccountRequestSchema, { accountId: account }), ctx);
        const { decision } = await risk.score(
          { paymentId: optionalString(body, "id") || newId("score"), accountId: account, amount: money(currency, amountMinor), merchantId: ctx.values.get(merchantKey)!.id },
          downstream(ctx, upstreamTimeoutMs),
        );
        return {
          decision_id: decision!.id,
          score: decision!.score,
          decision: Outcome[decision!.outcome],
          reasons: decision!.reasons.filter((r) => !r.shadow).map((r) => r.code),
          rules_version: decision!.rulesVersion,
        };
      },
    },
  ];

  return (req: Request, res: Response): void => {
    const url = requestUrl(req.url);
    if (!url) return sendError(res, invalidArgument("INVALID_REQUEST_TARGET", "", "the request target is not a valid path"), logger, {});
    if (req.method === "GET" && (url.pathname === "/" || url.pathname === "/index.html")) {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(INDEX_HTML);
      return;
    }
    for (const route of routes) {
      const match = route.pattern.exec(url.pathname);
      if (!match) continue;
      if (req.method !== route.method) return sendJson(res, 405, { error: { code: "method_not_allowed", message: `${req.method} ${url.pathname}: use ${route.method}` } });
      const headers: Record<string, string> = {};
      Promise.resolve()
        .then(() => route.handle(req, url, match.slice(1).map((segment) => pathParam(segment, route.param!)), headers))
        .then(
          (body) => sendJson(res, 200, body, headers),
          (err: unknown) => sendError(res, err, logger, headers),
        )
        .catch((err: unknown) => {
          // The answer could not be written: nothing more can be said on this request.
          logger.error({ err }, "REST answer failed");
          res.destroy();
        });
      return;
    }
    sendJson(res, 404, { error: { code: "not_found", message: `no route ${req.method} ${url.pathname}` } });
  };
}

/**
 * The URL of a request target in origin form ("/path?query"); undefined for anything else
 * (absolute form, "//host", "*", or what no URL parser accepts).
 */
function requestUrl(target: string | undefined): URL | undefined {
  if (!target?.startsWith("/") || target.startsWith("//")) return undefined;
  return URL.canParse(target, "http://gateway") ? new URL(target, "http://gateway") : undefined;
}

/** A path segment, percent-decoded, as the text of the field it names. */
function pathParam(segment: string, field: string): string {
  let value: string;
  try {
    value = decodeURIComponent(segment);
  } catch {
    throw invalidArgument("INVALID_FIELD", field, `${field}: the path segment is not valid percent-encoded UTF-8`);
  }
  return requireText(value, field);
}

function paymentJson(p: Payment) {
  const amount = (m: { currency: string; amountMinor: bigint } | undefined) => (m ? formatMinor(m.amountMinor, m.currency) : null);
  return {
    id: p.id,
    reference: p.merchantReference,
    status: PaymentStatus[p.status],
    currency: p.amount!.currency,
    amount: amount(p.amount),
    source_account: p.sourceAccountId,
    destination_account: p.destinationAccountId,
    settlement_currency: p.settlementAmount?.currency ?? null,
    settlement_amount: amount(p.settlementAmount),
    fx_rate: p.fxRate || null,
    captured_amount: amount(p.capturedAmount),
    refunded_amount: amount(p.refundedAmount),
    risk_score: p.riskScore,
    failure_reason: p.failureReason || null,
    failure_message: p.failureMessage || null,
    created_at: p.createdAt ? timestampDate(p.createdAt).toISOString() : null,
  };
}

/** The same error, blaming the REST name of the field instead of the RPC one. */
function renameField(err: unknown, names: Record<string, string>): unknown {
  const connect = err instanceof DomainError ? toConnectError(err) : err;
  if (!(connect instanceof ConnectError)) return err;
  const detail = connect.findDetails(ErrorDetailSchema)[0];
  const to = detail && names[detail.field];
  if (!detail || !to) return err;
  const message = connect.rawMessage.startsWith(`${detail.field}:`) ? `${to}:${connect.rawMessage.slice(detail.field.length + 1)}` : connect.rawMessage;
  return new DomainError(kindOf(connect.code), detail.reason, message, to, detail.metadata);
}

const kindOf = (code: Code): ErrorKind => codeToString(code) as ErrorKind;

function headerValue(req: Request, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function queryParam(url: URL, name: string): string {
  const value = url.searchParams.get(name);
  if (value === null || value === "") throw invalidArgument("MISSING_FIELD", name, `query parameter ${name} is required`);
  return requireText(value, name);
}

function requiredString(body: Record<string, unknown>, field: string): string {
  const v = body[field];
  if (v === undefined || v === null || v === "") throw invalidArgument("MISSING_FIELD", field, `${field} is required`);
  if (typeof v !== "string") throw invalidArgument("INVALID_FIELD", field, `${field}: expected a string`);
  return requireText(v, field);
}

function optionalString(body: Record<string, unknown>, field: string): string {
  return body[field] === undefined || body[field] === null ? "" : requiredString(body, field);
}

/**
 * The Idempotency-Key a REST payment gets from its id. A header value is Latin-1 text of at
 * most 255 characters: an id that does not fit one as it is goes in as its SHA-256 (under
 * another prefix, so no id can name the same key as another's digest).
 */
function restPaymentKey(id: string): string {
  const key = `payment:${id}`;
  return key.length <= 255 && /^[\x20-\x7e]*$/.test(key) ? key : `payment-sha256:${createHash("sha256").update(id).digest("base64url")}`;
}

/** The request body as a JSON object with only `allowed` keys (a typo is an error, not ignored). */
async function jsonBody(req: Request, allowed: string[]): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new DomainError("resource_exhausted", "BODY_TOO_LARGE", `request body over ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  let body: unknown;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw invalidArgument("INVALID_JSON", "", "the request body is not valid JSON");
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw invalidArgument("INVALID_JSON", "", "the request body must be a JSON object");
  const unknown = Object.keys(body).filter((k) => !allowed.includes(k));
  if (unknown.length > 0) throw invalidArgument("UNKNOWN_FIELD", unknown[0]!, `unknown field ${JSON.stringify(unknown[0])}; expected ${allowed.join(", ")}`);
  return body as Record<string, unknown>;
}

function sendJson(res: Response, status: number, body: unknown, headers: Record<string, string> = {}): void {
  (res as http.ServerResponse).writeHead(status, { ...headers, "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

function sendError(res: Response, err: unknown, logger: Logger, headers: Record<string, string>): void {
  let connect: ConnectError;
  if (err instanceof DomainError) connect = toConnectError(err);
  else if (err instanceof ConnectError) connect = err;
  else {
    logger.error({ err }, "unexpected error in REST route");
    connect = new ConnectError("internal error", Code.Internal);
  }
  const detail = connect.findDetails(ErrorDetailSchema)[0];
  sendJson(
    res,
    codeToHttpStatus(connect.code),
    { error: { code: kindOf(connect.code), message: connect.rawMessage, reason: detail?.reason ?? "", field: detail?.field ?? "" } },
    headers,
  );
}
