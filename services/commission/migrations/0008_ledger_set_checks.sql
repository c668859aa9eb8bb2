-- A booked conversion cost a per-row foreign-key check for each of its entries (a lookup and a
-- row lock on its journal row, one trigger call per entry). Journal rows are never updated or
-- deleted (triggers refuse it), so what the key guarded is only that an entry's journal row exists
-- when the entry is written. The statement trigger that checks a statement's postings balance now
-- checks that too, with one pass over the statement's rows.
--
-- That pass must probe the journal's key, never scan the journal: the function's plan is made
-- once per connection and kept, when the journal may still have been small (and statistics are
-- not always kept up to date), so joins that read the whole journal are ruled out here, as a key
-- lookup is all the foreign key ever did. (Ruling them out prices every plan of the function
-- very high, which would start the JIT compiler on each call: it is off here too.)
ALTER TABLE entries DROP CONSTRAINT entries_journal_id_fkey;

CREATE OR REPLACE FUNCTION ledger_statement_balances() RETURNS trigger LANGUAGE plpgsql
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
DECLARE
    bad RECORD;
BEGIN
    SELECT journal_id, currency, sum(amount_minor) AS gap INTO bad FROM new_entries
     GROUP BY journal_id, currency HAVING sum(amount_minor) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'posting % does not balance in %: off by %', bad.journal_id, bad.currency, bad.gap;
    END IF;
    SELECT n.journal_id INTO bad FROM new_entries n
     WHERE NOT EXISTS (SELECT 1 FROM journal j WHERE j.journal_id = n.journal_id) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'entry of posting % has no journal row', bad.journal_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$;

-- An enrollment's commissions are found by the enrollment alone (each read filters or sorts the
-- few it wants). Keyed by (enrollment, decision time) every new commission landed on a leaf page
-- of its own among thousands of enrollments; keyed by the enrollment, entries share posting
-- lists, and the index is smaller and cheaper to write (half the full-page images after a
-- checkpoint, measured on 470 k commissions).
DROP INDEX commissions_by_enrollment;
CREATE INDEX commissions_by_enrollment ON commissions (enrollment_id);
