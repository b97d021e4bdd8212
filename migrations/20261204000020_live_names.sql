-- Names are unique among live resources only: a destroyed VM or host, a
-- deleted project, a revoked token keeps its row (its history) but frees
-- its name. The partial unique indexes keep the old constraints' names, so
-- a clash is still recognised by name (progs::rules::refusal).

-- A VM frees its name once it is meant to be destroyed (its strand may
-- still be taking it off its host; the new one has another id).
ALTER TABLE vm DROP CONSTRAINT vm_project_id_name_key;
CREATE UNIQUE INDEX vm_project_id_name_key ON vm (project_id, name) WHERE desired_state <> 'destroyed';

ALTER TABLE vm_host DROP CONSTRAINT vm_host_name_key;
CREATE UNIQUE INDEX vm_host_name_key ON vm_host (name) WHERE state <> 'destroyed';

-- A project is deleted (never its row: its destroyed VMs refer to it).
ALTER TABLE project ADD COLUMN deleted_at timestamptz;
ALTER TABLE project DROP CONSTRAINT project_name_key;
CREATE UNIQUE INDEX project_name_key ON project (name) WHERE deleted_at IS NULL;

-- Token names are unique per project (operator tokens: among operators'),
-- among live tokens. Older duplicates get their id appended first.
ALTER TABLE api_token ADD COLUMN last_used_at timestamptz;
UPDATE api_token t SET name = left(t.name, 54) || '-' || left(replace(t.id::text, '-', ''), 8)
 WHERE t.revoked_at IS NULL
   AND EXISTS (SELECT 1 FROM api_token o
                WHERE o.revoked_at IS NULL AND o.name = t.name AND o.id < t.id
                  AND coalesce(o.project_id, '00000000-0000-0000-0000-000000000000') = coalesce(t.project_id, '00000000-0000-0000-0000-000000000000'));
CREATE UNIQUE INDEX api_token_name_key ON api_token (coalesce(project_id, '00000000-0000-0000-0000-000000000000'), name)
    WHERE revoked_at IS NULL;

-- Public keys of every kind the rules accept (they parse them for real).
ALTER TABLE vm DROP CONSTRAINT vm_public_key_check;
ALTER TABLE vm ADD CONSTRAINT vm_public_key_check
    CHECK (public_key ~ '^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( .*)?$');
