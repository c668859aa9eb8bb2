-- How often later approved commissions are summed into one e-mail (conversion_approved only):
-- instant | daily | weekly; NULL is daily. Off is `enabled = false`.
ALTER TABLE preferences ADD COLUMN frequency TEXT CHECK (frequency IN ('instant', 'daily', 'weekly'));

-- The event of an org's first approved commission in a program, e-mailed at once. Keeping the
-- event id keeps a replay of that event "first" (its e-mail row already exists), not pending.
CREATE TABLE first_commissions (
    org_id     TEXT NOT NULL,
    program_id TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    PRIMARY KEY (org_id, program_id)
);

-- Every later commission, in the consumer's transaction, keyed by event: redelivery adds
-- nothing. Its period (by the org's frequency when it was recorded) decides which digest sums it.
CREATE TABLE pending_commissions (
    event_id         TEXT PRIMARY KEY,
    org_id           TEXT NOT NULL,
    program_id       TEXT NOT NULL,
    currency         TEXT NOT NULL,
    commission_minor BIGINT NOT NULL,
    sale_minor       BIGINT NOT NULL,
    period           TEXT NOT NULL,
    period_end       TIMESTAMPTZ NOT NULL,
    recorded_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX pending_commissions_by_period ON pending_commissions (period_end, org_id, period);

-- One digest per (org, period): the key is what makes a restart or a second replica send none
-- twice. Its e-mail row is keyed by ('digest:' || org || ':' || period, template) like any other.
CREATE TABLE digests (
    org_id      TEXT NOT NULL,
    period      TEXT NOT NULL,
    commissions INTEGER NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, period)
);

-- A program's hold (days from approval until commission is payable), for the first-commission
-- e-mail; NULL: not known yet (a program unchanged since before this column).
ALTER TABLE programs_view ADD COLUMN hold_days INTEGER;

-- The org's name, for greetings (from enrollment events; NULL until the next one).
ALTER TABLE orgs_view ADD COLUMN name TEXT;
