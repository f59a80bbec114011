-- Log rows need no writing transaction on SQLite: one writer at a time, so they
-- commit in sequence order and a cursor over `seq` misses none (PostgreSQL
-- records it).

-- One row each process rewrites to prove the database takes writes (readiness).
CREATE TABLE readiness_probe (
    id TEXT PRIMARY KEY,
    at_ms INTEGER NOT NULL
);
