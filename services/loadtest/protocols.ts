// One CreatePayment through the gateway in each protocol the load runner speaks, each
// answering the same Answer: the payment's status, or the error code it got.
//   connect-json  POST /paygate.payments.v1.PaymentsService/CreatePayment, Content-Type: application/json
//   rest          POST /payments (the original route), amount as a decimal string
//   grpc          the gRPC protocol over HTTP/2, the schema taken from the gateway's server reflection
import { createFileRegistry, fromBinary, fromJson, toJson, type DescMethodUnary, type JsonValue, type Message } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ServerReflection } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { parseDecimalAmount } from "../runtime/money/money.js";
import { codeToString } from "../runtime/rpc/connect-protocol.js";
import type { PaymentSpec, Protocol } from "./script.js";

export interface Answer {
  /** "ok" when a payment came back, else the error's code (invalid_argument, unavailable, …). */
  code: string;
  /** CAPTURED, FAILED, AUTHORIZED, … (with code "ok"). */
  status?: string;
  reason?: string;
  captured?: { currency: string; minor: bigint };
}

export type Send = (payment: PaymentSpec, apiKey: string) => Promise<Answer>;

const SERVICE = "paygate.payments.v1.PaymentsService";
const METHOD = "CreatePayment";
/** One payment's deadline, in every protocol. */
export const REQUEST_TIMEOUT_MS = 30_000;

/** A payment in protobuf JSON (Connect JSON, or gRPC's answer turned into JSON) as an Answer. */
function fromPaymentJson(payment: Record<string, unknown> | undefined): Answer {
  if (!payment) return { code: "no_payment_in_answer" };
  const status = String(payment.status ?? "").replace(/^PAYMENT_STATUS_/, "");
  const captured = payment.capturedAmount as { currency?: string; amountMinor?: string } | undefined;
  return {
    code: "ok",
    status,
    ...(payment.failureReason ? { reason: String(payment.failureReason) } : {}),
    ...(captured?.currency ? { captured: { currency: captured.currency, minor: BigInt(captured.amountMinor ?? "0") } } : {}),
  };
}

/** The request in protobuf JSON; amount_minor from the decimal exactly. */
function requestJson(p: PaymentSpec) {
  return {
    sourceAccountId: p.sourceAccount,
    destinationAccountId: p.destinationAccount,
    amount: { currency: p.currency, amountMinor: parseDecimalAmount(p.amount, p.currency, "amount").toString() },
    merchantReference: p.id,
  };
}

/** A call that got no HTTP answer: refused, reset, or out of time. */
function transportFailure(err: unknown): Answer {
  if (err instanceof Error && (err.name === "TimeoutError" || err.name === "AbortError")) return { code: "deadline_exceeded" };
  const cause = err instanceof Error ? (err.cause as { code?: string } | undefined)?.code : undefined;
  return { code: `no_answer${cause ? ` (${cause})` : ""}` };
}

async function readJson(res: Response): Promise<Record<string, unknown>> {
  const text = await res.text();
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch {
    return {};
  }
}

function connectJson(target: URL): Send {
  const url = new URL(`/${SERVICE}/${METHOD}`, target);
  return async (p, apiKey) => {
    const body = JSON.stringify(requestJson(p));
    try {
      const res = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json", "connect-protocol-version": "1", "connect-timeout-ms": String(REQUEST_TIMEOUT_MS), authorization: `Bearer ${apiKey}`, "idempotency-key": p.id },
        body,
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
      const json = await readJson(res);
      if (res.status !== 200) return { code: typeof json.code === "string" ? json.code : `http_${res.status}` };
      return fromPaymentJson(json.payment as Record<string, unknown> | undefined);
    } catch (err) {
      return transportFailure(err);
    }
  };
}

