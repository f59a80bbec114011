-- Portcullis schema, SQLite dialect. Times are integer milliseconds since the epoch.
CREATE TABLE signing_keys (
    id          TEXT PRIMARY KEY NOT NULL,
    sealed      BLOB NOT NULL,
    active      BOOLEAN NOT NULL,
    created_ms  INTEGER NOT NULL
);

CREATE TABLE sessions (
    id               TEXT PRIMARY KEY NOT NULL,
    subject          TEXT NOT NULL,
    name             TEXT NOT NULL,
    email            TEXT,
    provider         TEXT NOT NULL,
    roles            TEXT NOT NULL,
    created_ms       INTEGER NOT NULL,
    last_seen_ms     INTEGER NOT NULL,
    expires_ms       INTEGER NOT NULL,
    idle_timeout_ms  INTEGER,
    revoked_ms       INTEGER,
    revoked_by       TEXT,
    oidc_sid         TEXT,
    access_token_id  TEXT
);
CREATE INDEX sessions_subject ON sessions (subject);
CREATE INDEX sessions_expires ON sessions (expires_ms);

-- Append-only log of revocations, read by every gateway process on the same file.
CREATE TABLE revocation_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id  TEXT NOT NULL,
    at_ms       INTEGER NOT NULL
);

CREATE TABLE audit_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms    INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT,
    outcome  TEXT NOT NULL,
    reason   TEXT,
    ip       TEXT
);
CREATE INDEX audit_events_at ON audit_events (at_ms);
