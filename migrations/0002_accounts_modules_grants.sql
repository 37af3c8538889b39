-- Accounts, uploaded modules and dataset grants for the server. Portable SQL.

-- API tokens: only the SHA-256 of the secret is kept.
CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'analyst', 'contestant', 'institution')),
    tenant        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT
);

-- A module belongs to the tenant that uploaded it; the bytes live in the
-- module store under their hash (shared, content-addressed).
CREATE TABLE modules (
    tenant      TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    world       TEXT NOT NULL,
    size        BIGINT NOT NULL,
    name        TEXT,
    uploaded_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, sha256)
);

-- Access to conditional and restricted datasets, per tenant.
CREATE TABLE grants (
    tenant     TEXT NOT NULL,
    dataset    TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    expires_at BIGINT,
    PRIMARY KEY (tenant, dataset)
);

CREATE INDEX jobs_by_principal ON jobs (principal, created_at);
