-- Private subnets become a user resource: a deleted subnet keeps its row
-- (its VMs' history refers to it) and frees its name and its multicast
-- group. An address is held while its VM is not yet destroyed, so a
-- small subnet is not used up by VMs long gone.
ALTER TABLE private_subnet ADD COLUMN deleted_at timestamptz;

ALTER TABLE private_subnet DROP CONSTRAINT private_subnet_project_id_name_key;
CREATE UNIQUE INDEX private_subnet_project_id_name_key ON private_subnet (project_id, name) WHERE deleted_at IS NULL;

ALTER TABLE private_subnet DROP CONSTRAINT private_subnet_mcast_key;
CREATE UNIQUE INDEX private_subnet_mcast_key ON private_subnet (mcast) WHERE deleted_at IS NULL;

ALTER TABLE vm DROP CONSTRAINT vm_private_ip_unique;
CREATE UNIQUE INDEX vm_private_ip_unique ON vm (subnet_id, private_ip) WHERE state <> 'destroyed';
CREATE INDEX vm_subnet_id ON vm (subnet_id) WHERE subnet_id IS NOT NULL;
