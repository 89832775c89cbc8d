// Replicas restarting under load, as a rolling restart does them: two servers on one port at
// 127.0.0.1 and 127.0.0.2 (the addresses a headless Service's name resolves to), each shut
// down and started again in turn while workers call without pause; every outcome is counted.
import { Code, ConnectError } from "@connectrpc/connect";
import type { RunningServer } from "../../services/runtime/rpc/server.js";
import { freePort } from "./ports.js";

export const REPLICA_HOSTS = ["127.0.0.1", "127.0.0.2"];

export interface Replicas {
  port: number;
  /** Shuts each replica down and starts it again, in turn, `rounds` times in all. */
  restart(rounds: number): Promise<void>;
  close(): Promise<void>;
}

export async function startReplicas(start: (host: string, port: number) => Promise<RunningServer>): Promise<Replicas> {
  const port = await freePort();
  const servers = await Promise.all(REPLICA_HOSTS.map((host) => start(host, port)));
  return {
    port,
    async restart(rounds) {
      for (let round = 0; round < rounds; round++) {
        const i = round % servers.length;
        await new Promise((r) => setTimeout(r, 50)); // calls on every replica
        await servers[i]!.shutdown();
        servers[i] = await start(REPLICA_HOSTS[i]!, port);
      }
    },
    async close() {
      await Promise.all(servers.map((s) => s.shutdown()));
    },
  };
}

/** Calls `call` from `workers` workers, each call after the last, until `during` settles: "ok" or "<code>: <message>", counted. */
export async function outcomesDuring(call: () => Promise<unknown>, workers: number, during: Promise<unknown>): Promise<Record<string, number>> {
  const outcomes: Record<string, number> = {};
  let done = false;
  const over = during.finally(() => (done = true));
  const worker = async () => {
    while (!done) {
      let outcome = "ok";
      try {
        await call();
      } catch (err) {
        const e = ConnectError.from(err);
        outcome = `${Code[e.code]}: ${e.rawMessage}`;
      }
      outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
    }
  };
  await Promise.all([over, ...Array.from({ length: workers }, worker)]);
  return outcomes;
}
