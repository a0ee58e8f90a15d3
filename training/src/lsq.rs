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

use crate::data::rng::{Rng, RngExt};
use crate::data::PairedVolume;
use rayon::prelude::*;

/// Errors fitting a filter.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LsqError {
    #[error("filter {d}x{k}x{k}: no training volume is at least that large")]
    TooSmall { d: usize, k: usize },
    #[error("the least-squares system is not positive definite (pivot {0}); the training volumes may be constant")]
    Singular(usize),
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
    let (rz, r) = (d / 2, k / 2);
    let usable: Vec<&PairedVolume> = pairs
        .iter()
        .filter(|p| p.a.shape[0] >= d && p.a.shape[1] >= k && p.a.shape[2] >= k)
        .collect();
    if usable.is_empty() {
        return Err(LsqError::TooSmall { d, k });
    }
    // Draw (case, z, y, x) with every neighbourhood inside its volume.
    let mut rng = Rng::new(seed);
    let picks: Vec<(usize, usize, usize, usize)> = (0..samples)
        .map(|_| {
            let c = rng.below(usable.len());
            let [nz, ny, nx] = usable[c].a.shape;
            (
                c,
                rz + rng.below(nz - 2 * rz),
                r + rng.below(ny - 2 * r),
                r + rng.below(nx - 2 * r),
            )
        })
        .collect();
    let n = d * k * k + 1;
    let features = |&(c, z, y, x): &(usize, usize, usize, usize), f: &mut Vec<f64>| -> (f64, f64) {
        let pv = usable[c];
        let (src, dst) = if reverse {
            (&pv.b, &pv.a)
        } else {
            (&pv.a, &pv.b)
        };
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
    };
    // Normal equations, accumulated in parallel chunks (upper triangle).
    let (ata, atb) = picks
        .par_chunks(4096)
        .map(|chunk| {
            let mut ata = vec![0f64; n * n];
            let mut atb = vec![0f64; n];
            let mut f = Vec::with_capacity(n);
            for p in chunk {
                let (t, _) = features(p, &mut f);
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
    let mut a = ata;
    for i in 0..n {
        for j in 0..i {
            a[i * n + j] = a[j * n + i];
        }
    }
    let ridge = 1e-9 * (0..n).map(|i| a[i * n + i]).sum::<f64>() / n as f64;
    for i in 0..n - 1 {
        a[i * n + i] += ridge;
    }
    let w = cholesky_solve(a, atb, n)?;
    // Errors on the drawn voxels.
    let (mut err, mut ident) = (0f64, 0f64);
    let mut f = Vec::with_capacity(n);
    for p in &picks {
        let (t, s) = features(p, &mut f);
        let y: f64 = f.iter().zip(&w).map(|(a, b)| a * b).sum();
        err += (y - t).abs();
        ident += (s - t).abs();
    }
    Ok(FilterFit {
        taps: w[..n - 1].iter().map(|&v| v as f32).collect(),
        bias: w[n - 1] as f32,
        mae: err / samples.max(1) as f64,
        identity_mae: ident / samples.max(1) as f64,
        samples,
    })
}

/// Solves `A x = b` for a symmetric positive definite `A` (n×n, row-major).
fn cholesky_solve(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Result<Vec<f64>, LsqError> {
    // A = L Lᵀ, L stored in the lower triangle of `a`.
    for j in 0..n {
        let mut s = a[j * n + j];
        for p in 0..j {
            s -= a[j * n + p] * a[j * n + p];
        }
        if s <= 0.0 || !s.is_finite() {
            return Err(LsqError::Singular(j));
        }
        let l = s.sqrt();
        a[j * n + j] = l;
        for i in j + 1..n {
            let mut t = a[i * n + j];
            for p in 0..j {
                t -= a[i * n + p] * a[j * n + p];
            }
            a[i * n + j] = t / l;
        }
    }
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
    Ok(b)
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
}
