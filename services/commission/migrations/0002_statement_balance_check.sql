-- The balancing rule checked per statement instead of per entry at commit.
--
-- Postings are written whole by one statement (a batch of postings by one INSERT ... UNNEST), so
-- each statement's new entries must sum to zero per (posting, currency). That is never weaker
-- than the deferred row trigger it replaces: every earlier statement balanced, so entries added
-- to an old posting must balance by themselves. It is cheaper by far: one aggregate over the
-- statement's rows instead of re-summing the posting once per entry at commit.
DROP TRIGGER entries_balance ON entries;
DROP FUNCTION ledger_posting_balances();

CREATE FUNCTION ledger_statement_balances() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad RECORD;
BEGIN
    SELECT journal_id, currency, sum(amount_minor) AS gap INTO bad FROM new_entries
     GROUP BY journal_id, currency HAVING sum(amount_minor) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'posting % does not balance in %: off by %', bad.journal_id, bad.currency, bad.gap;
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER entries_balance AFTER INSERT ON entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_statement_balances();
