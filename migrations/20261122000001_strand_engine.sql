-- The strand engine: strands, their semaphores, pages, and the archive of exited strands.
-- See ../shared/design/strand-engine.md for the contract these tables serve.

CREATE TABLE strand (
    id            uuid PRIMARY KEY,
    parent_id     uuid,
    prog          text        NOT NULL,
    label         text        NOT NULL,
    -- Top frame first. A frame is the prog's own data plus engine keys
    -- (subject_id, link, deadline_*, destroying).
    stack         jsonb       NOT NULL DEFAULT '[{}]' CHECK (jsonb_typeof(stack) = 'array'),
    schedule      timestamptz NOT NULL DEFAULT now(),
    -- A time in the past means free. Never null, so `lease < now()` alone says "free".
    lease         timestamptz NOT NULL DEFAULT '1970-01-01 00:00:00+00',
    lease_holder  text,
    try           integer     NOT NULL DEFAULT 0,
    exitval       jsonb,
    retval        jsonb,
    last_error    text,
    last_error_at timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- What the dispatcher scans: only live strands, in schedule order. Exited
-- children waiting to be reaped and (briefly) nothing else are excluded.
CREATE INDEX strand_due ON strand (schedule) WHERE exitval IS NULL;
CREATE INDEX strand_parent ON strand (parent_id) WHERE parent_id IS NOT NULL;

-- One row per increment, so concurrent increments are never lost.
CREATE TABLE semaphore (
    id         uuid PRIMARY KEY,
    strand_id  uuid        NOT NULL REFERENCES strand (id) ON DELETE CASCADE,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX semaphore_strand ON semaphore (strand_id);

CREATE TABLE page (
    id          uuid PRIMARY KEY,
    summary     text        NOT NULL,
    tag         text        NOT NULL,
    severity    text        NOT NULL DEFAULT 'error' CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    details     jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);
-- A tag names one problem: it can be open at most once.
CREATE UNIQUE INDEX page_open_tag ON page (tag) WHERE resolved_at IS NULL;
CREATE INDEX page_created ON page (created_at);

-- Exited top-level strands, kept for operators for a retention period.
-- Partitioned by month so pruning is dropping a partition, not a slow DELETE.
CREATE TABLE strand_archive (
    id         uuid        NOT NULL,
    prog       text        NOT NULL,
    label      text        NOT NULL,
    stack      jsonb       NOT NULL,
    exitval    jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    exited_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, exited_at)
) PARTITION BY RANGE (exited_at);
-- Catches anything outside the monthly partitions (clock skew, a missed maintenance run).
CREATE TABLE strand_archive_default PARTITION OF strand_archive DEFAULT;

-- Creates the monthly partitions from `from_month` for `months` months; idempotent.
CREATE FUNCTION skein_archive_partitions(from_month date, months integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    m date;
    name text;
BEGIN
    FOR i IN 0 .. months - 1 LOOP
        m := date_trunc('month', from_month)::date + make_interval(months => i);
        name := format('strand_archive_%s', to_char(m, 'YYYYMM'));
        IF to_regclass(name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF strand_archive FOR VALUES FROM (%L) TO (%L)',
                           name, m, m + interval '1 month');
        END IF;
    END LOOP;
END $$;

SELECT skein_archive_partitions(now()::date, 3);
