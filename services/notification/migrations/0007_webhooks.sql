-- Owners' webhook endpoints and their deliveries (Standard Webhooks). A delivery is one event
-- for one endpoint: its id is the `webhook-id` header, the same on every attempt, so receivers
-- deduplicate on it. Deliveries are created with the feed row, in the consumer's transaction.
CREATE TABLE webhooks (
    webhook_id             TEXT PRIMARY KEY,
    program_id             TEXT NOT NULL,
    owner_org_id           TEXT NOT NULL,
    url                    TEXT NOT NULL,
    event_types            TEXT[] NOT NULL,          -- empty: every type
    secret                 TEXT NOT NULL,            -- whsec_…: signs every delivery
    previous_secret        TEXT,                     -- still signs until previous_secret_until
    previous_secret_until  TIMESTAMPTZ,
    status                 TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled', 'deleted')),
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    failing_since          TIMESTAMPTZ,              -- the first failure since the last success
    last_success_at        TIMESTAMPTZ,
    last_failure_at        TIMESTAMPTZ,
    last_error             TEXT,
    disabled_at            TIMESTAMPTZ
);
CREATE INDEX webhooks_by_program ON webhooks (program_id) WHERE status = 'active';

CREATE TABLE webhook_deliveries (
    delivery_id      TEXT PRIMARY KEY,
    webhook_id       TEXT NOT NULL REFERENCES webhooks,
    event_id         TEXT NOT NULL,
    type             TEXT NOT NULL,
    body             TEXT NOT NULL,                  -- sent as is on every attempt
    status           TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INT NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    leased_until     TIMESTAMPTZ,
    last_status      INT,
    last_error       TEXT,
    response_excerpt TEXT,                           -- at most 256 characters of the last answer
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at     TIMESTAMPTZ,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (webhook_id, next_attempt_at) WHERE status = 'pending';
