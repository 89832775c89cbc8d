-- Merchants and their API keys. Only a SHA-256 of each key is stored; the key itself is
-- shown once, when it is issued.
CREATE TABLE merchants (
  id         text PRIMARY KEY,
  name       text NOT NULL,
  created_at timestamptz NOT NULL
);

CREATE TABLE api_keys (
  key_hash    text PRIMARY KEY,
  merchant_id text NOT NULL REFERENCES merchants (id),
  -- The first characters of the key, to tell keys apart in logs and listings.
  prefix      text NOT NULL,
  created_at  timestamptz NOT NULL,
  revoked_at  timestamptz
);

CREATE INDEX api_keys_merchant ON api_keys (merchant_id);
