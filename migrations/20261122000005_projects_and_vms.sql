-- Tenants, their VMs, and what each host has given out.

CREATE TABLE project (
    id         uuid PRIMARY KEY,
    name       text        NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    vm_quota   integer     NOT NULL DEFAULT 10 CHECK (vm_quota >= 0),
    -- VMs counted against the quota; taken in the create transaction, returned when a VM is gone.
    vm_count   integer     NOT NULL DEFAULT 0 CHECK (vm_count >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Capacity handed out to VMs. A reservation is one conditional UPDATE, so
-- concurrent creates cannot overcommit a host; the CHECKs are the last word.
ALTER TABLE vm_host
    ADD COLUMN used_cores      integer NOT NULL DEFAULT 0 CHECK (used_cores >= 0),
    ADD COLUMN used_memory_mib bigint  NOT NULL DEFAULT 0 CHECK (used_memory_mib >= 0),
    ADD COLUMN used_disk_mib   bigint  NOT NULL DEFAULT 0 CHECK (used_disk_mib >= 0),
    ADD CONSTRAINT vm_host_cores_fit CHECK (cpus IS NULL OR used_cores <= cpus),
    ADD CONSTRAINT vm_host_memory_fits CHECK (memory_mib IS NULL OR used_memory_mib <= memory_mib);

CREATE TABLE vm (
    id            uuid PRIMARY KEY,
    project_id    uuid        NOT NULL REFERENCES project (id),
    name          text        NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    cores         integer     NOT NULL CHECK (cores BETWEEN 1 AND 64),
    memory_mib    integer     NOT NULL CHECK (memory_mib BETWEEN 64 AND 262144),
    disk_mib      integer     NOT NULL CHECK (disk_mib BETWEEN 16 AND 1048576),
    public_key    text        NOT NULL CHECK (public_key ~ '^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256) [A-Za-z0-9+/=]+( .*)?$'),
    -- What the VM is (durable): where it lives once placed, and what its owner wants.
    host_id       uuid        REFERENCES vm_host (id),
    desired_state text        NOT NULL DEFAULT 'running' CHECK (desired_state IN ('running', 'stopped', 'destroyed')),
    -- Where its lifecycle is (for people; the strand's label is the truth for the engine).
    state         text        NOT NULL DEFAULT 'creating'
                              CHECK (state IN ('creating', 'waiting', 'starting', 'running', 'stopped', 'unavailable', 'destroying', 'destroyed')),
    waiting_since timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);
CREATE INDEX vm_host_id ON vm (host_id) WHERE host_id IS NOT NULL;
