-- Every risk decision, kept with the rules version that made it. One per payment.
CREATE TABLE decisions (
  id                     text PRIMARY KEY,
  payment_id             text NOT NULL UNIQUE,
  merchant_id            text NOT NULL,
  account_id             text NOT NULL,
  destination_account_id text NOT NULL,
  currency               char(3) NOT NULL,
  amount_minor           bigint NOT NULL CHECK (amount_minor > 0),
  account_currency       text NOT NULL,
  base_currency          char(3) NOT NULL,
  base_amount_minor      bigint,
  score                  integer NOT NULL CHECK (score BETWEEN 0 AND 99),
  outcome                text NOT NULL CHECK (outcome IN ('APPROVE', 'REVIEW', 'DECLINE')),
  shadow_score           integer NOT NULL CHECK (shadow_score BETWEEN 0 AND 99),
  shadow_outcome         text NOT NULL CHECK (shadow_outcome IN ('APPROVE', 'REVIEW', 'DECLINE')),
  reasons                jsonb NOT NULL,
  rules_version          text NOT NULL,
  -- Fingerprint of the scored request: the same payment_id with other content is refused.
  request_hash           text NOT NULL,
  created_at             timestamptz NOT NULL
);

-- Velocity windows read an account's recent decisions.
CREATE INDEX decisions_account_recent ON decisions (account_id, created_at);

-- When risk first saw an account, for the new-account rule when the caller gives no age.
CREATE TABLE accounts_seen (
  account_id    text PRIMARY KEY,
  first_seen_at timestamptz NOT NULL
);
