//! The noise mechanisms of the `dp` mode, all OpenDP measurements: the
//! samplers are exact (discrete Laplace over integers, and over a 2⁻ᵏ
//! lattice for floats), so no floating-point Laplace is ever sampled here.
//! Every measurement's own privacy map is asked what the release costs for
//! the given sensitivity, and a mechanism that would cost more than it was
//! given is an error, never a release.

use std::collections::HashMap;

use opendp::combinators::{make_fix_delta, make_zCDP_to_approxDP};
use opendp::domains::{AtomDomain, MapDomain, VectorDomain};
use opendp::measurements::{make_gaussian, make_laplace, make_laplace_threshold};
use opendp::measures::{Approximate, MaxDivergence, ZeroConcentratedDivergence};
use opendp::metrics::{AbsoluteDistance, L0PInfDistance, L1Distance, L2Distance};

/// A mechanism could not be built or run.
#[derive(Debug, thiserror::Error)]
#[error("noise mechanism: {0}")]
pub struct NoiseError(String);

fn opendp_error(error: opendp::error::Error) -> NoiseError {
    NoiseError(error.to_string())
}

/// Slack for the privacy map's rounding (it rounds up, conservatively).
const SLACK: f64 = 1e-9;

fn within(used: f64, budget: f64) -> Result<(), NoiseError> {
    if used <= budget * (1.0 + SLACK) {
        Ok(())
    } else {
        Err(NoiseError(format!(
            "the mechanism would spend ε={used}, more than the ε={budget} charged"
        )))
    }
}

/// Discrete Laplace noise on integer counts whose vector changes by at most
/// `sensitivity` (L1) when one privacy unit is added or removed. Returns the
/// noisy counts and the noise scale.
pub fn laplace_counts(
    values: &[i64],
    sensitivity: i64,
    epsilon: f64,
) -> Result<(Vec<i64>, f64), NoiseError> {
    laplace(values, sensitivity, sensitivity as f64 / epsilon, epsilon)
}

/// Laplace noise on float sums (sampled exactly on a fine lattice), for an
/// L1 `sensitivity` per privacy unit. Returns the noisy sums and the scale.
pub fn laplace_sums(
    values: &[f64],
    sensitivity: f64,
    epsilon: f64,
) -> Result<(Vec<f64>, f64), NoiseError> {
    laplace(values, sensitivity, sensitivity / epsilon, epsilon)
}

/// OpenDP's vector Laplace mechanism at `scale`, checked against its own
/// privacy map for `sensitivity` before it draws.
fn laplace<T>(
    values: &[T],
    sensitivity: T,
    scale: f64,
    epsilon: f64,
) -> Result<(Vec<T>, f64), NoiseError>
where
    T: opendp::traits::CheckAtom + Clone,
    opendp::measurements::DiscreteLaplace:
        opendp::measurements::MakeNoise<VectorDomain<AtomDomain<T>>, L1Distance<T>, MaxDivergence>,
    (VectorDomain<AtomDomain<T>>, L1Distance<T>): opendp::core::MetricSpace,
{
    let measurement = make_laplace::<_, _, MaxDivergence>(
        VectorDomain::new(AtomDomain::<T>::new_non_nan()),
        L1Distance::<T>::default(),
        scale,
        None,
    )
    .map_err(opendp_error)?;
    within(
        measurement.map(&sensitivity).map_err(opendp_error)?,
        epsilon,
    )?;
    let noisy = measurement.invoke(&values.to_vec()).map_err(opendp_error)?;
    Ok((noisy, scale))
}

