-- The attribution policy: which touchpoint wins (first or last inside the window) and whether a
-- code or a tracked touch wins when a report has both. Versioned like the commission rule: a
-- change of model, precedence or window is a new version, and conversions pin the one they used.
ALTER TABLE programs
    ADD COLUMN attribution_model TEXT NOT NULL DEFAULT 'last_touch'
        CHECK (attribution_model IN ('last_touch', 'first_touch')),
    ADD COLUMN attribution_precedence TEXT NOT NULL DEFAULT 'code_wins'
        CHECK (attribution_precedence IN ('code_wins', 'touch_wins')),
    ADD COLUMN attribution_version INTEGER NOT NULL DEFAULT 1;
