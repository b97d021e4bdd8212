-- The HTTP API's bearer tokens and the idempotency keys of its creates.

-- A token belongs to a project (it sees only that project's resources) or,
-- with no project, to an operator. Only a hash of the secret is kept: the
-- secret is shown once, when the token is made.
CREATE TABLE api_token (
    id         uuid PRIMARY KEY,
    name       text        NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    project_id uuid        REFERENCES project (id),
    -- sha256 of the secret text.
    hash       bytea       NOT NULL UNIQUE CHECK (length(hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- One row per (scope, key): the first create with a key inserts it (and so
-- holds it: a concurrent create with the same key waits on the unique index
-- until the first commits or rolls back), then fills in what it made, all in
-- the create's own transaction. A visible row is therefore always complete.
CREATE TABLE idempotency_key (
    -- The token's project, or the nil uuid for operator tokens.
    scope        uuid        NOT NULL,
    key          text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    -- sha256 of the method, path and canonical JSON body.
    request_hash bytea       NOT NULL,
    resource_id  uuid,
    status       smallint,
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
