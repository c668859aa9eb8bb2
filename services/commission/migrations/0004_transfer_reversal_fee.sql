-- A transfer reversal returns its share of the platform fee too (it undoes the commission as a
-- whole): the fee returned so far per payout item, next to the net returned, so partial reversals
-- prorate it cumulatively; and per reversal, for the record. Items reversed before this column
-- existed returned no fee (0 is what the `fee` account saw); a later reversal of such an item
-- catches their share up.
ALTER TABLE payout_items ADD COLUMN fee_returned_minor BIGINT NOT NULL DEFAULT 0;
ALTER TABLE transfer_reversals ADD COLUMN fee_returned_minor BIGINT NOT NULL DEFAULT 0;
