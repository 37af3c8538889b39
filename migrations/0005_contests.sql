-- Contests on hidden data (mode `contest`). Portable SQL.
CREATE TABLE contests (
    id          TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    -- Hex of the secret split seed; only its SHA-256 ever leaves the host.
    seed        TEXT NOT NULL,
    opens_at    BIGINT NOT NULL,
    closes_at   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL
);

-- One row per submission (its job has the same id).
CREATE TABLE contest_submissions (
    id              TEXT PRIMARY KEY,
    contest_id      TEXT NOT NULL,
    team            TEXT NOT NULL,
    submitted_at    BIGINT NOT NULL,
    -- queued, scored, failed, interrupted
    state           TEXT NOT NULL,
    -- Counts against the team's quota (guest failures do; host failures do not).
    counted         INTEGER NOT NULL,
    category        TEXT,
    public_raw      DOUBLE PRECISION,
    private_raw     DOUBLE PRECISION,
    public_released DOUBLE PRECISION,
    picked          INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX contest_submissions_by_team ON contest_submissions (contest_id, team, submitted_at);
