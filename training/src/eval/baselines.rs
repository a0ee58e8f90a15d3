//! The tuned classical baselines of `ct-train eval`: a Gaussian low-pass whose in-plane σ and z σ
//! are tuned separately, in that order, by grid search on the tuning volumes (module docs of
//! [`super`]).

use crate::config::HuWindow;
use crate::metrics::mse;
use crate::resample::gaussian_blur;
use crate::volume::Volume;

/// Result of the Gaussian grid search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianTuning {
    pub sigma_xy: f64,
    pub sigma_z: f64,
    /// Mean MSE (on [-1, 1]) over the tuning volumes at the optimum.
    pub mse: f64,
    pub volumes: usize,
}

/// Grid search: in-plane σ over 0..=2.5 step 0.05 with no z blur, refined by golden-section search
/// within one step (to 0.001 px), then z σ over 0..=2 step 0.1 at the best in-plane σ. Pairs are
/// (sharp, soft).
pub fn tune_gaussian(pairs: &[(&Volume, &Volume)], w: HuWindow) -> GaussianTuning {
    let targets: Vec<Vec<f32>> = pairs
        .iter()
        .map(|(_, t)| t.values.iter().map(|&v| w.to_unit(v)).collect())
        .collect();
    let cost = |sxy: f64, sz: f64| -> f64 {
        pairs
            .iter()
            .zip(&targets)
            .map(|((s, _), t)| {
                let b = gaussian_blur(&s.values, s.shape, sxy, sz);
                let u: Vec<f32> = b.iter().map(|&v| w.to_unit(v)).collect();
                mse(&u, t)
            })
            .sum::<f64>()
            / pairs.len().max(1) as f64
    };
    let mut best = (0.0, 0.0, cost(0.0, 0.0));
    for i in 1..=50 {
        let s = i as f64 * 0.05;
        let c = cost(s, 0.0);
        if c < best.2 {
            best = (s, 0.0, c);
        }
    }
    // Refine the in-plane sigma by golden-section search within one grid step.
    if best.0 > 0.0 {
        let inv_phi = (5f64.sqrt() - 1.0) / 2.0;
        let (mut a, mut b) = (best.0 - 0.05, best.0 + 0.05);
        while b - a > 1e-3 {
            let (c, d) = (b - inv_phi * (b - a), a + inv_phi * (b - a));
            if cost(c, 0.0) < cost(d, 0.0) {
                b = d;
            } else {
                a = c;
            }
        }
        let s = 0.5 * (a + b);
        let c = cost(s, 0.0);
        if c < best.2 {
            best = (s, 0.0, c);
        }
    }
    for i in 1..=20 {
        let s = i as f64 * 0.1;
        let c = cost(best.0, s);
        if c < best.2 {
            best = (best.0, s, c);
        }
    }
    GaussianTuning {
        sigma_xy: best.0,
        sigma_z: best.1,
        mse: best.2,
        volumes: pairs.len(),
    }
}
