// What a run sends: a plan of payments and the protocol that carries them. The built-in
// scripts are the original proof of concept's: the same payment again and again (CUSTOMER_ID
// pays AMOUNT to DESTINATION) in Connect JSON, REST or gRPC, and `csv`, every row of CSV_PATH
// once over REST. A script module (.mjs/.js) chooses its own payments:
//
//   export const protocol = "rest";           // or "connect-json", "grpc"
//   export function payment(iteration) {      // 0, 1, 2, … ; amounts as decimal strings
//     return { sourceAccount: "acme_usd", destinationAccount: "globex_eur", currency: "USD", amount: "2.50" };
//   }
//
// Every payment's id (the REST id, else the Idempotency-Key) is TX_ID-<n>, or TX_ID-<row id>
// for the CSV, so a second run with another TX_ID pays again instead of replaying.
import { readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { parse } from "csv-parse/sync";
import { UsageError, type LoadParams } from "./params.js";

export const PROTOCOLS = ["connect-json", "rest", "grpc"] as const;
export type Protocol = (typeof PROTOCOLS)[number];

export interface PaymentSpec {
  id: string;
  sourceAccount: string;
  destinationAccount: string;
  currency: string;
  /** Decimal in major units, never a float. */
  amount: string;
}

export interface Plan {
  name: string;
  protocol: Protocol;
  /** How many payments at most. */
  total: number;
  payment(iteration: number): PaymentSpec;
}

const CSV_COLUMNS = ["id", "currency", "amount", "source_account", "destination_account"];

export async function loadPlan(p: LoadParams): Promise<Plan> {
  const fixed = (protocol: Protocol): Plan => ({
    name: protocol,
    protocol,
    total: p.iterations,
    payment: (i) => ({ id: `${p.txId}-${i + 1}`, sourceAccount: p.customerId, destinationAccount: p.destination, currency: p.currency, amount: p.amount }),
  });
  switch (p.script) {
    case "connect-json":
    case "rest":
    case "grpc":
      return fixed(p.script);
    case "csv":
      return csvPlan(p);
    default:
      return modulePlan(p);
  }
}

function csvPlan(p: LoadParams): Plan {
  let text: string;
  try {
    text = readFileSync(p.csvPath, "utf8");
  } catch (err) {
    throw new UsageError(`CSV_PATH: cannot read ${p.csvPath} (${(err as NodeJS.ErrnoException).code ?? String(err)}); npm run dummygen writes one`);
  }
  let rows: Record<string, string>[];
  try {
    rows = parse(text, { columns: true, skip_empty_lines: true, trim: true });
  } catch (err) {
    throw new UsageError(`CSV_PATH: ${p.csvPath} is not CSV: ${err instanceof Error ? err.message : String(err)}`);
  }
  const first = rows[0];
  if (!first) throw new UsageError(`CSV_PATH: ${p.csvPath} holds no payment`);
  const missing = CSV_COLUMNS.filter((c) => !(c in first));
  if (missing.length > 0) throw new UsageError(`CSV_PATH: ${p.csvPath} lacks the column(s) ${missing.join(", ")} (expected ${CSV_COLUMNS.join(",")})`);
  return {
    name: `csv (${path.basename(p.csvPath)}, ${rows.length} rows)`,
    protocol: "rest",
    total: Math.min(rows.length, p.iterations),
    payment: (i) => {
      const row = rows[i]!;
      return { id: `${p.txId}-${row.id}`, sourceAccount: row.source_account!, destinationAccount: row.destination_account!, currency: row.currency!, amount: row.amount! };
    },
  };
}

async function modulePlan(p: LoadParams): Promise<Plan> {
  let mod: { protocol?: unknown; payment?: unknown };
  try {
    mod = (await import(pathToFileURL(path.resolve(p.script)).href)) as typeof mod;
  } catch (err) {
    throw new UsageError(`SCRIPT: cannot load ${p.script}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const { protocol, payment } = mod;
  if (typeof protocol !== "string" || !(PROTOCOLS as readonly string[]).includes(protocol)) {
    throw new UsageError(`SCRIPT: ${p.script} must export protocol, one of ${PROTOCOLS.join(", ")}`);
  }
  if (typeof payment !== "function") throw new UsageError(`SCRIPT: ${p.script} must export a function payment(iteration)`);
  const plan: Plan = {
    name: `${path.basename(p.script)} (${protocol})`,
    protocol: protocol as Protocol,
    total: p.iterations,
    payment: (i) => {
      const spec = (payment as (i: number) => unknown)(i) as Record<string, unknown> | undefined;
      for (const field of ["sourceAccount", "destinationAccount", "currency", "amount"]) {
        if (typeof spec?.[field] !== "string") throw new Error(`${path.basename(p.script)}: payment(${i}) gave no ${field} string`);
      }
      return { id: `${p.txId}-${i + 1}`, ...(spec as Omit<PaymentSpec, "id">) };
    },
  };
  try {
    plan.payment(0);
  } catch (err) {
    throw new UsageError(`SCRIPT: ${err instanceof Error ? err.message : String(err)}`);
  }
  return plan;
}
