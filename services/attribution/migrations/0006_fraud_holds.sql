-- The program's fraud checks (from enrollment's events), and on each conversion the reason
-- codes it was held for (comma-separated, e.g. "velocity,refund_rate"; empty when not held).
ALTER TABLE programs_view ADD COLUMN fraud_checks JSONB NOT NULL DEFAULT '{"self_referral": true, "disposable_email": true}';
ALTER TABLE conversions ADD COLUMN hold_reasons TEXT NOT NULL DEFAULT '';
