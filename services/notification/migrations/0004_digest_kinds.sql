-- Settings per program: '' is the org's own setting, a program id overrides it in that program.
ALTER TABLE preferences ADD COLUMN program_id TEXT NOT NULL DEFAULT '';
ALTER TABLE preferences DROP CONSTRAINT preferences_pkey;
ALTER TABLE preferences ADD PRIMARY KEY (org_id, kind, program_id);

-- Digests sum more than approved commissions: rejected sales, and for owners new applications,
-- conversions waiting for approval and finished payout runs. One row per (event, kind); its
-- `period` (by the org's frequency for the kind when it was recorded) decides which digest
-- sums it. `recorded_at` is when it happened (a waiting conversion: when it was reported).
ALTER TABLE pending_commissions RENAME TO digest_entries;
ALTER INDEX pending_commissions_by_period RENAME TO digest_entries_by_period;
ALTER TABLE digest_entries RENAME CONSTRAINT pending_commissions_pkey TO digest_entries_pkey;
ALTER TABLE digest_entries ADD COLUMN kind TEXT NOT NULL DEFAULT 'conversion_approved';
ALTER TABLE digest_entries ALTER COLUMN kind DROP DEFAULT;
ALTER TABLE digest_entries DROP CONSTRAINT digest_entries_pkey;
ALTER TABLE digest_entries ADD PRIMARY KEY (event_id, kind);
ALTER TABLE digest_entries ALTER COLUMN currency SET DEFAULT '';
ALTER TABLE digest_entries ALTER COLUMN commission_minor SET DEFAULT 0;
ALTER TABLE digest_entries ALTER COLUMN sale_minor SET DEFAULT 0;
-- The owner's reason (rejected), the applicant's name (applications), the conversion
-- (waiting: dropped when decided before its digest), the run's summary as sent (payout runs).
ALTER TABLE digest_entries ADD COLUMN reason TEXT;
ALTER TABLE digest_entries ADD COLUMN label TEXT;
ALTER TABLE digest_entries ADD COLUMN subject_ref TEXT;
ALTER TABLE digest_entries ADD COLUMN payload BYTEA;
CREATE INDEX digest_entries_waiting ON digest_entries (subject_ref) WHERE kind = 'approvals_waiting';

-- Send budgets: who caused an e-mail (an invitation's program owner), and `refused` for an
-- e-mail over a budget (kept, with the budget in last_error, so the org sees what it missed).
ALTER TABLE emails ADD COLUMN sender_org_id TEXT;
ALTER TABLE emails DROP CONSTRAINT emails_status_check;
ALTER TABLE emails ADD CONSTRAINT emails_status_check
    CHECK (status IN ('queued', 'sent', 'failed', 'suppressed', 'refused'));
-- What the budgets count (e-mails that went or go out, digests aside): bounded index scans.
CREATE INDEX emails_invitations_by_sender ON emails (sender_org_id, created_at)
    WHERE template = 'invited' AND status IN ('queued', 'sent', 'failed');
CREATE INDEX emails_immediate_by_org ON emails (org_id, created_at)
    WHERE template <> 'digest' AND status IN ('queued', 'sent', 'failed');
