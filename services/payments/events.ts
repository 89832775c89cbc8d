// Live payment events. Events are rows in payment_events; readers follow them by sequence.
// A write in this process wakes its readers at once; a poll picks up writes from other
// replicas on the same database.
import type { PaymentStore, StoredEvent } from "./store.js";

export class EventFeed {
  private readonly waiters = new Set<() => void>();

  constructor(
    private readonly store: PaymentStore,
    private readonly pollMs: number,
  ) {}

  /** Wakes every reader (called after events are committed). */
  notify = (): void => {
    for (const wake of this.waiters) wake();
  };

  /** Events after `afterSeq` matching `filter`, as they come, until `signal` aborts. */
  async *follow(filter: { merchantId?: string; paymentId?: string }, afterSeq: bigint, signal: AbortSignal): AsyncGenerator<StoredEvent> {
    let seq = afterSeq;
    while (!signal.aborted) {
      const batch = await this.store.eventsAfter(filter, seq);
      for (const e of batch) {
        seq = e.seq;
        yield e;
      }
      if (batch.length === 0) await this.wait(signal);
    }
  }

  private wait(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(done);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, this.pollMs);
      this.waiters.add(done);
      signal.addEventListener("abort", done);
    });
  }
}
