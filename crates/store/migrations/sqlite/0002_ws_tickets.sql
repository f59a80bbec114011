-- Single-use WebSocket tickets, stored hashed.
CREATE TABLE ws_tickets (
    hash        TEXT PRIMARY KEY NOT NULL,
    session_id  TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL
);
CREATE INDEX ws_tickets_expires ON ws_tickets (expires_ms);
