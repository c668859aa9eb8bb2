-- Analytics by the sale's day: every figure of a conversion (counted, approved, revenue,
-- commission, clawed back, refunded) sits on the row of the day the sale happened, so a range's
-- figures describe the same sales. Before this, approvals, revenue and commission were on the
-- approval day and clawbacks on the refund day.

-- How a conversion was attributed, and whether it counts as a sale by a click (attribution
-- `touchpoint`, neither rejected nor unattributed): the numerator of the conversion rate.
ALTER TABLE conversions ADD COLUMN attribution TEXT NOT NULL DEFAULT '';
ALTER TABLE conversions ADD COLUMN click_counted BOOLEAN NOT NULL DEFAULT false;

ALTER TABLE daily_stats ADD COLUMN click_conversions BIGINT NOT NULL DEFAULT 0; -- sales by a click
ALTER TABLE daily_stats ADD COLUMN clawed_back BIGINT NOT NULL DEFAULT 0;       -- approved sales with any refund

-- Who and why, on postings made by a person rather than by a rule (an owner's early release).
-- Set when the journal row is written; the row stays append-only.
ALTER TABLE journal ADD COLUMN memo JSONB;

-- An owner's early release of held commission: one row per request, the audit record.
CREATE TABLE early_releases (
    release_id              TEXT PRIMARY KEY,
    owner_org_id            TEXT NOT NULL,
    idempotency_key         TEXT NOT NULL,       -- the caller's, or the request itself
    program_id              TEXT NOT NULL,
    conversion_id           TEXT NOT NULL,       -- '' when a whole enrollment was released
    enrollment_id           TEXT NOT NULL,       -- '' when one conversion was released
    currency                TEXT NOT NULL,
    released_minor          BIGINT NOT NULL,
    commissions             INT NOT NULL,
    reason                  TEXT NOT NULL,
    released_by_org_id      TEXT NOT NULL,
    released_by_account_id  TEXT NOT NULL,
    released_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (owner_org_id, idempotency_key)
);

-- Backfill: rebuild the conversion figures of every row by sale day from the sub-ledger and the
-- journal (clicks and paid keep their days: the click's and the payout's). What older rows
-- cannot get back: which sales came by a click (the attribution was not kept), so
-- click_conversions counts only sales recorded from now on.
UPDATE daily_stats SET conversions = 0, approved = 0, revenue_minor = 0, commission_minor = 0,
    clawed_back_minor = 0, refunded_minor = 0, clawed_back = 0;

INSERT INTO daily_stats AS s (program_id, enrollment_id, day, conversions, approved, revenue_minor,
                              refunded_minor, clawed_back)
SELECT program_id, enrollment_id, counted_day, count(*),
       count(*) FILTER (WHERE approved),
       COALESCE(sum(amount_minor) FILTER (WHERE approved), 0),
       COALESCE(sum(refunded_minor) FILTER (WHERE approved), 0),
       count(*) FILTER (WHERE approved AND refunded_minor > 0)
FROM conversions GROUP BY 1, 2, 3
ON CONFLICT (program_id, enrollment_id, day) DO UPDATE SET conversions = s.conversions + EXCLUDED.conversions,
    approved = s.approved + EXCLUDED.approved, revenue_minor = s.revenue_minor + EXCLUDED.revenue_minor,
    refunded_minor = s.refunded_minor + EXCLUDED.refunded_minor, clawed_back = s.clawed_back + EXCLUDED.clawed_back;

-- Commission to its earner (overrides included), on the day of the sale it came from.
INSERT INTO daily_stats AS s (program_id, enrollment_id, day, commission_minor)
SELECT c.program_id, c.enrollment_id, v.counted_day, sum(c.amount_minor)
FROM commissions c JOIN conversions v ON v.conversion_id = c.conversion_id
GROUP BY 1, 2, 3
ON CONFLICT (program_id, enrollment_id, day) DO UPDATE SET commission_minor = s.commission_minor + EXCLUDED.commission_minor;

-- Commission reversed by clawbacks (the expense side of each clawback posting), on the sale's day.
INSERT INTO daily_stats AS s (program_id, enrollment_id, day, clawed_back_minor)
SELECT j.program_id, j.enrollment_id, v.counted_day, sum(e.amount_minor)
FROM journal j JOIN entries e ON e.journal_id = j.journal_id AND e.account = 'expense'
JOIN clawbacks c ON c.clawback_id = j.reference JOIN conversions v ON v.conversion_id = c.conversion_id
WHERE j.kind = 'clawback'
GROUP BY 1, 2, 3
ON CONFLICT (program_id, enrollment_id, day) DO UPDATE SET clawed_back_minor = s.clawed_back_minor + EXCLUDED.clawed_back_minor;

-- Commission recovered by transfer reversals: on the reversal's day, as before.
INSERT INTO daily_stats AS s (program_id, enrollment_id, day, clawed_back_minor)
SELECT j.program_id, j.enrollment_id, (j.posted_at AT TIME ZONE 'UTC')::date, sum(e.amount_minor)
FROM journal j JOIN entries e ON e.journal_id = j.journal_id AND e.account = 'expense'
WHERE j.kind = 'transfer_reversal'
GROUP BY 1, 2, 3
ON CONFLICT (program_id, enrollment_id, day) DO UPDATE SET clawed_back_minor = s.clawed_back_minor + EXCLUDED.clawed_back_minor;
