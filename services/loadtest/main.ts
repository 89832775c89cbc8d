// Paygate's load runner: `npm run load` from a checkout, `node dist/services/loadtest/main.js`
// in Paygate's image (the in-cluster Job of `npm run load:k8s`). Parameters: params.ts USAGE.
// It lives under services/ because that is what the image's build compiles and copies into
// dist/ (and what Tilt syncs); it uses production dependencies only.
// Exit codes as k6's: 0 every threshold met, 99 a threshold failed; 2 bad parameters, 1 the
// run could not start.
import { fileURLToPath } from "node:url";
import { parseParams, USAGE, UsageError } from "./params.js";
import { runLoad, StartError } from "./run.js";
import { formatSummary } from "./summary.js";

export const EXIT_THRESHOLDS_FAILED = 99;

async function main(): Promise<number> {
  if (process.argv.includes("--help") || process.argv.includes("-h")) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  try {
    const params = parseParams(process.argv.slice(2), process.env);
    // Ctrl-C (or SIGTERM to the Job's pod) ends the run early; the summary is still printed.
    const stop = new AbortController();
    process.once("SIGINT", () => stop.abort());
    process.once("SIGTERM", () => stop.abort());
    const summary = await runLoad(params, stop.signal);
    process.stdout.write(params.json ? `${JSON.stringify(summary)}\n` : `${formatSummary(summary)}\n`);
    return summary.passed ? 0 : EXIT_THRESHOLDS_FAILED;
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`load: ${err.message}\n${USAGE}\n`);
      return 2;
    }
    if (err instanceof StartError) {
      process.stderr.write(`load: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) process.exitCode = await main();
