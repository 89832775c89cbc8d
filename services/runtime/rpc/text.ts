// Text a request may carry. PostgreSQL refuses the NUL character in text, and a lone UTF-16
// surrogate (possible in JSON's "\ud800") cannot be encoded as UTF-8 without silently
// becoming U+FFFD, so both are refused at the boundary with the field named, instead of
// failing deep inside (or changing an id on its way to storage).
import { ScalarType, type DescField, type DescMessage, type Message } from "@bufbuild/protobuf";
import type { Interceptor } from "@connectrpc/connect";
import { invalidArgument } from "../errors.js";

/** Why `value` is not acceptable text, or undefined when it is. */
export function textProblem(value: string): string | undefined {
  if (value.includes("\u0000")) return "must not contain the NUL character (U+0000)";
  if (!value.isWellFormed()) return "is not valid Unicode (it holds a lone surrogate)";
  return undefined;
}

/** `value`, or INVALID_ARGUMENT INVALID_TEXT naming `field`. */
export function requireText(value: string, field: string): string {
  const problem = textProblem(value);
  if (problem) throw invalidArgument("INVALID_TEXT", field, `${field}: ${problem}`);
  return value;
}

/** Refuses a message with unacceptable text in any string field or map key, naming the field (e.g. "amount.currency", "metadata[key]"). */
export function requireTextFields(desc: DescMessage, message: Message): void {
  const bad = findBadText(desc, message as unknown as Record<string, unknown>, "");
  if (bad) throw invalidArgument("INVALID_TEXT", bad.field, `${bad.field}: ${bad.problem}`);
}

type Found = { field: string; problem: string } | undefined;

function findBadText(desc: DescMessage, message: Record<string, unknown>, prefix: string): Found {
  for (const field of desc.fields) {
    const value = field.oneof ? oneofValue(field, message) : message[field.localName];
    if (value === undefined || value === null) continue;
    const name = prefix + field.name;
    const found = checkValue(field, value, name);
    if (found) return found;
  }
  return undefined;
}

function oneofValue(field: DescField, message: Record<string, unknown>): unknown {
  const oneof = message[field.oneof!.localName] as { case?: string; value?: unknown } | undefined;
  return oneof?.case === field.localName ? oneof.value : undefined;
}

function checkValue(field: DescField, value: unknown, name: string): Found {
  switch (field.fieldKind) {
    case "scalar":
      return field.scalar === ScalarType.STRING ? checkString(value as string, name) : undefined;
    case "message":
      return findBadText(field.message, value as Record<string, unknown>, `${name}.`);
    case "list":
      for (const [i, item] of (value as unknown[]).entries()) {
        const found =
          field.listKind === "message" ? findBadText(field.message, item as Record<string, unknown>, `${name}[${i}].`) : field.listKind === "scalar" && field.scalar === ScalarType.STRING ? checkString(item as string, `${name}[${i}]`) : undefined;
        if (found) return found;
      }
      return undefined;
    case "map":
      for (const [key, item] of Object.entries(value as Record<string, unknown>)) {
        const found =
          checkString(key, `${name} key`) ??
          (field.mapKind === "message" ? findBadText(field.message, item as Record<string, unknown>, `${name}[${key}].`) : field.mapKind === "scalar" && field.scalar === ScalarType.STRING ? checkString(item as string, `${name}[${key}]`) : undefined);
        if (found) return found;
      }
      return undefined;
    default:
      return undefined;
  }
}

function checkString(value: string, field: string): Found {
  const problem = textProblem(value);
  return problem ? { field, problem } : undefined;
}

/** Refuses a request whose message carries unacceptable text (every message of a stream, as it arrives). */
export function textGuard(): Interceptor {
  return (next) => async (req) => {
    if (!req.stream) {
      requireTextFields(req.method.input, req.message);
      return next(req);
    }
    return next({ ...req, message: checkedMessages(req.method.input, req.message) });
  };
}

async function* checkedMessages<T extends Message>(desc: DescMessage, messages: AsyncIterable<T>): AsyncIterable<T> {
  for await (const m of messages) {
    requireTextFields(desc, m);
    yield m;
  }
}
