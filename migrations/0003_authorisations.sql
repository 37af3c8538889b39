-- Subjects' authorisations for scoring (algorithm front-loading). Portable SQL.
CREATE TABLE authorisations (
    id             TEXT PRIMARY KEY,
    subject        TEXT NOT NULL,
    tenant         TEXT NOT NULL,
    purpose        TEXT NOT NULL,
    datasets       TEXT NOT NULL,
    valid_from     BIGINT NOT NULL,
    valid_until    BIGINT NOT NULL,
    consent_sha256 TEXT NOT NULL,
    consent_uri    TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    revoked_at     BIGINT
);

CREATE INDEX authorisations_by_subject ON authorisations (subject, tenant, purpose);

-- Subjects scored per institution and day, for the policy's daily cap.
CREATE TABLE scoring_usage (
    tenant TEXT NOT NULL,
    day    BIGINT NOT NULL,
    scored BIGINT NOT NULL,
    PRIMARY KEY (tenant, day)
);
