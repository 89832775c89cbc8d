// `npm run reconcile`: asks a running wallet to check its books (every balance equals the
// sum of its entries, every pending total its open holds, every transfer and every currency
// sums to zero, no user account overdrawn). Exit code 0 when balanced, 1 when not, 2 when no
// wallet answers.
const url = process.argv[2] ?? process.env.WALLET_ADMIN_URL ?? "http://127.0.0.1:9103";
const res = await fetch(`${url}/reconcile`).catch((err: unknown) => {
  const cause = err instanceof Error && err.cause instanceof Error ? `: ${err.cause.message}` : "";
  process.stderr.write(`no wallet answered at ${url}${cause}. Start Paygate first (npm start), or name the wallet's admin URL (npm run reconcile -- http://host:9103)\n`);
  process.exit(2);
});
const body = (await res.json()) as { balanced?: boolean; problems?: string[]; error?: string };
if (body.balanced) {
  process.stdout.write("ledger balanced: every account, transfer and currency reconciles\n");
} else {
  process.stdout.write(`ledger NOT balanced:\n${(body.problems ?? [body.error ?? `HTTP ${res.status}`]).map((p) => `  ${p}`).join("\n")}\n`);
  process.exitCode = 1;
}
