// The pieces of connect's protocol implementation Paygate builds on, in one place. connect
// exports them from its protocol modules but marks them internal (they may change in any
// release), so the version is pinned and every use goes through here: an upgrade has one
// file to check. Used by the unary fast path and the upstream client (the hand-written
// short paths), the request checks, the handler's deadline guard, the gateway's relay and its
// REST routes.
export { invokeUnaryImplementation, mergeNonProtocolHeaders, readAllBytes, createMethodUrl, runUnaryCall, type Compression } from "@connectrpc/connect/protocol";
export {
  codeFromHttpStatus,
  codeFromString,
  codeToHttpStatus,
  codeToString,
  errorFromJsonBytes,
  errorToJsonBytes,
  parseContentType as parseConnectContentType,
  parseTimeout as parseConnectTimeout,
} from "@connectrpc/connect/protocol-connect";
export { parseContentType as parseGrpcContentType, parseTimeout as parseGrpcTimeout } from "@connectrpc/connect/protocol-grpc";
