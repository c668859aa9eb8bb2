-- The event feed agents read (amba_affiliate_events_list): the events owners and affiliates may
-- see, in the order they were written. `seq` is taken under one transaction-wide lock by every
-- writer, so rows commit in `seq` order and a reader that has seen `seq` n has seen every row
-- before it: a cursor never skips one. Kept 35 days.
CREATE TABLE feed_events (
    seq               BIGSERIAL PRIMARY KEY,
    event_id          TEXT NOT NULL UNIQUE,
    type              TEXT NOT NULL,
    program_id        TEXT NOT NULL,
    affiliate_org_id  TEXT,
    occurred_at       TIMESTAMPTZ NOT NULL,
    payload           JSON NOT NULL,     -- stored as written: read back whole, never queried into
    recorded_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX feed_events_by_program ON feed_events (program_id, seq);
CREATE INDEX feed_events_by_affiliate ON feed_events (affiliate_org_id, seq) WHERE affiliate_org_id IS NOT NULL;
CREATE INDEX feed_events_by_age ON feed_events (recorded_at);

-- Which orgs are (or were) in a program as affiliates, from enrollment events (never pruned):
-- they are told a tool is the owner's rather than that the program does not exist.
CREATE TABLE program_members (
    program_id  TEXT NOT NULL,
    org_id      TEXT NOT NULL,
    PRIMARY KEY (program_id, org_id)
);
