// The api-gateway end to end: API-key authentication (RPC and REST), tenant isolation
// between the demo merchants, the live streams (WatchPayment, StreamPaymentEvents with
// resume) and the original REST routes. Every test ends with the wallet's reconciliation
// check.
import { randomUUID } from "node:crypto";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { Code } from "@connectrpc/connect";
import { CaptureMethod, PaymentStatus, type PaymentEvent } from "../../services/gen/paygate/payments/v1/payments_pb.js";
import { formatMinor } from "../../services/runtime/money/money.js";
import { storageBackends } from "../support/postgres.js";
import { rawExchange } from "../support/wire.js";
import { ACME, balanceOf, expectedConversion, failure, gatewayClients, GLOBEX, minor, startStack, type GatewayClients, type Stack } from "../support/stack.js";

vi.setConfig({ testTimeout: 60_000, hookTimeout: 180_000 });

const usd = (value: string) => ({ currency: "USD", amountMinor: minor(value, "USD") });

/** Reads a server stream one message at a time, each read bounded in time. */
function reader<T>(stream: AsyncIterable<T>) {
  const it = stream[Symbol.asyncIterator]();
  const bounded = <R>(p: Promise<R>, ms: number, what: string) =>
    new Promise<R>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
      p.then(
        (v) => (clearTimeout(timer), resolve(v)),
        (e: unknown) => (clearTimeout(timer), reject(e instanceof Error ? e : new Error(String(e)))),
      );
    });
  return {
    async next(what: string, ms = 20_000): Promise<T> {
      const r = await bounded(it.next(), ms, what);
      if (r.done) throw new Error(`the stream ended before ${what}`);
      return r.value;
    },
    /** True when the stream ends (instead of sending another message) within `ms`. */
    async ends(ms = 20_000): Promise<boolean> {
      return (await bounded(it.next(), ms, "the end of the stream")).done === true;
    },
  };
}

