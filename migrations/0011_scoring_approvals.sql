-- Scorer modules an administrator approved for one scoring policy and one
-- institution, with the exact parameters (by SHA-256 of their JSON text).
-- Scoring runs only an approved (module, params) pair. Portable SQL.
CREATE TABLE scoring_approvals (
    policy        TEXT NOT NULL,
    institution   TEXT NOT NULL,
    module        TEXT NOT NULL,
    params_sha256 TEXT NOT NULL,
    approved_by   TEXT NOT NULL,
    approved_at   BIGINT NOT NULL,
    revoked_at    BIGINT,
    PRIMARY KEY (policy, institution, module, params_sha256)
);
