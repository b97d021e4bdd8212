-- What happened to VMs and hosts, and who or what caused it, for the
-- console and the API to list. Append-only.
CREATE TABLE event (
    id         uuid PRIMARY KEY,
    subject_id uuid        NOT NULL,
    kind       text        NOT NULL,
    actor      text        NOT NULL CHECK (actor IN ('system', 'user', 'operator')),
    detail     jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_subject ON event (subject_id, created_at);
