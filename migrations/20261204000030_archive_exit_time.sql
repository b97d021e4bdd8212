-- An archived strand's exit time is when its exit was written, not when the
-- transaction of its last step began (now()): a step that spent 30 s on a
-- host before exiting was shown as exiting 30 s early. The exit is written
-- as the step commits, so clock_timestamp() at the insert is the commit's time
-- to within that statement. Set on the parent; partitions take it too.
ALTER TABLE strand_archive ALTER COLUMN exited_at SET DEFAULT clock_timestamp();
