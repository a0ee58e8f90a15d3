//! Least-squares linear filters: the starting point of a residual generator's learnable skip
//! (`ct-train train --skip-init lsq`).
//!
//! A reconstruction-kernel change is, to first order, a linear shift-invariant filter, and so is
//! the best linear correction of a trilinearly upsampled thick-slice volume. The filter that
//! minimises the squared error between `filter(source) + bias` and the target over the training
//! pairs is a linear regression on each voxel's d×k×k neighbourhood: its normal equations are
//! accumulated over voxels drawn at random (fixed seed) and solved by Cholesky factorisation, with
//! a tiny ridge term (1e-9 of the mean diagonal) against exactly collinear neighbourhoods (air).
//! Borders are skipped: only voxels whose whole neighbourhood lies inside the volume are drawn.
//!
//! `ct-train eval`'s best linear baseline ([`fit_fir`], [`apply_fir`]) is the same regression in 3-D
//! (3×9×9 by default) on HU volumes, solved robustly: centred and standardised normal equations,
//! no ridge, and a clear error for a constant source or an ill-conditioned system instead of a
//! filter fitted to rounding noise.

use crate::data::rng::{Rng, RngExt};
use crate::data::PairedVolume;
use crate::volume::Volume;
use rayon::prelude::*;

/// Errors fitting a filter.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LsqError {
    #[error("filter {d}x{k}x{k}: no training volume is at least that large")]
    TooSmall { d: usize, k: usize },
    #[error("the least-squares system is not positive definite (pivot {0}); the training volumes may be constant")]
    Singular(usize),
    #[error("the least-squares filter is undetermined: the source volumes are constant over the {samples} drawn voxels (every tap has variance 0)")]
    Constant { samples: usize },
    #[error("the least-squares system is ill-conditioned (condition number {condition:.3e} > {max:.0e}, near tap {tap}): the source volumes do not determine the filter", max = MAX_CONDITION)]
    IllConditioned { condition: f64, tap: usize },
}

/// A fitted filter and how well it does on the voxels it was fitted on.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterFit {
    /// d×k×k taps, row-major (z, y, x).
    pub taps: Vec<f32>,
    pub bias: f32,
    /// Mean absolute error of `filter(source) + bias` against the target on the drawn voxels
    /// (model units).
    pub mae: f64,
    /// Mean absolute error of the source itself (the identity) on the same voxels.
    pub identity_mae: f64,
    pub samples: usize,
}

/// Voxels drawn per fit (our choice: ample for the at most 15·15·15 + 1 unknowns of a skip filter).
pub const SAMPLES: usize = 200_000;

/// Fits `target ≈ filter(source) + bias` with a d×k×k filter over `pairs` (source `a`, target
/// `b`, or the other way round when `reverse`).
pub fn fit_filter(
    pairs: &[PairedVolume],
    reverse: bool,
    d: usize,
    k: usize,
    samples: usize,
    seed: u64,
) -> Result<FilterFit, LsqError> {
    let vols: Vec<(&Volume, &Volume)> = pairs
        .iter()
        .map(|p| if reverse { (&p.b, &p.a) } else { (&p.a, &p.b) })
        .collect();
    let sys = normal_equations(&vols, d, k, samples, seed)?;
    let n = sys.n;
    let mut a = sys.ata.clone();
    let ridge = 1e-9 * (0..n).map(|i| a[i * n + i]).sum::<f64>() / n as f64;
    for i in 0..n - 1 {
        a[i * n + i] += ridge;
    }
    let w = cholesky_solve(a, sys.atb.clone(), n)?;
    Ok(sys.finish(&vols, w))
}

/// Largest condition number (of the standardised normal matrix) [`fit_fir`] accepts: beyond it
/// f64 sums of squares no longer determine the taps to single precision.
pub const MAX_CONDITION: f64 = 1e12;

