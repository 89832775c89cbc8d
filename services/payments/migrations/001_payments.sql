-- Payments and their state machine. Legal transitions are enforced in code (payment.ts) and
-- every update is conditional on the state it leaves, so a stale writer changes nothing.
CREATE TABLE payments (
  id                        text PRIMARY KEY,
  merchant_id               text NOT NULL,
  merchant_reference        text NOT NULL DEFAULT '',
  source_account_id         text NOT NULL,
  destination_account_id    text NOT NULL,
  currency                  char(3) NOT NULL,
  amount_minor              bigint NOT NULL CHECK (amount_minor > 0),
  settlement_currency       char(3),
  settlement_minor          bigint CHECK (settlement_minor >= 0),
  fx_rate                   numeric,
  fx_quote_id               text,
  capture_method            text NOT NULL CHECK (capture_method IN ('AUTOMATIC', 'MANUAL')),
  status                    text NOT NULL CHECK (status IN ('PENDING', 'AUTHORIZED', 'CAPTURED', 'PARTIALLY_REFUNDED', 'REFUNDED', 'CANCELED', 'FAILED')),
  captured_minor            bigint NOT NULL DEFAULT 0 CHECK (captured_minor >= 0 AND captured_minor <= amount_minor),
  settlement_captured_minor bigint NOT NULL DEFAULT 0 CHECK (settlement_captured_minor >= 0),
  refunded_minor            bigint NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0 AND refunded_minor <= captured_minor),
  settlement_refunded_minor bigint NOT NULL DEFAULT 0 CHECK (settlement_refunded_minor >= 0 AND settlement_refunded_minor <= settlement_captured_minor),
  failure_reason            text NOT NULL DEFAULT '',
  failure_message           text NOT NULL DEFAULT '',
  risk_decision_id          text NOT NULL DEFAULT '',
  risk_score                integer NOT NULL DEFAULT 0,
  metadata                  jsonb NOT NULL DEFAULT '{}',
  -- Which process drives the payment's saga, and until when (crash recovery takes over after).
  lease_owner               text,
  lease_until               timestamptz,
  created_at                timestamptz NOT NULL,
  updated_at                timestamptz NOT NULL
);

CREATE INDEX payments_merchant_recent ON payments (merchant_id, created_at DESC, id DESC);
CREATE INDEX payments_in_flight ON payments (lease_until) WHERE status = 'PENDING';

CREATE TABLE refunds (
  id               text PRIMARY KEY,
  payment_id       text NOT NULL REFERENCES payments (id),
  amount_minor     bigint NOT NULL CHECK (amount_minor > 0),
  settlement_minor bigint NOT NULL CHECK (settlement_minor >= 0),
  reason           text NOT NULL DEFAULT '',
  created_at       timestamptz NOT NULL
);

CREATE INDEX refunds_payment ON refunds (payment_id);

-- Every change of every payment, in order; streams read it (across replicas).
CREATE TABLE payment_events (
  seq         bigserial PRIMARY KEY,
  id          text NOT NULL UNIQUE,
  merchant_id text NOT NULL,
  payment_id  text NOT NULL,
  type        text NOT NULL,
  payment     bytea NOT NULL,
  occurred_at timestamptz NOT NULL
);

CREATE INDEX payment_events_merchant ON payment_events (merchant_id, seq);
CREATE INDEX payment_events_payment ON payment_events (payment_id, seq);

-- Idempotency keys, per merchant, kept at least 24 hours. A finished request keeps its
-- response (success or error) to replay; one in progress holds a lock until locked_until.
CREATE TABLE idempotency_keys (
  merchant_id   text NOT NULL,
  key           text NOT NULL,
  request_hash  text NOT NULL,
  response      bytea,
  error         jsonb,
  locked_until  timestamptz,
  created_at    timestamptz NOT NULL,
  expires_at    timestamptz NOT NULL,
  PRIMARY KEY (merchant_id, key)
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
