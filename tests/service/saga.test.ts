// The saga against scripted upstreams (risk, fx, wallet) and a real payments store: what it
// makes of answers the real services rarely give — a wallet that leaves an automatic
// payment's hold pending, a permanent refusal from risk or fx — and that nothing moves then;
// and which fx calls a cross-currency payment makes.
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { QuoteSchema, type FxService } from "../../services/gen/paygate/fx/v1/fx_pb.js";
import { DecisionSchema, Outcome, type RiskService } from "../../services/gen/paygate/risk/v1/risk_pb.js";
import { AccountSchema, HoldSchema, HoldStatus, type WalletService } from "../../services/gen/paygate/wallet/v1/wallet_pb.js";
import { ErrorDetailSchema } from "../../services/gen/paygate/common/v1/common_pb.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { migrate } from "../../services/runtime/db/migrate.js";
import { money } from "../../services/runtime/money/money.js";
import { AccountDirectory } from "../../services/payments/accounts.js";
import type { PaymentRecord } from "../../services/payments/payment.js";
import { paymentRecord as payment } from "../support/payments.js";
import { Saga } from "../../services/payments/saga.js";
import { PaymentStore } from "../../services/payments/store.js";
import type { Database } from "../../services/runtime/db/database.js";
import { testDatabases } from "../support/postgres.js";

const MIGRATIONS = fileURLToPath(new URL("../../services/payments/migrations", import.meta.url));
const logger = createLogger("saga-test", "silent");

/** What each scripted upstream method was asked. */
const calls: string[] = [];
let walletCaptures = true;
let riskRefusal: ConnectError | undefined;
/** Runs while risk scores (another process acting meanwhile). */
let whileScoring: (() => Promise<void>) | undefined;
let quoteRefusal: ConnectError | undefined;

const refusal = (code: Code, reason: string, message: string) =>
  new ConnectError(message, code, undefined, [{ desc: ErrorDetailSchema, value: create(ErrorDetailSchema, { reason }) }]);

const hold = (status: HoldStatus, amountMinor: bigint) =>
  create(HoldSchema, {
    id: "h",
    amount: money("USD", amountMinor),
    status,
    capturedAmount: status === HoldStatus.CAPTURED ? money("USD", amountMinor) : undefined,
    capturedDestinationAmount: status === HoldStatus.CAPTURED ? money("USD", amountMinor) : undefined,
  });

const wallet = {
  async getAccount(req: { accountId: string }) {
    calls.push("wallet.getAccount");
    return { account: create(AccountSchema, { id: req.accountId, ownerId: "m_test", currency: "USD", createdAt: timestampFromDate(new Date(0)) }) };
  },
  async reserve(req: { capture: boolean; amount?: { amountMinor: bigint }; fx?: { rate: string; quoteId: string } }) {
    calls.push(`wallet.reserve(capture=${req.capture}${req.fx ? `, fx=${req.fx.quoteId}@${req.fx.rate}` : ""})`);
    // A wallet that ignores `capture` leaves the hold pending.
    return { hold: hold(req.capture && walletCaptures ? HoldStatus.CAPTURED : HoldStatus.PENDING, req.amount!.amountMinor) };
  },
  async capture() {
    calls.push("wallet.capture");
    return { hold: hold(HoldStatus.CAPTURED, 1_00n) };
  },
  async release() {
    calls.push("wallet.release");
    return { hold: hold(HoldStatus.RELEASED, 1_00n) };
  },
} as unknown as Client<typeof WalletService>;

const risk = {
  async score() {
    calls.push("risk.score");
    await whileScoring?.();
    if (riskRefusal) throw riskRefusal;
    return { decision: create(DecisionSchema, { id: "rd_saga", score: 5, outcome: Outcome.APPROVE }) };
  },
} as unknown as Client<typeof RiskService>;

const fx = {
  async createQuote(req: { toCurrency: string; useReference: string }) {
    calls.push(`fx.createQuote(use_reference=${req.useReference})`);
    if (quoteRefusal) throw quoteRefusal;
    return { quote: create(QuoteSchema, { id: "qt_saga", rate: "150.25", converted: money(req.toCurrency, 150_25n), usedReference: req.useReference }) };
  },
  async convert(req: { quoteId: string; reference: string }) {
    calls.push(`fx.convert(${req.quoteId}, reference=${req.reference})`);
    return {};
  },
} as unknown as Client<typeof FxService>;

