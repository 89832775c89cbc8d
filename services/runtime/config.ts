// Configuration comes from environment variables only, validated once at start-up. A bad
// value stops the process with a message naming the variable, what it expected and what
// it got, before anything listens.
import { z } from "zod";
import type { Logger } from "./observability/logger.js";
import type { ServerOptions } from "./rpc/server.js";

export class ConfigError extends Error {
  override name = "ConfigError";
}

// 0 asks the OS for a free port (tests run many servers side by side).
const PORT_EXPECTED = "expected a port number from 0 to 65535";
const port = z.coerce.number({ error: PORT_EXPECTED }).int(PORT_EXPECTED).min(0, PORT_EXPECTED).max(65535, PORT_EXPECTED);
const positiveMs = z.coerce.number().int().min(0).max(3_600_000);

/** Variables every Paygate service reads. */
export const runtimeEnv = {
  HOST: z.string().min(1).default("127.0.0.1"),
  LOG_LEVEL: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
  /** PostgreSQL connection string; when unset the service runs on embedded PGlite. */
  DATABASE_URL: z.string().url().optional(),
  /** Folder for the embedded database (PGlite), one sub-folder per service; "memory://" keeps it in memory. */
  DATA_DIR: z.string().min(1).default(".data"),
  /** Largest accepted request message, in bytes. */
  MAX_REQUEST_BYTES: z.coerce.number().int().min(1024).max(64 * 1024 * 1024).default(1024 * 1024),
  /** How long in-flight requests may take to finish after SIGTERM before they are cut. */
  SHUTDOWN_TIMEOUT_MS: positiveMs.default(10_000),
  /** Time between going NOT_SERVING and refusing connections, so load balancers notice. */
  SHUTDOWN_DRAIN_DELAY_MS: positiveMs.default(0),
  /** Timeout of calls to other services when the caller's request has no deadline. */
  UPSTREAM_TIMEOUT_MS: z.coerce.number().int().min(1).max(600_000).default(5_000),
};

export const portVar = port;

/**
 * Parses `env` against a zod shape. Every problem is reported at once, each line naming the
 * variable, e.g. `FX_PORT: expected a number from 1 to 65535, got "abc"`.
 */
export function loadConfig<S extends z.ZodRawShape>(shape: S, env: NodeJS.ProcessEnv = process.env): z.infer<z.ZodObject<S>> {
  // Empty strings count as unset so `FOO=` in a shell falls back to the default.
  const present = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ""));
  const result = z.object(shape).safeParse(present);
  if (result.success) return result.data;
  const lines = result.error.issues.map((issue) => {
    const name = issue.path.join(".");
    const got = name in present ? `, got ${JSON.stringify(present[name])}` : " (unset)";
    return `  ${name}: ${issue.message}${got}`;
  });
  throw new ConfigError(`invalid configuration:\n${lines.join("\n")}`);
}

/** The server options every service derives the same way from its configuration. */
export function serverOptions(
  config: { HOST: string; MAX_REQUEST_BYTES: number; SHUTDOWN_TIMEOUT_MS: number; SHUTDOWN_DRAIN_DELAY_MS: number },
  ports: { port: number; adminPort?: number },
  logger: Logger,
): ServerOptions {
  return {
    host: config.HOST,
    port: ports.port,
    adminPort: ports.adminPort,
    maxRequestBytes: config.MAX_REQUEST_BYTES,
    shutdownTimeoutMs: config.SHUTDOWN_TIMEOUT_MS,
    drainDelayMs: config.SHUTDOWN_DRAIN_DELAY_MS,
    logger,
  };
}
