-- Addresses each org's tokens were used from (only ones that identify a client), from the
-- edge's caller.seen events: a click from one of the affiliate's own is a self-referral.
CREATE TABLE caller_addresses (
    org_id        TEXT NOT NULL,
    address       TEXT NOT NULL,
    last_seen_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, address)
);
