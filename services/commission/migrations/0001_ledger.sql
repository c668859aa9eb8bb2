-- Commission: read models (programs, enrollments), the double-entry ledger (journal + entries,
-- append-only), balances (a projection of entries), the commission sub-ledger, clawbacks,
-- payout items, and per-enrollment daily stats rollups.

-- ---- read models, built from enrollment events ----

CREATE TABLE programs (
    program_id              TEXT PRIMARY KEY,
    owner_org_id            TEXT NOT NULL,
    name                    TEXT NOT NULL,
    currency                TEXT NOT NULL,
    status                  TEXT NOT NULL,
    hold_days               INT NOT NULL,
    multi_level_enabled     BOOLEAN NOT NULL,
    levels_bps              INT[] NOT NULL,
    platform_fee_bps        INT NOT NULL,
    payout_threshold_minor  BIGINT NOT NULL,
    commission_version      INT NOT NULL,
    updated_at_micros       BIGINT NOT NULL
);

-- Every rule version seen (commissions record the version they were decided under).
CREATE TABLE program_rules (
    program_id       TEXT NOT NULL,
    version          INT NOT NULL,
    commission_json  JSONB NOT NULL,
    PRIMARY KEY (program_id, version)
);

CREATE TABLE enrollments (
    enrollment_id         TEXT PRIMARY KEY,
    program_id            TEXT NOT NULL,
    affiliate_org_id      TEXT NOT NULL,
    affiliate_org_name    TEXT NOT NULL DEFAULT '',
    status                TEXT NOT NULL,
    parent_enrollment_id  TEXT,
    depth                 INT NOT NULL,
    updated_at_micros     BIGINT NOT NULL
);
CREATE INDEX enrollments_by_org ON enrollments (affiliate_org_id);
CREATE INDEX enrollments_by_program ON enrollments (program_id);

-- ---- the ledger ----

