-- One page for all VMs waiting for a host with room (issue 11, item 10;
-- progs/src/vm/waiting.rs), counted on every step of every waiting VM:
-- found without reading the other VMs.
CREATE INDEX vm_waiting ON vm (waiting_since) WHERE state = 'waiting';

-- The pages raised one per waiting VM before are no longer resolved by
-- anything: the single page, raised by the VMs still waiting, replaces them.
UPDATE page SET resolved_at = now() WHERE tag LIKE 'vm-waiting:%' AND resolved_at IS NULL;
