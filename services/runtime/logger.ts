// Structured JSON logs (pino). Secrets never reach a log line: headers that carry
// credentials are redacted wherever they appear.
import { pino, type Logger } from "pino";

export type { Logger };

export function createLogger(service: string, level: string): Logger {
  return pino({
    level,
    base: { service },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    redact: {
      paths: ["*.authorization", "*.Authorization", "*.apiKey", "*.api_key", "*.password", '*["x-api-key"]'],
      censor: "[redacted]",
    },
  });
}
