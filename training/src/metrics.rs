//! Image-quality figures of an output volume against its target, used by `ct-train eval` and by the
//! training run's validation pictures.
//!
//! Output and target are mapped through the HU window to [-1, 1] and clipped, as the
//! networks see them. MAE; PSNR with data range 2 (`10 log10(4 / MSE)`); 3-D SSIM with a Gaussian
//! window σ = 1.5 truncated at radius 5 (`int(3.5 σ + 0.5)`, scikit-image's default), population
//! covariances, K1 = 0.01, K2 = 0.03, data range 2, mirror-reflected borders and the mean taken after
//! cropping the 5-voxel border (as `skimage.metrics.structural_similarity(gaussian_weights=True)`).
//! Emphysema index (LAA-950): percent of lung voxels under -950 HU, in the output and in the target,
//! over one lung mask taken from the target: per axial slice, voxels under -500 HU that are not
//! connected (4-neighbourhood, through voxels under -500 HU) to the slice border — i.e. air inside the
//! body — restricted to in-plane connected regions of at least 300 mm² (this drops the trachea, main
//! bronchi and bowel gas). Reported only when the mask holds at least 1 % of the volume (not for
//! head CT).

use crate::config::HuWindow;
use crate::resample::{conv_axis, Border};
use crate::volume::Volume;
use rayon::prelude::*;

/// Image-quality figures of one output against its target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    pub mae: f64,
    pub psnr: f64,
    pub ssim: f64,
    /// Emphysema index (%) of the output and of the target over the target's lung mask.
    pub ei_output: Option<f64>,
    pub ei_target: Option<f64>,
}

pub fn mse(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        / a.len().max(1) as f64
}

/// 3-D SSIM of two volumes in [-1, 1] (data range 2), Gaussian window σ = 1.5 (see the module docs).
pub fn ssim3d(a: &[f32], b: &[f32], shape: [usize; 3]) -> f64 {
    let sigma = 1.5;
    let radius = (3.5 * sigma + 0.5) as usize;
    let raw: Vec<f64> = (-(radius as isize)..=radius as isize)
        .map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = raw.iter().sum();
    let taps: Vec<f64> = raw.iter().map(|v| v / sum).collect();
    let filt = |v: &[f32]| {
        let mut o = v.to_vec();
        for axis in 0..3 {
            o = conv_axis(&o, shape, axis, &taps, Border::Reflect);
        }
        o
    };
    let prod = |f: &dyn Fn(f32, f32) -> f32| -> Vec<f32> {
        a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
    };
    let (mx, my) = (filt(a), filt(b));
    let sxx = filt(&prod(&|x, _| x * x));
    let syy = filt(&prod(&|_, y| y * y));
    let sxy = filt(&prod(&|x, y| x * y));
    let (c1, c2) = ((0.01f64 * 2.0).powi(2), (0.03f64 * 2.0).powi(2));
    let [nz, ny, nx] = shape;
    let range = |n: usize| {
        if n > 2 * radius {
            radius..n - radius
        } else {
            0..n
        }
    };
    let (rz, ry, rx) = (range(nz), range(ny), range(nx));
    let mut total = 0.0;
    let mut count = 0usize;
    for z in rz {
        for y in ry.clone() {
            for x in rx.clone() {
                let i = (z * ny + y) * nx + x;
                let (ux, uy) = (f64::from(mx[i]), f64::from(my[i]));
                let vx = f64::from(sxx[i]) - ux * ux;
                let vy = f64::from(syy[i]) - uy * uy;
                let cxy = f64::from(sxy[i]) - ux * uy;
                total += ((2.0 * ux * uy + c1) * (2.0 * cxy + c2))
                    / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
                count += 1;
            }
        }
    }
    total / count.max(1) as f64
}

/// Smallest in-plane lung region kept in the mask (mm²).
pub const LUNG_MIN_AREA_MM2: f64 = 300.0;

/// The lung mask of a target volume in HU (see the module docs).
pub fn lung_mask(target: &Volume) -> Vec<bool> {
    let [_, ny, nx] = target.shape;
    let min_px = (LUNG_MIN_AREA_MM2 / (target.spacing[1] * target.spacing[2])).ceil() as usize;
    let mut mask = vec![false; target.len()];
    mask.par_chunks_mut(ny * nx).enumerate().for_each(|(z, m)| {
        let s = target.slice(z);
        let low: Vec<bool> = s.iter().map(|&v| v < -500.0).collect();
        // Outside air: flood fill from the border through low voxels.
        let mut outside = vec![false; ny * nx];
        let mut stack = Vec::new();
        for y in 0..ny {
            for x in 0..nx {
                if (y == 0 || x == 0 || y == ny - 1 || x == nx - 1) && low[y * nx + x] {
                    outside[y * nx + x] = true;
                    stack.push(y * nx + x);
                }
            }
        }
        let neighbours = |i: usize| {
            let (y, x) = (i / nx, i % nx);
            let mut n = [usize::MAX; 4];
            if y > 0 {
                n[0] = i - nx;
            }
            if y + 1 < ny {
                n[1] = i + nx;
            }
            if x > 0 {
                n[2] = i - 1;
            }
            if x + 1 < nx {
                n[3] = i + 1;
            }
            n
        };
        while let Some(i) = stack.pop() {
            for j in neighbours(i) {
                if j != usize::MAX && low[j] && !outside[j] {
                    outside[j] = true;
                    stack.push(j);
                }
            }
        }
        // Inner air regions, kept when large enough.
        let mut seen = vec![false; ny * nx];
        for start in 0..ny * nx {
            if !low[start] || outside[start] || seen[start] {
                continue;
            }
            let mut region = vec![start];
            seen[start] = true;
            let mut k = 0;
            while k < region.len() {
                for j in neighbours(region[k]) {
                    if j != usize::MAX && low[j] && !outside[j] && !seen[j] {
                        seen[j] = true;
                        region.push(j);
                    }
                }
                k += 1;
            }
            if region.len() >= min_px {
                for i in region {
                    m[i] = true;
                }
            }
        }
    });
    mask
}