/// The strongest linear baseline of `ct-train eval`: `target ≈ filter(source) + bias` with a
/// d×k×k FIR over `(source, target)` pairs in HU, solved robustly. The normal equations are
/// centred (the bias is eliminated: `b = mean(t) - w·mean(f)`) and standardised to a correlation
/// matrix, which is factorised by Cholesky **without** a ridge; a constant source (every tap with
/// zero variance over the drawn voxels) is [`LsqError::Constant`], and a system whose condition
/// number, estimated from the Cholesky pivots as `(max Lᵢᵢ / min Lᵢᵢ)²` (a lower bound of the
/// 2-norm condition number; Golub & Van Loan, *Matrix Computations*, 4th ed., §3.5.4 and §4.2),
/// exceeds [`MAX_CONDITION`] is [`LsqError::IllConditioned`]: the fit is then not unique and the
/// baseline is refused rather than reported from noise.
pub fn fit_fir(
    pairs: &[(&Volume, &Volume)],
    d: usize,
    k: usize,
    samples: usize,
    seed: u64,
) -> Result<FilterFit, LsqError> {
    let sys = normal_equations(pairs, d, k, samples, seed)?;
    let n = sys.n;
    let m = n - 1;
    let total = sys.ata[n * n - 1];
    // Means of the taps and of the target, then the centred covariances.
    let mean: Vec<f64> = (0..m).map(|i| sys.ata[i * n + m] / total).collect();
    let mean_t = sys.atb[m] / total;
    let mut cov = vec![0f64; m * m];
    for i in 0..m {
        for j in 0..m {
            cov[i * m + j] = sys.ata[i * n + j] / total - mean[i] * mean[j];
        }
    }
    let rhs: Vec<f64> = (0..m)
        .map(|i| sys.atb[i] / total - mean[i] * mean_t)
        .collect();
    let var: Vec<f64> = (0..m).map(|i| cov[i * m + i].max(0.0)).collect();
    let vmax = var.iter().copied().fold(0.0, f64::max);
    // Relative to the squared mean, a variance under 1e-12 is rounding in the sums (a constant
    // volume gives exactly that).
    let scale2 = mean.iter().map(|v| v * v).fold(1.0, f64::max);
    if vmax <= 1e-12 * scale2 {
        return Err(LsqError::Constant {
            samples: sys.picks.len(),
        });
    }
    let sd: Vec<f64> = var.iter().map(|v| v.sqrt()).collect();
    if let Some(i) = sd.iter().position(|&s| s * s <= 1e-12 * vmax) {
        return Err(LsqError::IllConditioned {
            condition: f64::INFINITY,
            tap: i,
        });
    }
    let mut corr = vec![0f64; m * m];
    for i in 0..m {
        for j in 0..m {
            corr[i * m + j] = cov[i * m + j] / (sd[i] * sd[j]);
        }
    }
    let rs: Vec<f64> = (0..m).map(|i| rhs[i] / sd[i]).collect();
    let (l, pivots) = match cholesky(corr, m) {
        Ok(v) => v,
        Err(LsqError::Singular(j)) => {
            return Err(LsqError::IllConditioned {
                condition: f64::INFINITY,
                tap: j,
            })
        }
        Err(e) => return Err(e),
    };
    let (pmin, pmax) = pivots
        .iter()
        .fold((f64::INFINITY, 0f64), |(a, b), &p| (a.min(p), b.max(p)));
    let condition = (pmax / pmin).powi(2);
    if !condition.is_finite() || condition > MAX_CONDITION {
        let tap = pivots.iter().position(|&p| p == pmin).unwrap_or_default();
        return Err(LsqError::IllConditioned { condition, tap });
    }
    let ws = cholesky_substitute(&l, rs, m);
    let mut w: Vec<f64> = ws.iter().zip(&sd).map(|(w, s)| w / s).collect();
    let bias = mean_t - w.iter().zip(&mean).map(|(a, b)| a * b).sum::<f64>();
    w.push(bias);
    Ok(sys.finish(pairs, w))
}

