-- Explain lists the postings of one conversion's commissions and clawbacks.
CREATE INDEX journal_by_reference ON journal (reference);
CREATE INDEX clawbacks_by_conversion ON clawbacks (conversion_id);
