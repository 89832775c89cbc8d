// WalletService end to end in-process: the real handlers behind a router transport (messages
// serialised as on the wire), the real error mapping, the ledger on an in-memory PGlite, and
// a clock the test moves.
import { randomUUID } from "node:crypto";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createRouterTransport, type Client } from "@connectrpc/connect";
import { ErrorDetailSchema, type ErrorDetail, type Money } from "../../services/gen/paygate/common/v1/common_pb.js";
import { AccountKind, EntryDirection, HoldStatus, WalletService, type Account } from "../../services/gen/paygate/wallet/v1/wallet_pb.js";
import { IN_MEMORY, openDatabase, type Database } from "../../services/runtime/db/database.js";
import { errorMapping } from "../../services/runtime/rpc/interceptors.js";
import { createLogger } from "../../services/runtime/observability/logger.js";
import { Ledger } from "../../services/wallet/ledger.js";
import { walletService } from "../../services/wallet/service.js";
import { Clock, HOUR, migrateLedger } from "../support/ledger.js";

const DEFAULT_TTL_MS = HOUR;
const MAX_TTL_MS = 24 * HOUR;
const logger = createLogger("wallet-test", "silent");

const uid = () => randomUUID().replaceAll("-", "").slice(0, 16);
const usd = (amountMinor: bigint) => ({ currency: "USD", amountMinor });
const m = (currency: string, amountMinor: bigint) => ({ currency, amountMinor });
/** A Money as a plain value, for comparisons. */
const plain = (x: Money | undefined) => (x ? { currency: x.currency, amountMinor: x.amountMinor } : undefined);

async function rpcError(call: Promise<unknown>): Promise<{ code: Code; detail: ErrorDetail | undefined; message: string }> {
  try {
    await call;
  } catch (err) {
    expect(err).toBeInstanceOf(ConnectError);
    const e = err as ConnectError;
    return { code: e.code, detail: e.findDetails(ErrorDetailSchema)[0], message: e.rawMessage };
  }
  throw new Error("expected the call to fail, it succeeded");
}

/** Asserts the Connect code and the ErrorDetail's reason and field. */
async function expectRpcError(call: Promise<unknown>, code: Code, reason: string, field: string): Promise<ErrorDetail> {
  const err = await rpcError(call);
  expect({ code: Code[err.code], reason: err.detail?.reason, field: err.detail?.field }).toEqual({ code: Code[code], reason, field });
  return err.detail!;
}

