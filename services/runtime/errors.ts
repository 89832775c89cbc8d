// Domain errors and their one mapping to Connect codes. Services throw DomainError (or a
// subclass helper below); the server's error interceptor turns anything else into a
// generic INTERNAL so no stack trace or SQL text ever reaches a client.
import { Code, ConnectError } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { ErrorDetailSchema } from "../gen/paygate/common/v1/common_pb.js";

export type ErrorKind =
  | "invalid_argument"
  | "not_found"
  | "failed_precondition"
  | "already_exists"
  | "aborted"
  | "unavailable"
  | "deadline_exceeded"
  | "permission_denied"
  | "unauthenticated"
  | "resource_exhausted";

const codeOf: Record<ErrorKind, Code> = {
  invalid_argument: Code.InvalidArgument,
  not_found: Code.NotFound,
  failed_precondition: Code.FailedPrecondition,
  already_exists: Code.AlreadyExists,
  aborted: Code.Aborted,
  unavailable: Code.Unavailable,
  deadline_exceeded: Code.DeadlineExceeded,
  permission_denied: Code.PermissionDenied,
  unauthenticated: Code.Unauthenticated,
  resource_exhausted: Code.ResourceExhausted,
};

/** Codes that say "not now" rather than "no": worth retrying, never kept as an answer. */
const TRANSIENT = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.Canceled, Code.Internal, Code.Unknown, Code.ResourceExhausted, Code.Aborted]);

/**
 * Whether `err` is worth retrying: a ConnectError with one of those codes, or anything that is
 * not a ConnectError at all (an upstream's "no" always arrives as one).
 */
export const isTransient = (err: unknown): boolean => !(err instanceof ConnectError) || TRANSIENT.has(err.code);

export class DomainError extends Error {
  constructor(
    readonly kind: ErrorKind,
    /** Stable machine-readable reason, e.g. UNKNOWN_CURRENCY. */
    readonly reason: string,
    message: string,
    /** Request field at fault, e.g. "amount.currency". */
    readonly field = "",
    readonly metadata: Record<string, string> = {},
  ) {
    super(message);
    this.name = "DomainError";
  }
}

export const invalidArgument = (reason: string, field: string, message: string, metadata: Record<string, string> = {}) =>
  new DomainError("invalid_argument", reason, message, field, metadata);

export const notFound = (reason: string, message: string, field = "") => new DomainError("not_found", reason, message, field);

export const failedPrecondition = (reason: string, message: string, field = "", metadata: Record<string, string> = {}) =>
  new DomainError("failed_precondition", reason, message, field, metadata);

/** The Connect error a client sees for a domain error, with a typed ErrorDetail attached. */
export function toConnectError(err: DomainError): ConnectError {
  const detail = create(ErrorDetailSchema, { reason: err.reason, field: err.field, metadata: err.metadata });
  return new ConnectError(clipMessage(err.message), codeOf[err.kind], undefined, [{ desc: ErrorDetailSchema, value: detail }]);
}

/** The longest error message sent, in characters. */
const MAX_MESSAGE = 500;

/**
 * An error message fit to send: at most MAX_MESSAGE characters and valid Unicode. A message
 * may quote the request; a long one would not fit in an HTTP/2 header frame as grpc-message
 * (percent-encoded, up to nine bytes a character), and a lone surrogate cannot be encoded.
 */
export function clipMessage(message: string): string {
  const whole = message.toWellFormed();
  return whole.length <= MAX_MESSAGE ? whole : `${whole.slice(0, MAX_MESSAGE - 1).toWellFormed()}…`;
}

/** The same error with its message fit to send (see clipMessage). */
export function clipped(err: ConnectError): ConnectError {
  const message = clipMessage(err.rawMessage);
  return message === err.rawMessage ? err : new ConnectError(message, err.code, err.metadata, err.details as ConstructorParameters<typeof ConnectError>[3], err.cause);
}
