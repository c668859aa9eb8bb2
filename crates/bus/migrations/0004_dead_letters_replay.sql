-- Operators replay dead letters (`amba dead-letters replay`): when, so a list shows what is
-- still waiting. A replay that fails again records the message anew (replayed_at cleared).
ALTER TABLE dead_letters ADD COLUMN replayed_at TIMESTAMPTZ;
