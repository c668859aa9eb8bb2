-- The program's attribution policy (from enrollment's events), and on each conversion the policy
-- it was decided under and the trail of that decision, recorded when it was made: explain reads
-- it back, so a later change of the program never changes an explanation. `json`, not `jsonb`:
-- it is written for every sale and read only by explain, and json is stored as given, without
-- jsonb's parse into a tree on every insert.
ALTER TABLE programs_view
    ADD COLUMN attribution_model TEXT NOT NULL DEFAULT 'last_touch',
    ADD COLUMN attribution_precedence TEXT NOT NULL DEFAULT 'code_wins',
    ADD COLUMN attribution_version INTEGER NOT NULL DEFAULT 1;

-- Conversions from before policies existed were decided as last touch, code wins.
ALTER TABLE conversions
    ADD COLUMN attribution_model TEXT NOT NULL DEFAULT 'last_touch',
    ADD COLUMN attribution_precedence TEXT NOT NULL DEFAULT 'code_wins',
    ADD COLUMN attribution_version INTEGER NOT NULL DEFAULT 1,
    ADD COLUMN trail JSON;
