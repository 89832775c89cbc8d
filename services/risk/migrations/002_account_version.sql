-- Decisions of one account are recorded one after another without a lock: recording one
-- bumps the account's version, and a decision made from facts read at an older version
-- records nothing and is made again (store.ts).
ALTER TABLE accounts_seen ADD COLUMN version bigint NOT NULL DEFAULT 0;