CREATE TABLE journal (
    journal_id     BIGSERIAL PRIMARY KEY,
    idem_key       TEXT NOT NULL UNIQUE,           -- one posting per fact: accrue:<commission>, release:<commission>, ...
    kind           TEXT NOT NULL,
    program_id     TEXT NOT NULL,
    enrollment_id  TEXT NOT NULL,
    reference      TEXT NOT NULL,                  -- commission, clawback, payout item or reversal id
    posted_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE entries (
    entry_id       BIGSERIAL PRIMARY KEY,
    journal_id     BIGINT NOT NULL REFERENCES journal,
    program_id     TEXT NOT NULL,
    enrollment_id  TEXT NOT NULL,                  -- '' for program-level accounts
    account        TEXT NOT NULL CHECK (account IN ('held', 'payable', 'reserved', 'paid', 'expense', 'fee')),
    currency       TEXT NOT NULL,
    amount_minor   BIGINT NOT NULL CHECK (amount_minor <> 0)
);
CREATE INDEX entries_by_journal ON entries (journal_id);

-- Append-only: corrections are new postings, never edits.
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE ON journal
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER journal_no_truncate BEFORE TRUNCATE ON journal
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

-- Every posting balances per currency, checked by the database at commit.
CREATE FUNCTION ledger_posting_balances() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    gap NUMERIC;
BEGIN
    SELECT sum(amount_minor) INTO gap FROM entries
     WHERE journal_id = NEW.journal_id AND currency = NEW.currency;
    IF gap <> 0 THEN
        RAISE EXCEPTION 'posting % does not balance in %: off by %', NEW.journal_id, NEW.currency, gap;
    END IF;
    RETURN NULL;
END;
$$;
CREATE CONSTRAINT TRIGGER entries_balance AFTER INSERT ON entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_posting_balances();

-- Balances: a projection of entries, updated in the posting's transaction; `amba ledger
-- verify` rebuilds them from entries and compares.
CREATE TABLE balances (
    program_id     TEXT NOT NULL,
    enrollment_id  TEXT NOT NULL,
    account        TEXT NOT NULL,
    currency       TEXT NOT NULL,
    balance_minor  BIGINT NOT NULL,
    PRIMARY KEY (program_id, enrollment_id, account, currency)
);

-- ---- the commission sub-ledger ----

CREATE TABLE commissions (
    commission_id          TEXT PRIMARY KEY,
    conversion_id          TEXT NOT NULL,
    program_id             TEXT NOT NULL,
    enrollment_id          TEXT NOT NULL,            -- who earns it
    source_enrollment_id   TEXT NOT NULL,            -- whose conversion it is
    level                  INT NOT NULL,             -- 0 direct, 1 direct sponsor's override, ...
    source_commission_id   TEXT,                     -- overrides: the direct commission
    currency               TEXT NOT NULL,
    sale_minor             BIGINT NOT NULL,
    amount_minor           BIGINT NOT NULL CHECK (amount_minor >= 0),
    rate_bps               INT,                      -- overrides: the level's bps
    commission_version     INT NOT NULL,
    commission_tier        INT NOT NULL,
    decided_at             TIMESTAMPTZ NOT NULL,
    release_at             TIMESTAMPTZ NOT NULL,
    released_at            TIMESTAMPTZ,
    held_minor             BIGINT NOT NULL CHECK (held_minor >= 0),
    recovered_minor        BIGINT NOT NULL DEFAULT 0 CHECK (recovered_minor >= 0 AND recovered_minor <= amount_minor),
    UNIQUE (conversion_id, level)
);
CREATE INDEX commissions_due ON commissions (release_at) WHERE released_at IS NULL;
CREATE INDEX commissions_by_enrollment ON commissions (enrollment_id, decided_at);

-- Conversions seen (for counting each once and for refund totals).
CREATE TABLE conversions (
    conversion_id    TEXT PRIMARY KEY,
    program_id       TEXT NOT NULL,
    enrollment_id    TEXT NOT NULL,                 -- '' when unattributed
    amount_minor     BIGINT NOT NULL,
    currency         TEXT NOT NULL,
    status           TEXT NOT NULL,
    counted_day      DATE NOT NULL,
    approved         BOOLEAN NOT NULL DEFAULT false,
    refunded_minor   BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE clawbacks (
    clawback_id            TEXT PRIMARY KEY,
    conversion_id          TEXT NOT NULL,
    program_id             TEXT NOT NULL,
    enrollment_id          TEXT NOT NULL,
    refund_minor           BIGINT NOT NULL,
    refunded_total_minor   BIGINT NOT NULL,
    reversed_minor         BIGINT NOT NULL,        -- commission reversed, overrides included
    carry_forward_minor    BIGINT NOT NULL,        -- of which became carry-forward debt
    reason                 TEXT NOT NULL,
    currency               TEXT NOT NULL,
    recorded_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- ---- payout-facing: two-phase items and transfer reversals ----

CREATE TABLE payout_items (
    payout_item_id   TEXT PRIMARY KEY,
    program_id       TEXT NOT NULL,
    enrollment_id    TEXT NOT NULL,
    currency         TEXT NOT NULL,
    gross_minor      BIGINT NOT NULL CHECK (gross_minor > 0),
    fee_minor        BIGINT NOT NULL DEFAULT 0,
    status           TEXT NOT NULL CHECK (status IN ('reserved', 'posted', 'voided')),
    returned_minor   BIGINT NOT NULL DEFAULT 0,
    reserved_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    settled_at       TIMESTAMPTZ
);

CREATE TABLE transfer_reversals (
    reversal_id         TEXT PRIMARY KEY,
    payout_item_id      TEXT NOT NULL REFERENCES payout_items,
    amount_minor        BIGINT NOT NULL,
    settled_debt_minor  BIGINT NOT NULL,
    recovered_minor     BIGINT NOT NULL,
    recorded_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- ---- analytics rollups (updated by the event handlers, read by the analytics tools) ----

CREATE TABLE daily_stats (
    program_id          TEXT NOT NULL,
    enrollment_id       TEXT NOT NULL,              -- '' for unattributed conversions
    day                 DATE NOT NULL,
    clicks              BIGINT NOT NULL DEFAULT 0,
    conversions         BIGINT NOT NULL DEFAULT 0,
    approved            BIGINT NOT NULL DEFAULT 0,
    revenue_minor       BIGINT NOT NULL DEFAULT 0,   -- approved sales
    commission_minor    BIGINT NOT NULL DEFAULT 0,   -- accrued (overrides to their earner)
    paid_minor          BIGINT NOT NULL DEFAULT 0,   -- net handed over at payout
    clawed_back_minor   BIGINT NOT NULL DEFAULT 0,   -- commission reversed
    refunded_minor      BIGINT NOT NULL DEFAULT 0,   -- sales refunded
    PRIMARY KEY (program_id, enrollment_id, day)
);
CREATE INDEX daily_stats_by_enrollment ON daily_stats (enrollment_id, day);
