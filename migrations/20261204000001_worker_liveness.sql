-- Who is alive. Every dispatcher registers here and holds a session-level
-- advisory lock (pg_advisory_lock(<LIVENESS_LOCK_SPACE>, id)) for as long as
-- it lives. Postgres itself drops that lock the moment the session ends
-- (SIGKILL, OOM, a lost network), so peers see a dead worker at once; a hung
-- one (SIGSTOP, a livelock) stops moving seen_at and is declared dead after a
-- bound. A dead worker's claims (strand.lease_holder = worker.holder) are
-- broken by whichever peer notices first. See models/src/worker.rs.
CREATE SEQUENCE worker_id_seq AS integer CYCLE;

CREATE TABLE worker (
    id          integer PRIMARY KEY,
    -- What this worker writes into strand.lease_holder when it claims.
    holder      text        NOT NULL UNIQUE,
    -- The application_name of every connection of its process, and the
    -- backend of its liveness session: a hung worker's sessions are ended.
    process     text        NOT NULL,
    backend_pid integer     NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now()
);

-- No index on strand.lease_holder: breaking claims scans the hot table, which
-- happens once per death, while an index would cost every claim a write.
