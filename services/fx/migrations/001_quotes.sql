-- A quote locks a rate for one amount until it expires and can be used once.
CREATE TABLE quotes (
  id              text PRIMARY KEY,
  from_currency   char(3) NOT NULL,
  to_currency     char(3) NOT NULL,
  amount_minor    bigint NOT NULL CHECK (amount_minor > 0),
  converted_minor bigint NOT NULL CHECK (converted_minor >= 0),
  mid_rate        numeric NOT NULL CHECK (mid_rate > 0),
  spread_bps      integer NOT NULL CHECK (spread_bps >= 0 AND spread_bps < 10000),
  rate            numeric NOT NULL CHECK (rate > 0),
  created_at      timestamptz NOT NULL,
  expires_at      timestamptz NOT NULL,
  used_at         timestamptz,
  used_reference  text,
  CHECK (expires_at > created_at),
  CHECK ((used_at IS NULL) = (used_reference IS NULL))
);

CREATE INDEX quotes_expires_at ON quotes (expires_at) WHERE used_at IS NULL;