function rest(target: URL): Send {
  const url = new URL("/payments", target);
  return async (p, apiKey) => {
    // The REST id is the payment's idempotency key; the amount goes as a decimal string.
    const body = JSON.stringify({ id: p.id, currency: p.currency, amount: p.amount, source_account: p.sourceAccount, destination_account: p.destinationAccount });
    try {
      const res = await fetch(url, { method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${apiKey}` }, body, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
      const json = await readJson(res);
      if (res.status !== 200) {
        const code = (json.error as { code?: unknown } | undefined)?.code;
        return { code: typeof code === "string" ? code : `http_${res.status}` };
      }
      const captured = typeof json.captured_amount === "string" ? json.captured_amount : undefined;
      return {
        code: "ok",
        status: String(json.status),
        ...(json.failure_reason ? { reason: String(json.failure_reason) } : {}),
        ...(captured ? { captured: { currency: p.currency, minor: parseDecimalAmount(captured, p.currency, "captured_amount") } } : {}),
      };
    } catch (err) {
      return transportFailure(err);
    }
  };
}

/** The FileDescriptorProtos of the file declaring `symbol` and of everything it imports. */
async function reflectFiles(transport: Transport, symbol: string, headers: Record<string, string>): Promise<Map<string, FileDescriptorProto>> {
  const client = createClient(ServerReflection, transport);
  const files = new Map<string, FileDescriptorProto>();
  const ask = async (question: { case: "fileContainingSymbol" | "fileByFilename"; value: string }) => {
    async function* one() {
      yield { messageRequest: question };
    }
    for await (const answer of client.serverReflectionInfo(one(), { headers, timeoutMs: REQUEST_TIMEOUT_MS })) {
      const r = answer.messageResponse;
      if (r.case === "errorResponse") throw new Error(`server reflection: ${r.value.errorMessage}`);
      if (r.case !== "fileDescriptorResponse") throw new Error(`server reflection answered ${String(r.case)} to ${question.case}`);
      for (const bytes of r.value.fileDescriptorProto) {
        const file = fromBinary(FileDescriptorProtoSchema, bytes);
        files.set(file.name, file);
      }
    }
  };
  await ask({ case: "fileContainingSymbol", value: symbol });
  // A server may send the file alone: fetch whatever import is still missing.
  for (let missing = [...files.values()].flatMap((f) => f.dependency).filter((d) => !files.has(d)); missing.length > 0; missing = [...files.values()].flatMap((f) => f.dependency).filter((d) => !files.has(d))) {
    for (const name of missing) await ask({ case: "fileByFilename", value: name });
  }
  return files;
}

/** CreatePayment's descriptor, built from what the gateway's server reflection says. */
export async function reflectCreatePayment(target: URL, apiKey: string): Promise<{ method: DescMethodUnary; transport: Transport }> {
  const transport = createGrpcTransport({ baseUrl: target.origin });
  const files = await reflectFiles(transport, SERVICE, { authorization: `Bearer ${apiKey}` });
  const root = [...files.values()].find((f) => f.service.some((s) => `${f.package}.${s.name}` === SERVICE));
  if (!root) throw new Error(`server reflection gave no file declaring ${SERVICE}`);
  const registry = createFileRegistry(root, (name) => files.get(name));
  const method = registry.getService(SERVICE)?.methods.find((m) => m.name === METHOD);
  if (method?.methodKind !== "unary") throw new Error(`${SERVICE} has no unary method ${METHOD} in the gateway's reflection`);
  return { method: method as DescMethodUnary, transport };
}

async function grpc(target: URL, apiKey: string): Promise<Send> {
  const { method, transport } = await reflectCreatePayment(target, apiKey);
  return async (p, key) => {
    try {
      const res = await transport.unary(method, undefined, REQUEST_TIMEOUT_MS, { authorization: `Bearer ${key}`, "idempotency-key": p.id }, fromJson(method.input, requestJson(p) as JsonValue), undefined);
      const json = toJson(method.output, res.message as Message) as { payment?: Record<string, unknown> };
      return fromPaymentJson(json.payment);
    } catch (err) {
      if (err instanceof ConnectError) return { code: codeToString(err.code) };
      return transportFailure(err);
    }
  };
}

/** The sender for `protocol`; gRPC asks the gateway's reflection for the schema first. */
export async function sender(protocol: Protocol, target: URL, apiKey: string): Promise<Send> {
  switch (protocol) {
    case "connect-json":
      return connectJson(target);
    case "rest":
      return rest(target);
    case "grpc":
      return grpc(target, apiKey);
  }
}