/// Applies a d×k×k filter (`taps` row-major z, y, x, plus `bias`) to `v`, borders clamped
/// (edge voxels repeated).
pub fn apply_fir(v: &Volume, taps: &[f32], bias: f32, d: usize, k: usize) -> Vec<f32> {
    let [nz, ny, nx] = v.shape;
    let (rz, r) = ((d / 2) as isize, (k / 2) as isize);
    let clamp = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
    let mut out = vec![0f32; v.len()];
    out.par_chunks_mut(ny * nx).enumerate().for_each(|(z, o)| {
        for y in 0..ny {
            for x in 0..nx {
                let mut acc = f64::from(bias);
                for dz in 0..d {
                    let zz = clamp(z as isize + dz as isize - rz, nz);
                    for dy in 0..k {
                        let yy = clamp(y as isize + dy as isize - r, ny);
                        let row = &v.values[(zz * ny + yy) * nx..(zz * ny + yy + 1) * nx];
                        let t = &taps[(dz * k + dy) * k..(dz * k + dy + 1) * k];
                        for (dx, &w) in t.iter().enumerate() {
                            let xx = clamp(x as isize + dx as isize - r, nx);
                            acc += f64::from(w) * f64::from(row[xx]);
                        }
                    }
                }
                o[y * nx + x] = acc as f32;
            }
        }
    });
    out
}

/// The normal equations of a d×k×k filter plus bias over randomly drawn voxels.
struct System {
    n: usize,
    d: usize,
    k: usize,
    picks: Vec<(usize, usize, usize, usize)>,
    /// Indices into the caller's pairs of the volumes large enough for the filter.
    usable: Vec<usize>,
    /// `AᵀA` (full, symmetric; the last row/column is the bias feature 1) and `Aᵀt`.
    ata: Vec<f64>,
    atb: Vec<f64>,
}

/// The neighbourhood of voxel `p` of `src` in `f` (plus the bias feature 1); returns the target and
/// the source values at the voxel.
fn features(
    src: &Volume,
    dst: &Volume,
    (d, k): (usize, usize),
    &(_, z, y, x): &(usize, usize, usize, usize),
    f: &mut Vec<f64>,
) -> (f64, f64) {
    let (rz, r) = (d / 2, k / 2);
    let [_, ny, nx] = src.shape;
    f.clear();
    for dz in 0..d {
        for dy in 0..k {
            let row = ((z + dz - rz) * ny + (y + dy - r)) * nx + (x - r);
            f.extend(src.values[row..row + k].iter().map(|&v| f64::from(v)));
        }
    }
    f.push(1.0);
    let at = (z * ny + y) * nx + x;
    (f64::from(dst.values[at]), f64::from(src.values[at]))
}

fn normal_equations(
    pairs: &[(&Volume, &Volume)],
    d: usize,
    k: usize,
    samples: usize,
    seed: u64,
) -> Result<System, LsqError> {
    let (rz, r) = (d / 2, k / 2);
    let usable: Vec<usize> = (0..pairs.len())
        .filter(|&i| {
            let s = pairs[i].0.shape;
            s[0] >= d && s[1] >= k && s[2] >= k
        })
        .collect();
    if usable.is_empty() {
        return Err(LsqError::TooSmall { d, k });
    }
    // Draw (case, z, y, x) with every neighbourhood inside its volume.
    let mut rng = Rng::new(seed);
    let picks: Vec<(usize, usize, usize, usize)> = (0..samples)
        .map(|_| {
            let c = usable[rng.below(usable.len())];
            let [nz, ny, nx] = pairs[c].0.shape;
            (
                c,
                rz + rng.below(nz - 2 * rz),
                r + rng.below(ny - 2 * r),
                r + rng.below(nx - 2 * r),
            )
        })
        .collect();
    let n = d * k * k + 1;
    // Normal equations, accumulated in parallel chunks (upper triangle).
    let (ata, atb) = picks
        .par_chunks(4096)
        .map(|chunk| {
            let mut ata = vec![0f64; n * n];
            let mut atb = vec![0f64; n];
            let mut f = Vec::with_capacity(n);
            for p in chunk {
                let (src, dst) = pairs[p.0];
                let (t, _) = features(src, dst, (d, k), p, &mut f);
                for i in 0..n {
                    let fi = f[i];
                    atb[i] += fi * t;
                    let row = &mut ata[i * n..(i + 1) * n];
                    for j in i..n {
                        row[j] += fi * f[j];
                    }
                }
            }
            (ata, atb)
        })
        .reduce(
            || (vec![0f64; n * n], vec![0f64; n]),
            |(mut a, mut b), (a2, b2)| {
                a.iter_mut().zip(&a2).for_each(|(x, y)| *x += y);
                b.iter_mut().zip(&b2).for_each(|(x, y)| *x += y);
                (a, b)
            },
        );
    let mut ata = ata;
    for i in 0..n {
        for j in 0..i {
            ata[i * n + j] = ata[j * n + i];
        }
    }
    Ok(System {
        n,
        d,
        k,
        picks,
        usable,
        ata,
        atb,
    })
}

