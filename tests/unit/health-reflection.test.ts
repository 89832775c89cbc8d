// Health and reflection served by Connect over real h2c, checked with grpc-js as an
// independent client that knows only the upstream .proto files; and a client leaving a
// reflection stream early on a Paygate server (startServer), which is no error of the server.
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { create, createFileRegistry, fromBinary, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, timestampNow } from "@bufbuild/protobuf/wkt";
import type { FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { ServerReflectionRequestSchema } from "../../services/gen/grpc/reflection/v1/reflection_pb.js";
import { FxService } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { HealthStatus, ServingStatus, registerHealth } from "../../services/runtime/rpc/health.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { registry } from "../../services/runtime/observability/metrics.js";
import { registerReflection } from "../../services/runtime/rpc/reflection.js";
import { startServer as startPaygateServer } from "../../services/runtime/rpc/server.js";
import { waitFor } from "../support/wire.js";

const modules = fileURLToPath(new URL("../../node_modules/", import.meta.url));
const loaderOptions: protoLoader.Options = { keepCase: true, enums: String, defaults: true, oneofs: true };

function clientConstructor(includeDir: string, file: string, service: string): grpc.ServiceClientConstructor {
  const def = protoLoader.loadSync(file, { ...loaderOptions, includeDirs: [includeDir] });
  return grpc.makeGenericClientConstructor(def[service] as grpc.ServiceDefinition, service);
}

const reflectionDir = `${modules}@grpc/reflection/build/proto`;
const ReflectionV1 = clientConstructor(reflectionDir, "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1.ServerReflection");
const ReflectionV1alpha = clientConstructor(
  reflectionDir,
  "grpc/reflection/v1alpha/reflection.proto",
  "grpc.reflection.v1alpha.ServerReflection",
);
const HealthClient = clientConstructor(`${modules}grpc-health-check/proto`, "health/v1/health.proto", "grpc.health.v1.Health");

/** A ServerReflectionResponse as proto-loader decodes it (keepCase, oneofs). */
interface ReflectionResponse {
  valid_host: string;
  original_request: Record<string, unknown> | null;
  message_response: string;
  list_services_response?: { service: { name: string }[] };
  file_descriptor_response?: { file_descriptor_proto: Uint8Array[] };
  all_extension_numbers_response?: { base_type_name: string; extension_number: number[] };
  error_response?: { error_code: number; error_message: string };
}

interface TestServer {
  address: string;
  health: HealthStatus;
  /** Passed to registerHealth as stopWatches. */
  stopWatches: AbortController;
  close(): Promise<void>;
}

async function startServer(): Promise<TestServer> {
  const health = new HealthStatus([FxService.typeName]);
  const stopWatches = new AbortController();
  const routes = (router: ConnectRouter) => {
    router.service(FxService, {
      getRate(req) {
        return { rate: { baseCurrency: req.baseCurrency, quoteCurrency: req.quoteCurrency, midRate: "2", asOf: timestampNow() } };
      },
    });
    registerHealth(router, health, { stopWatches: stopWatches.signal });
    registerReflection(router);
  };
  const server = http2.createServer(connectNodeAdapter({ routes }));
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    address: `127.0.0.1:${port}`,
    health,
    stopWatches,
    close: () =>
      new Promise<void>((resolve, reject) => {
        for (const session of sessions) session.destroy();
        server.close((err) => (err ? reject(err) : resolve()));
      }),
  };
}

let server: TestServer;
let clients: grpc.Client[];

function connect(ctor: grpc.ServiceClientConstructor): grpc.Client {
  const client = new ctor(server.address, grpc.credentials.createInsecure());
  clients.push(client);
  return client;
}

beforeEach(async () => {
  clients = [];
  server = await startServer();
});

afterEach(async () => {
  for (const client of clients) client.close();
  await server.close();
});

/** Sends requests on one ServerReflectionInfo stream and collects the answers. */
function reflect(client: grpc.Client, requests: Record<string, unknown>[]): Promise<ReflectionResponse[]> {
  const call = (client as unknown as Record<string, () => grpc.ClientDuplexStream<unknown, ReflectionResponse>>)
    .ServerReflectionInfo!.call(client);
  return new Promise((resolve, reject) => {
    const responses: ReflectionResponse[] = [];
    call.on("data", (res: ReflectionResponse) => responses.push(res));
    call.on("error", reject);
    call.on("end", () => resolve(responses));
    for (const req of requests) call.write(req);
    call.end();
  });
}

