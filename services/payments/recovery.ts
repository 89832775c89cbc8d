// The recovery sweep: resumes payments whose saga stopped half-way (a crash, an upstream
// down), here or in a replica that died. `intervalMs` after the previous sweep ended, a sweep
// claims stalled payments in batches, oldest first (store.claimStalled leases them
// atomically: no two replicas take the same payment), resumes up to `concurrency` of them at
// once, and claims the next batch at once while batches come back full, so a backlog drains
// in one sweep; then it purges expired idempotency keys. A sweep resumes each payment at
// most once, and a batch that moved none on (an upstream still down) ends it: paused
// payments are tried again at the next interval, not in a busy loop.
//
// A claimed payment waiting for a free slot ages its lease. Only while its batch is fresh
// (the first tenth of the lease) may it start, so every resume runs on nearly a whole lease,
// as a new payment does; the ones left over go back unleased and the sweep claims them again.
import { setMaxListeners } from "node:events";
import type { Logger } from "../runtime/observability/logger.js";
import type { IdempotencyKeys } from "./idempotency.js";
import { resumable, type PaymentRecord } from "./payment.js";
import type { Saga } from "./saga.js";
import type { PaymentStore } from "./store.js";

/** The share of its lease a claimed payment may spend waiting for a free slot. */
const START_WITHIN_LEASE_SHARE = 0.1;

export interface RecoveryOptions {
  store: Pick<PaymentStore, "claimStalled" | "releaseLease">;
  saga: Pick<Saga, "run">;
  keys: Pick<IdempotencyKeys, "purgeExpired">;
  instanceId: string;
  leaseMs: number;
  intervalMs: number;
  /** How many payments are resumed at once. */
  concurrency: number;
  /** How many stalled payments one claim takes. */
  batchSize: number;
  /** Timeout of each upstream call a resumed saga makes. */
  timeoutMs: number;
  logger: Logger;
}

/** What one sweep did with the payments it claimed. */
export interface SweepReport {
  /** Resumed and out of the states the sweep resumes (captured, failed, ...). */
  finished: number;
  /** Resumed and paused again (an upstream still down): given back for a later sweep. */
  paused: number;
  /** Resumes that threw; the payment waits for its lease to run out. */
  failed: number;
  /** Claimed but given back unstarted (the lease no longer fresh, or stopping). */
  deferred: number;
}

export interface Recovery {
  /** Sweeps now (or joins the sweep under way). */
  sweep(): Promise<SweepReport>;
  /** No sweep starts after this; running resumes are cancelled (their sagas pause) and unstarted claims given back. */
  stop(): Promise<void>;
}

export function startRecovery(opts: RecoveryOptions): Recovery {
  const { store, saga, keys, instanceId, leaseMs, concurrency, batchSize, logger } = opts;
  const stopping = new AbortController();
  // Every upstream call of every running resume listens on it (each call removes its listener as it ends).
  setMaxListeners(0, stopping.signal);
  let running: Promise<SweepReport> | undefined;
  let timer: NodeJS.Timeout | undefined;

  async function resume(p: PaymentRecord, report: SweepReport): Promise<void> {
    // One payment that cannot go on now must not hold up the rest.
    try {
      const done = await saga.run(p, { timeoutMs: opts.timeoutMs, signal: stopping.signal });
      if (resumable(done)) {
        await store.releaseLease(p.id, instanceId);
        report.paused++;
      } else {
        report.finished++;
      }
      logger.info({ paymentId: p.id, status: done.status }, "payment resumed");
    } catch (err) {
      report.failed++;
      logger.error({ err, paymentId: p.id }, "payment could not be resumed");
    }
  }

  /** Resumes `batch` in order, at most `concurrency` at once; returns how many it started (a prefix of the batch). */
  async function resumeBatch(batch: PaymentRecord[], freshUntil: number, report: SweepReport): Promise<number> {
    let next = 0;
    // The first `concurrency` start as they are claimed; later ones only while the batch is fresh.
    const mayStart = () => next < batch.length && !stopping.signal.aborted && (next < concurrency || Date.now() < freshUntil);
    const worker = async () => {
      while (mayStart()) await resume(batch[next++]!, report);
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, batch.length) }, worker));
    return next;
  }

  async function sweepOnce(): Promise<SweepReport> {
    const report: SweepReport = { finished: 0, paused: 0, failed: 0, deferred: 0 };
    const startedAt = Date.now();
    let after: PaymentRecord | undefined;
    while (!stopping.signal.aborted) {
      const claimedAt = Date.now();
      const finishedBefore = report.finished;
      const batch = await store.claimStalled(instanceId, leaseMs, batchSize, after);
      const started = await resumeBatch(batch, claimedAt + leaseMs * START_WITHIN_LEASE_SHARE, report);
      const unstarted = batch.slice(started);
      // Unleased at once, so this sweep's next claim (or another replica's) takes them with a fresh lease.
      await Promise.all(unstarted.map((p) => store.releaseLease(p.id, instanceId)));
      report.deferred += unstarted.length;
      after = batch[started - 1] ?? after;
      const drained = batch.length < batchSize && unstarted.length === 0;
      if (drained || report.finished === finishedBefore) break;
    }
    if (report.finished + report.paused + report.failed + report.deferred > 0) logger.info({ ...report, ms: Date.now() - startedAt }, "recovery sweep done");
    await keys.purgeExpired();
    return report;
  }

  function sweep(): Promise<SweepReport> {
    running ??= sweepOnce().finally(() => {
      running = undefined;
    });
    return running;
  }

  function schedule(): void {
    timer = setTimeout(() => {
      sweep()
        .catch((err: unknown) => logger.error({ err }, "recovery sweep failed"))
        .finally(() => {
          if (!stopping.signal.aborted) schedule();
        });
    }, opts.intervalMs);
  }
  schedule();

  return {
    sweep,
    async stop() {
      stopping.abort();
      clearTimeout(timer);
      await running?.catch(() => {});
    },
  };
}
