// Helpers for tests that talk to real servers over the network: grpc-js clients built from
// the .proto files (an implementation independent of Connect), google.rpc.Status decoding,
// free ports, polling, raw TCP and external tools (grpcurl, buf curl).
import { execFile, execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { fromBinary } from "@bufbuild/protobuf";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { ErrorDetailSchema, type ErrorDetail } from "../../services/gen/paygate/common/v1/common_pb.js";

export const repoRoot = fileURLToPath(new URL("../../", import.meta.url));
const modules = path.join(repoRoot, "node_modules");

/** proto-loader options: snake_case fields, int64 as strings, enums by name, oneof case names. */
export const loaderOptions: protoLoader.Options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

export function grpcClientConstructor(includeDirs: string[], file: string, service: string): grpc.ServiceClientConstructor {
  const def = protoLoader.loadSync(file, { ...loaderOptions, includeDirs });
  const svc = def[service];
  if (!svc) throw new Error(`${service} not found in ${file}`);
  return grpc.makeGenericClientConstructor(svc as grpc.ServiceDefinition, service);
}

/** paygate.fx.v1.FxService from proto/ (proto-loader brings the google well-known types). */
export const FxGrpc = grpcClientConstructor([path.join(repoRoot, "proto")], "paygate/fx/v1/fx.proto", "paygate.fx.v1.FxService");
export const HealthGrpc = grpcClientConstructor([path.join(modules, "grpc-health-check/proto")], "health/v1/health.proto", "grpc.health.v1.Health");
const reflectionDir = path.join(modules, "@grpc/reflection/build/proto");
export const ReflectionV1Grpc = grpcClientConstructor([reflectionDir], "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1.ServerReflection");
export const ReflectionV1alphaGrpc = grpcClientConstructor(
  [reflectionDir],
  "grpc/reflection/v1alpha/reflection.proto",
  "grpc.reflection.v1alpha.ServerReflection",
);

/** "http://127.0.0.1:1234" -> "127.0.0.1:1234" */
export const hostPort = (url: string): string => new URL(url).host;

/** A grpc-js client for `url`; remember to close() it. */
export function grpcClient(ctor: grpc.ServiceClientConstructor, url: string): grpc.Client {
  return new ctor(hostPort(url), grpc.credentials.createInsecure());
}

/** Calls a unary method on a grpc-js generic client. */
export function grpcUnary<Res>(client: grpc.Client, method: string, req: unknown, deadlineMs?: number): Promise<Res> {
  const fn = (client as unknown as Record<string, (...args: unknown[]) => unknown>)[method];
  if (!fn) throw new Error(`no method ${method}`);
  const options: grpc.CallOptions = deadlineMs === undefined ? {} : { deadline: Date.now() + deadlineMs };
  return new Promise((resolve, reject) => {
    fn.call(client, req, new grpc.Metadata(), options, (err: grpc.ServiceError | null, res: Res) => (err ? reject(err) : resolve(res)));
  });
}

/** Starts a server-streaming call on a grpc-js generic client. */
export function grpcServerStream<Res>(client: grpc.Client, method: string, req: unknown): grpc.ClientReadableStream<Res> {
  const fn = (client as unknown as Record<string, (...args: unknown[]) => grpc.ClientReadableStream<Res>>)[method];
  if (!fn) throw new Error(`no method ${method}`);
  return fn.call(client, req);
}

/** Sends `requests` on one bidi stream (e.g. ServerReflectionInfo), half-closes, collects the answers. */
export function grpcBidiAll<Res>(client: grpc.Client, method: string, requests: unknown[]): Promise<Res[]> {
  const fn = (client as unknown as Record<string, () => grpc.ClientDuplexStream<unknown, Res>>)[method];
  if (!fn) throw new Error(`no method ${method}`);
  const call = fn.call(client);
  return new Promise((resolve, reject) => {
    const out: Res[] = [];
    call.on("data", (r: Res) => out.push(r));
    call.on("error", reject);
    call.on("end", () => resolve(out));
    for (const r of requests) call.write(r);
    call.end();
  });
}

/** The error a promise rejects with; fails if it resolves. */
export async function rejectionOf(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    (value) => {
      throw new Error(`expected a rejection, got ${JSON.stringify(value, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v))}`);
    },
    (err: unknown) => err,
  );
}

