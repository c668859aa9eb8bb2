-- The relay deletes a row once JetStream has acknowledged it, instead of marking it sent: the
-- stream keeps the event, the outbox stays small, and a deleted row is cheaper than an updated
-- one on the hot path.
DELETE FROM outbox WHERE sent_at IS NOT NULL;
DROP INDEX outbox_unsent;
ALTER TABLE outbox DROP COLUMN sent_at;
