-- Bearer tokens for non-browser clients, stored hashed.
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    hash          TEXT NOT NULL UNIQUE,
    subject       TEXT NOT NULL,
    roles         TEXT NOT NULL,
    label         TEXT,
    created_ms    BIGINT NOT NULL,
    revoked_ms    BIGINT
);
