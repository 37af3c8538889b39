-- ρ of charges made under zCDP accounting (in 10⁻⁹ units, rounded up);
-- their ε and δ columns are 0. Charges made before are pure or
-- approximate DP and keep counting by basic composition.
ALTER TABLE dp_charges ADD COLUMN rho_nano BIGINT NOT NULL DEFAULT 0;
