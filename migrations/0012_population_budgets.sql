-- Privacy budgets belong to a population (datasets whose privacy units are
-- the same people or firms share one ledger per tenant). Charges and grants
-- written before this migration keep their dataset as their population;
-- sums also count rows of a population's member datasets, so no budget is
-- ever refunded by declaring a population.
ALTER TABLE dp_charges ADD COLUMN population TEXT;
UPDATE dp_charges SET population = dataset;
CREATE INDEX dp_charges_by_population ON dp_charges (population);

ALTER TABLE dp_budget_grants ADD COLUMN population TEXT;
UPDATE dp_budget_grants SET population = dataset;

-- The side of a population each tenant is pinned to: a tenant whose first
-- protected job on a population ran an exact mode (aggregate, contest) never
-- gets noisy answers on it, and one that spent ε never gets exact answers.
CREATE TABLE population_sides (
    tenant     TEXT NOT NULL,
    population TEXT NOT NULL,
    side       TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    pinned_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, population)
);
