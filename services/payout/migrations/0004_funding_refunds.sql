-- What a run charged but could not pay out (an item refused or voided after the charge) goes
-- back to the owner's card: refunded once every item is final. funding_settled: the charge is
-- fully accounted for (paid out or refunded).
ALTER TABLE payout_runs
    ADD COLUMN refunded_minor  BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN refund_id       TEXT,
    ADD COLUMN funding_settled BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX payout_runs_unsettled ON payout_runs (funding_updated_at)
    WHERE funding_status = 'succeeded' AND NOT funding_settled;
