// gRPC server reflection (grpc.reflection.v1 and v1alpha, which share one wire format) for
// a ConnectRouter, so grpcurl, buf curl, grpcui and Postman can call Paygate without the
// .proto files. Spec: https://github.com/grpc/grpc/blob/master/doc/server-reflection.md.
import { toBinary } from "@bufbuild/protobuf";
import type { DescFile, DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { DescriptorProto, EnumDescriptorProto, FieldDescriptorProto } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter } from "@connectrpc/connect";
import { ServerReflection as ServerReflectionV1 } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";

// google.rpc.Code values, as the reflection protocol reports them in error_response.
const INVALID_ARGUMENT = 3;
const NOT_FOUND = 5;

/** A request's message_request oneof; v1 and v1alpha both fit. */
type Question =
  | { case: "fileByFilename" | "fileContainingSymbol" | "allExtensionNumbersOfType" | "listServices"; value: string }
  | { case: "fileContainingExtension"; value: { containingType: string; extensionNumber: number } }
  | { case: undefined; value?: undefined };

/** A response's message_response oneof, in a shape both versions accept. */
type Answer =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

/** Every file reachable from the served services, and the symbols they declare. */
class DescriptorIndex {
  readonly serviceNames: string[];
  private readonly files = new Map<string, DescFile>();
  private readonly symbols = new Map<string, DescFile>();
  private readonly messages = new Set<string>();
  /** Extendee type name -> extension field number -> declaring file. */
  private readonly extensions = new Map<string, Map<number, DescFile>>();
  private readonly encoded = new Map<DescFile, Uint8Array>();

  constructor(services: Iterable<DescService>) {
    const names = new Set<string>();
    for (const service of services) {
      names.add(service.typeName);
      this.addFile(service.file);
    }
    this.serviceNames = [...names].sort();
  }

  answer(question: Question): Answer {
    switch (question.case) {
      case "listServices":
        return { case: "listServicesResponse", value: { service: this.serviceNames.map((name) => ({ name })) } };
      case "fileByFilename":
        return this.fileAnswer(this.files.get(question.value), `file "${question.value}"`);
      case "fileContainingSymbol":
        return this.fileAnswer(this.symbols.get(stripDot(question.value)), `symbol "${question.value}"`);
      case "fileContainingExtension": {
        const { containingType, extensionNumber } = question.value;
        const file = this.extensions.get(stripDot(containingType))?.get(extensionNumber);
        return this.fileAnswer(file, `extension ${extensionNumber} of "${containingType}"`);
      }
      case "allExtensionNumbersOfType": {
        const type = stripDot(question.value);
        if (!this.messages.has(type)) return notFound(`message type "${question.value}"`);
        const numbers = [...(this.extensions.get(type)?.keys() ?? [])].sort((a, b) => a - b);
        return { case: "allExtensionNumbersResponse", value: { baseTypeName: type, extensionNumber: numbers } };
      }
      default:
        return { case: "errorResponse", value: { errorCode: INVALID_ARGUMENT, errorMessage: "empty reflection request" } };
    }
  }

  /** The file first, then all its transitive dependencies, each once. */
  private fileAnswer(file: DescFile | undefined, what: string): Answer {
    if (!file) return notFound(what);
    const out: DescFile[] = [];
    const visit = (f: DescFile) => {
      if (out.includes(f)) return;
      out.push(f);
      f.dependencies.forEach(visit);
    };
    visit(file);
    return { case: "fileDescriptorResponse", value: { fileDescriptorProto: out.map((f) => this.encode(f)) } };
  }

  private encode(file: DescFile): Uint8Array {
    let bytes = this.encoded.get(file);
    if (!bytes) {
      bytes = toBinary(FileDescriptorProtoSchema, file.proto);
      this.encoded.set(file, bytes);
    }
    return bytes;
  }

  // Walks the FileDescriptorProto rather than the Desc* objects, so that synthetic
  // declarations (map entries) are found too.
  private addFile(file: DescFile): void {
    if (this.files.has(file.proto.name)) return;
    this.files.set(file.proto.name, file);
    file.dependencies.forEach((dep) => this.addFile(dep));
    const proto = file.proto;
    const pkg = proto.package;
    for (const message of proto.messageType) this.addMessage(file, pkg, message);
    for (const e of proto.enumType) this.addEnum(file, pkg, e);
    for (const ext of proto.extension) this.addExtension(file, pkg, ext);
    for (const service of proto.service) {
      const name = join(pkg, service.name);
      this.symbols.set(name, file);
      for (const method of service.method) this.symbols.set(join(name, method.name), file);
    }
  }

  private addMessage(file: DescFile, scope: string, message: DescriptorProto): void {
    const name = join(scope, message.name);
    this.symbols.set(name, file);
    this.messages.add(name);
    for (const field of message.field) this.symbols.set(join(name, field.name), file);
    for (const oneof of message.oneofDecl) this.symbols.set(join(name, oneof.name), file);
    for (const nested of message.nestedType) this.addMessage(file, name, nested);
    for (const e of message.enumType) this.addEnum(file, name, e);
    for (const ext of message.extension) this.addExtension(file, name, ext);
  }

  private addEnum(file: DescFile, scope: string, e: EnumDescriptorProto): void {
    this.symbols.set(join(scope, e.name), file);
    // Enum values are scoped as siblings of their enum, as in C++.
    for (const value of e.value) this.symbols.set(join(scope, value.name), file);
  }

  private addExtension(file: DescFile, scope: string, ext: FieldDescriptorProto): void {
    this.symbols.set(join(scope, ext.name), file);
    const extendee = stripDot(ext.extendee);
    let byNumber = this.extensions.get(extendee);
    if (!byNumber) this.extensions.set(extendee, (byNumber = new Map()));
    byNumber.set(ext.number, file);
  }
}

const join = (scope: string, name: string) => (scope ? `${scope}.${name}` : name);
const stripDot = (name: string) => (name.startsWith(".") ? name.slice(1) : name);
const notFound = (what: string): Answer => ({
  case: "errorResponse",
  value: { errorCode: NOT_FOUND, errorMessage: `${what} not found` },
});

/**
 * Serves grpc.reflection.v1 and v1alpha ServerReflection on `router`. It describes
 * `services` plus every service registered on the router when a request arrives (so
 * services registered later are included), the reflection services among them.
 */
export function registerReflection(router: ConnectRouter, services: DescService[] = []): ConnectRouter {
  let index: DescriptorIndex | undefined;
  let indexedHandlers = -1;
  const currentIndex = (): DescriptorIndex => {
    if (!index || indexedHandlers !== router.handlers.length) {
      indexedHandlers = router.handlers.length;
      index = new DescriptorIndex([...services, ...router.handlers.map((h) => h.service)]);
    }
    return index;
  };

  router.service(ServerReflectionV1, {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) {
        yield { validHost: req.host, originalRequest: req, messageResponse: currentIndex().answer(req.messageRequest) };
      }
    },
  });
  router.service(ServerReflectionV1alpha, {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) {
        yield { validHost: req.host, originalRequest: req, messageResponse: currentIndex().answer(req.messageRequest) };
      }
    },
  });
  return router;
}
