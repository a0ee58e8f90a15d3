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

/// The cost the Gaussian searches minimise: mean over `pairs` (sharp, soft) of the MSE on [-1, 1]
/// between the blurred source and the target, as a function of (σxy, σz).
fn blur_cost<'a>(
    pairs: &'a [(&'a Volume, &'a Volume)],
    w: HuWindow,
) -> impl Fn(f64, f64) -> f64 + 'a {
    let targets: Vec<Vec<f32>> = pairs
        .iter()
        .map(|(_, t)| t.values.iter().map(|&v| w.to_unit(v)).collect())
        .collect();
    move |sxy, sz| {
        pairs
            .iter()
            .zip(&targets)
            .map(|((s, _), t)| {
                let u: Vec<f32> = gaussian_blur(&s.values, s.shape, sxy, sz)
                    .iter()
                    .map(|&v| w.to_unit(v))
                    .collect();
                mse(&u, t)
            })
            .sum::<f64>()
            / pairs.len().max(1) as f64
    }
}

/// Grid search: in-plane σ over 0..=2.5 step 0.05 with no z blur, refined by golden-section search
/// within one step (to 0.001 px), then z σ over 0..=2 step 0.1 at the best in-plane σ. Pairs are
/// (sharp, soft).
pub fn tune_gaussian(pairs: &[(&Volume, &Volume)], w: HuWindow) -> GaussianTuning {
    let cost = blur_cost(pairs, w);
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
    /// Every (λ, MSE) of the search (central slices, coarse Gaussian), in order.
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

/// Central slices of each tuning volume used in the λ search of [`tune_tv`].
pub const TV_SEARCH_SLICES: usize = 8;

/// Coarse Gaussian search of the λ grid: in-plane σ over 0..=2.5 step 0.1 with no z blur, then z
/// σ over 0..=2 step 0.25; returns (σxy, σz, MSE).
fn coarse_gaussian(pairs: &[(&Volume, &Volume)], w: HuWindow) -> (f64, f64, f64) {
    let cost = blur_cost(pairs, w);
    let mut best = (0.0, 0.0, cost(0.0, 0.0));
    for i in 1..=25 {
        let s = f64::from(i) * 0.1;
        let c = cost(s, 0.0);
        if c < best.2 {
            best = (s, 0.0, c);
        }
    }
    for i in 1..=8 {
        let s = f64::from(i) * 0.25;
        let c = cost(best.0, s);
        if c < best.2 {
            best = (best.0, s, c);
        }
    }
    best
}

/// Tunes TV + Gaussian. The λ search runs on the central [`TV_SEARCH_SLICES`] slices of each
/// tuning volume with a coarse Gaussian search per λ ([`TV_LAMBDAS`], then λ·2^(±1/2) around the
/// best: a geometric refinement); the Gaussian after TV at the chosen λ is then tuned in full
/// ([`tune_gaussian`]) on the whole tuning volumes. All on the tuning set, minimum MSE on [-1, 1].
pub fn tune_tv(pairs: &[(&Volume, &Volume)], w: HuWindow) -> TvTuning {
    let central = |v: &Volume| {
        let n = v.shape[0].min(TV_SEARCH_SLICES);
        let z0 = (v.shape[0] - n) / 2;
        v.crop([z0, 0, 0], [n, v.shape[1], v.shape[2]])
    };
    let small: Vec<(Volume, Volume)> = pairs
        .iter()
        .map(|(s, t)| (central(s), central(t)))
        .collect();
    let denoised = |ps: &[(&Volume, &Volume)], lambda: f64| -> Vec<Volume> {
        ps.iter()
            .map(|(s, _)| Volume::new(s.name.clone(), s.shape, s.spacing, tv_denoise(s, lambda)))
            .collect()
    };
    let search = |lambda: f64| {
        let sp: Vec<(&Volume, &Volume)> = small.iter().map(|(s, t)| (s, t)).collect();
        let den = denoised(&sp, lambda);
        let p: Vec<(&Volume, &Volume)> = den.iter().zip(&small).map(|(d, (_, t))| (d, t)).collect();
        coarse_gaussian(&p, w).2
    };
    let mut tried: Vec<(f64, f64)> = Vec::new();
    for l in TV_LAMBDAS {
        tried.push((l, search(l)));
    }
    let best = |tried: &[(f64, f64)]| {
        tried
            .iter()
            .copied()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(TV_LAMBDAS[0], |(l, _)| l)
    };
    let l0 = best(&tried);
    for f in [std::f64::consts::FRAC_1_SQRT_2, std::f64::consts::SQRT_2] {
        tried.push((l0 * f, search(l0 * f)));
    }
    let lambda = best(&tried);
    let den = denoised(pairs, lambda);
    let p: Vec<(&Volume, &Volume)> = den.iter().zip(pairs).map(|(d, (_, t))| (d, *t)).collect();
    TvTuning {
        lambda,
        gaussian: tune_gaussian(&p, w),
        tried,
    }
}