describe("saga against scripted upstreams", () => {
  const dbs = testDatabases({ name: "pglite", url: undefined }, "saga");
  let db: Database;
  let store: PaymentStore;
  let saga: Saga;

  beforeAll(async () => {
    db = await dbs.open(dbs.newSchema());
    await migrate(db, MIGRATIONS);
    store = new PaymentStore(db, () => new Date(), () => {});
    saga = new Saga(store, { wallet, risk, fx }, new AccountDirectory(wallet, 1_000), logger);
  });
  afterAll(() => dbs.cleanup());

  const start = async (over: Partial<PaymentRecord> = {}) => {
    calls.length = 0;
    return (await store.create(payment(over), "test", 60_000))!;
  };
  const events = async (id: string) => (await db.query<{ type: string }>("SELECT type FROM payment_events WHERE payment_id = $1 ORDER BY seq", [id])).rows.map((r) => r.type);

  it("an automatic payment whose hold the wallet captured is CAPTURED in one write, with one wallet call", async () => {
    walletCaptures = true;
    const p = await saga.run(await start(), {});
    expect(p).toMatchObject({ status: "CAPTURED", capturedMinor: 1_00n, settlementCapturedMinor: 1_00n, riskDecisionId: "rd_saga" });
    expect(calls.filter((c) => c.startsWith("wallet.") && c !== "wallet.getAccount")).toEqual(["wallet.reserve(capture=true)"]);
    expect(await events(p.id)).toEqual(["payment.created", "payment.authorized", "payment.captured"]);
  });

  it("an automatic payment whose hold the wallet left pending is not taken for captured: it is AUTHORIZED, then captured as a step of its own", async () => {
    walletCaptures = false;
    try {
      const p = await saga.run(await start(), {});
      expect(p).toMatchObject({ status: "CAPTURED", capturedMinor: 1_00n });
      expect(calls.filter((c) => c.startsWith("wallet.") && c !== "wallet.getAccount")).toEqual(["wallet.reserve(capture=true)", "wallet.capture"]);
      expect(await events(p.id)).toEqual(["payment.created", "payment.authorized", "payment.captured"]);
    } finally {
      walletCaptures = true;
    }
  });

  it("a permanent refusal from risk ends the payment FAILED with its reason, and nothing reaches the wallet", async () => {
    riskRefusal = refusal(Code.AlreadyExists, "PAYMENT_ALREADY_SCORED", "payment_id: already scored with different details");
    try {
      const p = await saga.run(await start(), {});
      expect(p).toMatchObject({ status: "FAILED", failureReason: "PAYMENT_ALREADY_SCORED" });
      expect(calls.some((c) => c.startsWith("wallet.reserve"))).toBe(false);
    } finally {
      riskRefusal = undefined;
    }
  });

  it("a permanent refusal of the fx quote ends the payment FAILED with its reason and the risk decision kept", async () => {
    quoteRefusal = refusal(Code.InvalidArgument, "UNSUPPORTED_CURRENCY", "to_currency: not quoted");
    try {
      const p = await saga.run(await start({ settlementCurrency: "EUR", settlementMinor: null }), {});
      expect(p).toMatchObject({ status: "FAILED", failureReason: "UNSUPPORTED_CURRENCY", riskDecisionId: "rd_saga" });
      expect(calls.some((c) => c.startsWith("wallet.reserve"))).toBe(false);
    } finally {
      quoteRefusal = undefined;
    }
  });

  it("a cross-currency payment makes and uses its quote in one fx call, places the hold on its terms and stores them with the outcome", async () => {
    const p = await saga.run(await start({ settlementCurrency: "JPY", settlementMinor: null }), {});
    expect(p).toMatchObject({ status: "CAPTURED", fxQuoteId: "qt_saga", fxRate: "150.25", settlementMinor: 150_25n, riskDecisionId: "rd_saga" });
    expect(calls.filter((c) => c.startsWith("fx.") || c.startsWith("wallet.reserve"))).toEqual([`fx.createQuote(use_reference=${p.id})`, "wallet.reserve(capture=true, fx=qt_saga@150.25)"]);
    expect(await events(p.id)).toEqual(["payment.created", "payment.authorized", "payment.captured"]);
  });

  it("a cross-currency payment asks risk and fx at once: both calls are out before either answers", async () => {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const score = risk.score;
    (risk as { score: unknown }).score = async (...args: unknown[]) => {
      await held; // risk answers only once fx has been asked
      return (score as (...a: unknown[]) => unknown)(...args);
    };
    try {
      const running = saga.run(await start({ settlementCurrency: "JPY", settlementMinor: null }), {});
      await vi.waitFor(() => expect(calls.some((c) => c.startsWith("fx.createQuote"))).toBe(true));
      release();
      expect((await running).status).toBe("CAPTURED");
    } finally {
      (risk as { score: unknown }).score = score;
    }
  });

  it("a risk decline of a cross-currency payment ends it FAILED RISK_DECLINED whatever fx answered, and nothing reaches the wallet", async () => {
    const score = risk.score;
    (risk as { score: unknown }).score = async () => {
      calls.push("risk.score");
      return { decision: create(DecisionSchema, { id: "rd_decline", score: 95, outcome: Outcome.DECLINE }) };
    };
    try {
      for (const fxAnswer of ["a quote", "a refusal", "unavailable"] as const) {
        quoteRefusal = fxAnswer === "a refusal" ? refusal(Code.InvalidArgument, "UNSUPPORTED_CURRENCY", "not quoted") : fxAnswer === "unavailable" ? new ConnectError("fx is down", Code.Unavailable) : undefined;
        const p = await saga.run(await start({ settlementCurrency: "JPY", settlementMinor: null }), {});
        expect({ fxAnswer, status: p.status, reason: p.failureReason, decision: p.riskDecisionId }).toEqual({ fxAnswer, status: "FAILED", reason: "RISK_DECLINED", decision: "rd_decline" });
        expect(calls.some((c) => c.startsWith("wallet.reserve"))).toBe(false);
      }
    } finally {
      (risk as { score: unknown }).score = score;
      quoteRefusal = undefined;
    }
  });

  it("risk unavailable while fx quoted: the payment waits for the sweep; resumed, it gets the same quote and places the hold once", async () => {
    riskRefusal = new ConnectError("risk is down", Code.Unavailable);
    let p: PaymentRecord;
    try {
      p = await saga.run(await start({ settlementCurrency: "JPY", settlementMinor: null }), {});
      expect(p.status).toBe("PENDING");
      expect(calls.some((c) => c.startsWith("wallet.reserve"))).toBe(false);
    } finally {
      riskRefusal = undefined;
    }
    calls.length = 0;
    const resumed = await saga.run(p, {});
    expect(resumed).toMatchObject({ status: "CAPTURED", fxQuoteId: "qt_saga", riskDecisionId: "rd_saga" });
    expect(calls.filter((c) => c.startsWith("fx.") || c.startsWith("wallet.reserve"))).toEqual([`fx.createQuote(use_reference=${p.id})`, "wallet.reserve(capture=true, fx=qt_saga@150.25)"]);
  });

  it("a transient failure leaves the payment PENDING for the recovery sweep", async () => {
    riskRefusal = new ConnectError("risk is down", Code.Unavailable);
    try {
      const p = await saga.run(await start(), {});
      expect(p.status).toBe("PENDING");
      expect(await events(p.id)).toEqual(["payment.created"]);
    } finally {
      riskRefusal = undefined;
    }
  });

  it("a run for a request says whether its own write kept the response under the key: yes when it ended the payment, not when another process moved it first", async () => {
    const keyFor = async (key: string) => {
      await db.query("INSERT INTO idempotency_keys (merchant_id, key, request_hash, locked_until, created_at, expires_at) VALUES ('m_test', $1, 'h', now() + interval '1 minute', now(), now() + interval '1 day')", [key]);
      return { key: { merchantId: "m_test", key }, response: (p: PaymentRecord) => new TextEncoder().encode(p.status) };
    };
    const keptResponse = async (key: string) =>
      (await db.query<{ response: Uint8Array | null }>("SELECT response FROM idempotency_keys WHERE merchant_id = 'm_test' AND key = $1", [key])).rows[0]!.response;

    const ended = await saga.runForRequest(await start(), {}, await keyFor("k-ends"));
    expect(ended).toMatchObject({ payment: { status: "CAPTURED" }, kept: true });
    expect(new TextDecoder().decode(await keptResponse("k-ends"))).toBe("CAPTURED");

    // Another process (a recovery sweep after this run's lease ran out) drives the payment to
    // its end while this run waits for risk: this run's write finds the payment moved on, and
    // nothing of this run is kept under its key.
    const raced = await start();
    whileScoring = async () => {
      whileScoring = undefined;
      await saga.run(await store.get(raced.id), {});
    };
    try {
      const run = await saga.runForRequest(raced, {}, await keyFor("k-raced"));
      expect(run).toMatchObject({ payment: { status: "CAPTURED" }, kept: false });
      expect(await keptResponse("k-raced")).toBeNull();
    } finally {
      whileScoring = undefined;
    }
  });
});
