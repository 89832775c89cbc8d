-- The double-entry ledger. Entries are append-only; `posted_minor` and `pending_minor` on an
-- account are running totals kept in the same transaction as the entries and holds they sum,
-- so a balance is one row read and the no-overdraft rule one conditional UPDATE. The
-- reconciliation check recomputes both from entries and holds.
CREATE TABLE accounts (
  id            text PRIMARY KEY,
  owner_id      text NOT NULL,
  currency      char(3) NOT NULL,
  kind          text NOT NULL CHECK (kind IN ('USER', 'LIQUIDITY', 'EXTERNAL')),
  -- Caller id of the OpenAccount request that made it (idempotency); null for system accounts.
  request_id    text UNIQUE,
  posted_minor  bigint NOT NULL DEFAULT 0,
  pending_minor bigint NOT NULL DEFAULT 0 CHECK (pending_minor >= 0),
  created_at    timestamptz NOT NULL,
  -- No overdraft: a user account never spends more than it holds, pending holds included.
  CHECK (kind <> 'USER' OR posted_minor - pending_minor >= 0)
);

CREATE INDEX accounts_owner ON accounts (owner_id);

-- One movement of money: credit, capture, transfer. Its id is the caller's, so a retried
-- write finds it; request_hash tells a retry from a different request reusing the id.
CREATE TABLE transfers (
  id           text PRIMARY KEY,
  kind         text NOT NULL,
  request_hash text NOT NULL,
  created_at   timestamptz NOT NULL
);

CREATE TABLE entries (
  id           bigserial PRIMARY KEY,
  transfer_id  text NOT NULL REFERENCES transfers (id),
  account_id   text NOT NULL REFERENCES accounts (id),
  direction    text NOT NULL CHECK (direction IN ('DEBIT', 'CREDIT')),
  currency     char(3) NOT NULL,
  amount_minor bigint NOT NULL CHECK (amount_minor > 0),
  kind         text NOT NULL,
  created_at   timestamptz NOT NULL
);

CREATE INDEX entries_account ON entries (account_id, id DESC);
CREATE INDEX entries_transfer ON entries (transfer_id);

CREATE TABLE holds (
  id                     text PRIMARY KEY,
  account_id             text NOT NULL REFERENCES accounts (id),
  destination_account_id text NOT NULL REFERENCES accounts (id),
  currency               char(3) NOT NULL,
  amount_minor           bigint NOT NULL CHECK (amount_minor > 0),
  destination_currency   char(3) NOT NULL,
  destination_minor      bigint NOT NULL CHECK (destination_minor >= 0),
  fx_rate                numeric,
  fx_quote_id            text,
  status                 text NOT NULL CHECK (status IN ('PENDING', 'CAPTURED', 'RELEASED', 'EXPIRED')),
  captured_minor         bigint CHECK (captured_minor >= 0 AND captured_minor <= amount_minor),
  -- What the destination received on capture, in its currency.
  captured_destination_minor bigint CHECK (captured_destination_minor >= 0),
  request_hash           text NOT NULL,
  expires_at             timestamptz NOT NULL,
  created_at             timestamptz NOT NULL,
  resolved_at            timestamptz,
  CHECK ((status = 'PENDING') = (resolved_at IS NULL)),
  CHECK ((status = 'CAPTURED') = (captured_minor IS NOT NULL)),
  CHECK ((captured_minor IS NULL) = (captured_destination_minor IS NULL))
);

CREATE INDEX holds_pending_expiry ON holds (expires_at) WHERE status = 'PENDING';
