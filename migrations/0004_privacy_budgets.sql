-- Differential-privacy budgets. Amounts are integers (ε in millionths, δ in
-- 10⁻¹⁵ units), rounded up when charged, so sums never drift. Portable SQL.
-- Every charge, written before its noisy answer leaves the host.
CREATE TABLE dp_charges (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    principal     TEXT NOT NULL,
    dataset       TEXT NOT NULL,
    job_id        TEXT NOT NULL,
    epsilon_micro BIGINT NOT NULL,
    delta_femto   BIGINT NOT NULL,
    charged_at    BIGINT NOT NULL
);

CREATE INDEX dp_charges_by_principal ON dp_charges (principal, dataset);
CREATE INDEX dp_charges_by_dataset ON dp_charges (dataset);
CREATE INDEX dp_charges_by_job ON dp_charges (job_id);

-- Budget an administrator added on top of the policy's cap (never taken
-- back: spent budget is never refunded).
CREATE TABLE dp_budget_grants (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    principal     TEXT NOT NULL,
    dataset       TEXT NOT NULL,
    epsilon_micro BIGINT NOT NULL,
    delta_femto   BIGINT NOT NULL,
    reason        TEXT NOT NULL,
    actor         TEXT NOT NULL,
    granted_at    BIGINT NOT NULL
);

CREATE INDEX dp_budget_grants_by_principal ON dp_budget_grants (principal, dataset);
