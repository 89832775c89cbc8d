// What the wallet runs beside its RPCs: the hold-expiry sweep, the hold gauges Prometheus
// reads, and the /reconcile admin route (`npm run reconcile`).
import type http from "node:http";
import type { Logger } from "../runtime/observability/logger.js";
import { gauge } from "../runtime/observability/metrics.js";
import type { Ledger } from "./ledger.js";

/** Releases expired holds every `intervalMs`; returns the function that stops it. */
export function startHoldExpiry(ledger: Ledger, intervalMs: number, logger: Logger): () => void {
  const sweeper = setInterval(() => {
    ledger.expireHolds().then(
      (n) => n > 0 && logger.info({ expired: n }, "holds expired"),
      (err: unknown) => logger.error({ err }, "hold expiry sweep failed"),
    );
  }, intervalMs);
  return () => clearInterval(sweeper);
}

/** The ledger the hold gauges read (the latest started, when tests start several in one process). */
let holdSource: Ledger | undefined;

/** Open holds and held amounts per currency, read from the ledger when Prometheus scrapes. */
export function registerHoldMetrics(ledger: Ledger): void {
  holdSource = ledger;
  const stats = async () => (holdSource ? holdSource.holdStats() : []);
  gauge("paygate_wallet_open_holds", "Pending holds, by currency.", ["currency"], async function () {
    this.reset();
    for (const s of await stats()) this.set({ currency: s.currency }, s.open);
  });
  gauge("paygate_wallet_held_minor", "Money held by pending holds, in minor units, by currency.", ["currency"], async function () {
    this.reset();
    for (const s of await stats()) this.set({ currency: s.currency }, Number(s.heldMinor));
  });
  gauge("paygate_wallet_overdue_holds", "Pending holds past their expiry (the expiry sweep is behind), by currency.", ["currency"], async function () {
    this.reset();
    for (const s of await stats()) this.set({ currency: s.currency }, s.overdue);
  });
}

/** The reconciliation check: 200 when the books balance, 409 with the problems when not. */
export function reconcileRoute(ledger: Ledger, logger: Logger): http.RequestListener {
  return (_req, res) => {
    ledger.reconcile().then(
      (problems) => {
        res.writeHead(problems.length === 0 ? 200 : 409, { "content-type": "application/json" });
        res.end(JSON.stringify({ balanced: problems.length === 0, problems }));
      },
      (err: unknown) => {
        logger.error({ err }, "reconciliation failed");
        res.writeHead(500, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: "reconciliation could not run" }));
      },
    );
  };
}
