-- The recovery sweep claims the payments still to drive on (PENDING, or AUTHORIZED for an
-- automatic capture) in creation order. This index holds exactly those, in that order, so a
-- sweep reads only them however many finished payments the table holds; the index it
-- replaces covered PENDING payments only, by lease, which the sweep's order could not use.
CREATE INDEX payments_to_resume ON payments (created_at, id)
  WHERE status = 'PENDING' OR (status = 'AUTHORIZED' AND capture_method = 'AUTOMATIC');
DROP INDEX payments_in_flight;
