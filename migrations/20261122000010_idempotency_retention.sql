-- Idempotency keys are kept for a day (a client retries within minutes);
-- creates prune expired ones a few at a time, oldest first, by this index.
CREATE INDEX idempotency_key_created ON idempotency_key (created_at);
