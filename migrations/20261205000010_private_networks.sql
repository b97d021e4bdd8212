-- Private networks across hosts (issue 13). A subnet is a VXLAN segment
-- (one VNI per subnet, never reused, so a segment left on a host by a
-- deleted subnet can never join a new one) carried between hosts over
-- WireGuard tunnels. Each host has its tunnel keys by generation (one,
-- two during a rekey), sealed at rest like SSH keys, and one network
-- strand that applies the host's whole desired state (progs/src/vnet/).

-- Where a host's tunnels listen (its underlay address); NULL: its SSH address.
ALTER TABLE vm_host ADD COLUMN underlay text CHECK (underlay ~ '^[0-9]{1,3}(\.[0-9]{1,3}){3}$' AND host(underlay::inet) = underlay);

CREATE SEQUENCE private_subnet_vni MINVALUE 100 MAXVALUE 16777215 NO CYCLE;
ALTER TABLE private_subnet ADD COLUMN vni integer NOT NULL DEFAULT nextval('private_subnet_vni') UNIQUE;
ALTER SEQUENCE private_subnet_vni OWNED BY private_subnet.vni;

-- The multicast segment on one host's loopback is gone.
DROP INDEX private_subnet_mcast_key;
ALTER TABLE private_subnet DROP COLUMN mcast;

-- Set when the VM's private NIC is wanted on its host: its unix user (the
-- tap's owner) exists there. NULL again never: the NIC goes with the VM.
ALTER TABLE vm ADD COLUMN nic_since timestamptz;
ALTER TABLE vm ADD CHECK (nic_since IS NULL OR subnet_id IS NOT NULL);

-- A host's network strand and what it has applied. Whoever changes what
-- a host should have raises want_seq (and wakes the strand); the strand
-- records the want_seq it read before computing the state it applied, so
-- "applied_seq >= N" means "the host has what was wanted at N or later".
CREATE TABLE host_network (
    host_id         uuid PRIMARY KEY REFERENCES vm_host (id),
    strand_id       uuid        NOT NULL UNIQUE,
    want_seq        bigint      NOT NULL DEFAULT 1,
    applied_seq     bigint      NOT NULL DEFAULT 0,
    applied_at      timestamptz,
    -- What was applied, without key material: gens, segments, NICs.
    applied         jsonb,
    -- What net-status last said (no key material either), and when.
    status          jsonb,
    status_at       timestamptz,
    last_rekey_at   timestamptz,
    -- The Vnet::Rekey strand rekeying this host now, if any (one at a time).
    rekey_strand_id uuid,
    rekey_phase     text CHECK (rekey_phase IN ('new', 'switch', 'drop')),
    rekey_started_at timestamptz,
    CHECK (applied_seq <= want_seq)
);

-- A host's WireGuard keys by generation. 'sending': the gen its traffic
-- goes out on (exactly one); 'new': brought up by a rekey, peers learn it;
-- 'retiring': the old gen, still accepting, dropped in the rekey's last phase.
CREATE TABLE tunnel_key (
    host_id     uuid        NOT NULL REFERENCES vm_host (id),
    gen         integer     NOT NULL CHECK (gen >= 1),
    -- Sealed (XChaCha20-Poly1305, SKEIN_SECRET_KEY), bound to host id and gen.
    private_key bytea       NOT NULL,
    -- Its port and overlay address are derived from gen and key on the host.
    public_key  text        NOT NULL UNIQUE CHECK (public_key ~ '^[A-Za-z0-9+/]{43}=$'),
    state       text        NOT NULL CHECK (state IN ('new', 'sending', 'retiring')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host_id, gen)
);
CREATE UNIQUE INDEX tunnel_key_one_sending ON tunnel_key (host_id) WHERE state = 'sending';

-- Hosts of a subnet's mesh are found from its VMs with a NIC.
CREATE INDEX vm_nic_host ON vm (host_id, subnet_id) WHERE nic_since IS NOT NULL AND state <> 'destroyed';
