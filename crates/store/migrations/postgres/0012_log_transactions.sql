-- The transaction that wrote each log row. Rows of concurrent transactions can
-- commit out of sequence order; a reader re-reads the rows of transactions that
-- were still running at its last read (see Store::read_log), so no row committed
-- below its cursor is missed.
ALTER TABLE revocation_log ADD COLUMN tx xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE config_changes ADD COLUMN tx xid8 NOT NULL DEFAULT pg_current_xact_id();

-- One row each process rewrites to prove the database takes writes (readiness).
CREATE TABLE readiness_probe (
    id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL
);