async function reflectOne(client: grpc.Client, request: Record<string, unknown>): Promise<ReflectionResponse> {
  const [response, ...rest] = await reflect(client, [request]);
  expect(rest).toHaveLength(0);
  return response!;
}

function decodeFiles(res: ReflectionResponse): FileDescriptorProto[] {
  expect(res.message_response).toBe("file_descriptor_response");
  return res.file_descriptor_response!.file_descriptor_proto.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes));
}

function unary<Res>(client: grpc.Client, method: string, req: unknown): Promise<Res> {
  const fn = (client as unknown as Record<string, Function>)[method]!;
  return new Promise((resolve, reject) => {
    fn.call(client, req, (err: grpc.ServiceError | null, res: Res) => (err ? reject(err) : resolve(res)));
  });
}

const expectedServices = [
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
  "paygate.fx.v1.FxService",
];

describe.each([
  ["v1", () => ReflectionV1],
  ["v1alpha", () => ReflectionV1alpha],
])("server reflection %s", (_version, ctor) => {
  it("lists the services on the router and echoes host and request", async () => {
    const res = await reflectOne(connect(ctor()), { host: "paygate.test", list_services: "*" });
    expect(res.message_response).toBe("list_services_response");
    expect(res.list_services_response!.service.map((s) => s.name).sort()).toEqual(expectedServices);
    expect(res.valid_host).toBe("paygate.test");
    expect(res.original_request).toMatchObject({ host: "paygate.test", list_services: "*" });
  });

  it("returns a symbol's file with all its transitive dependencies", async () => {
    const res = await reflectOne(connect(ctor()), { file_containing_symbol: "paygate.fx.v1.FxService" });
    const files = decodeFiles(res);
    const names = files.map((f) => f.name);
    expect(names[0]).toBe("paygate/fx/v1/fx.proto");
    expect(names).toEqual(
      expect.arrayContaining(["paygate/common/v1/common.proto", "google/protobuf/timestamp.proto", "google/protobuf/duration.proto"]),
    );
    expect(new Set(names).size).toBe(names.length);
    // The set is self-contained: it links without anything else.
    const registry = createFileRegistry(files[0]!, (name) => files.find((f) => f.name === name));
    expect(registry.getService("paygate.fx.v1.FxService")?.methods.map((m) => m.name)).toContain("GetRate");
  });

  it("finds methods, nested types, fields and enum values, and files by name", async () => {
    const client = connect(ctor());
    const symbols = [
      "paygate.fx.v1.FxService.GetRate",
      "paygate.fx.v1.Rate",
      "paygate.fx.v1.Rate.as_of",
      "paygate.fx.v1.RoundingMode",
      "paygate.fx.v1.ROUNDING_MODE_HALF_UP",
      ".paygate.fx.v1.Quote",
    ];
    const responses = await reflect(client, symbols.map((s) => ({ file_containing_symbol: s })));
    expect(responses.map((r) => decodeFiles(r)[0]?.name)).toEqual(symbols.map(() => "paygate/fx/v1/fx.proto"));

    const [common, health, timestamp] = await reflect(client, [
      { file_containing_symbol: "paygate.common.v1.ErrorDetail.MetadataEntry" },
      { file_containing_symbol: "grpc.health.v1.Health" },
      { file_by_filename: "google/protobuf/timestamp.proto" },
    ]);
    expect(decodeFiles(common!)[0]?.name).toBe("paygate/common/v1/common.proto");
    expect(decodeFiles(health!)[0]?.package).toBe("grpc.health.v1");
    expect(decodeFiles(timestamp!).map((f) => f.name)).toEqual(["google/protobuf/timestamp.proto"]);
  });

  it("answers unknown symbols, files and extensions with NOT_FOUND in error_response", async () => {
    const responses = await reflect(connect(ctor()), [
      { file_containing_symbol: "paygate.fx.v1.NoSuchThing" },
      { file_by_filename: "nope.proto" },
      { file_containing_extension: { containing_type: "paygate.fx.v1.Rate", extension_number: 100 } },
      { all_extension_numbers_of_type: "paygate.fx.v1.NoSuchThing" },
      { list_services: "" },
    ]);
    expect(responses.slice(0, 4).map((r) => [r.message_response, r.error_response?.error_code])).toEqual(
      Array(4).fill(["error_response", 5]),
    );
    // The stream survives errors.
    expect(responses[4]?.message_response).toBe("list_services_response");
  });

  it("lists no extension numbers for a message without extensions", async () => {
    const res = await reflectOne(connect(ctor()), { all_extension_numbers_of_type: "paygate.fx.v1.Rate" });
    expect(res.all_extension_numbers_response).toEqual({ base_type_name: "paygate.fx.v1.Rate", extension_number: [] });
  });
});

