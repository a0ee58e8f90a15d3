//! The tuned classical baselines of `ct-train eval`, each fitted on the tuning volumes only:
//! - a Gaussian low-pass whose in-plane σ and z σ are tuned separately, in that order, by grid
//!   search ([`tune_gaussian`]);
//! - the best linear filter: the least-squares d×k×k FIR plus bias ([`fit_linear`],
//!   [`crate::lsq::fit_fir`]), the strongest linear shift-invariant baseline there is for a given
//!   support;
//! - a tuned classical nonlinear one: total-variation denoising (Chambolle 2004, [`super::tv`])
//!   followed by the Gaussian, λ chosen on a geometric grid and the Gaussian re-tuned for each λ
//!   ([`tune_tv`]).

use super::tv::tv_denoise;
use crate::config::HuWindow;
use crate::lsq::{apply_fir, fit_fir, FilterFit, LsqError};
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

impl GaussianTuning {
    /// The tuned Gaussian applied to `v`.
    pub fn apply(&self, v: &Volume) -> Vec<f32> {
        gaussian_blur(&v.values, v.shape, self.sigma_xy, self.sigma_z)
    }
}

/// The fitted best linear filter.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearTuning {
    /// Support (z, in-plane) of the filter: d×k×k taps.
    pub depth: usize,
    pub size: usize,
    pub fit: FilterFit,
    pub volumes: usize,
}

impl LinearTuning {
    /// The filter applied to `v` (borders clamped).
    pub fn apply(&self, v: &Volume) -> Vec<f32> {
        apply_fir(v, &self.fit.taps, self.fit.bias, self.depth, self.size)
    }
}

/// Fits the least-squares d×k×k FIR on (sharp, soft) pairs in HU from `samples` voxels (seed 0).
pub fn fit_linear(
    pairs: &[(&Volume, &Volume)],
    depth: usize,
    size: usize,
    samples: usize,
) -> Result<LinearTuning, LsqError> {
    Ok(LinearTuning {
        depth,
        size,
        fit: fit_fir(pairs, depth, size, samples, 0)?,
        volumes: pairs.len(),
    })
}

/// TV weights λ (HU) of the first, coarse grid of [`tune_tv`].
pub const TV_LAMBDAS: [f64; 6] = [5.0, 10.0, 20.0, 40.0, 80.0, 160.0];

/// The tuned TV + Gaussian baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct TvTuning {
    /// TV weight λ (HU).
    pub lambda: f64,
    /// The Gaussian tuned after TV at that λ (its `mse` is the baseline's tuning MSE).
    pub gaussian: GaussianTuning,
    /// Every (λ, MSE) tried, in order.
    pub tried: Vec<(f64, f64)>,
}

impl TvTuning {
    /// TV then the Gaussian, applied to `v`.
    pub fn apply(&self, v: &Volume) -> Vec<f32> {
        let d = Volume::new(
            v.name.clone(),
            v.shape,
            v.spacing,
            tv_denoise(v, self.lambda),
        );
        self.gaussian.apply(&d)
    }
}

/// Tunes TV + Gaussian: for each λ of [`TV_LAMBDAS`], TV-denoise the sources and tune the
/// Gaussian on them ([`tune_gaussian`], minimum MSE on [-1, 1]); then try λ·2^(±1/2) around the
/// best (a geometric refinement) and keep the lowest MSE.
pub fn tune_tv(pairs: &[(&Volume, &Volume)], w: HuWindow) -> TvTuning {
    let at = |lambda: f64| {
        let den: Vec<Volume> = pairs
            .iter()
            .map(|(s, _)| Volume::new(s.name.clone(), s.shape, s.spacing, tv_denoise(s, lambda)))
            .collect();
        let p: Vec<(&Volume, &Volume)> = den.iter().zip(pairs).map(|(d, (_, t))| (d, *t)).collect();
        tune_gaussian(&p, w)
    };
    let mut tried = Vec::new();
    let mut best: Option<(f64, GaussianTuning)> = None;
    let mut consider = |lambda: f64, best: &mut Option<(f64, GaussianTuning)>| {
        let g = at(lambda);
        tried.push((lambda, g.mse));
        if best.as_ref().is_none_or(|(_, b)| g.mse < b.mse) {
            *best = Some((lambda, g));
        }
    };
    for l in TV_LAMBDAS {
        consider(l, &mut best);
    }
    if let Some((l, _)) = best {
        for f in [std::f64::consts::FRAC_1_SQRT_2, std::f64::consts::SQRT_2] {
            consider(l * f, &mut best);
        }
    }
    let (lambda, gaussian) = best.unwrap_or((
        0.0,
        GaussianTuning {
            sigma_xy: 0.0,
            sigma_z: 0.0,
            mse: f64::INFINITY,
            volumes: 0,
        },
    ));
    TvTuning {
        lambda,
        gaussian,
        tried,
    }
}
