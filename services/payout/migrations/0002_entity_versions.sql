-- The source's per-entity version (enrollment bumps it with every change under the row lock):
-- snapshots are ordered by it, then by their time (events from before versions carry 0).
ALTER TABLE programs_view ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
