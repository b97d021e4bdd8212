-- Where a running VM's SSH answers, for its owner (issue 11, item 3): the
-- host's SSH address, the port the host forwards to the guest, the guest's
-- user, and when the control plane last saw it so. Learned when the VM
-- boots and on every checkup; NULL until it runs and again whenever it is
-- not running (models/src/vm.rs), so it is never a stale guess.
ALTER TABLE vm
    ADD COLUMN ssh_host    text,
    ADD COLUMN ssh_port    integer CHECK (ssh_port BETWEEN 1 AND 65535),
    ADD COLUMN ssh_user    text,
    ADD COLUMN ssh_seen_at timestamptz,
    ADD CHECK ((ssh_host IS NULL) = (ssh_port IS NULL) AND (ssh_port IS NULL) = (ssh_user IS NULL)
               AND (ssh_user IS NULL) = (ssh_seen_at IS NULL));
