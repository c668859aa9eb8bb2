-- Reference exchange rates (units of a currency per euro, as the ECB publishes them), kept
-- with their history: a sale is converted at the rate of its date, whenever it is reported.
CREATE TABLE fx_rates (
    currency    TEXT NOT NULL,
    rate_date   DATE NOT NULL,
    rate        NUMERIC NOT NULL CHECK (rate > 0),
    source      TEXT NOT NULL,
    fetched_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (currency, rate_date)
);

-- A sale in another currency: amount_minor/currency hold it in the program's currency, these
-- the sale as reported and the rate it was converted at (NULL for sales in the program's own).
ALTER TABLE conversions
    ADD COLUMN sale_amount_minor BIGINT,
    ADD COLUMN sale_currency TEXT,
    ADD COLUMN fx_rate TEXT,
    ADD COLUMN fx_rate_date DATE,
    ADD COLUMN fx_source TEXT;

-- Sales waiting for their rate, found by the job that converts them once it arrives.
CREATE INDEX conversions_waiting_for_a_rate ON conversions (conversion_id)
    WHERE hold_reasons LIKE '%fx_rate_missing%';
