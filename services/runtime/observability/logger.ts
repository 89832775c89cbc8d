// Structured JSON logs (pino). Secrets never reach a log line: headers that carry
// credentials are redacted wherever they appear. A line written while a span is active
// (inside an RPC, a REST request, a saga step) carries trace_id, span_id and trace_flags,
// so the lines of one payment can be found from its trace and the other way round.
import { context, isSpanContextValid, trace } from "@opentelemetry/api";
import { pino, type DestinationStream, type Logger } from "pino";

export type { Logger };

/** trace_id, span_id and trace_flags of the active span; {} outside any span. */
export function traceFields(): Record<string, string> {
  const span = trace.getSpan(context.active());
  if (span === undefined) return {};
  const sc = span.spanContext();
  if (!isSpanContextValid(sc)) return {};
  return { trace_id: sc.traceId, span_id: sc.spanId, trace_flags: sc.traceFlags & 1 ? "01" : "00" };
}

/** `destination` (default stdout) lets tests read the lines. */
export function createLogger(service: string, level: string, destination?: DestinationStream): Logger {
  const options = {
    level,
    base: { service },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
    // A fresh object per line: pino merges the line's own fields into it.
    mixin: traceFields,
    redact: {
      paths: ["*.authorization", "*.Authorization", "*.apiKey", "*.api_key", "*.password", '*["x-api-key"]'],
      censor: "[redacted]",
    },
  };
  return destination ? pino(options, destination) : pino(options);
}
