-- Whether applications to a program need the owner's approval (invites are accepted by the affiliate).
ALTER TABLE programs ADD COLUMN affiliate_approval TEXT NOT NULL DEFAULT 'manual'
    CHECK (affiliate_approval IN ('auto', 'manual'));

-- An affiliate org in a program. One per (program, org); its history is in the events.
CREATE TABLE enrollments (
    enrollment_id        TEXT PRIMARY KEY,
    program_id           TEXT NOT NULL REFERENCES programs,
    affiliate_org_id     TEXT NOT NULL REFERENCES orgs,
    status               TEXT NOT NULL CHECK (status IN ('pending', 'active', 'rejected', 'declined', 'removed')),
    origin               TEXT NOT NULL CHECK (origin IN ('invite', 'application')),
    parent_enrollment_id TEXT REFERENCES enrollments,
    depth                INTEGER NOT NULL CHECK (depth >= 1),   -- 1 = no sponsor
    idempotency_key      TEXT,
    reason               TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (program_id, affiliate_org_id)
);
CREATE INDEX enrollments_by_program ON enrollments (program_id, enrollment_id);
CREATE INDEX enrollments_by_org ON enrollments (affiliate_org_id, enrollment_id);
CREATE INDEX enrollments_by_parent ON enrollments (parent_enrollment_id) WHERE parent_enrollment_id IS NOT NULL;

-- Referral codes: unguessable, never reused. Rotation retires the active one and issues another.
CREATE TABLE referral_codes (
    code          TEXT PRIMARY KEY,
    enrollment_id TEXT NOT NULL REFERENCES enrollments,
    program_id    TEXT NOT NULL REFERENCES programs,
    status        TEXT NOT NULL CHECK (status IN ('active', 'retired')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    retired_at    TIMESTAMPTZ
);
CREATE UNIQUE INDEX referral_codes_one_active ON referral_codes (enrollment_id) WHERE status = 'active';
