-- The outbox's event ids are made fresh for every event (ULIDs), and JetStream deduplicates on
-- them (`Nats-Msg-Id`), as consumer inboxes do beyond its window: a unique index on them guarded
-- nothing, and cost every event one more index entry on the hot path (and in its WAL).
ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_event_id_key;
