-- Human output review: held outputs and reviewers' decisions. Portable SQL.
CREATE TABLE held_outputs (
    job_id    TEXT PRIMARY KEY,
    author    TEXT NOT NULL,
    held_at   BIGINT NOT NULL,
    -- The output, withheld until two approvals.
    outputs   TEXT NOT NULL,
    -- What reviewers see besides it: queries, reports, policy, cost, pre-checks.
    context   TEXT NOT NULL,
    state     TEXT NOT NULL CHECK (state IN ('held', 'released', 'rejected', 'changes-requested'))
);

CREATE TABLE reviews (
    job_id    TEXT NOT NULL,
    reviewer  TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    decision  TEXT NOT NULL CHECK (decision IN ('approve', 'reject', 'request-changes')),
    comment   TEXT NOT NULL,
    at        BIGINT NOT NULL,
    PRIMARY KEY (job_id, reviewer)
);