describe("wallet service", () => {
  const clock = new Clock();
  let db: Database;
  let ledger: Ledger;
  let wallet: Client<typeof WalletService>;

  beforeAll(async () => {
    db = await openDatabase({ dataDir: IN_MEMORY, schema: "wallet" });
    await migrateLedger(db);
    ledger = new Ledger(db, clock.now);
    const impl = walletService({ ledger, defaultHoldTtlMs: DEFAULT_TTL_MS, maxHoldTtlMs: MAX_TTL_MS });
    wallet = createClient(WalletService, createRouterTransport((r) => r.service(WalletService, impl), { router: { interceptors: [errorMapping(logger)] } }));
  });
  afterEach(async () => {
    if (ledger) expect(await ledger.reconcile()).toEqual([]);
  });
  afterAll(async () => {
    await db?.close();
  });

  const open = async (currency = "USD", ownerId = `own_${uid()}`): Promise<Account> => (await wallet.openAccount({ requestId: `req_${uid()}`, ownerId, currency })).account!;
  const funded = async (amountMinor: bigint, currency = "USD"): Promise<Account> => {
    const a = await open(currency);
    await wallet.credit({ transferId: `cr_${uid()}`, accountId: a.id, amount: m(currency, amountMinor) });
    return a;
  };
  const balance = async (accountId: string) => {
    const b = (await wallet.getBalance({ accountId })).balance!;
    return { posted: plain(b.posted), pending: plain(b.pending), available: plain(b.available) };
  };
  const usdBalance = (posted: bigint, pending: bigint) => ({ posted: usd(posted), pending: usd(pending), available: usd(posted - pending) });

  describe("accounts", () => {
    it("OpenAccount opens a USER account, idempotent by request_id; GetAccount and ListAccounts return it", async () => {
      const ownerId = `own_${uid()}`;
      const req = { requestId: `req_${uid()}`, ownerId, currency: "KWD" };
      const { account } = await wallet.openAccount(req);
      expect(account).toMatchObject({ ownerId, currency: "KWD", kind: AccountKind.USER });
      expect(account!.id).toMatch(/^acc_/);
      expect(timestampDate(account!.createdAt!)).toEqual(clock.now());
      expect((await wallet.openAccount(req)).account).toEqual(account);
      expect((await wallet.getAccount({ accountId: account!.id })).account).toEqual(account);
      // Listed oldest first (same instant: by id, which is random).
      clock.advance(1000);
      const second = (await wallet.openAccount({ requestId: `req_${uid()}`, ownerId, currency: "USD" })).account!;
      expect((await wallet.listAccounts({ ownerId })).accounts.map((a) => a.id)).toEqual([account!.id, second.id]);
      expect((await wallet.listAccounts({ ownerId: `own_${uid()}` })).accounts).toEqual([]);
    });

    it("errors: ID_REUSED, UNKNOWN_CURRENCY, MISSING_FIELD, ACCOUNT_NOT_FOUND", async () => {
      const req = { requestId: `req_${uid()}`, ownerId: `own_${uid()}`, currency: "USD" };
      await wallet.openAccount(req);
      await expectRpcError(wallet.openAccount({ ...req, currency: "EUR" }), Code.AlreadyExists, "ID_REUSED", "request_id");
      await expectRpcError(wallet.openAccount({ ...req, requestId: `req_${uid()}`, currency: "usd" }), Code.InvalidArgument, "UNKNOWN_CURRENCY", "currency");
      await expectRpcError(wallet.openAccount({ ...req, requestId: `req_${uid()}`, ownerId: "" }), Code.InvalidArgument, "MISSING_FIELD", "owner_id");
      await expectRpcError(wallet.getAccount({ accountId: "acc_missing" }), Code.NotFound, "ACCOUNT_NOT_FOUND", "account_id");
      await expectRpcError(wallet.listAccounts({ ownerId: "" }), Code.InvalidArgument, "MISSING_FIELD", "owner_id");
      await expectRpcError(wallet.getBalance({ accountId: "acc_missing" }), Code.NotFound, "ACCOUNT_NOT_FOUND", "account_id");
    });
  });

  describe("credit and balance", () => {
    it("Credit returns the new balance; GetBalance shows posted, pending and available", async () => {
      const a = await open();
      const req = { transferId: `cr_${uid()}`, accountId: a.id, amount: usd(250_75n) };
      const { balance: after } = await wallet.credit(req);
      expect({ accountId: after!.accountId, posted: plain(after!.posted), pending: plain(after!.pending), available: plain(after!.available) }).toEqual({
        accountId: a.id,
        ...usdBalance(250_75n, 0n),
      });
      // A replay has no second effect.
      await wallet.credit(req);
      expect(await balance(a.id)).toEqual(usdBalance(250_75n, 0n));
      await wallet.reserve({ holdId: `h_${uid()}`, accountId: a.id, destinationAccountId: (await open()).id, amount: usd(100_25n) });
      expect(await balance(a.id)).toEqual(usdBalance(250_75n, 100_25n));
    });

    it("Credit errors name the field", async () => {
      const a = await open("JPY");
      const base = { transferId: `cr_${uid()}`, accountId: a.id, amount: m("JPY", 500n) };
      await wallet.credit(base);
      await expectRpcError(wallet.credit({ ...base, amount: m("JPY", 501n) }), Code.AlreadyExists, "ID_REUSED", "transfer_id");
      await expectRpcError(wallet.credit({ ...base, transferId: `cr_${uid()}`, amount: undefined }), Code.InvalidArgument, "MISSING_FIELD", "amount");
      await expectRpcError(wallet.credit({ ...base, transferId: `cr_${uid()}`, amount: m("XYZ", 1n) }), Code.InvalidArgument, "UNKNOWN_CURRENCY", "amount.currency");
      await expectRpcError(wallet.credit({ ...base, transferId: `cr_${uid()}`, amount: usd(1n) }), Code.InvalidArgument, "CURRENCY_MISMATCH", "amount.currency");
      await expectRpcError(wallet.credit({ ...base, transferId: `cr_${uid()}`, amount: m("JPY", -1n) }), Code.InvalidArgument, "NON_POSITIVE_AMOUNT", "amount");
      await expectRpcError(wallet.credit({ ...base, transferId: "" }), Code.InvalidArgument, "MISSING_FIELD", "transfer_id");
      await expectRpcError(wallet.credit({ ...base, transferId: `cr_${uid()}`, accountId: "acc_missing" }), Code.NotFound, "ACCOUNT_NOT_FOUND", "account_id");
      expect((await wallet.getBalance({ accountId: a.id })).balance?.posted).toMatchObject(m("JPY", 500n));
    });

    it("a database failure reaches the client without SQL text and changes nothing", async () => {
      const a = await funded(1n);
      // posted_minor would pass the int8 range: Postgres refuses the UPDATE.
      const err = await rpcError(wallet.credit({ transferId: `cr_${uid()}`, accountId: a.id, amount: usd(2n ** 63n - 1n) }));
      expect(err.message).not.toMatch(/bigint|out of range|accounts|UPDATE|SELECT/i);
      expect(await balance(a.id)).toEqual(usdBalance(1n, 0n));
    });
  });

  describe("holds", () => {
    it("Reserve holds with the default TTL or the one asked for", async () => {
      const a = await funded(100_00n);
      const b = await open();
      const { hold } = await wallet.reserve({ holdId: `h_${uid()}`, accountId: a.id, destinationAccountId: b.id, amount: usd(30_00n) });
      expect(hold).toMatchObject({ accountId: a.id, destinationAccountId: b.id, status: HoldStatus.PENDING });
      expect({ fx: hold!.fx, capturedAmount: hold!.capturedAmount, resolvedAt: hold!.resolvedAt }).toEqual({ fx: undefined, capturedAmount: undefined, resolvedAt: undefined });
      expect(plain(hold!.amount)).toEqual(usd(30_00n));
      expect(plain(hold!.destinationAmount)).toEqual(usd(30_00n));
      expect(timestampDate(hold!.createdAt!)).toEqual(clock.now());
      expect(timestampDate(hold!.expiresAt!)).toEqual(new Date(clock.t + DEFAULT_TTL_MS));
      const { hold: short } = await wallet.reserve({ holdId: `h_${uid()}`, accountId: a.id, destinationAccountId: b.id, amount: usd(1_00n), ttl: { seconds: 90n } });
      expect(timestampDate(short!.expiresAt!)).toEqual(new Date(clock.t + 90_000));
      const { hold: longest } = await wallet.reserve({ holdId: `h_${uid()}`, accountId: a.id, destinationAccountId: b.id, amount: usd(1_00n), ttl: { seconds: BigInt(MAX_TTL_MS / 1000) } });
      expect(timestampDate(longest!.expiresAt!)).toEqual(new Date(clock.t + MAX_TTL_MS));
      expect(await balance(a.id)).toEqual(usdBalance(100_00n, 32_00n));
      for (const h of [hold!, short!, longest!]) await wallet.release({ holdId: h.id });
    });

    it("a TTL of zero, below zero or above the maximum is INVALID_TTL and holds nothing", async () => {
      const a = await funded(10_00n);
      const b = await open();
      const base = { accountId: a.id, destinationAccountId: b.id, amount: usd(1_00n) };
      for (const ttl of [{ seconds: 0n }, { seconds: 0n, nanos: 400_000 }, { seconds: -5n }, { seconds: BigInt(MAX_TTL_MS / 1000) + 1n }]) {
        const holdId = `h_${uid()}`;
        const detail = await expectRpcError(wallet.reserve({ ...base, holdId, ttl }), Code.InvalidArgument, "INVALID_TTL", "ttl");
        expect(detail.metadata).toEqual({ max_seconds: String(MAX_TTL_MS / 1000) });
        await expectRpcError(wallet.getHold({ holdId }), Code.NotFound, "HOLD_NOT_FOUND", "hold_id");
      }
      expect(await balance(a.id)).toEqual(usdBalance(10_00n, 0n));
    });

    it("Reserve errors: INSUFFICIENT_FUNDS, ID_REUSED, SAME_ACCOUNT, FX_REQUIRED, FX_NOT_EXPECTED, MISSING_FIELD", async () => {
      const a = await funded(10_00n);
      const b = await open();
      const eur = await open("EUR");
      const base = { holdId: `h_${uid()}`, accountId: a.id, destinationAccountId: b.id, amount: usd(4_00n) };
      await wallet.reserve(base);
      const insufficient = await expectRpcError(wallet.reserve({ ...base, holdId: `h_${uid()}`, amount: usd(6_01n) }), Code.FailedPrecondition, "INSUFFICIENT_FUNDS", "amount");
      expect(insufficient.metadata).toEqual({ available_minor: "600" });
      await expectRpcError(wallet.reserve({ ...base, amount: usd(4_01n) }), Code.AlreadyExists, "ID_REUSED", "hold_id");
      await expectRpcError(wallet.reserve({ ...base, holdId: `h_${uid()}`, destinationAccountId: a.id }), Code.InvalidArgument, "SAME_ACCOUNT", "destination_account_id");
      await expectRpcError(wallet.reserve({ ...base, holdId: `h_${uid()}`, destinationAccountId: eur.id }), Code.InvalidArgument, "FX_REQUIRED", "fx.rate");
      await expectRpcError(wallet.reserve({ ...base, holdId: `h_${uid()}`, fx: { rate: "1", quoteId: "q_1" } }), Code.InvalidArgument, "FX_NOT_EXPECTED", "fx");
      await expectRpcError(wallet.reserve({ ...base, holdId: `h_${uid()}`, amount: undefined }), Code.InvalidArgument, "MISSING_FIELD", "amount");
      await expectRpcError(wallet.reserve({ ...base, holdId: `h_${uid()}`, amount: m("EUR", 1n) }), Code.InvalidArgument, "CURRENCY_MISMATCH", "amount.currency");
      await expectRpcError(wallet.reserve({ ...base, holdId: "" }), Code.InvalidArgument, "MISSING_FIELD", "hold_id");
      await expectRpcError(wallet.reserve({ ...base, holdId: `h_${uid()}`, destinationAccountId: "acc_missing" }), Code.NotFound, "ACCOUNT_NOT_FOUND", "destination_account_id");
      expect(await balance(a.id)).toEqual(usdBalance(10_00n, 4_00n));
      await wallet.release({ holdId: base.holdId });
    });

    it("a cross-currency hold carries the fx terms; a partial Capture converts the captured part", async () => {
      const a = await funded(20_00n);
      const kwd = await open("KWD");
      const holdId = `h_${uid()}`;
      const { hold } = await wallet.reserve({ holdId, accountId: a.id, destinationAccountId: kwd.id, amount: usd(10_00n), fx: { rate: "0.30705", quoteId: "q_kwd" } });
      expect(hold!.fx).toMatchObject({ rate: "0.30705", quoteId: "q_kwd" });
      // 10.00 USD × 0.30705 = 3.0705 KWD -> 3.070 (half-even)
      expect(plain(hold!.destinationAmount)).toEqual(m("KWD", 3_070n));
      expect((await wallet.getHold({ holdId })).hold).toEqual(hold);
      const { hold: captured } = await wallet.capture({ holdId, amount: usd(3_33n) });
      expect(captured).toMatchObject({ status: HoldStatus.CAPTURED });
      expect(plain(captured!.capturedAmount)).toEqual(usd(3_33n));
      expect(timestampDate(captured!.resolvedAt!)).toEqual(clock.now());
      // 3.33 USD × 0.30705 = 1.0224765 KWD -> 1.022
      expect(await balance(kwd.id)).toEqual({ posted: m("KWD", 1_022n), pending: m("KWD", 0n), available: m("KWD", 1_022n) });
      expect(await balance(a.id)).toEqual(usdBalance(16_67n, 0n));
    });

    it("Capture without an amount takes the whole hold; retried, it returns the same hold", async () => {
      const a = await funded(20_00n);
      const b = await open();
      const holdId = `h_${uid()}`;
      await wallet.reserve({ holdId, accountId: a.id, destinationAccountId: b.id, amount: usd(12_00n) });
      const { hold } = await wallet.capture({ holdId });
      expect(plain(hold!.capturedAmount)).toEqual(usd(12_00n));
      expect((await wallet.capture({ holdId })).hold).toEqual(hold);
      expect((await wallet.capture({ holdId, amount: usd(12_00n) })).hold).toEqual(hold);
      expect(await balance(b.id)).toEqual(usdBalance(12_00n, 0n));
      expect(await balance(a.id)).toEqual(usdBalance(8_00n, 0n));
    });

    it("Capture and Release errors: CURRENCY_MISMATCH, CAPTURE_EXCEEDS_HOLD, HOLD_RELEASED, HOLD_CAPTURED, HOLD_NOT_FOUND", async () => {
      const a = await funded(20_00n);
      const b = await open();
      const holdId = `h_${uid()}`;
      await wallet.reserve({ holdId, accountId: a.id, destinationAccountId: b.id, amount: usd(5_00n) });
      await expectRpcError(wallet.capture({ holdId, amount: m("EUR", 1_00n) }), Code.InvalidArgument, "CURRENCY_MISMATCH", "amount.currency");
      await expectRpcError(wallet.capture({ holdId, amount: usd(5_01n) }), Code.FailedPrecondition, "CAPTURE_EXCEEDS_HOLD", "amount");
      await expectRpcError(wallet.capture({ holdId, amount: usd(0n) }), Code.InvalidArgument, "NON_POSITIVE_AMOUNT", "amount");
      const { hold: released } = await wallet.release({ holdId });
      expect(released?.status).toBe(HoldStatus.RELEASED);
      expect(released?.capturedAmount).toBeUndefined();
      expect((await wallet.release({ holdId })).hold).toEqual(released);
      const detail = await expectRpcError(wallet.capture({ holdId }), Code.FailedPrecondition, "HOLD_RELEASED", "hold_id");
      expect(detail.metadata).toEqual({ status: "RELEASED" });
      const other = `h_${uid()}`;
      await wallet.reserve({ holdId: other, accountId: a.id, destinationAccountId: b.id, amount: usd(1_00n) });
      await wallet.capture({ holdId: other });
      await expectRpcError(wallet.release({ holdId: other }), Code.FailedPrecondition, "HOLD_CAPTURED", "hold_id");
      await expectRpcError(wallet.capture({ holdId: "h_missing" }), Code.NotFound, "HOLD_NOT_FOUND", "hold_id");
      await expectRpcError(wallet.capture({ holdId: "h_missing", amount: usd(1n) }), Code.NotFound, "HOLD_NOT_FOUND", "hold_id");
      await expectRpcError(wallet.release({ holdId: "h_missing" }), Code.NotFound, "HOLD_NOT_FOUND", "hold_id");
      await expectRpcError(wallet.getHold({ holdId: "h_missing" }), Code.NotFound, "HOLD_NOT_FOUND", "hold_id");
      expect(await balance(a.id)).toEqual(usdBalance(19_00n, 0n));
    });

    it("an expired hold reads EXPIRED and cannot be captured", async () => {
      const a = await funded(20_00n);
      const b = await open();
      const holdId = `h_${uid()}`;
      await wallet.reserve({ holdId, accountId: a.id, destinationAccountId: b.id, amount: usd(5_00n), ttl: { seconds: 60n } });
      clock.advance(60_000);
      await expectRpcError(wallet.capture({ holdId }), Code.FailedPrecondition, "HOLD_EXPIRED", "hold_id");
      expect(await ledger.expireHolds()).toBe(1);
      const { hold } = await wallet.getHold({ holdId });
      expect(hold?.status).toBe(HoldStatus.EXPIRED);
      expect(hold?.capturedAmount).toBeUndefined();
      expect(timestampDate(hold!.resolvedAt!)).toEqual(clock.now());
      expect(await balance(a.id)).toEqual(usdBalance(20_00n, 0n));
    });
  });

  describe("transfer", () => {
    it("Transfer posts at once, converts across currencies, and is idempotent", async () => {
      const a = await funded(20_00n);
      const jpy = await open("JPY");
      const req = { transferId: `tr_${uid()}`, fromAccountId: a.id, toAccountId: jpy.id, amount: usd(3_00n), fx: { rate: "160.5", quoteId: "q_jpy" } };
      const res = await wallet.transfer(req);
      // 3.00 USD × 160.5 = 481.5 JPY -> 482 (half-even)
      expect({ transferId: res.transferId, amount: plain(res.amount), destinationAmount: plain(res.destinationAmount) }).toEqual({
        transferId: req.transferId,
        amount: usd(3_00n),
        destinationAmount: m("JPY", 482n),
      });
      const again = await wallet.transfer(req);
      expect(plain(again.destinationAmount)).toEqual(m("JPY", 482n));
      expect(await balance(jpy.id)).toEqual({ posted: m("JPY", 482n), pending: m("JPY", 0n), available: m("JPY", 482n) });
      expect(await balance(a.id)).toEqual(usdBalance(17_00n, 0n));
      await expectRpcError(wallet.transfer({ ...req, amount: usd(3_01n) }), Code.AlreadyExists, "ID_REUSED", "transfer_id");
      await expectRpcError(wallet.transfer({ ...req, transferId: `tr_${uid()}`, amount: usd(17_01n) }), Code.FailedPrecondition, "INSUFFICIENT_FUNDS", "amount");
      await expectRpcError(wallet.transfer({ ...req, transferId: `tr_${uid()}`, fx: undefined }), Code.InvalidArgument, "FX_REQUIRED", "fx.rate");
      await expectRpcError(wallet.transfer({ ...req, transferId: `tr_${uid()}`, toAccountId: a.id, fx: undefined }), Code.InvalidArgument, "SAME_ACCOUNT", "to_account_id");
      await expectRpcError(wallet.transfer({ ...req, transferId: `tr_${uid()}`, fromAccountId: "acc_missing" }), Code.NotFound, "ACCOUNT_NOT_FOUND", "from_account_id");
      expect(await balance(a.id)).toEqual(usdBalance(17_00n, 0n));
    });
  });

  describe("entries", () => {
    it("ListEntries pages through an account's entries, newest first", async () => {
      const a = await open();
      const b = await open();
      const credits: string[] = [];
      for (const minor of [1_00n, 2_00n, 3_00n]) {
        const transferId = `cr_${uid()}`;
        credits.push(transferId);
        await wallet.credit({ transferId, accountId: a.id, amount: usd(minor) });
      }
      const transferId = `tr_${uid()}`;
      await wallet.transfer({ transferId, fromAccountId: a.id, toAccountId: b.id, amount: usd(50n) });
      const first = await wallet.listEntries({ accountId: a.id, pageSize: 3 });
      expect(first.entries.map((e) => ({ t: e.transferId, d: e.direction, a: plain(e.amount), k: e.kind }))).toEqual([
        { t: transferId, d: EntryDirection.DEBIT, a: usd(50n), k: "transfer" },
        { t: credits[2], d: EntryDirection.CREDIT, a: usd(3_00n), k: "credit" },
        { t: credits[1], d: EntryDirection.CREDIT, a: usd(2_00n), k: "credit" },
      ]);
      for (const e of first.entries) {
        expect(e.accountId).toBe(a.id);
        expect(e.id).toMatch(/^\d+$/);
        expect(timestampDate(e.createdAt!)).toEqual(clock.now());
      }
      expect(first.nextPageToken).not.toBe("");
      const second = await wallet.listEntries({ accountId: a.id, pageSize: 3, pageToken: first.nextPageToken });
      expect(second.entries.map((e) => e.transferId)).toEqual([credits[0]]);
      expect(second.nextPageToken).toBe("");
      expect((await wallet.listEntries({ accountId: a.id })).entries).toHaveLength(4);
      const bEntries = (await wallet.listEntries({ accountId: b.id })).entries;
      expect(bEntries.map((e) => ({ t: e.transferId, d: e.direction, a: plain(e.amount) }))).toEqual([{ t: transferId, d: EntryDirection.CREDIT, a: usd(50n) }]);
      await expectRpcError(wallet.listEntries({ accountId: a.id, pageToken: "not-a-token" }), Code.InvalidArgument, "INVALID_PAGE_TOKEN", "page_token");
      await expectRpcError(wallet.listEntries({ accountId: "acc_missing" }), Code.NotFound, "ACCOUNT_NOT_FOUND", "account_id");
    });
  });
});
