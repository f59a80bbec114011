-- Configuration changes get their own log (and NOTIFY channel): they used to ride
-- in revocation_log.session_id as `cfg:` strings.
CREATE TABLE config_changes (
    seq    BIGSERIAL PRIMARY KEY,
    topic  TEXT NOT NULL,
    at_ms  BIGINT NOT NULL
);
DELETE FROM revocation_log WHERE session_id LIKE 'cfg:%';
