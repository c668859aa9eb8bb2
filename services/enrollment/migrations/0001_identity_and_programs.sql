-- Identity: accounts, orgs, memberships and personal access tokens (hashed).
CREATE TABLE accounts (
    account_id  TEXT PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE orgs (
    org_id      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE memberships (
    org_id      TEXT NOT NULL REFERENCES orgs,
    account_id  TEXT NOT NULL REFERENCES accounts,
    role        TEXT NOT NULL CHECK (role IN ('owner', 'member')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, account_id)
);

CREATE TABLE tokens (
    token_id    TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs,
    account_id  TEXT NOT NULL REFERENCES accounts,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,   -- hex SHA-256 of the secret; the secret is never stored
    hint        TEXT NOT NULL,          -- first characters, to tell tokens apart
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX tokens_by_org ON tokens (org_id, token_id);

-- Programs and their versioned commission rules.
CREATE TABLE programs (
    program_id              TEXT PRIMARY KEY,
    owner_org_id            TEXT NOT NULL REFERENCES orgs,
    name                    TEXT NOT NULL,
    currency                TEXT NOT NULL,
    status                  TEXT NOT NULL CHECK (status IN ('draft', 'active', 'paused', 'archived')),
    approval_mode           TEXT NOT NULL CHECK (approval_mode IN ('auto', 'manual')),
    attribution_window_days INTEGER NOT NULL,
    hold_days               INTEGER NOT NULL,
    payout_threshold_minor  BIGINT NOT NULL CHECK (payout_threshold_minor >= 0),
    payout_schedule         TEXT NOT NULL CHECK (payout_schedule IN ('manual', 'weekly', 'monthly')),
    platform_fee_bps        INTEGER NOT NULL CHECK (platform_fee_bps BETWEEN 0 AND 10000),
    multi_level             JSONB NOT NULL,
    landing_url             TEXT,
    commission_version      INTEGER NOT NULL,
    idempotency_key         TEXT,
    request_fingerprint     TEXT,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX programs_by_owner ON programs (owner_org_id, program_id);
CREATE UNIQUE INDEX programs_idempotency ON programs (owner_org_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- Append-only: a change of rule is a new version; old versions stay readable forever.
CREATE TABLE commission_rules (
    program_id  TEXT NOT NULL REFERENCES programs,
    version     INTEGER NOT NULL CHECK (version >= 1),
    rule        JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (program_id, version)
);
