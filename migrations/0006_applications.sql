-- Conditional-access applications and scoped grants. Portable SQL.
-- A grant may name the columns and release modes it covers (NULL: all).
ALTER TABLE grants ADD COLUMN columns TEXT;
ALTER TABLE grants ADD COLUMN modes TEXT;

CREATE TABLE applications (
    id                TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL,
    applicant         TEXT NOT NULL,
    dataset           TEXT NOT NULL,
    purpose           TEXT NOT NULL,
    columns           TEXT NOT NULL,
    modes             TEXT NOT NULL,
    term_days         BIGINT NOT NULL,
    intended_outputs  TEXT NOT NULL,
    agreement_version TEXT NOT NULL,
    agreement_sha256  TEXT NOT NULL,
    accepted_at       BIGINT NOT NULL,
    submitted_at      BIGINT NOT NULL,
    deadline_at       BIGINT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected')),
    decided_by        TEXT,
    decided_at        BIGINT,
    reason            TEXT
);

CREATE INDEX applications_by_tenant ON applications (tenant, submitted_at);
