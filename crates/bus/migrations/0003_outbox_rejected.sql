-- Events the relay could never publish (e.g. larger than the NATS server's max_payload): moved
-- here with the reason so the events behind them keep flowing. An operator inspects them; the
-- state change they announce is committed, so fixing the cause and re-inserting the row into
-- the outbox publishes them.
CREATE TABLE outbox_rejected (
    id          BIGINT      PRIMARY KEY,
    event_id    TEXT        NOT NULL UNIQUE,
    subject     TEXT        NOT NULL,
    payload     BYTEA       NOT NULL,
    traceparent TEXT        NOT NULL DEFAULT '',
    reason      TEXT        NOT NULL,
    rejected_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
