-- Configuration changes get their own log: they used to ride in
-- revocation_log.session_id as `cfg:` strings.
CREATE TABLE config_changes (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    topic  TEXT NOT NULL,
    at_ms  INTEGER NOT NULL
);
DELETE FROM revocation_log WHERE session_id LIKE 'cfg:%';
