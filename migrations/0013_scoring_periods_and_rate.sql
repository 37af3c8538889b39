-- One score per subject, institution and purpose per period (a scoring
-- policy's `one_score_per_days`): a subject scored in a period is
-- `already-scored` for the rest of it. Periods are whole windows of that
-- many days since the Unix epoch.
CREATE TABLE scoring_subject_periods (
    tenant     TEXT NOT NULL,
    purpose    TEXT NOT NULL,
    subject    TEXT NOT NULL,
    period     BIGINT NOT NULL,
    job_id     TEXT NOT NULL,
    scored_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, purpose, subject, period)
);

-- The per-minute token bucket of each institution, durable: a restart does
-- not refill it and concurrent batches take from it one transaction at a
-- time.
CREATE TABLE scoring_rate (
    tenant TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    at_ms  BIGINT NOT NULL
);
