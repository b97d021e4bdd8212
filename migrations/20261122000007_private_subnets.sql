-- Private subnets: VMs of one subnet share an L2 segment (QEMU socket
-- networking on one multicast group per subnet) and get addresses from it.
CREATE TABLE private_subnet (
    id         uuid PRIMARY KEY,
    project_id uuid        NOT NULL REFERENCES project (id),
    name       text        NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    cidr       cidr        NOT NULL CHECK (family(cidr) = 4 AND masklen(cidr) BETWEEN 16 AND 29),
    -- "239.a.b.c:port", unique: the segment's wire.
    mcast      text        NOT NULL UNIQUE CHECK (mcast ~ '^239\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}:[0-9]{4,5}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);

ALTER TABLE vm
    ADD COLUMN subnet_id  uuid REFERENCES private_subnet (id),
    ADD COLUMN private_ip inet,
    ADD CONSTRAINT vm_private_ip_unique UNIQUE (subnet_id, private_ip),
    ADD CONSTRAINT vm_private_ip_with_subnet CHECK ((subnet_id IS NULL) = (private_ip IS NULL));