describe("health", () => {
  it("checks the server and each service, NOT_FOUND for unknown ones", async () => {
    const client = connect(HealthClient);
    expect(await unary(client, "Check", { service: "" })).toEqual({ status: "SERVING" });
    expect(await unary(client, "Check", { service: "paygate.fx.v1.FxService" })).toEqual({ status: "SERVING" });
    await expect(unary(client, "Check", { service: "paygate.nope.v1.Nope" })).rejects.toMatchObject({
      code: grpc.status.NOT_FOUND,
    });

    server.health.setAll(ServingStatus.NOT_SERVING);
    expect(await unary(client, "Check", { service: "" })).toEqual({ status: "NOT_SERVING" });
    expect(await unary(client, "Check", { service: "paygate.fx.v1.FxService" })).toEqual({ status: "NOT_SERVING" });
  });

  it("lists every known status", async () => {
    server.health.set("paygate.fx.v1.FxService", ServingStatus.NOT_SERVING);
    expect(await unary(connect(HealthClient), "List", {})).toEqual({
      statuses: { "": { status: "SERVING" }, "paygate.fx.v1.FxService": { status: "NOT_SERVING" } },
    });
  });

  it("watches: the current status at once, then each change, SERVICE_UNKNOWN without ending", async () => {
    const client = connect(HealthClient);
    const watch = (service: string) => {
      const call = (client as unknown as Record<string, (req: unknown) => grpc.ClientReadableStream<{ status: string }>>)
        .Watch!.call(client, { service });
      const seen: string[] = [];
      const ended = new Promise<grpc.ServiceError | undefined>((resolve) => {
        call.on("error", resolve);
        call.on("end", () => resolve(undefined));
      });
      call.on("data", (res: { status: string }) => seen.push(res.status));
      return { call, seen, ended };
    };
    const until = (cond: () => boolean) => expect.poll(cond, { timeout: 2000, interval: 10 }).toBe(true);

    const overall = watch("");
    const later = watch("paygate.later.v1.LaterService");
    await until(() => overall.seen.length === 1 && later.seen.length === 1);
    expect(overall.seen).toEqual(["SERVING"]);
    expect(later.seen).toEqual(["SERVICE_UNKNOWN"]);

    server.health.set("", ServingStatus.NOT_SERVING);
    server.health.set("paygate.later.v1.LaterService", ServingStatus.SERVING);
    await until(() => overall.seen.length === 2 && later.seen.length === 2);
    expect(overall.seen).toEqual(["SERVING", "NOT_SERVING"]);
    expect(later.seen).toEqual(["SERVICE_UNKNOWN", "SERVING"]);

    overall.call.cancel();
    expect((await overall.ended)?.code).toBe(grpc.status.CANCELLED);

    // Graceful shutdown: the last status reaches the watcher, then its stream ends with OK.
    server.health.setAll(ServingStatus.NOT_SERVING);
    server.stopWatches.abort();
    expect(await later.ended).toBeUndefined();
    expect(later.seen).toEqual(["SERVICE_UNKNOWN", "SERVING", "NOT_SERVING"]);
  });
});

describe("HealthStatus.watch", () => {
  it("coalesces to the latest status and stops when the signal aborts", async () => {
    const health = new HealthStatus();
    const abort = new AbortController();
    const watch = health.watch("svc", abort.signal);
    expect((await watch.next()).value).toBe(ServingStatus.SERVICE_UNKNOWN);
    health.set("svc", ServingStatus.NOT_SERVING);
    health.set("svc", ServingStatus.SERVING);
    expect((await watch.next()).value).toBe(ServingStatus.SERVING);
    const pending = watch.next();
    abort.abort();
    expect(await pending).toEqual({ done: true, value: undefined });
  });

  it("tells watchers NOT_SERVING when shutdown sets it just before aborting", async () => {
    const health = new HealthStatus();
    const abort = new AbortController();
    const watch = health.watch("", abort.signal);
    expect((await watch.next()).value).toBe(ServingStatus.SERVING);
    const pending = watch.next();
    health.setAll(ServingStatus.NOT_SERVING);
    abort.abort();
    expect((await pending).value).toBe(ServingStatus.NOT_SERVING);
    expect((await watch.next()).done).toBe(true);
  });
});