/// Gaussian noise on float sums (OpenDP's discrete Gaussian on a fine
/// lattice), for an L2 `sensitivity` per privacy unit, spending at most
/// (ε, δ). The scale comes from the zCDP bound ρ = (√(ln(1/δ) + ε) −
/// √ln(1/δ))² (ρ-zCDP implies (ρ + 2√(ρ ln(1/δ)), δ)-DP); the measurement is
/// then cast to (ε, δ)-DP by OpenDP's own conversion (`make_zCDP_to_approxDP`,
/// `make_fix_delta`) and its map must agree before anything is drawn.
/// Returns the noisy sums and the noise's standard deviation.
pub fn gaussian_sums(
    values: &[f64],
    sensitivity: f64,
    epsilon: f64,
    delta: f64,
) -> Result<(Vec<f64>, f64), NoiseError> {
    if !(delta > 0.0 && delta < 1.0 && epsilon > 0.0) {
        return Err(NoiseError(format!(
            "the Gaussian mechanism needs ε > 0 and 0 < δ < 1, not ε={epsilon} δ={delta}"
        )));
    }
    let log = (1.0 / delta).ln();
    let rho = ((log + epsilon).sqrt() - log.sqrt()).powi(2);
    let scale = sensitivity / (2.0 * rho).sqrt();
    let measurement = make_gaussian::<_, _, ZeroConcentratedDivergence>(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
        L2Distance::<f64>::default(),
        scale,
        None,
    )
    .map_err(opendp_error)?;
    let approximate = make_fix_delta(
        &make_zCDP_to_approxDP(measurement).map_err(opendp_error)?,
        delta,
    )
    .map_err(opendp_error)?;
    let (used_epsilon, used_delta) = approximate.map(&sensitivity).map_err(opendp_error)?;
    within(used_epsilon, epsilon)?;
    if used_delta > delta * (1.0 + SLACK) {
        return Err(NoiseError(format!(
            "the mechanism would spend δ={used_delta}, more than the δ={delta} charged"
        )));
    }
    let noisy = approximate.invoke(&values.to_vec()).map_err(opendp_error)?;
    Ok((noisy, scale))
}

/// Gaussian noise on float sums for an L2 `sensitivity`, spending at most
/// ρ of zero-concentrated DP (σ = Δ₂/√(2ρ)), checked against OpenDP's map.
/// Returns the noisy sums and σ.
pub fn gaussian_sums_zcdp(
    values: &[f64],
    sensitivity: f64,
    rho: f64,
) -> Result<(Vec<f64>, f64), NoiseError> {
    if rho <= 0.0 {
        return Err(NoiseError(format!("ρ must be positive, not {rho}")));
    }
    let scale = sensitivity / (2.0 * rho).sqrt();
    let measurement = make_gaussian::<_, _, ZeroConcentratedDivergence>(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
        L2Distance::<f64>::default(),
        scale,
        None,
    )
    .map_err(opendp_error)?;
    let used = measurement.map(&sensitivity).map_err(opendp_error)?;
    if used > rho * (1.0 + SLACK) {
        return Err(NoiseError(format!(
            "the mechanism would spend ρ={used}, more than the ρ={rho} charged"
        )));
    }
    let noisy = measurement.invoke(&values.to_vec()).map_err(opendp_error)?;
    Ok((noisy, scale))
}

/// Half-width of a 95% interval of Gaussian noise of standard deviation
/// `scale`.
pub fn ci95_gaussian(scale: f64) -> f64 {
    1.959_964 * scale
}

/// Keys released through a noisy threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholded {
    /// Released keys with their noisy privacy-unit counts.
    pub counts: HashMap<String, i64>,
    pub scale: f64,
    pub threshold: i64,
    /// δ the release costs (at most the δ asked for).
    pub delta: f64,
}

