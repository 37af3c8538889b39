//! Cell-key perturbation, the method of the Australian Bureau of Statistics'
//! TableBuilder (Fraser and Wooton 2005; Thompson, Broadfoot and Elazar 2013)
//! and of the 2021 UK census tables.
//!
//! Every privacy unit has a secret **record key**: a keyed hash (SipHash-1-3)
//! of its value under the catalog's secret, so the same enterprise has the
//! same key in every table, version and job and nobody outside the host can
//! compute it. A released cell's **cell key** is the sum of the record keys
//! of the distinct units it counts (modulo 2⁶⁴). Then:
//!
//! - **Counts**: the adjustment is read from the perturbation table at
//!   (cell key, true count): the table's weights `w₋D … w_D` (symmetric, so
//!   the adjustment is unbiased; at most D in size) are laid over the key
//!   space, and a keyed hash of (cell key, count) picks one. The same set of
//!   units with the same count always gets the same adjustment, so asking
//!   again averages nothing away; two cells that differ by one unit have
//!   unrelated keys, so their difference is not that unit's contribution.
//! - **Magnitudes** (SUM, and the sum behind AVG), after the method for
//!   magnitude tables of the same ABS work: the adjustment is
//!   `m · Σ_{i≤T} x₍ᵢ₎ · eᵢ`, where `x₍₁₎ ≥ x₍₂₎ ≥ …` are the T largest
//!   absolute per-unit contributions to the cell, `m` the policy's
//!   magnitude and `eᵢ ∈ {−1, −0.999, …, 1}` uniform, drawn from the cell
//!   key. A unit that differences out of two cells is hidden by noise in
//!   proportion to the largest contributions of those cells; a cell one unit
//!   dominates is withheld anyway (see `aggregate`).
//!
//! Nothing here is differential privacy, and nothing here draws randomness:
//! every adjustment is a deterministic function of secret keys and the cell.

use std::hash::Hasher;
use std::path::Path;

use siphasher::sip::SipHasher13;

/// The catalog's secret from which record keys are derived.
/// Serialised only to hand a job to a worker process of the same host
/// (`crate::worker`); never in anything a user reads.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordKeys {
    secret: [u8; 32],
}

impl std::fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKeys(<secret>)")
    }
}

impl RecordKeys {
    /// Fresh random keys (a new catalog, a developer's own run).
    pub fn random() -> Self {
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .expect("the system's random source");
        RecordKeys { secret }
    }

    /// Keys from a known secret (tests that must reproduce a release).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        RecordKeys { secret }
    }

    /// The keys kept in `path` (mode 0600), created on first use. Two
    /// processes creating it at once agree: the first writer wins.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        use std::io::Write;
        match std::fs::read(path) {
            Ok(bytes) => {
                let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: a record-key secret is 32 bytes", path.display()),
                    )
                })?;
                Ok(RecordKeys { secret })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keys = RecordKeys::random();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                match options.open(path) {
                    Ok(mut file) => {
                        file.write_all(&keys.secret)?;
                        file.sync_all()?;
                        Ok(keys)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        RecordKeys::load_or_create(path)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn hasher(&self, domain: u8) -> SipHasher13 {
        let k0 = u64::from_le_bytes(self.secret[0..8].try_into().expect("8 bytes"));
        let k1 = u64::from_le_bytes(self.secret[8..16].try_into().expect("8 bytes"));
        let k2 = u64::from_le_bytes(self.secret[16..24].try_into().expect("8 bytes"));
        let k3 = u64::from_le_bytes(self.secret[24..32].try_into().expect("8 bytes"));
        match domain {
            0 => SipHasher13::new_with_keys(k0, k1),
            _ => SipHasher13::new_with_keys(k2 ^ u64::from(domain), k3),
        }
    }

    /// A privacy unit's record key, from its value as text.
    pub fn record_key(&self, unit: &[u8]) -> u64 {
        let mut hasher = self.hasher(0);
        hasher.write(unit);
        hasher.finish()
    }

    /// A uniform 64-bit draw for (cell key, what is drawn, index).
    fn draw(&self, cell_key: u64, what: u8, index: u64) -> u64 {
        let mut hasher = self.hasher(what);
        hasher.write_u64(cell_key);
        hasher.write_u64(index);
        hasher.finish()
    }
}

/// A policy's perturbation parameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CellKeyParams {
    /// Weights of the count adjustments −D…D (odd length, symmetric).
    pub count_weights: Vec<u32>,
    /// `m`: magnitude adjustments are at most this fraction of the sum of
    /// the top contributions.
    pub magnitude: f64,
    /// `T`: how many of the largest contributions scale the adjustment.
    pub top_contributors: usize,
}

impl Default for CellKeyParams {
    /// Counts move by −2…2 with probabilities 1/10, 2/10, 4/10, 2/10, 1/10
    /// (variance 1.2); magnitudes by up to 10% of the two largest
    /// contributions.
    fn default() -> Self {
        CellKeyParams {
            count_weights: vec![1, 2, 4, 2, 1],
            magnitude: 0.1,
            top_contributors: 2,
        }
    }
}