export function isServiceError(err: unknown): err is grpc.ServiceError {
  return err instanceof Error && typeof (err as Partial<grpc.ServiceError>).code === "number" && "metadata" in err;
}

/**
 * The Any details of a google.rpc.Status in `grpc-status-details-bin`, decoded by hand
 * (field 3 of Status: repeated Any{type_url = 1, value = 2}).
 */
export function statusDetails(metadata: grpc.Metadata): { typeUrl: string; value: Uint8Array }[] {
  const raw = metadata.get("grpc-status-details-bin")[0];
  if (raw === undefined) return [];
  const bytes = typeof raw === "string" ? Buffer.from(raw, "base64") : raw;
  const reader = new BinaryReader(bytes);
  const out: { typeUrl: string; value: Uint8Array }[] = [];
  while (reader.pos < reader.len) {
    const [no, wireType] = reader.tag();
    if (no !== 3) {
      reader.skip(wireType);
      continue;
    }
    const any = new BinaryReader(reader.bytes());
    let typeUrl = "";
    let value: Uint8Array = new Uint8Array();
    while (any.pos < any.len) {
      const [n, w] = any.tag();
      if (n === 1) typeUrl = any.string();
      else if (n === 2) value = any.bytes();
      else any.skip(w);
    }
    out.push({ typeUrl, value });
  }
  return out;
}

/** The Paygate ErrorDetails carried by a grpc-js error. */
export function grpcErrorDetails(err: grpc.ServiceError): ErrorDetail[] {
  return statusDetails(err.metadata)
    .filter((d) => d.typeUrl === "type.googleapis.com/paygate.common.v1.ErrorDetail")
    .map((d) => fromBinary(ErrorDetailSchema, d.value));
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value (returned), or fails after `timeoutMs`. */
export async function waitFor<T>(fn: () => T | Promise<T>, what: string, timeoutMs = 10_000, intervalMs = 25): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (last error: ${String(lastError)})` : ""}`);
    }
    await sleep(intervalMs);
  }
}

/** Rejects if `p` has not settled within `ms`. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Writes `bytes` on a fresh TCP connection and collects what comes back until the server
 * closes the connection, `until` matches the received text, or `timeoutMs` passes.
 */
export function rawExchange(
  port: number,
  bytes: string | Buffer,
  opts: { timeoutMs?: number; until?: (received: string) => boolean } = {},
): Promise<{ received: string; closedByServer: boolean; timedOut: boolean }> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    let received = "";
    let settled = false;
    const finish = (closedByServer: boolean, timedOut: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ received, closedByServer, timedOut });
    };
    const timer = setTimeout(() => finish(false, true), opts.timeoutMs ?? 5000);
    socket.on("data", (d) => {
      received += d.toString("latin1");
      if (opts.until?.(received)) finish(false, false);
    });
    socket.on("end", () => finish(true, false));
    socket.on("close", () => finish(true, false));
    socket.on("error", () => finish(true, false));
    socket.write(bytes);
  });
}

export interface ToolResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs an external program without blocking the event loop (the server under test runs in this process). */
export function runTool(file: string, args: string[], timeoutMs = 60_000): Promise<ToolResult> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, encoding: "utf8", cwd: repoRoot }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === "number" ? ((err as { code: number }).code) : null) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** grpcurl on PATH, or in $(go env GOPATH)/bin (where CI's `go install` puts it). */
export function findGrpcurl(): string | undefined {
  const candidates: string[] = [];
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) if (dir) candidates.push(path.join(dir, "grpcurl"));
  try {
    const gopath = execFileSync("go", ["env", "GOPATH"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"], timeout: 20_000 }).trim();
    for (const dir of gopath.split(path.delimiter)) if (dir) candidates.push(path.join(dir, "bin", "grpcurl"));
  } catch {
    // no Go toolchain
  }
  if (process.env.HOME) candidates.push(path.join(process.env.HOME, "go", "bin", "grpcurl"));
  return candidates.find((c) => existsSync(c));
}

export const bufBin = path.join(modules, ".bin", "buf");
