-- Aggregate-mode queries per tenant and dataset, across jobs (the ledger
-- against differencing). One row per answered query. Portable SQL.
CREATE TABLE query_ledger (
    id         INTEGER PRIMARY KEY,
    tenant     TEXT NOT NULL,
    dataset    TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    -- UTC day number (seconds since the epoch / 86400).
    day        BIGINT NOT NULL,
    at         BIGINT NOT NULL
);
CREATE INDEX query_ledger_tenant ON query_ledger (dataset, tenant, day);
CREATE INDEX query_ledger_day ON query_ledger (dataset, day);
