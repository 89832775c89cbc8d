// Checks an RPC's request body before connect reads it, so malformed input is INVALID_ARGUMENT
// in every protocol. connect reports an undecodable protobuf message, a message flagged
// compressed without a compression named, or a body that does not decompress as INTERNAL
// (HTTP 500); protobuf JSON takes integer strings such as "0x10", " 5" or "+5" (BigInt's and
// Number's syntax) and JSON numbers past 2^53 (already rounded by JSON.parse): on a money
// field that is a wrong amount; and its error messages quote the request whole, lone
// surrogates included, which no grpc-message header can carry. Here the body is decoded as
// connect will decode it; connect then answers a failed check in the caller's own protocol
// (the check's error comes out of the body it reads).
import { fromBinary, fromJson, ScalarType, type DescField, type DescMessage, type DescMethod, type JsonValue, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { readAllBytes, type Compression } from "./connect-protocol.js";
import { compressionBrotli, compressionGzip } from "@connectrpc/connect-node";
import { clipMessage, invalidArgument, toConnectError } from "../errors.js";

/** The compressions every service accepts. */
export const ACCEPTED_COMPRESSION: Compression[] = [compressionGzip, compressionBrotli];

type Format = "binary" | "json";

interface Framing {
  format: Format;
  /** Enveloped messages (gRPC, gRPC-Web, Connect streams) or a bare body (Connect unary). */
  enveloped: boolean;
  /** The header naming the compression. */
  encodingHeader: string;
}

/** How a request with this content type carries its message; undefined for types connect refuses anyway. */
function framing(contentType: string | null): Framing | undefined {
  const type = (contentType ?? "").split(";")[0]!.trim().toLowerCase();
  switch (type) {
    case "application/proto":
      return { format: "binary", enveloped: false, encodingHeader: "content-encoding" };
    case "application/json":
      return { format: "json", enveloped: false, encodingHeader: "content-encoding" };
    case "application/connect+proto":
      return { format: "binary", enveloped: true, encodingHeader: "connect-content-encoding" };
    case "application/connect+json":
      return { format: "json", enveloped: true, encodingHeader: "connect-content-encoding" };
    case "application/grpc":
    case "application/grpc+proto":
    case "application/grpc-web":
    case "application/grpc-web+proto":
      return { format: "binary", enveloped: true, encodingHeader: "grpc-encoding" };
    case "application/grpc+json":
    case "application/grpc-web+json":
      return { format: "json", enveloped: true, encodingHeader: "grpc-encoding" };
    default:
      return undefined;
  }
}

/** INVALID_ARGUMENT with its typed detail, as every refusal of a request gets. */
const invalid = (message: string, field = "", reason = "MALFORMED_REQUEST") => toConnectError(invalidArgument(reason, field, message));

/**
 * The request body of `method`, read whole (at most `readMaxBytes`) and checked; yields it
 * unchanged for connect to read, or throws INVALID_ARGUMENT saying what is wrong.
 */
export async function* checkedBody(body: AsyncIterable<Uint8Array>, method: DescMethod, header: Headers, readMaxBytes: number): AsyncIterable<Uint8Array> {
  const bytes = await readAllBytes(body, readMaxBytes, header.get("content-length"));
  const frame = framing(header.get("content-type"));
  if (frame) await checkMessages(bytes, frame, method.input, header, readMaxBytes);
  yield bytes;
}

async function checkMessages(bytes: Uint8Array, frame: Framing, desc: DescMessage, header: Headers, readMaxBytes: number): Promise<void> {
  const encoding = header.get(frame.encodingHeader)?.trim().toLowerCase() ?? "identity";
  const compression = encoding === "identity" ? null : ACCEPTED_COMPRESSION.find((c) => c.name === encoding);
  // An unknown compression: connect refuses it (UNIMPLEMENTED) and names the ones it takes.
  if (compression === undefined) return;
  const decompress = async (data: Uint8Array) => {
    try {
      return await compression!.decompress(data, readMaxBytes);
    } catch (err) {
      if (err instanceof ConnectError && err.code === Code.ResourceExhausted) throw err;
      throw invalid(`${frame.encodingHeader}: the message is not valid ${encoding} data`);
    }
  };
  if (!frame.enveloped) return checkMessage(compression ? await decompress(bytes) : bytes, frame.format, desc);

  for (let at = 0; at < bytes.byteLength; ) {
    if (bytes.byteLength - at < 5) throw invalid("protocol error: incomplete envelope");
    const flags = bytes[at]!;
    const length = new DataView(bytes.buffer, bytes.byteOffset + at + 1, 4).getUint32(0);
    const start = at + 5;
    if (bytes.byteLength - start < length) throw invalid("protocol error: incomplete envelope");
    let message = bytes.subarray(start, start + length);
    at = start + length;
    if (flags & 0b1) {
      if (!compression) throw invalid(`a message is flagged compressed but ${frame.encodingHeader} names no compression`);
      message = await decompress(message);
    }
    // Other flags (trailers, end of stream) are not requests: connect answers those itself.
    if ((flags & ~0b1) === 0) checkMessage(message, frame.format, desc);
  }
}

/** A request message in protobuf binary, or INVALID_ARGUMENT saying why it is not one. */
export function parseBinaryRequest<Desc extends DescMessage>(desc: Desc, bytes: Uint8Array): MessageShape<Desc> {
  try {
    return fromBinary(desc, bytes);
  } catch (err) {
    throw invalid(`the request is not a valid ${desc.typeName} message in protobuf binary: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function checkMessage(bytes: Uint8Array, format: Format, desc: DescMessage): void {
  if (format === "binary") {
    parseBinaryRequest(desc, bytes);
    return;
  }
  let json: JsonValue;
  try {
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes)) as JsonValue;
  } catch (err) {
    throw invalid(clipMessage(`the request is not valid JSON: ${err instanceof Error ? err.message : String(err)}`));
  }
  const bad = badInteger(desc, json, "");
  if (bad) throw invalid(bad.message, bad.field, "INVALID_INTEGER");
  // Read as connect will read it (unknown fields refused, as every service configures it),
  // so its refusal comes from here with a message fit to send: protobuf's own quote the
  // request, at any length and with any lone surrogate it holds.
  try {
    fromJson(desc, json);
  } catch (err) {
    throw invalid(clipMessage(err instanceof Error ? err.message : String(err)));
  }
}

const INTEGER = new Set([
  ...[ScalarType.INT64, ScalarType.UINT64, ScalarType.SINT64, ScalarType.FIXED64, ScalarType.SFIXED64],
  ...[ScalarType.INT32, ScalarType.UINT32, ScalarType.SINT32, ScalarType.FIXED32, ScalarType.SFIXED32],
]);
const CANONICAL_INTEGER = /^-?(0|[1-9][0-9]*)$/;

/**
 * The first integer field of a JSON message that is not a canonical decimal integer (a
 * string of digits, or a JSON number that is exact).
 */
type Bad = { field: string; message: string } | undefined;

function badInteger(desc: DescMessage, json: unknown, prefix: string): Bad {
  // Well-known types have JSON forms of their own (a Timestamp is a string); connect checks them.
  if (typeof json !== "object" || json === null || Array.isArray(json) || desc.typeName.startsWith("google.protobuf.")) return undefined;
  const object = json as Record<string, unknown>;
  for (const field of desc.fields) {
    const value = Object.hasOwn(object, field.jsonName) ? object[field.jsonName] : object[field.name];
    if (value === undefined || value === null) continue;
    const bad = badValue(field, value, prefix + field.name);
    if (bad) return bad;
  }
  return undefined;
}

function badValue(field: DescField, value: unknown, name: string): Bad {
  switch (field.fieldKind) {
    case "scalar":
      return INTEGER.has(field.scalar) ? badIntegerValue(value, name) : undefined;
    case "message":
      return badInteger(field.message, value, `${name}.`);
    case "list":
      if (!Array.isArray(value)) return undefined;
      for (const [i, item] of value.entries()) {
        const bad = field.listKind === "message" ? badInteger(field.message, item, `${name}[${i}].`) : field.listKind === "scalar" && INTEGER.has(field.scalar) ? badIntegerValue(item, `${name}[${i}]`) : undefined;
        if (bad) return bad;
      }
      return undefined;
    case "map":
      if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
      for (const [key, item] of Object.entries(value)) {
        const bad = field.mapKind === "message" ? badInteger(field.message, item, `${name}[${key}].`) : field.mapKind === "scalar" && INTEGER.has(field.scalar) ? badIntegerValue(item, `${name}[${key}]`) : undefined;
        if (bad) return bad;
      }
      return undefined;
    default:
      return undefined;
  }
}

function badIntegerValue(value: unknown, field: string): Bad {
  if (typeof value === "string" && !CANONICAL_INTEGER.test(value)) {
    return { field, message: `${field}: ${JSON.stringify(value.slice(0, 40))} is not a decimal integer (digits only, an optional leading "-")` };
  }
  if (typeof value === "number" && !Number.isSafeInteger(value)) {
    return { field, message: `${field}: ${value} is not an exact integer; send integers past 2^53 as decimal strings` };
  }
  return undefined;
}
