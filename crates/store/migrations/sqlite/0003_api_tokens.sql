-- Bearer tokens for non-browser clients, stored hashed.
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY NOT NULL,
    hash          TEXT NOT NULL UNIQUE,
    subject       TEXT NOT NULL,
    roles         TEXT NOT NULL,
    label         TEXT,
    created_ms    INTEGER NOT NULL,
    revoked_ms    INTEGER
);
