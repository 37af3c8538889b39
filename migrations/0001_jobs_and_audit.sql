-- Jobs are durable before they run; every state change is in the audit log
-- in the same transaction. Portable SQL (no SQLite-only syntax), so a
-- PostgreSQL backend can use the same schema.
CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,
    principal     TEXT NOT NULL,
    module_sha256 TEXT NOT NULL,
    world         TEXT NOT NULL,
    mode          TEXT NOT NULL,
    datasets      TEXT NOT NULL,
    policy_sha256 TEXT,
    params_sha256 TEXT NOT NULL,
    params        TEXT NOT NULL,
    limits        TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'running', 'released', 'rejected', 'failed', 'held')),
    category      TEXT,
    output        TEXT,
    receipt       TEXT,
    created_at    BIGINT NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT
);

CREATE INDEX jobs_by_state ON jobs (state);

CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);

CREATE TABLE audit_checkpoints (
    seq       BIGINT NOT NULL,
    head_hash TEXT NOT NULL,
    at        BIGINT NOT NULL,
    key_id    TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (seq, key_id)
);
