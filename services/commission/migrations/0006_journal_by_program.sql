-- The ledger export pages a program's postings by booking time.
CREATE INDEX journal_by_program_time ON journal (program_id, posted_at, journal_id);