impl System {
    /// The fit from the solution `w` (taps then bias), with its errors on the drawn voxels.
    fn finish(&self, pairs: &[(&Volume, &Volume)], w: Vec<f64>) -> FilterFit {
        let n = self.n;
        let (mut err, mut ident) = (0f64, 0f64);
        let mut f = Vec::with_capacity(n);
        for p in &self.picks {
            let (src, dst) = pairs[p.0];
            let (t, s) = features(src, dst, (self.d, self.k), p, &mut f);
            let y: f64 = f.iter().zip(&w).map(|(a, b)| a * b).sum();
            err += (y - t).abs();
            ident += (s - t).abs();
        }
        debug_assert!(!self.usable.is_empty());
        let samples = self.picks.len();
        FilterFit {
            taps: w[..n - 1].iter().map(|&v| v as f32).collect(),
            bias: w[n - 1] as f32,
            mae: err / samples.max(1) as f64,
            identity_mae: ident / samples.max(1) as f64,
            samples,
        }
    }
}

/// Cholesky factor `L` (lower triangle of the returned n×n matrix) of a symmetric positive
/// definite `A`, and its pivots `Lᵢᵢ`.
fn cholesky(mut a: Vec<f64>, n: usize) -> Result<(Vec<f64>, Vec<f64>), LsqError> {
    let mut pivots = vec![0f64; n];
    for j in 0..n {
        let mut s = a[j * n + j];
        for p in 0..j {
            s -= a[j * n + p] * a[j * n + p];
        }
        if s <= 0.0 || !s.is_finite() {
            return Err(LsqError::Singular(j));
        }
        let l = s.sqrt();
        pivots[j] = l;
        a[j * n + j] = l;
        for i in j + 1..n {
            let mut t = a[i * n + j];
            for p in 0..j {
                t -= a[i * n + p] * a[j * n + p];
            }
            a[i * n + j] = t / l;
        }
    }
    Ok((a, pivots))
}

/// Solves `L Lᵀ x = b` with the factor of [`cholesky`].
fn cholesky_substitute(a: &[f64], mut b: Vec<f64>, n: usize) -> Vec<f64> {
    for i in 0..n {
        let mut t = b[i];
        for p in 0..i {
            t -= a[i * n + p] * b[p];
        }
        b[i] = t / a[i * n + i];
    }
    for i in (0..n).rev() {
        let mut t = b[i];
        for p in i + 1..n {
            t -= a[p * n + i] * b[p];
        }
        b[i] = t / a[i * n + i];
    }
    b
}

