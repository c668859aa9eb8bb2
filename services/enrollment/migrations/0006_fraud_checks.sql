-- Which fraud checks a program runs on its conversions, and their thresholds (JSON, validated
-- by the service; self-referral and disposable e-mail are on unless turned off).
ALTER TABLE programs ADD COLUMN fraud_checks JSONB NOT NULL DEFAULT '{"self_referral": true, "disposable_email": true}';
