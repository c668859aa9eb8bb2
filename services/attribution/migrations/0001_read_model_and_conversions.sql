-- Read model of enrollment's facts, built from its events (this service never asks enrollment).
-- `version_micros` is the source's updated_at: an older snapshot never overwrites a newer one.
CREATE TABLE programs_view (
    program_id              TEXT PRIMARY KEY,
    owner_org_id            TEXT NOT NULL,
    currency                TEXT NOT NULL,
    status                  TEXT NOT NULL,
    approval_mode           TEXT NOT NULL,
    attribution_window_days INTEGER NOT NULL,
    landing_url             TEXT,
    commission_version      INTEGER NOT NULL,
    version_micros          BIGINT NOT NULL
);

CREATE TABLE rule_versions (
    program_id  TEXT NOT NULL,
    version     INTEGER NOT NULL,
    rule        JSONB NOT NULL,
    PRIMARY KEY (program_id, version)
);

CREATE TABLE enrollments_view (
    enrollment_id     TEXT PRIMARY KEY,
    program_id        TEXT NOT NULL,
    affiliate_org_id  TEXT NOT NULL,
    status            TEXT NOT NULL,
    affiliate_emails  TEXT[] NOT NULL DEFAULT '{}',
    version_micros    BIGINT NOT NULL
);

CREATE TABLE codes_view (
    code          TEXT PRIMARY KEY,
    enrollment_id TEXT NOT NULL,
    program_id    TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'retired'))
);

-- Clicks. Each keeps the enrollment its code pointed to when it was recorded, so a later code
-- rotation does not take the credit away.
CREATE TABLE touchpoints (
    touchpoint_id TEXT PRIMARY KEY,
    program_id    TEXT NOT NULL,
    enrollment_id TEXT NOT NULL,
    code          TEXT NOT NULL,
    subject_ref   TEXT NOT NULL,
    occurred_at   TIMESTAMPTZ NOT NULL,
    landing_url   TEXT,
    client_ip     TEXT,
    user_agent    TEXT,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX touchpoints_by_subject ON touchpoints (program_id, subject_ref, occurred_at DESC);
CREATE INDEX touchpoints_by_code_subject ON touchpoints (code, subject_ref, occurred_at DESC);

CREATE TABLE conversions (
    conversion_id       TEXT PRIMARY KEY,
    program_id          TEXT NOT NULL,
    project_id          TEXT NOT NULL,
    external_id         TEXT NOT NULL,
    amount_minor        BIGINT NOT NULL CHECK (amount_minor >= 0),
    currency            TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'unattributed', 'clawed_back')),
    attribution         TEXT NOT NULL CHECK (attribution IN ('code', 'touchpoint', 'customer', 'none')),
    enrollment_id       TEXT,
    affiliate_org_id    TEXT,
    code                TEXT,
    touchpoint_id       TEXT,
    subject_ref         TEXT,
    customer_ref        TEXT,
    reason              TEXT,
    occurred_at         TIMESTAMPTZ NOT NULL,
    recorded_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    decided_at          TIMESTAMPTZ,
    commission_minor    BIGINT NOT NULL DEFAULT 0,
    commission_version  INTEGER NOT NULL DEFAULT 0,
    commission_tier     INTEGER NOT NULL DEFAULT -1,
    renewal             BOOLEAN NOT NULL DEFAULT false,
    customer_first_conversion_at TIMESTAMPTZ,
    clawed_back_minor   BIGINT NOT NULL DEFAULT 0 CHECK (clawed_back_minor >= 0 AND clawed_back_minor <= amount_minor),
    held_for_review     BOOLEAN NOT NULL DEFAULT false,
    fingerprint         TEXT NOT NULL,   -- amount, currency and code of the report, for IDEMPOTENCY_MISMATCH
    UNIQUE (program_id, project_id, external_id)
);
CREATE INDEX conversions_by_program ON conversions (program_id, conversion_id);
CREATE INDEX conversions_by_affiliate ON conversions (affiliate_org_id, conversion_id) WHERE affiliate_org_id IS NOT NULL;

-- A customer's first attributed conversion binds them to the enrollment (renewals, recurring).
CREATE TABLE customer_bindings (
    program_id          TEXT NOT NULL,
    customer_ref        TEXT NOT NULL,
    enrollment_id       TEXT NOT NULL,
    first_conversion_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (program_id, customer_ref)
);

-- Approved volume per enrollment and tier period ('lifetime' or 'YYYY-MM'), for tiered rules.
CREATE TABLE volume_counters (
    enrollment_id TEXT NOT NULL,
    period        TEXT NOT NULL,
    conversions   BIGINT NOT NULL DEFAULT 0,
    revenue_minor BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (enrollment_id, period)
);

CREATE TABLE clawbacks (
    clawback_id     TEXT PRIMARY KEY,
    conversion_id   TEXT NOT NULL REFERENCES conversions,
    refund_minor    BIGINT NOT NULL CHECK (refund_minor > 0),
    reason          TEXT NOT NULL,
    idempotency_key TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (conversion_id, idempotency_key)
);