/// Solves `A x = b` for a symmetric positive definite `A` (n×n, row-major).
fn cholesky_solve(a: Vec<f64>, b: Vec<f64>, n: usize) -> Result<Vec<f64>, LsqError> {
    let (l, _) = cholesky(a, n)?;
    Ok(cholesky_substitute(&l, b, n))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::volume::Volume;

    #[test]
    fn recovers_a_known_filter_and_bias() {
        // target = 0.5 x[y, x-1] + 0.25 x + 0.125 x[z+1] - 0.1, on a random volume.
        let dims = [6, 12, 12];
        let mut rng = Rng::new(3);
        let a: Vec<f32> = (0..6 * 12 * 12)
            .map(|_| rng.uniform() as f32 * 2.0 - 1.0)
            .collect();
        let at = |z: usize, y: usize, x: usize| a[(z * 12 + y) * 12 + x];
        let mut b = vec![0f32; a.len()];
        for z in 0..5 {
            for y in 0..12 {
                for x in 1..12 {
                    b[(z * 12 + y) * 12 + x] =
                        0.5 * at(z, y, x - 1) + 0.25 * at(z, y, x) + 0.125 * at(z + 1, y, x) - 0.1;
                }
            }
        }
        let pv = PairedVolume {
            a: Volume::new("a", dims, [1.0; 3], a),
            b: Volume::new("b", dims, [1.0; 3], b),
        };
        let fit = fit_filter(&[pv], false, 3, 3, 5000, 1).unwrap();
        // Taps (z, y, x) of the 3×3×3 neighbourhood centred on the voxel.
        let tap = |dz: usize, dy: usize, dx: usize| fit.taps[(dz * 3 + dy) * 3 + dx];
        assert!((tap(1, 1, 0) - 0.5).abs() < 1e-4, "{:?}", fit.taps);
        assert!((tap(1, 1, 1) - 0.25).abs() < 1e-4);
        assert!((tap(2, 1, 1) - 0.125).abs() < 1e-4);
        assert!(tap(0, 0, 0).abs() < 1e-4);
        assert!((fit.bias + 0.1).abs() < 1e-4);
        assert!(fit.mae < 1e-4 && fit.identity_mae > 0.1, "{fit:?}");
    }

    #[test]
    fn too_small_volumes_are_refused() {
        let v = Volume::new("v", [2, 4, 4], [1.0; 3], vec![0.0; 32]);
        let pv = PairedVolume { a: v.clone(), b: v };
        assert_eq!(
            fit_filter(&[pv], false, 3, 9, 10, 0),
            Err(LsqError::TooSmall { d: 3, k: 9 })
        );
    }

    /// A random 3-D kernel applied to white noise is recovered tap by tap (the LS FIR of eval).
    #[test]
    fn fir_recovers_a_known_3d_kernel_applied_to_noise() {
        let (d, k) = (3, 5);
        let mut rng = Rng::new(17);
        let kernel: Vec<f32> = (0..d * k * k).map(|_| rng.uniform() as f32 - 0.5).collect();
        let src = Volume::from_fn("noise", [10, 28, 28], |_, _, _| 0.0);
        let src = Volume::new(
            "noise",
            src.shape,
            [1.0; 3],
            (0..src.len())
                .map(|_| 40.0 * rng.normal() as f32 + 30.0)
                .collect(),
        );
        let dst = Volume::new(
            "target",
            src.shape,
            [1.0; 3],
            apply_fir(&src, &kernel, -12.5, d, k),
        );
        let fit = fit_fir(&[(&src, &dst)], d, k, 20_000, 5).unwrap();
        for (a, b) in fit.taps.iter().zip(&kernel) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        assert!((fit.bias + 12.5).abs() < 1e-2, "{}", fit.bias);
        assert!(fit.mae < 1e-3 && fit.identity_mae > 1.0, "{fit:?}");
        // The applied fit reproduces the target inside the borders.
        let out = apply_fir(&src, &fit.taps, fit.bias, d, k);
        let i = src.idx(5, 14, 14);
        assert!((out[i] - dst.values[i]).abs() < 1e-2);
    }

    #[test]
    fn fir_on_a_constant_volume_is_a_clear_error() {
        let c = Volume::from_fn("c", [6, 16, 16], |_, _, _| 40.0);
        let t = Volume::from_fn("t", [6, 16, 16], |z, y, x| (z + y + x) as f32);
        let e = fit_fir(&[(&c, &t)], 3, 9, 2000, 1).unwrap_err();
        assert_eq!(e, LsqError::Constant { samples: 2000 });
        assert!(e.to_string().contains("constant"), "{e}");
        // A source that varies along x only leaves the taps of one column collinear.
        let ramp = Volume::from_fn("r", [6, 16, 16], |_, _, x| x as f32);
        let e = fit_fir(&[(&ramp, &t)], 1, 3, 2000, 1).unwrap_err();
        assert!(
            matches!(e, LsqError::IllConditioned { .. }),
            "{e}: a one-dimensional ramp does not determine a 1x3x3 filter"
        );
        assert!(e.to_string().contains("ill-conditioned"), "{e}");
    }
}