impl CellKeyParams {
    /// The largest count adjustment D.
    pub fn max_count_adjustment(&self) -> i64 {
        (self.count_weights.len() as i64 - 1) / 2
    }

    /// Problems with the parameters, for the policy loader.
    pub fn check(&self, min_group_size: u32) -> Result<(), String> {
        let w = &self.count_weights;
        if w.len().is_multiple_of(2) || w.len() > 41 {
            return Err(
                "`count_weights` needs an odd number of weights (for −D…D), at most 41".into(),
            );
        }
        if w.iter().zip(w.iter().rev()).any(|(a, b)| a != b) {
            return Err(
                "`count_weights` must be symmetric, so that adjustments are unbiased".into(),
            );
        }
        if w.iter().all(|&x| x == 0) {
            return Err("`count_weights` needs a positive weight".into());
        }
        if self.max_count_adjustment() >= i64::from(min_group_size) {
            return Err(format!(
                "the largest count adjustment ({}) must be smaller than `min_group_size` ({min_group_size})",
                self.max_count_adjustment()
            ));
        }
        if !(0.0..=0.5).contains(&self.magnitude) {
            return Err("`magnitude` must be within [0, 0.5]".into());
        }
        if !(1..=10).contains(&self.top_contributors) {
            return Err("`top_contributors` must be within 1…10".into());
        }
        Ok(())
    }

    /// The adjustment of a count `value` whose cell key is `cell_key`.
    pub fn count_adjustment(&self, keys: &RecordKeys, cell_key: u64, value: i64) -> i64 {
        let total: u64 = self.count_weights.iter().map(|&w| u64::from(w)).sum();
        // `value` as two's complement bits: the key of the table row.
        let mut pick = keys.draw(cell_key, 1, value as u64) % total;
        let d = self.max_count_adjustment();
        for (i, &weight) in self.count_weights.iter().enumerate() {
            if pick < u64::from(weight) {
                return i as i64 - d;
            }
            pick -= u64::from(weight);
        }
        unreachable!("the pick is below the total weight")
    }

    /// The adjustment of a magnitude whose largest absolute per-unit
    /// contributions are `top` (descending) and whose cell key is `cell_key`.
    pub fn magnitude_adjustment(&self, keys: &RecordKeys, cell_key: u64, top: &[f64]) -> f64 {
        top.iter()
            .take(self.top_contributors)
            .enumerate()
            .map(|(i, x)| {
                // e uniform on {−1000, …, 1000}/1000: integer draw, exact.
                let e = (keys.draw(cell_key, 2, i as u64) % 2001) as i64 - 1000;
                x * self.magnitude * (e as f64 / 1000.0)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_adjustments_are_unbiased_bounded_and_follow_the_weights() {
        let keys = RecordKeys::random();
        let params = CellKeyParams::default();
        let mut histogram = [0u64; 5];
        let trials = 200_000u64;
        for cell in 0..trials {
            let a = params.count_adjustment(&keys, cell.wrapping_mul(0x9e37_79b9_7f4a_7c15), 57);
            assert!((-2..=2).contains(&a));
            histogram[(a + 2) as usize] += 1;
        }
        let mean: f64 = histogram
            .iter()
            .enumerate()
            .map(|(i, &n)| (i as f64 - 2.0) * n as f64)
            .sum::<f64>()
            / trials as f64;
        assert!(mean.abs() < 0.01, "mean adjustment {mean}");
        for (i, weight) in [0.1, 0.2, 0.4, 0.2, 0.1].iter().enumerate() {
            let share = histogram[i] as f64 / trials as f64;
            assert!(
                (share - weight).abs() < 0.01,
                "share of {} is {share}",
                i as i64 - 2
            );
        }
    }

    #[test]
    fn the_same_cell_always_gets_the_same_adjustment_and_keys_differ_per_unit() {
        let keys = RecordKeys::random();
        let params = CellKeyParams::default();
        let cell = keys.record_key(b"a").wrapping_add(keys.record_key(b"b"));
        let first = params.count_adjustment(&keys, cell, 10);
        for _ in 0..10 {
            assert_eq!(params.count_adjustment(&keys, cell, 10), first);
        }
        assert_ne!(keys.record_key(b"a"), keys.record_key(b"b"));
        assert_ne!(keys.record_key(b"a"), RecordKeys::random().record_key(b"a"));
    }

    #[test]
    fn parameters_are_checked() {
        let mut params = CellKeyParams::default();
        assert!(params.check(10).is_ok());
        assert!(params.check(2).is_err());
        params.count_weights = vec![1, 2, 3];
        assert!(params.check(10).is_err());
        params.count_weights = vec![1, 2];
        assert!(params.check(10).is_err());
        params.count_weights = vec![1, 1, 1];
        params.magnitude = 0.9;
        assert!(params.check(10).is_err());
    }
}
