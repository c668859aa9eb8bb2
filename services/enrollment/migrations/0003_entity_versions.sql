-- A version per program and enrollment, bumped by every change under the row's lock: events
-- carry it, and read models order snapshots by it. (updated_at = now() is the transaction's
-- start, so a change that began earlier but committed later looked older than the one before.)
ALTER TABLE programs ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE enrollments ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
