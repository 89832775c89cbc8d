// WalletService: the ledger over RPC.
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import type { Money } from "../gen/paygate/common/v1/common_pb.js";
import {
  AccountKind as AccountKindProto,
  AccountSchema,
  BalanceSchema,
  EntryDirection,
  EntrySchema,
  HoldSchema,
  HoldStatus as HoldStatusProto,
  WalletService,
  type FxSettlement,
} from "../gen/paygate/wallet/v1/wallet_pb.js";
import { invalidArgument } from "../runtime/errors.js";
import { money, readMoney } from "../runtime/money/money.js";
import { readTtl } from "../runtime/ttl.js";
import type { Account, FxTerms, Hold, Ledger } from "./ledger.js";

export interface WalletDeps {
  ledger: Ledger;
  defaultHoldTtlMs: number;
  maxHoldTtlMs: number;
}

const kinds = { USER: AccountKindProto.USER, LIQUIDITY: AccountKindProto.LIQUIDITY, EXTERNAL: AccountKindProto.EXTERNAL } as const;
const holdStatuses = {
  PENDING: HoldStatusProto.PENDING,
  CAPTURED: HoldStatusProto.CAPTURED,
  RELEASED: HoldStatusProto.RELEASED,
  EXPIRED: HoldStatusProto.EXPIRED,
} as const;

export function walletService(deps: WalletDeps): ServiceImpl<typeof WalletService> {
  const { ledger } = deps;
  return {
    async openAccount(req) {
      return { account: accountMessage(await ledger.openAccount(req)) };
    },
    async getAccount(req) {
      return { account: accountMessage(await ledger.account(req.accountId)) };
    },
    async listAccounts(req) {
      if (req.ownerId === "") throw invalidArgument("MISSING_FIELD", "owner_id", "owner_id is required");
      return { accounts: (await ledger.accountsOf(req.ownerId)).map(accountMessage) };
    },
    async credit(req) {
      const amount = readMoney(req.amount, "amount");
      return { balance: balanceMessage(await ledger.credit({ transferId: req.transferId, accountId: req.accountId, ...amount })) };
    },
    async reserve(req) {
      const amount = readMoney(req.amount, "amount");
      const ttlMs = readTtl(req.ttl, deps.defaultHoldTtlMs, deps.maxHoldTtlMs);
      const hold = await ledger.reserve({
        holdId: req.holdId,
        accountId: req.accountId,
        destinationAccountId: req.destinationAccountId,
        ...amount,
        fx: fxTerms(req.fx),
        ttlMs,
        capture: req.capture,
      });
      return { hold: holdMessage(hold) };
    },
    async capture(req) {
      let amountMinor: bigint | undefined;
      if (req.amount) {
        const hold = await ledger.hold(req.holdId);
        const amount = readMoney(req.amount, "amount");
        if (amount.currency !== hold.currency) throw invalidArgument("CURRENCY_MISMATCH", "amount.currency", `amount.currency: hold ${hold.id} is in ${hold.currency}, not ${amount.currency}`);
        amountMinor = amount.amountMinor;
      }
      return { hold: holdMessage(await ledger.capture(req.holdId, amountMinor)) };
    },
    async release(req) {
      return { hold: holdMessage(await ledger.release(req.holdId)) };
    },
    async getHold(req) {
      return { hold: holdMessage(await ledger.hold(req.holdId)) };
    },
    async transfer(req) {
      const amount = readMoney(req.amount, "amount");
      const result = await ledger.transfer({ transferId: req.transferId, fromAccountId: req.fromAccountId, toAccountId: req.toAccountId, ...amount, fx: fxTerms(req.fx) });
      return { transferId: req.transferId, amount: money(amount.currency, result.amountMinor), destinationAmount: money(result.destinationCurrency, result.destinationMinor) };
    },
    async getBalance(req) {
      return { balance: balanceMessage(await ledger.account(req.accountId)) };
    },
    async listEntries(req) {
      const page = await ledger.entries(req.accountId, req.pageSize, req.pageToken);
      return {
        entries: page.entries.map((e) =>
          create(EntrySchema, {
            id: String(e.id),
            accountId: e.accountId,
            transferId: e.transferId,
            direction: e.direction === "DEBIT" ? EntryDirection.DEBIT : EntryDirection.CREDIT,
            amount: money(e.currency, e.amountMinor),
            kind: e.kind,
            createdAt: timestampFromDate(e.createdAt),
          }),
        ),
        nextPageToken: page.nextPageToken,
      };
    },
  };
}

function fxTerms(fx: FxSettlement | undefined): FxTerms | undefined {
  if (!fx || (fx.rate === "" && fx.quoteId === "" && !fx.destinationAmount)) return undefined;
  return { rate: fx.rate, quoteId: fx.quoteId, destinationMinor: fx.destinationAmount?.amountMinor, destinationCurrency: fx.destinationAmount?.currency };
}

function accountMessage(a: Account) {
  return create(AccountSchema, { id: a.id, ownerId: a.ownerId, currency: a.currency, kind: kinds[a.kind], createdAt: timestampFromDate(a.createdAt) });
}

function balanceMessage(a: Account) {
  return create(BalanceSchema, {
    accountId: a.id,
    posted: money(a.currency, a.postedMinor),
    pending: money(a.currency, a.pendingMinor),
    available: money(a.currency, a.postedMinor - a.pendingMinor),
  });
}

function holdMessage(h: Hold) {
  const optionalMoney = (currency: string, minor: bigint | null): Money | undefined => (minor === null ? undefined : money(currency, minor));
  return create(HoldSchema, {
    id: h.id,
    accountId: h.accountId,
    destinationAccountId: h.destinationAccountId,
    amount: money(h.currency, h.amountMinor),
    destinationAmount: money(h.destinationCurrency, h.destinationMinor),
    fx: h.fxRate ? { rate: h.fxRate, quoteId: h.fxQuoteId ?? "" } : undefined,
    status: holdStatuses[h.status],
    capturedAmount: optionalMoney(h.currency, h.capturedMinor),
    capturedDestinationAmount: optionalMoney(h.destinationCurrency, h.capturedDestinationMinor),
    expiresAt: timestampFromDate(h.expiresAt),
    createdAt: timestampFromDate(h.createdAt),
    resolvedAt: h.resolvedAt ? timestampFromDate(h.resolvedAt) : undefined,
  });
}
