-- The guest boot image a host has prepared (the VERSION its builder wrote).
ALTER TABLE vm_host ADD COLUMN image_version text;
