import { randomUUID } from "node:crypto";

/** A new opaque id with a type prefix, e.g. "qt_3f2a…" for a quote. */
export function newId(prefix: string): string {
  return `${prefix}_${randomUUID().replaceAll("-", "")}`;
}
