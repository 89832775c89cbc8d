// The run: VUS workers take the plan's payments in turn, each sending one and waiting for its
// answer before the next, until the plan is done or DURATION has passed (payments in flight
// then finish and count). A payment's API key is its payer's merchant's.
import { performance } from "node:perf_hooks";
import type { LoadParams } from "./params.js";
import { sender, type Send } from "./protocols.js";
import { loadPlan, type PaymentSpec, type Plan } from "./script.js";
import { newTally, record, summarize, type Summary } from "./summary.js";

/** Setup that failed (the gateway not there, no reflection): exit 1, with this message. */
export class StartError extends Error {}

/** The key for a payment: the one key, or the payer's merchant's (accounts are <merchant>_<ccy>). */
export function keyFor(apiKeys: Map<string, string>, payment: PaymentSpec): string {
  const only = apiKeys.get("");
  if (only !== undefined) return only;
  const merchant = payment.sourceAccount.split("_")[0] ?? "";
  return apiKeys.get(merchant) ?? apiKeys.values().next().value ?? "";
}

async function checkGateway(target: URL): Promise<void> {
  const url = new URL("/healthz", target);
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
    if (res.ok) return;
    throw new StartError(`the gateway at ${target.origin} is not healthy (GET /healthz: HTTP ${res.status})`);
  } catch (err) {
    if (err instanceof StartError) throw err;
    throw new StartError(`no Paygate gateway answers at ${target.origin} (GET /healthz: ${(err as { cause?: { code?: string } }).cause?.code ?? String(err)}): start it with \`npm start\`, or point PAYMENTS at one`);
  }
}

export async function runLoad(params: LoadParams, stop?: AbortSignal): Promise<Summary> {
  const plan: Plan = await loadPlan(params);
  await checkGateway(params.target);
  let send: Send;
  try {
    send = await sender(plan.protocol, params.target, keyFor(params.apiKeys, plan.payment(0)));
  } catch (err) {
    throw new StartError(`cannot set up ${plan.protocol}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const tally = newTally();
  let next = 0;
  const start = performance.now();
  const end = start + params.durationMs;
  const worker = async () => {
    while (next < plan.total && performance.now() < end && !stop?.aborted) {
      const i = next++;
      const t0 = performance.now();
      let payment: PaymentSpec;
      try {
        payment = plan.payment(i);
      } catch {
        record(tally, { code: "script_error" }, 0);
        continue;
      }
      const answer = await send(payment, keyFor(params.apiKeys, payment));
      record(tally, answer, performance.now() - t0);
    }
  };
  await Promise.all(Array.from({ length: params.vus }, worker));
  const elapsedS = (performance.now() - start) / 1000;
  return summarize({ script: plan.name, protocol: plan.protocol, target: params.target.origin, vus: params.vus, durationMs: params.durationMs, elapsedS }, tally, params.thresholds);
}
