-- An owner may credit an unattributed conversion to an affiliate by hand (`assigned`).
ALTER TABLE conversions DROP CONSTRAINT IF EXISTS conversions_attribution_check;
ALTER TABLE conversions ADD CONSTRAINT conversions_attribution_check
    CHECK (attribution IN ('code', 'touchpoint', 'customer', 'none', 'assigned'));

-- When a rule version took effect (the program snapshot that first carried it), so a sale
-- credited later is priced under the rule in force at its time. NULL for versions recorded
-- before this column existed.
ALTER TABLE rule_versions ADD COLUMN effective_at TIMESTAMPTZ;

-- The accounting export pages a program's conversions by sale time.
CREATE INDEX conversions_by_program_sale ON conversions (program_id, occurred_at, conversion_id);
