-- SSH endpoints and the hosts behind them.

CREATE TABLE sshable (
    id          uuid PRIMARY KEY,
    host        text        NOT NULL CHECK (host <> ''),
    port        integer     NOT NULL DEFAULT 22 CHECK (port BETWEEN 1 AND 65535),
    unix_user   text        NOT NULL DEFAULT 'root' CHECK (unix_user ~ '^[a-z_][a-z0-9_-]{0,31}$'),
    -- The private key, sealed (XChaCha20-Poly1305, key from SKEIN_SECRET_KEY, bound to this id).
    private_key bytea       NOT NULL,
    -- The key a later session authenticates with once the host is taken over.
    next_private_key bytea,
    -- Pinned on first contact; a host presenting another key is refused.
    host_key    text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE vm_host (
    id                uuid PRIMARY KEY,
    sshable_id        uuid        NOT NULL UNIQUE REFERENCES sshable (id),
    name              text        NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9.-]{0,62}$'),
    -- Every host-side path is under this directory.
    root_dir          text        NOT NULL DEFAULT '/var/lib/skein' CHECK (root_dir ~ '^/'),
    state             text        NOT NULL DEFAULT 'new'
                                  CHECK (state IN ('new', 'preparing', 'accepting', 'unreachable', 'draining', 'destroyed')),
    cpus              integer,
    cores             integer,
    sockets           integer,
    cpu_model         text,
    memory_mib        bigint,
    storage_total_mib bigint,
    storage_free_mib  bigint,
    os                text,
    kernel            text,
    arch              text,
    kvm_usable        boolean,
    kvm_reason        text,
    agent_version     text,
    boot_id           text,
    missed_checks     integer     NOT NULL DEFAULT 0,
    last_checkup_at   timestamptz,
    learned_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);
