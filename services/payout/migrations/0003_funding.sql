-- Owner funding: a run charges the program owner first, then transfers from that charge
-- (Stripe's "separate charges and transfers"). One Stripe Customer per owner org; the payment
-- method saved through a Checkout Session (mode=setup) is what runs charge, off-session.
CREATE TABLE funding_accounts (
    org_id              TEXT PRIMARY KEY,
    stripe_customer_id  TEXT UNIQUE,           -- NULL until Stripe answered the create
    payment_method_id   TEXT,                  -- NULL until a setup succeeded (by webhook)
    card_brand          TEXT,
    card_last4          TEXT,
    ready_at            TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The operator's per-org switch on top of ORG_PAYOUTS_LIVE, with optional caps (minor units of
-- the run's currency). No row: not enabled.
CREATE TABLE org_payout_settings (
    org_id             TEXT PRIMARY KEY,
    enabled            BOOLEAN NOT NULL,
    cap_per_run_minor  BIGINT CHECK (cap_per_run_minor > 0),
    cap_per_day_minor  BIGINT CHECK (cap_per_day_minor > 0),
    changed_by         TEXT NOT NULL,
    changed_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A run's charge. Runs made before funding existed carry 'unfunded' (their items transfer from
-- the platform balance as before); every new run starts at 'reserving'.
--   reserving → charging → succeeded | failed   (or not_needed: nothing to pay)
--   charging: the PaymentIntent may have been sent; it is looked up before it is sent again.
ALTER TABLE payout_runs
    ADD COLUMN owner_org_id         TEXT,
    ADD COLUMN funding_status       TEXT NOT NULL DEFAULT 'unfunded'
        CHECK (funding_status IN ('unfunded', 'reserving', 'charging', 'succeeded', 'failed', 'not_needed')),
    ADD COLUMN funding_minor        BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN funding_key          TEXT,
    ADD COLUMN stripe_customer_id   TEXT,
    ADD COLUMN payment_method_id    TEXT,
    ADD COLUMN payment_intent_id    TEXT UNIQUE,
    ADD COLUMN charge_id            TEXT UNIQUE,
    ADD COLUMN funding_code         TEXT,
    ADD COLUMN decline_code         TEXT,
    ADD COLUMN funding_message      TEXT,
    ADD COLUMN funding_updated_at   TIMESTAMPTZ NOT NULL DEFAULT now();
ALTER TABLE payout_runs ALTER COLUMN funding_status SET DEFAULT 'reserving';
CREATE INDEX payout_runs_funding_in_flight ON payout_runs (funding_updated_at)
    WHERE funding_status IN ('reserving', 'charging');
CREATE INDEX payout_runs_by_owner_day ON payout_runs (owner_org_id, created_at);

-- Whether a transfer was ever asked for: only then is Stripe searched before (re)sending.
-- transfer_group: the run's id for funded runs (the charge's group); NULL: the item id (older runs).
ALTER TABLE payout_items
    ADD COLUMN transfer_attempted BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN transfer_group TEXT;
UPDATE payout_items SET transfer_attempted = true WHERE status IN ('reserved', 'unknown');
