-- What only administrators may read about a job: trap text, guest error and
-- log, queries and their engine outcomes, resource use. One bounded JSON
-- document per job, kept for a retention period. Portable SQL.
CREATE TABLE job_diagnostics (
    job_id      TEXT PRIMARY KEY REFERENCES jobs (id),
    recorded_at BIGINT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX job_diagnostics_recorded_at ON job_diagnostics (recorded_at);
