-- Messaging tables every service keeps in its own schema (the pool's search_path).

-- Transactional outbox: written in the same transaction as the state change it announces.
CREATE TABLE outbox (
    id          BIGSERIAL PRIMARY KEY,
    event_id    TEXT        NOT NULL UNIQUE,
    subject     TEXT        NOT NULL,
    payload     BYTEA       NOT NULL,
    traceparent TEXT        NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at     TIMESTAMPTZ
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

-- Inbox: one row per event a consumer has applied; makes redelivery a no-op forever,
-- not only inside JetStream's duplicate window.
CREATE TABLE inbox (
    consumer    TEXT        NOT NULL,
    event_id    TEXT        NOT NULL,
    subject     TEXT        NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Messages a consumer gave up on (undecodable, permanently invalid, or out of retries).
CREATE TABLE dead_letters (
    id            BIGSERIAL PRIMARY KEY,
    consumer      TEXT        NOT NULL,
    event_id      TEXT        NOT NULL,
    subject       TEXT        NOT NULL,
    payload       BYTEA       NOT NULL,
    error         TEXT        NOT NULL,
    deliveries    BIGINT      NOT NULL,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (consumer, event_id)
);
