// Process entry for a service: start it, stop it gracefully on SIGTERM/SIGINT, and turn a
// configuration error into one clear message and exit code 2 instead of a stack trace.
import { ConfigError } from "./config.js";
import type { RunningServer } from "./rpc/server.js";
import { shutdownTracing } from "./observability/tracing.js";

export async function runMain(start: () => Promise<RunningServer>): Promise<void> {
  let server: RunningServer;
  try {
    server = await start();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(2);
    }
    process.stderr.write(`failed to start: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  }
  const stop = () => {
    server
      .shutdown()
      // The last spans go out before the process does (bounded).
      .then(() => shutdownTracing(3_000))
      .then(
        () => process.exit(0),
        (err: unknown) => {
          process.stderr.write(`shutdown failed: ${String(err)}\n`);
          process.exit(1);
        },
      );
  };
  // A promise one request forgot to handle must not end the service for every other one;
  // it is a bug, logged loudly.
  process.on("unhandledRejection", (reason) => process.stderr.write(`unhandled rejection (the service goes on): ${reason instanceof Error ? reason.stack : String(reason)}\n`));
  process.once("SIGTERM", stop);
  process.once("SIGINT", stop);
}
