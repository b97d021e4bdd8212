-- A strand's semaphores are deleted by the statements that delete the strand
-- (an exit, a reap), not by an ON DELETE CASCADE foreign key. The key's
-- trigger ran one lookup per deleted strand; on a one-step workload that was
-- a sixth of an exit's cost, measured. Increments still only land on a live
-- strand (semaphore::incr inserts through an update of the strand row).
-- One race is left, swept by semaphore::sweep_orphans: an increment that
-- commits while an exit is waiting on the strand's row lock lands after the
-- exit's statement began, so that statement does not see it to delete it.
ALTER TABLE semaphore DROP CONSTRAINT semaphore_strand_id_fkey;
