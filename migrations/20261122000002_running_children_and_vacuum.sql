-- A child's exit asks "is any sibling still running?". Over the plain parent
-- index that walks every exited sibling too (quadratic for a large fan-out);
-- this index holds running children only, so the answer is one probe.
CREATE INDEX strand_running_children ON strand (parent_id) WHERE parent_id IS NOT NULL AND exitval IS NULL;

-- strand is a queue table: every step rewrites or deletes rows. Vacuum it
-- after a small fraction changes, without throttling, so the dispatcher's
-- index stays free of dead entries.
ALTER TABLE strand SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
                        autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0.05);
