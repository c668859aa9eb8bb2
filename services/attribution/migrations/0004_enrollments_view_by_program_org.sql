-- An owner-only tool refused to an org looks up whether that org is enrolled in the program
-- (FORBIDDEN then, NOT_FOUND otherwise): an index lookup, never a scan of every enrollment.
CREATE INDEX enrollments_view_by_program_org ON enrollments_view (program_id, affiliate_org_id);
