-- Read model of enrollment's programs: who owns them, their currency and payout schedule.
CREATE TABLE programs_view (
    program_id        TEXT PRIMARY KEY,
    owner_org_id      TEXT NOT NULL,
    name              TEXT NOT NULL,
    currency          TEXT NOT NULL,
    status            TEXT NOT NULL,
    payout_schedule   TEXT NOT NULL,
    version_micros    BIGINT NOT NULL
);
CREATE INDEX programs_view_by_schedule ON programs_view (payout_schedule) WHERE payout_schedule <> 'manual';

-- One Stripe connected account per affiliate org, reused by every program it is in.
CREATE TABLE payout_accounts (
    payout_account_id TEXT PRIMARY KEY,
    org_id            TEXT NOT NULL UNIQUE,
    stripe_account_id TEXT UNIQUE,          -- NULL until Stripe answered the create
    country           TEXT NOT NULL,
    transfers_active  BOOLEAN NOT NULL DEFAULT false,
    payouts_enabled   BOOLEAN NOT NULL DEFAULT false,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A payout run: on demand (idempotent on the owner's key) or by schedule (once per period).
CREATE TABLE payout_runs (
    payout_run_id    TEXT PRIMARY KEY,
    program_id       TEXT NOT NULL,
    trigger          TEXT NOT NULL CHECK (trigger IN ('manual', 'schedule')),
    period           TEXT,
    currency         TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (program_id, idempotency_key)
);
CREATE UNIQUE INDEX payout_runs_one_per_period ON payout_runs (program_id, period) WHERE period IS NOT NULL;
CREATE INDEX payout_runs_by_program ON payout_runs (program_id, payout_run_id DESC);

-- One affiliate's line of a run. The item id is the ledger reservation's key and the Stripe
-- transfer's idempotency key, stored before either call is made.
CREATE TABLE payout_items (
    payout_item_id     TEXT PRIMARY KEY,
    payout_run_id      TEXT NOT NULL REFERENCES payout_runs,
    program_id         TEXT NOT NULL,
    enrollment_id      TEXT NOT NULL,
    affiliate_org_id   TEXT NOT NULL,
    currency           TEXT NOT NULL,
    gross_minor        BIGINT NOT NULL,
    fee_minor          BIGINT NOT NULL,
    debt_minor         BIGINT NOT NULL,
    net_minor          BIGINT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('skipped', 'pending', 'reserved', 'paid', 'failed', 'unknown', 'voided')),
    reason             TEXT,
    stripe_account_id  TEXT,
    stripe_transfer_id TEXT UNIQUE,
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX payout_items_by_run ON payout_items (payout_run_id, payout_item_id);
CREATE INDEX payout_items_in_flight ON payout_items (updated_at) WHERE status IN ('pending', 'reserved', 'unknown');

-- Every Stripe event applied (the inbox dedupes delivery; this keeps what happened).
CREATE TABLE stripe_events (
    event_id    TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    account     TEXT,
    payload     JSONB NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