/// Release the keys of `units` (privacy units per group key) whose noisy
/// count passes a threshold, when each unit touches at most `max_groups`
/// keys once each. The threshold is the smallest that keeps δ at most
/// `delta` according to the mechanism's own privacy map.
pub fn threshold_keys(
    units: HashMap<String, i64>,
    max_groups: u32,
    epsilon: f64,
    delta: f64,
) -> Result<Thresholded, NoiseError> {
    let l0 = max_groups;
    let l1 = i64::from(max_groups);
    let scale = l1 as f64 / epsilon;
    let d_in = (l0, l1, 1i64);
    // Start near the analytic answer (δ ≈ L·e^{-(T-1)/b}/2) and step up
    // until the mechanism's own map agrees.
    let mut threshold = 1
        + (scale * (f64::from(l0) / (2.0 * delta)).ln())
            .ceil()
            .max(0.0) as i64;
    for _ in 0..200 {
        let measurement = make_laplace_threshold::<_, _, Approximate<MaxDivergence>>(
            MapDomain::new(
                AtomDomain::<String>::default(),
                AtomDomain::<i64>::default(),
            ),
            L0PInfDistance(AbsoluteDistance::<i64>::default()),
            scale,
            threshold,
            None,
        )
        .map_err(opendp_error)?;
        let (used_epsilon, used_delta) = measurement.map(&d_in).map_err(opendp_error)?;
        if used_delta <= delta {
            within(used_epsilon, epsilon)?;
            let counts = measurement.invoke(&units).map_err(opendp_error)?;
            return Ok(Thresholded {
                counts,
                scale,
                threshold,
                delta: used_delta,
            });
        }
        threshold += (threshold / 20).max(1);
    }
    Err(NoiseError(format!("no threshold reaches δ={delta}")))
}

/// Half-width of a 95% interval of (lattice) Laplace noise on floats of
/// scale `scale`: P(|Z| > b·ln 20) = 0.05.
pub fn ci95(scale: f64) -> f64 {
    scale * 20f64.ln()
}

/// Half-width of a 95% interval of discrete Laplace noise on integers of
/// scale `b`: the smallest integer k with P(|Z| > k) ≤ 0.05, where
/// P(|Z| ≥ j) = 2e^{-j/b} / (1 + e^{-1/b}).
pub fn ci95_discrete(scale: f64) -> f64 {
    let tail = 0.025 * (1.0 + (-1.0 / scale).exp());
    ((-scale * tail.ln()).ceil() - 1.0).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_get_noise_of_the_stated_scale() {
        let (noisy, scale) = laplace_counts(&vec![1000; 4000], 2, 0.5).unwrap();
        assert_eq!(scale, 4.0);
        let mean_abs =
            noisy.iter().map(|v| (v - 1000).abs() as f64).sum::<f64>() / noisy.len() as f64;
        // E|Z| = b for Laplace(b); the discrete law is close at b = 4.
        assert!((mean_abs - 4.0).abs() < 0.4, "{mean_abs}");
        assert!(noisy.iter().any(|v| *v != 1000));
    }

    #[test]
    fn discrete_intervals_cover_95_percent() {
        // Scale 1: P(|Z| ≥ 4) = 2e^-4 / (1 + e^-1) = 0.027, P(|Z| ≥ 3) = 0.073.
        assert_eq!(ci95_discrete(1.0), 3.0);
        let (noisy, _) = laplace_counts(&vec![0; 20_000], 1, 1.0).unwrap();
        let inside = noisy.iter().filter(|v| v.abs() <= 3).count() as f64 / 20_000.0;
        assert!((0.96..0.985).contains(&inside), "{inside}");
    }

    #[test]
    fn gaussian_noise_has_the_scale_its_epsilon_and_delta_allow() {
        // ε = 1, δ = 1e-6: ρ = (√(ln 1e6 + 1) − √ln 1e6)² ≈ 0.0175, so an
        // L2 sensitivity of 1 gets σ = 1/√(2ρ) ≈ 5.35.
        let (noisy, scale) = gaussian_sums(&vec![0.0; 20_000], 1.0, 1.0, 1e-6).unwrap();
        assert!((scale - 5.35).abs() < 0.01, "{scale}");
        let variance = noisy.iter().map(|v| v * v).sum::<f64>() / noisy.len() as f64;
        assert!((variance.sqrt() - scale).abs() < 0.2, "{}", variance.sqrt());
        assert!(gaussian_sums(&[0.0], 1.0, 1.0, 0.0).is_err());
    }

    #[test]
    fn thresholds_keep_rare_keys_back() {
        let units = HashMap::from([("big".to_string(), 500), ("one".to_string(), 1)]);
        let released = threshold_keys(units, 1, 1.0, 1e-7).unwrap();
        assert!(released.delta <= 1e-7);
        assert!(released.threshold > 10, "{}", released.threshold);
        assert!(released.counts.contains_key("big"));
        assert!(!released.counts.contains_key("one"));
    }
}