describe.each(storageBackends())("the api-gateway ($name)", (backend) => {
  let stack: Stack;
  let acme: GatewayClients;
  let globex: GatewayClients;

  beforeAll(async () => {
    stack = await startStack({ backend, name: "gateway" });
    acme = gatewayClients(stack.gatewayUrl, ACME.apiKey);
    globex = gatewayClients(stack.gatewayUrl, GLOBEX.apiKey);
  });
  afterAll(async () => {
    await stack?.stop();
  });
  afterEach(async () => {
    expect(await stack.reconcile(), "the ledger reconciles").toEqual([]);
  });

  const rest = async (method: string, path: string, opts: { key?: string | undefined; body?: unknown; headers?: Record<string, string> } = {}) => {
    const headers: Record<string, string> = { ...(opts.headers ?? {}) };
    if (opts.key !== undefined) headers.authorization = `Bearer ${opts.key}`;
    if (opts.body !== undefined) headers["content-type"] = "application/json";
    const res = await fetch(`${stack.gatewayUrl}${path}`, { method, headers, body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
    const text = await res.text();
    let json: Record<string, any> = {};
    try {
      json = JSON.parse(text) as Record<string, any>;
    } catch {
      // not JSON (e.g. the HTML page)
    }
    return { status: res.status, json, text, contentType: res.headers.get("content-type") ?? "" };
  };

  describe("authentication", () => {
    it("no key or a bad key: UNAUTHENTICATED over Connect and gRPC, 401 over REST, and nothing happens", async () => {
      const src = await stack.fund(ACME.id, "USD", "100.00");
      for (const key of [undefined, "pgk_not_a_real_key", `${ACME.apiKey}x`]) {
        for (const protocol of ["connect", "grpc"] as const) {
          const anon = gatewayClients(stack.gatewayUrl, key, protocol);
          const calls = [
            () => anon.payments.createPayment({ sourceAccountId: src, destinationAccountId: "globex_usd", amount: usd("1.00") }),
            () => anon.payments.listPayments({}),
            () => anon.wallet.getBalance({ accountId: src }),
            () => anon.wallet.listAccounts({}),
            () => anon.fx.getRate({ baseCurrency: "USD", quoteCurrency: "EUR" }),
          ];
          for (const call of calls) {
            const f = await failure(call());
            expect({ key, protocol, code: Code[f.code], reason: f.reason }).toEqual({ key, protocol, code: "Unauthenticated", reason: "INVALID_API_KEY" });
          }
          const watch = await failure(
            (async () => {
              for await (const _ of anon.payments.streamPaymentEvents({}, { signal: AbortSignal.timeout(10_000) })) break;
            })(),
          );
          expect(watch.code).toBe(Code.Unauthenticated);
        }
        for (const [method, path, body] of [
          ["POST", "/payments", { id: "x", currency: "USD", amount: "1.00", source_account: src, destination_account: "globex_usd" }],
          ["GET", `/balance/${src}`, undefined],
          ["GET", "/rate?base=USD&quote=EUR", undefined],
          ["GET", "/convert?from=USD&to=EUR&amount=1", undefined],
          ["POST", "/score", { account: src, amount: "1.00", currency: "USD" }],
        ] as const) {
          const res = await rest(method, path, { key, body });
          expect({ key, path, status: res.status, code: res.json.error?.code }).toEqual({ key, path, status: 401, code: "unauthenticated" });
        }
      }
      // A non-Bearer Authorization header is no key either.
      const basic = await rest("GET", `/balance/${src}`, { headers: { authorization: `Basic ${Buffer.from(`acme:${ACME.apiKey}`).toString("base64")}` } });
      expect(basic.status).toBe(401);
      expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 10000n, pending: 0n, available: 10000n });
    });

    it("the key works as Bearer (RPC, REST) and as X-Api-Key; health needs no key", async () => {
      expect((await acme.wallet.listAccounts({})).accounts.length).toBeGreaterThan(0);
      const viaHeader = await rest("GET", "/balance/acme_usd", { headers: { "x-api-key": ACME.apiKey } });
      expect(viaHeader.status).toBe(200);
      expect((await rest("GET", "/healthz")).status).toBe(200);
      expect((await rest("GET", "/healthz")).json).toEqual({ status: "ok" });
      expect((await rest("GET", "/readyz")).status).toBe(200);
    });
  });

  describe("tenant isolation", () => {
    it("acme cannot see, move or watch globex's payments and accounts (NOT_FOUND, like missing ones)", async () => {
      const gSrc = await stack.fund(GLOBEX.id, "USD", "100.00");
      const aDst = await stack.fund(ACME.id, "USD", "0");
      const theirs = (await globex.payments.createPayment({ sourceAccountId: gSrc, destinationAccountId: aDst, amount: usd("10.00"), captureMethod: CaptureMethod.MANUAL })).payment!;
      expect(PaymentStatus[theirs.status]).toBe("AUTHORIZED");

      const missing = await failure(acme.payments.getPayment({ paymentId: "pay_does_not_exist" }));
      for (const call of [
        () => acme.payments.getPayment({ paymentId: theirs.id }),
        () => acme.payments.capturePayment({ paymentId: theirs.id }),
        () => acme.payments.cancelPayment({ paymentId: theirs.id }),
        () => acme.payments.refundPayment({ paymentId: theirs.id }),
        async () => {
          for await (const _ of acme.payments.watchPayment({ paymentId: theirs.id }, { signal: AbortSignal.timeout(10_000) })) return;
        },
      ]) {
        const f = await failure(call());
        expect({ code: Code[f.code], reason: f.reason }).toEqual({ code: "NotFound", reason: "PAYMENT_NOT_FOUND" });
      }
      expect(missing).toMatchObject({ code: Code.NotFound, reason: "PAYMENT_NOT_FOUND" });
      const listed = await acme.payments.listPayments({ pageSize: 100 });
      expect(listed.payments.map((p) => p.id)).not.toContain(theirs.id);
      expect(listed.payments.every((p) => p.merchantId === ACME.id)).toBe(true);

      for (const call of [
        () => acme.wallet.getBalance({ accountId: gSrc }),
        () => acme.wallet.getBalance({ accountId: "globex_usd" }),
        () => acme.wallet.getAccount({ accountId: gSrc }),
        () => acme.wallet.listEntries({ accountId: gSrc }),
        () => acme.wallet.getBalance({ accountId: "no_such_account" }),
      ]) {
        const f = await failure(call());
        expect({ code: Code[f.code], reason: f.reason }).toEqual({ code: "NotFound", reason: "ACCOUNT_NOT_FOUND" });
      }
      expect((await acme.wallet.listAccounts({})).accounts.every((a) => a.ownerId === ACME.id)).toBe(true);

      // Paying FROM globex's account: NOT_FOUND, and no money moves.
      const steal = await failure(acme.payments.createPayment({ sourceAccountId: gSrc, destinationAccountId: aDst, amount: usd("5.00") }));
      expect({ code: Code[steal.code], reason: steal.reason, field: steal.field }).toEqual({ code: "NotFound", reason: "ACCOUNT_NOT_FOUND", field: "source_account_id" });
      const stealDemo = await failure(acme.payments.createPayment({ sourceAccountId: "globex_usd", destinationAccountId: "acme_usd", amount: usd("5.00") }));
      expect(stealDemo.code).toBe(Code.NotFound);

      // Globex's payment is untouched: still authorized, its hold still there.
      expect(PaymentStatus[(await globex.payments.getPayment({ paymentId: theirs.id })).payment!.status]).toBe("AUTHORIZED");
      expect(await balanceOf(globex.wallet, gSrc)).toEqual({ posted: 10000n, pending: 1000n, available: 9000n });
      expect(await balanceOf(acme.wallet, aDst)).toEqual({ posted: 0n, pending: 0n, available: 0n });

      // REST: the same rules.
      expect((await rest("GET", `/balance/${gSrc}`, { key: ACME.apiKey })).status).toBe(404);
      expect((await rest("GET", `/payments/${theirs.id}`, { key: ACME.apiKey })).status).toBe(404);
      const restSteal = await rest("POST", "/payments", { key: ACME.apiKey, body: { id: `steal-${randomUUID()}`, currency: "USD", amount: "1.00", source_account: gSrc, destination_account: aDst } });
      expect(restSteal.status).toBe(404);
      expect((await rest("POST", "/score", { key: ACME.apiKey, body: { account: gSrc, amount: "1.00", currency: "USD" } })).status).toBe(404);

      await globex.payments.cancelPayment({ paymentId: theirs.id });
      expect(await balanceOf(globex.wallet, gSrc)).toEqual({ posted: 10000n, pending: 0n, available: 10000n });
    });

    it("a request's merchant_id cannot name another merchant (PERMISSION_DENIED), relayed (gRPC) or decoded (Connect over HTTP/1.1)", async () => {
      const src = await stack.fund(ACME.id, "USD", "100.00");
      const dst = await stack.fund(ACME.id, "USD", "0");
      const acmeGrpc = gatewayClients(stack.gatewayUrl, ACME.apiKey, "grpc");
      for (const clients of [acme, acmeGrpc]) {
        const f = await failure(clients.payments.createPayment({ merchantId: GLOBEX.id, sourceAccountId: src, destinationAccountId: dst, amount: usd("1.00") }));
        expect({ code: Code[f.code], reason: f.reason, field: f.field }).toEqual({ code: "PermissionDenied", reason: "MERCHANT_MISMATCH", field: "merchant_id" });
        const listed = await failure(clients.payments.listPayments({ merchantId: GLOBEX.id }));
        expect(listed.reason).toBe("MERCHANT_MISMATCH");
        // The merchant's own id is no different from leaving it empty.
        const { payment } = await clients.payments.createPayment({ merchantId: ACME.id, sourceAccountId: src, destinationAccountId: dst, amount: usd("1.00") });
        expect({ status: PaymentStatus[payment!.status], merchant: payment!.merchantId }).toEqual({ status: "CAPTURED", merchant: ACME.id });
      }
      expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 9800n, pending: 0n, available: 9800n });
    });

    it("the wallet's money-moving methods are not public: PERMISSION_DENIED, even on the merchant's own accounts", async () => {
      const own = await stack.fund(ACME.id, "USD", "100.00");
      const other = await stack.fund(ACME.id, "USD", "0");
      for (const call of [
        () => acme.wallet.reserve({ holdId: `h-${randomUUID()}`, accountId: own, destinationAccountId: other, amount: usd("1.00") }),
        () => acme.wallet.reserve({ holdId: `h-${randomUUID()}`, accountId: "globex_usd", destinationAccountId: own, amount: usd("1.00") }),
        () => acme.wallet.credit({ transferId: `t-${randomUUID()}`, accountId: own, amount: usd("1000.00") }),
        () => acme.wallet.transfer({ transferId: `t-${randomUUID()}`, fromAccountId: "globex_usd", toAccountId: own, amount: usd("1.00") }),
        () => acme.wallet.openAccount({ requestId: randomUUID(), ownerId: ACME.id, currency: "USD" }),
        () => acme.wallet.capture({ holdId: "anything" }),
        () => acme.wallet.release({ holdId: "anything" }),
        () => acme.wallet.getHold({ holdId: "anything" }),
      ]) {
        const f = await failure(call());
        expect({ code: Code[f.code], reason: f.reason }).toEqual({ code: "PermissionDenied", reason: "NOT_PUBLIC" });
      }
      expect(await balanceOf(acme.wallet, own)).toEqual({ posted: 10000n, pending: 0n, available: 10000n });
      expect(await balanceOf(acme.wallet, other)).toEqual({ posted: 0n, pending: 0n, available: 0n });
    });
  });

  describe("live streams", () => {
    it("WatchPayment streams AUTHORIZED, then CAPTURED after CapturePayment, then REFUNDED and ends", async () => {
      const src = await stack.fund(ACME.id, "USD", "100.00");
      const dst = await stack.fund(GLOBEX.id, "USD", "0");
      const p = (await acme.payments.createPayment({ sourceAccountId: src, destinationAccountId: dst, amount: usd("20.00"), captureMethod: CaptureMethod.MANUAL })).payment!;
      const abort = new AbortController();
      try {
        const watch = reader(acme.payments.watchPayment({ paymentId: p.id }, { signal: abort.signal }));
        const first = (await watch.next("the current state")).payment!;
        expect(first.id).toBe(p.id);
        expect(PaymentStatus[first.status]).toBe("AUTHORIZED");

        await acme.payments.capturePayment({ paymentId: p.id });
        const captured = (await watch.next("the CAPTURED update")).payment!;
        expect(PaymentStatus[captured.status]).toBe("CAPTURED");
        expect(captured.capturedAmount?.amountMinor).toBe(2000n);

        await acme.payments.refundPayment({ paymentId: p.id });
        const refunded = (await watch.next("the REFUNDED update")).payment!;
        expect(PaymentStatus[refunded.status]).toBe("REFUNDED");
        // REFUNDED is final: the server ends the stream.
        expect(await watch.ends()).toBe(true);
      } finally {
        abort.abort();
      }
    });

    it("WatchPayment of a final payment sends it once and ends", async () => {
      const src = await stack.fund(ACME.id, "USD", "1.00");
      const p = (await acme.payments.createPayment({ sourceAccountId: src, destinationAccountId: "globex_usd", amount: usd("2.00") })).payment!;
      expect(PaymentStatus[p.status]).toBe("FAILED");
      const watch = reader(acme.payments.watchPayment({ paymentId: p.id }, { signal: AbortSignal.timeout(20_000) }));
      expect(PaymentStatus[(await watch.next("the payment")).payment!.status]).toBe("FAILED");
      expect(await watch.ends()).toBe(true);
    });

    it("StreamPaymentEvents: the merchant's events live, in order with increasing sequence, resumable after a sequence", async () => {
      const src = await stack.fund(ACME.id, "USD", "1000.00");
      const dst = await stack.fund(GLOBEX.id, "USD", "0");
      const gSrc = await stack.fund(GLOBEX.id, "USD", "100.00");
      const abort = new AbortController();
      try {
        const events = reader(acme.payments.streamPaymentEvents({}, { signal: abort.signal }));
        const received: PaymentEvent[] = [];
        const until = async (paymentId: string, type: string) => {
          for (;;) {
            const e = (await events.next(`${type} of ${paymentId}`)).event!;
            received.push(e);
            if (e.payment?.id === paymentId && e.type === type) return e;
          }
        };
        // The stream is live from when the server starts it: pay until an event comes through.
        let live = false;
        for (let attempt = 0; attempt < 10 && !live; attempt++) {
          const probe = (await acme.payments.createPayment({ sourceAccountId: src, destinationAccountId: dst, amount: usd("0.01"), merchantReference: "probe" })).payment!;
          try {
            await Promise.race([until(probe.id, "payment.captured"), new Promise((_, reject) => setTimeout(() => reject(new Error("not yet")), 3_000))]);
            live = true;
          } catch {
            // the stream may have started after the probe's events: try another
          }
        }
        expect(live).toBe(true);

        // Globex pays in between: none of its events may reach acme's stream.
        const theirs = (await globex.payments.createPayment({ sourceAccountId: gSrc, destinationAccountId: "acme_usd", amount: usd("1.00") })).payment!;
        const mine = (await acme.payments.createPayment({ sourceAccountId: src, destinationAccountId: dst, amount: usd("12.00"), merchantReference: "watched" })).payment!;
        expect(PaymentStatus[mine.status]).toBe("CAPTURED");
        const from = received.length;
        await until(mine.id, "payment.captured");
        const mineEvents = received.slice(from).filter((e) => e.payment?.id === mine.id);
        expect(mineEvents.map((e) => e.type)).toEqual(["payment.created", "payment.authorized", "payment.captured"]);
        expect(mineEvents.map((e) => PaymentStatus[e.payment!.status])).toEqual(["PENDING", "AUTHORIZED", "CAPTURED"]);
        expect(mineEvents[2]!.payment!.capturedAmount?.amountMinor).toBe(1200n);
        for (let i = 1; i < received.length; i++) expect(received[i]!.sequence).toBeGreaterThan(received[i - 1]!.sequence);
        expect(received.every((e) => e.payment?.merchantId === ACME.id)).toBe(true);
        expect(received.some((e) => e.payment?.id === theirs.id)).toBe(false);
        expect(new Set(received.map((e) => e.id)).size).toBe(received.length);

        // Resume after the created event: the rest of the payment's events come first, again.
        const created = mineEvents[0]!;
        const resumeAbort = new AbortController();
        try {
          const resumed = reader(acme.payments.streamPaymentEvents({ afterSequence: created.sequence }, { signal: resumeAbort.signal }));
          const again: PaymentEvent[] = [];
          while (!again.some((e) => e.payment?.id === mine.id && e.type === "payment.captured")) again.push((await resumed.next("the replayed events")).event!);
          expect(again[0]!.sequence).toBeGreaterThan(created.sequence);
          const replayedMine = again.filter((e) => e.payment?.id === mine.id);
          expect(replayedMine.map((e) => [e.type, e.sequence, e.id])).toEqual(mineEvents.slice(1).map((e) => [e.type, e.sequence, e.id]));
          expect(again.every((e) => e.payment?.merchantId === ACME.id)).toBe(true);
        } finally {
          resumeAbort.abort();
        }

        // A refund shows up live too.
        await acme.payments.refundPayment({ paymentId: mine.id, amount: usd("2.00") });
        const refunded = await until(mine.id, "payment.refunded");
        expect(PaymentStatus[refunded.payment!.status]).toBe("PARTIALLY_REFUNDED");
      } finally {
        abort.abort();
      }
    });
  });

  describe("REST routes", () => {
    it("POST /payments takes a decimal amount (123.45) exactly and settles across currencies; GET /payments/{id} returns it", async () => {
      const src = await stack.fund(ACME.id, "USD", "500.00");
      const dst = await stack.fund(GLOBEX.id, "IDR", "0");
      const id = `rest-${randomUUID()}`;
      const res = await rest("POST", "/payments", { key: ACME.apiKey, body: { id, currency: "USD", amount: 123.45, source_account: src, destination_account: dst } });
      expect(res.status).toBe(200);
      expect(res.json).toMatchObject({ reference: id, status: "CAPTURED", currency: "USD", amount: "123.45", captured_amount: "123.45", source_account: src, destination_account: dst, settlement_currency: "IDR", failure_reason: null });
      const settlement = expectedConversion(12345n, "USD", res.json.fx_rate as string, "IDR");
      expect(res.json.settlement_amount).toBe(formatMinor(settlement, "IDR"));
      expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 50000n - 12345n, pending: 0n, available: 50000n - 12345n });
      expect(await balanceOf(globex.wallet, dst)).toMatchObject({ posted: settlement });

      const got = await rest("GET", `/payments/${res.json.id as string}`, { key: ACME.apiKey });
      expect(got.status).toBe(200);
      expect(got.json).toEqual(res.json);

      // Manual capture over REST leaves a hold that GET /balance shows.
      const held = await rest("POST", "/payments", { key: ACME.apiKey, body: { id: `rest-${randomUUID()}`, currency: "USD", amount: "100", source_account: src, destination_account: dst, capture_method: "manual" } });
      expect(held.json.status).toBe("AUTHORIZED");
      const balance = await rest("GET", `/balance/${src}`, { key: ACME.apiKey });
      expect(balance.json).toEqual({ account_id: src, currency: "USD", posted: "376.55", pending: "100.00", available: "276.55" });
      await acme.payments.cancelPayment({ paymentId: held.json.id as string });
    });

    it("POST /payments refuses amounts with too many decimals (400 TOO_MANY_DECIMALS), never rounding, and moves nothing", async () => {
      const src = await stack.fund(ACME.id, "USD", "500.00");
      const jpy = await stack.fund(ACME.id, "JPY", "50000");
      for (const [currency, amount, source] of [
        ["USD", 1.234, src],
        ["USD", "1.234", src],
        ["USD", 0.001, src],
        ["JPY", 1.5, jpy],
      ] as const) {
        const res = await rest("POST", "/payments", { key: ACME.apiKey, body: { id: `rest-${randomUUID()}`, currency, amount, source_account: source, destination_account: "globex_usd" } });
        expect({ amount, status: res.status, error: res.json.error }).toMatchObject({ amount, status: 400, error: { code: "invalid_argument", reason: "TOO_MANY_DECIMALS", field: "amount" } });
      }
      const bad = await rest("POST", "/payments", { key: ACME.apiKey, body: { id: "x", currency: "USD", amount: "12.3.4", source_account: src, destination_account: "globex_usd" } });
      expect(bad.status).toBe(400);
      const unknownField = await rest("POST", "/payments", { key: ACME.apiKey, body: { id: "x", currency: "USD", amount: "1", source_account: src, destination_account: "globex_usd", amuont: 1 } });
      expect(unknownField.json.error).toMatchObject({ code: "invalid_argument", reason: "UNKNOWN_FIELD" });
      expect(await balanceOf(acme.wallet, src)).toEqual({ posted: 50000n, pending: 0n, available: 50000n });
      expect(await balanceOf(acme.wallet, jpy)).toEqual({ posted: 50000n, pending: 0n, available: 50000n });
      expect((await acme.wallet.listEntries({ accountId: src })).entries).toHaveLength(1);
    });

    it("GET /rate and GET /convert: exact decimal rates, conversion rounded half-even", async () => {
      const rate = await rest("GET", "/rate?base=USD&quote=IDR", { key: ACME.apiKey });
      expect(rate.status).toBe(200);
      expect(rate.json).toMatchObject({ base: "USD", quote: "IDR" });
      expect(rate.json.rate).toMatch(/^\d+(\.\d+)?$/);
      expect(Number(rate.json.rate)).toBeGreaterThan(1000);
      expect(Number.isNaN(Date.parse(rate.json.as_of as string))).toBe(false);

      for (const [from, to, amount] of [
        ["USD", "JPY", "100"],
        ["EUR", "KWD", "1234.56"],
        ["KWD", "IDR", "0.001"],
      ] as const) {
        const res = await rest("GET", `/convert?from=${from}&to=${to}&amount=${amount}`, { key: ACME.apiKey });
        expect(res.status).toBe(200);
        expect(res.json).toMatchObject({ from, to, amount: formatMinor(minor(amount, from), from) });
        expect(res.json.converted).toBe(formatMinor(expectedConversion(minor(amount, from), from, res.json.rate as string, to), to));
      }
      const tooPrecise = await rest("GET", "/convert?from=USD&to=EUR&amount=1.001", { key: ACME.apiKey });
      expect(tooPrecise.status).toBe(400);
      expect(tooPrecise.json.error).toMatchObject({ reason: "TOO_MANY_DECIMALS", field: "amount" });
      const missing = await rest("GET", "/rate?base=USD", { key: ACME.apiKey });
      expect(missing.status).toBe(400);
      expect(missing.json.error).toMatchObject({ reason: "MISSING_FIELD", field: "quote" });
    });

    it("GET /balance/{id} and POST /score", async () => {
      const src = await stack.fund(ACME.id, "KWD", "12.345");
      expect((await rest("GET", `/balance/${src}`, { key: ACME.apiKey })).json).toEqual({ account_id: src, currency: "KWD", posted: "12.345", pending: "0.000", available: "12.345" });
      expect((await rest("GET", "/balance/acme_jpy", { key: ACME.apiKey })).json).toMatchObject({ account_id: "acme_jpy", currency: "JPY" });
      expect((await rest("GET", "/balance/acme_jpy", { key: ACME.apiKey })).json.available).toMatch(/^\d+$/);

      const usdAccount = await stack.fund(ACME.id, "USD", "0");
      const ok = await rest("POST", "/score", { key: ACME.apiKey, body: { account: usdAccount, amount: 999.99, currency: "USD" } });
      expect(ok.status).toBe(200);
      expect(ok.json.decision).toBe("APPROVE");
      expect(ok.json.decision_id).toMatch(/^rd_/);
      expect(ok.json.rules_version).not.toBe("");
      const declined = await rest("POST", "/score", { key: ACME.apiKey, body: { account: await stack.fund(ACME.id, "USD", "0"), amount: "10000.01", currency: "USD" } });
      expect(declined.json.decision).toBe("DECLINE");
      expect(declined.json.reasons).toContain("AMOUNT_OVER_THRESHOLD");
      expect(declined.json.score).toBeGreaterThanOrEqual(80);
      const tooPrecise = await rest("POST", "/score", { key: ACME.apiKey, body: { account: usdAccount, amount: 1.001, currency: "USD" } });
      expect(tooPrecise.json.error).toMatchObject({ reason: "TOO_MANY_DECIMALS" });
    });

    it("malformed paths and request targets are 400 naming what is wrong, and the gateway serves on", async () => {
      const port = Number(new URL(stack.gatewayUrl).port);
      for (const [path, field] of [
        ["/balance/%ZZ", "account_id"],
        ["/payments/%Z", "payment_id"],
        ["/balance/%", "account_id"],
        ["/balance/%00", "account_id"],
        ["/balance/%ED%A0%80", "account_id"],
        ["/payments/a%00b", "payment_id"],
        ["/rate?base=US%00&quote=EUR", "base"],
      ]) {
        const res = await rest("GET", path!, { key: ACME.apiKey });
        expect(res.status, path).toBe(400);
        expect(res.json.error, path).toMatchObject({ code: "invalid_argument", field });
      }
      for (const target of ["//", "http://x:99999/", "http://[::1/", "*"]) {
        const { received } = await rawExchange(port, `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${ACME.apiKey}\r\n\r\n`, { until: (r) => r.includes("\r\n\r\n") });
        expect(received, target).toMatch(/^HTTP\/1\.1 400 /);
      }
      expect((await rest("GET", "/healthz")).status).toBe(200);
    });

    it("POST /payments takes any valid Unicode id (and replays it), and refuses text that is not: NUL, lone surrogates", async () => {
      const src = await stack.fund(ACME.id, "USD", "10.00");
      const dst = await stack.fund(GLOBEX.id, "USD", "0");
      const id = `PAY-表-${randomUUID()}`;
      const body = { id, currency: "USD", amount: "1.00", source_account: src, destination_account: dst };
      const first = await rest("POST", "/payments", { key: ACME.apiKey, body });
      expect(first.status).toBe(200);
      expect(first.json).toMatchObject({ reference: id, status: "CAPTURED" });
      const again = await fetch(`${stack.gatewayUrl}/payments`, { method: "POST", headers: { authorization: `Bearer ${ACME.apiKey}`, "content-type": "application/json" }, body: JSON.stringify(body) });
      expect(again.headers.get("idempotent-replayed")).toBe("true");
      expect(await again.json()).toEqual(first.json);

      for (const [bad, problem] of [
        ["PAY-\u0000", "NUL"],
        ["PAY-\ud800", "lone surrogate"],
      ] as const) {
        const res = await rest("POST", "/payments", { key: ACME.apiKey, body: { ...body, id: bad } });
        expect(res.status).toBe(400);
        expect(res.json.error).toMatchObject({ code: "invalid_argument", reason: "INVALID_TEXT", field: "id" });
        expect(res.json.error.message).toContain(problem);
      }
      const wrongType = await rest("POST", "/payments", { key: ACME.apiKey, body: { ...body, id: `x-${randomUUID()}`, settlement_currency: 5 } });
      expect(wrongType.json.error).toMatchObject({ code: "invalid_argument", field: "settlement_currency" });
      expect(await balanceOf(acme.wallet, src)).toMatchObject({ posted: 900n });
    });

    it("GET /healthz, GET /, unknown routes and wrong methods", async () => {
      const health = await rest("GET", "/healthz");
      expect(health.status).toBe(200);
      const index = await rest("GET", "/");
      expect(index.status).toBe(200);
      expect(index.contentType).toContain("text/html");
      expect((await rest("GET", "/nope", { key: ACME.apiKey })).status).toBe(404);
      expect((await rest("DELETE", "/payments", { key: ACME.apiKey })).status).toBe(405);
    });
  });
});
