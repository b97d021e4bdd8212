-- What operators did to strands and pages, from the console or the CLI:
-- who, when, what, on which target. Written in the transaction that makes
-- the change (or, for an inline step, right after it with its outcome).

CREATE TABLE operator_audit (
    id         uuid PRIMARY KEY,
    operator   text        NOT NULL CHECK (operator <> '' AND length(operator) <= 200),
    action     text        NOT NULL CHECK (action ~ '^[a-z][a-z-]*$'),
    target_id  uuid,
    detail     jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX operator_audit_target ON operator_audit (target_id, created_at);
CREATE INDEX operator_audit_created ON operator_audit (created_at);
