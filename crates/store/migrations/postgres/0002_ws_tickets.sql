-- Single-use WebSocket tickets, stored hashed.
CREATE TABLE ws_tickets (
    hash        TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL
);
CREATE INDEX ws_tickets_expires ON ws_tickets (expires_ms);
