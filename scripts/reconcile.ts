// `npm run reconcile`: asks a running wallet to check its books (every balance equals the
// sum of its entries, every pending total its open holds, every transfer and every currency
// sums to zero, no user account overdrawn). Exit code 0 when balanced, 1 when not.
const url = process.argv[2] ?? process.env.WALLET_ADMIN_URL ?? "http://127.0.0.1:9103";
const res = await fetch(`${url}/reconcile`);
const body = (await res.json()) as { balanced?: boolean; problems?: string[]; error?: string };
if (body.balanced) {
  process.stdout.write("ledger balanced: every account, transfer and currency reconciles\n");
} else {
  process.stdout.write(`ledger NOT balanced:\n${(body.problems ?? [body.error ?? `HTTP ${res.status}`]).map((p) => `  ${p}`).join("\n")}\n`);
  process.exitCode = 1;
}
