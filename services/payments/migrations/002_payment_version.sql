-- Every write of a payment names the version it read and bumps it: a writer working from a
-- stale copy changes nothing, so a state change can be one statement that also records its
-- events (optimistic concurrency instead of read-lock-write).
ALTER TABLE payments ADD COLUMN version bigint NOT NULL DEFAULT 0;
