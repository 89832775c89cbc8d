// The public API on the gateway: the same services and method names as inside, with the
// merchant taken from the API key (never from the request) and every call forwarded to the
// internal service with the caller's deadline. Wallet exposes only reads of the merchant's
// own accounts; moving money happens through payments.
import { ConnectError, createContextKey, type CallOptions, type Client, type HandlerContext, type Interceptor, type ServiceImpl } from "@connectrpc/connect";
import { FxService } from "../gen/paygate/fx/v1/fx_pb.js";
import { PaymentsService } from "../gen/paygate/payments/v1/payments_pb.js";
import { WalletService } from "../gen/paygate/wallet/v1/wallet_pb.js";
import { DomainError, notFound } from "../runtime/errors.js";
import { downstream } from "../runtime/rpc/upstream.js";
import { IDEMPOTENCY_HEADER, MERCHANT_HEADER, REPLAYED_HEADER } from "../runtime/rpc/headers.js";
import { apiKeyFrom, type Merchant, type Merchants } from "./merchants.js";

export const merchantKey = createContextKey<Merchant | undefined>(undefined);

/** Protocol services anyone may call without a key. */
const OPEN = new Set(["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]);

/** Authenticates every call to the public API and records the merchant in the call's context. */
export function authentication(merchants: Merchants): Interceptor {
  return (next) => async (req) => {
    if (!OPEN.has(req.method.parent.typeName)) {
      req.contextValues.set(merchantKey, await merchants.authenticate(apiKeyFrom((name) => req.header.get(name))));
    }
    return next(req);
  };
}

export interface Upstreams {
  payments: Client<typeof PaymentsService>;
  wallet: Client<typeof WalletService>;
  fx: Client<typeof FxService>;
}

export function publicApi(up: Upstreams, upstreamTimeoutMs: number) {
  const merchantOf = (ctx: HandlerContext): string => {
    const m = ctx.values.get(merchantKey);
    if (!m) throw new DomainError("unauthenticated", "INVALID_API_KEY", "an API key is required");
    return m.id;
  };
  /** Call options forwarding the deadline, the idempotency key in, and the replay marker out. */
  const fwd = (ctx: HandlerContext): CallOptions => {
    const key = ctx.requestHeader.get(IDEMPOTENCY_HEADER);
    return {
      ...downstream(ctx, upstreamTimeoutMs),
      headers: key ? { [IDEMPOTENCY_HEADER]: key } : undefined,
      onHeader: (h) => {
        const replayed = h.get(REPLAYED_HEADER);
        if (replayed) ctx.responseHeader.set(REPLAYED_HEADER, replayed);
      },
    };
  };
  /** The account, if the merchant owns it; another merchant's is reported as missing. */
  const ownAccount = async (accountId: string, ctx: HandlerContext) => {
    const { account } = await up.wallet.getAccount({ accountId }, fwd(ctx));
    if (!account || account.ownerId !== merchantOf(ctx)) throw notFound("ACCOUNT_NOT_FOUND", `account_id: no account ${JSON.stringify(accountId)}`, "account_id");
    return account;
  };
  const internalOnly = (method: string) => async () => {
    throw new DomainError("permission_denied", "NOT_PUBLIC", `WalletService/${method} is not part of the public API; money moves through PaymentsService`);
  };

  // The merchant goes in a header, as the relay (relay.ts) sends it: payments applies one rule
  // to both (a request's own merchant_id must be empty or the same).
  const asMerchant = (ctx: HandlerContext): CallOptions => {
    const opts = fwd(ctx);
    return { ...opts, headers: { ...(opts.headers as Record<string, string> | undefined), [MERCHANT_HEADER]: merchantOf(ctx) } };
  };
  /** A write's answer; a failure payments replays for its Idempotency-Key keeps its replay marker. */
  const write = async <T>(ctx: HandlerContext, call: Promise<T>): Promise<T> => {
    try {
      return await call;
    } catch (err) {
      const replayed = err instanceof ConnectError ? err.metadata.get(REPLAYED_HEADER) : null;
      if (replayed) ctx.responseHeader.set(REPLAYED_HEADER, replayed);
      throw err;
    }
  };
  const payments: ServiceImpl<typeof PaymentsService> = {
    createPayment: (req, ctx) => write(ctx, up.payments.createPayment(req, asMerchant(ctx))),
    getPayment: (req, ctx) => up.payments.getPayment(req, asMerchant(ctx)),
    listPayments: (req, ctx) => up.payments.listPayments(req, asMerchant(ctx)),
    capturePayment: (req, ctx) => write(ctx, up.payments.capturePayment(req, asMerchant(ctx))),
    cancelPayment: (req, ctx) => write(ctx, up.payments.cancelPayment(req, asMerchant(ctx))),
    refundPayment: (req, ctx) => write(ctx, up.payments.refundPayment(req, asMerchant(ctx))),
    watchPayment: (req, ctx) => up.payments.watchPayment(req, { signal: ctx.signal, headers: { [MERCHANT_HEADER]: merchantOf(ctx) } }),
    streamPaymentEvents: (req, ctx) => up.payments.streamPaymentEvents(req, { signal: ctx.signal, headers: { [MERCHANT_HEADER]: merchantOf(ctx) } }),
  };

  const fx: ServiceImpl<typeof FxService> = {
    listCurrencies: (req, ctx) => up.fx.listCurrencies(req, fwd(ctx)),
    getRate: (req, ctx) => up.fx.getRate(req, fwd(ctx)),
    convert: (req, ctx) => up.fx.convert(req, fwd(ctx)),
    createQuote: (req, ctx) => up.fx.createQuote(req, fwd(ctx)),
    getQuote: (req, ctx) => up.fx.getQuote(req, fwd(ctx)),
    streamRates: (req, ctx) => up.fx.streamRates(req, { signal: ctx.signal }),
  };

  const wallet: ServiceImpl<typeof WalletService> = {
    getAccount: async (req, ctx) => ({ account: await ownAccount(req.accountId, ctx) }),
    listAccounts: (_req, ctx) => up.wallet.listAccounts({ ownerId: merchantOf(ctx) }, fwd(ctx)),
    getBalance: async (req, ctx) => {
      await ownAccount(req.accountId, ctx);
      return up.wallet.getBalance(req, fwd(ctx));
    },
    listEntries: async (req, ctx) => {
      await ownAccount(req.accountId, ctx);
      return up.wallet.listEntries(req, fwd(ctx));
    },
    openAccount: internalOnly("OpenAccount"),
    credit: internalOnly("Credit"),
    reserve: internalOnly("Reserve"),
    capture: internalOnly("Capture"),
    release: internalOnly("Release"),
    getHold: internalOnly("GetHold"),
    transfer: internalOnly("Transfer"),
  };

  return { payments, fx, wallet };
}
