-- How many occurrences a row stands for: repeated throttled attempts from one
-- address are recorded as one row per window with their count.
ALTER TABLE audit_events ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