/// Emphysema index (percent under -950 HU) of `hu` over `mask`.
pub fn emphysema_index(hu: &[f32], mask: &[bool]) -> Option<f64> {
    let n = mask.iter().filter(|&&m| m).count();
    if n == 0 || n * 100 < mask.len() {
        return None;
    }
    let low = hu
        .iter()
        .zip(mask)
        .filter(|(&v, &m)| m && v < -950.0)
        .count();
    Some(100.0 * low as f64 / n as f64)
}

/// Metrics of `output` against `target` (both in HU, same shape); `mask` is the target's lung mask.
pub fn metrics(output: &Volume, target: &Volume, mask: &[bool], w: HuWindow) -> Metrics {
    let ou: Vec<f32> = output.values.iter().map(|&v| w.to_unit(v)).collect();
    let tu: Vec<f32> = target.values.iter().map(|&v| w.to_unit(v)).collect();
    let mae = ou
        .iter()
        .zip(&tu)
        .map(|(&x, &y)| f64::from((x - y).abs()))
        .sum::<f64>()
        / ou.len().max(1) as f64;
    let e = mse(&ou, &tu);
    Metrics {
        mae,
        psnr: if e > 0.0 {
            10.0 * (4.0 / e).log10()
        } else {
            f64::INFINITY
        },
        ssim: ssim3d(&ou, &tu, target.shape),
        ei_output: emphysema_index(&output.values, mask),
        ei_target: emphysema_index(&target.values, mask),
    }
}

/// PSNR (data range 2) of `a` against `b`, both in [-1, 1] units of one window (the validation pictures' display window).
pub fn psnr_unit(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()).max(1) as f64;
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        / n;
    10.0 * (4.0 / mse.max(1e-12)).log10()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn vol(shape: [usize; 3], f: impl Fn(usize, usize, usize) -> f32) -> Volume {
        Volume::from_fn("t", shape, f)
    }

    #[test]
    fn ssim_psnr_mae_basics() {
        let s = [12, 12, 12];
        let a = vol(s, |z, y, x| {
            ((z * 7 + y * 3 + x) % 11) as f32 * 100.0 - 900.0
        });
        let mask = vec![false; a.len()];
        let w = HuWindow::default();
        let m = metrics(&a, &a, &mask, w);
        assert_eq!(m.mae, 0.0);
        assert!(m.psnr.is_infinite());
        assert!((m.ssim - 1.0).abs() < 1e-6, "{m:?}");
        let b = vol(s, |z, y, x| a.values[a.idx(z, y, x)] + 75.0);
        let m = metrics(&b, &a, &mask, w);
        assert!((m.mae - 0.1).abs() < 1e-6, "{m:?}");
        assert!((m.psnr - 10.0 * (4.0f64 / 0.01).log10()).abs() < 1e-3);
        // A pure offset near mid-window (mean ~0 on [-1, 1]) hits the luminance term hard.
        assert!(m.ssim < 0.9 && m.ssim > -1.0, "{m:?}");
        assert_eq!(m.ei_output, None);
    }

    #[test]
    fn lung_mask_and_emphysema_index() {
        // Body disc of 0 HU with two inner air regions: a big "lung" with a quarter under -950,
        // and a small "trachea" that the area limit drops.
        let n = 48;
        let v = vol([2, n, n], |_, y, x| {
            let (dy, dx) = (y as f64 - 24.0, x as f64 - 24.0);
            let r = (dy * dy + dx * dx).sqrt();
            if r > 22.0 {
                -1000.0
            } else if (14..34).contains(&y) && (14..34).contains(&x) {
                if y < 19 {
                    -980.0
                } else {
                    -850.0
                }
            } else if (38..41).contains(&y) && (23..26).contains(&x) {
                -1000.0
            } else {
                0.0
            }
        });
        let mask = lung_mask(&v);
        let count = mask.iter().filter(|&&m| m).count();
        assert_eq!(count, 2 * 400);
        let ei = emphysema_index(&v.values, &mask).unwrap();
        assert!((ei - 25.0).abs() < 1e-9, "{ei}");
    }
}
