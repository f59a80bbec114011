-- The deployment's internal credential (SPEC 6.3), sealed under the secret key.
-- Used with PostgreSQL, where replicas share one credential; a single-file SQLite
-- gateway keeps its credential in process memory only. At most one row.
CREATE TABLE internal_credential (
    slot          INTEGER PRIMARY KEY CHECK (slot = 1),
    sealed        BLOB NOT NULL,
    created_ms    INTEGER NOT NULL
);
