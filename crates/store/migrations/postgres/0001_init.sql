-- Portcullis schema, PostgreSQL dialect. Times are integer milliseconds since the epoch.
CREATE TABLE signing_keys (
    id          TEXT PRIMARY KEY,
    sealed      BYTEA NOT NULL,
    active      BOOLEAN NOT NULL,
    created_ms  BIGINT NOT NULL
);

CREATE TABLE sessions (
    id               TEXT PRIMARY KEY,
    subject          TEXT NOT NULL,
    name             TEXT NOT NULL,
    email            TEXT,
    provider         TEXT NOT NULL,
    roles            TEXT NOT NULL,
    created_ms       BIGINT NOT NULL,
    last_seen_ms     BIGINT NOT NULL,
    expires_ms       BIGINT NOT NULL,
    idle_timeout_ms  BIGINT,
    revoked_ms       BIGINT,
    revoked_by       TEXT,
    oidc_sid         TEXT,
    access_token_id  TEXT
);
CREATE INDEX sessions_subject ON sessions (subject);
CREATE INDEX sessions_expires ON sessions (expires_ms);

-- Revocations are also NOTIFYed; the log lets a process catch up after a reconnect.
CREATE TABLE revocation_log (
    seq         BIGSERIAL PRIMARY KEY,
    session_id  TEXT NOT NULL,
    at_ms       BIGINT NOT NULL
);

CREATE TABLE audit_events (
    id       BIGSERIAL PRIMARY KEY,
    at_ms    BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT,
    outcome  TEXT NOT NULL,
    reason   TEXT,
    ip       TEXT
);
CREATE INDEX audit_events_at ON audit_events (at_ms);