describe("FxService next to them", () => {
  it("still serves its own RPCs", async () => {
    const FxClient = clientConstructor(fileURLToPath(new URL("../../proto", import.meta.url)), "paygate/fx/v1/fx.proto", "paygate.fx.v1.FxService");
    const res = await unary<{ rate: { mid_rate: string } }>(connect(FxClient), "GetRate", { base_currency: "USD", quote_currency: "EUR" });
    expect(res.rate.mid_rate).toBe("2");
  });
});

describe("a client leaving a reflection stream early, as k6 does (it closes its connection with the stream open)", () => {
  /** Opens ServerReflectionInfo (`version`) on a fresh connection, asks list_services, and leaves once the answer came. */
  async function reflectAndLeave(url: string, version: "v1" | "v1alpha", leave: "connection closed" | "stream cancelled"): Promise<void> {
    const message = toBinary(ServerReflectionRequestSchema, create(ServerReflectionRequestSchema, { messageRequest: { case: "listServices", value: "" } }));
    const session = http2.connect(url);
    session.on("error", () => {});
    const stream = session.request({ ":method": "POST", ":path": `/grpc.reflection.${version}.ServerReflection/ServerReflectionInfo`, "content-type": "application/grpc", te: "trailers" });
    stream.on("error", () => {});
    await new Promise<void>((resolve) => {
      stream.once("data", () => resolve());
      stream.write(Buffer.concat([Buffer.from([0, 0, 0, 0, message.length]), message]));
    });
    if (leave === "stream cancelled") stream.close(http2.constants.NGHTTP2_CANCEL);
    session.destroy();
  }

  /** rpc_server_requests_total of ServerReflectionInfo ending with `code`. */
  async function reflectionCalls(version: string, code: string): Promise<number> {
    const metric = await registry.getSingleMetric("rpc_server_requests_total")!.get();
    const found = metric.values.find((v) => v.labels.rpc_service === `grpc.reflection.${version}.ServerReflection` && v.labels.rpc_method === "ServerReflectionInfo" && v.labels.code === code);
    return found?.value ?? 0;
  }

  it("ends the call CANCELED: no error logged, counted as canceled, the server serves on; a real error is still logged", async () => {
    const lines: string[] = [];
    const logger = createLogger("reflection-test", "info", { write: (line: string) => void lines.push(line) });
    const routes = (router: ConnectRouter) =>
      router.service(FxService, {
        getRate() {
          throw new Error("the rate table is gone");
        },
      });
    const paygate = await startPaygateServer({ name: "fx-under-test", services: [FxService], routes }, { host: "127.0.0.1", port: 0, maxRequestBytes: 1 << 20, shutdownTimeoutMs: 2_000, drainDelayMs: 0, logger });
    const errors = () => lines.map((line) => JSON.parse(line) as { level: string; msg: string }).filter((line) => line.level === "error");
    try {
      for (const version of ["v1", "v1alpha"] as const) {
        const before = await reflectionCalls(version, "canceled");
        for (let i = 0; i < 3; i++) {
          await reflectAndLeave(paygate.url, version, "connection closed");
          await reflectAndLeave(paygate.url, version, "stream cancelled");
        }
        await waitFor(async () => (await reflectionCalls(version, "canceled")) === before + 6, `six ${version} reflection calls counted as canceled`);
      }
      expect(errors()).toEqual([]);
      expect(await reflectionCalls("v1", "internal")).toBe(0);

      const address = new URL(paygate.url).host;
      const health = new HealthClient(address, grpc.credentials.createInsecure());
      const fx = new (clientConstructor(fileURLToPath(new URL("../../proto", import.meta.url)), "paygate/fx/v1/fx.proto", "paygate.fx.v1.FxService"))(address, grpc.credentials.createInsecure());
      try {
        expect(await unary<{ status: string }>(health, "Check", { service: "" })).toEqual({ status: "SERVING" });
        const crash = await unary(fx, "GetRate", { base_currency: "USD", quote_currency: "EUR" }).catch((err: grpc.ServiceError) => err);
        expect((crash as grpc.ServiceError).code).toBe(grpc.status.INTERNAL);
        await waitFor(() => errors().length === 1, "the crash logged");
        expect(errors()[0]!.msg).toBe("unexpected error");
      } finally {
        health.close();
        fx.close();
      }
    } finally {
      await paygate.shutdown();
    }
  });
});
