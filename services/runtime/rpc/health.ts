// The standard gRPC health protocol (grpc.health.v1.Health) for a ConnectRouter, so load
// balancers, Kubernetes probes and grpc-health-probe can ask whether a service is serving.
// Semantics follow https://github.com/grpc/grpc/blob/master/doc/health-checking.md.
import { Code, ConnectError } from "@connectrpc/connect";
import type { ConnectRouter } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/health/v1/health_pb.js";

export { HealthCheckResponse_ServingStatus as ServingStatus };
type ServingStatus = HealthCheckResponse_ServingStatus;
const { SERVING, SERVICE_UNKNOWN } = HealthCheckResponse_ServingStatus;

/** The whole server's entry, as the protocol names it. */
export const OVERALL = "";

/**
 * Serving status per service name ("" is the whole server). A name that was never set is
 * unknown: Check answers NOT_FOUND for it, Watch answers SERVICE_UNKNOWN.
 */
export class HealthStatus {
  private readonly statuses = new Map<string, ServingStatus>();
  private readonly listeners = new Set<(service: string) => void>();

  /** Starts with "" and every name in `services` at `initial` (SERVING by default). */
  constructor(services: Iterable<string> = [], initial: ServingStatus = SERVING) {
    this.statuses.set(OVERALL, initial);
    for (const service of services) this.statuses.set(service, initial);
  }

  set(service: string, status: ServingStatus): void {
    if (this.statuses.get(service) === status) return;
    this.statuses.set(service, status);
    this.notify(service);
  }

  /** Sets every known service, "" included (graceful shutdown: NOT_SERVING). */
  setAll(status: ServingStatus): void {
    for (const service of [...this.statuses.keys()]) this.set(service, status);
  }

  /** The status of a service, undefined when unknown. */
  get(service: string): ServingStatus | undefined {
    return this.statuses.get(service);
  }

  /** A snapshot of every known service's status. */
  entries(): [string, ServingStatus][] {
    return [...this.statuses.entries()];
  }

  /**
   * Yields the current status at once, then each change until `signal` aborts. A slow
   * consumer gets the latest status, not every intermediate one.
   */
  async *watch(service: string, signal: AbortSignal): AsyncGenerator<ServingStatus> {
    let last: ServingStatus | undefined;
    for (;;) {
      // Checked before the signal, so that a shutdown doing setAll(NOT_SERVING) and then
      // aborting still tells watchers NOT_SERVING before their streams end.
      const status = this.statuses.get(service) ?? SERVICE_UNKNOWN;
      if (status !== last) {
        last = status;
        yield status;
        continue;
      }
      if (signal.aborted) return;
      await this.nextChange(service, signal);
    }
  }

  private nextChange(service: string, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.listeners.delete(listener);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const listener = (changed: string) => {
        if (changed === service) done();
      };
      this.listeners.add(listener);
      signal.addEventListener("abort", done);
    });
  }

  private notify(service: string): void {
    for (const listener of [...this.listeners]) listener(service);
  }
}

export interface HealthOptions {
  /**
   * When aborted, open Watch streams end (with OK, after their last status), so that they
   * do not hold a draining server open; clients then reconnect with backoff.
   */
  stopWatches?: AbortSignal;
}

/** Serves grpc.health.v1.Health (Check, Watch, List) from `health` on `router`. */
export function registerHealth(router: ConnectRouter, health: HealthStatus, options: HealthOptions = {}): ConnectRouter {
  return router.service(Health, {
    check(req) {
      const status = health.get(req.service);
      if (status === undefined) {
        throw new ConnectError(`unknown service "${req.service}"`, Code.NotFound);
      }
      return { status };
    },
    async *watch(req, ctx) {
      const signal = options.stopWatches ? AbortSignal.any([ctx.signal, options.stopWatches]) : ctx.signal;
      for await (const status of health.watch(req.service, signal)) yield { status };
    },
    list() {
      return {
        statuses: Object.fromEntries(health.entries().map(([service, status]) => [service, { status }])),
      };
    },
  });
}
