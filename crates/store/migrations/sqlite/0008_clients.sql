-- External clients (magic links) and their access tokens, stored hashed.
CREATE TABLE clients (
    id          TEXT PRIMARY KEY NOT NULL,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    active      BOOLEAN NOT NULL,
    roles       TEXT NOT NULL,
    -- Path prefixes, newline-separated.
    scope       TEXT NOT NULL,
    -- Created by the operator preview.
    preview     BOOLEAN NOT NULL,
    created_ms  INTEGER NOT NULL
);

CREATE TABLE access_tokens (
    id            TEXT PRIMARY KEY NOT NULL,
    hash          TEXT NOT NULL UNIQUE,
    client_id     TEXT NOT NULL REFERENCES clients (id),
    label         TEXT,
    preview       BOOLEAN NOT NULL,
    created_ms    INTEGER NOT NULL,
    last_used_ms  INTEGER,
    expires_ms    INTEGER,
    revoked_ms    INTEGER
);
CREATE INDEX access_tokens_client ON access_tokens (client_id);
CREATE INDEX sessions_access_token ON sessions (access_token_id);
