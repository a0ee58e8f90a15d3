//! Separable filtering and resampling of volumes: 1-D convolution along one axis with edge or
//! mirror borders, the Gaussian low-pass of the classical baseline, and linear / cubic (Keys,
//! a = -0.5) upsampling with voxel centres aligned (`src = (dst + 0.5)/f - 0.5`, edges clamped),
//! which the super-resolution training data and the evaluation's baselines share.

use crate::volume::Volume;
use rayon::prelude::*;

/// Kernel radius in pixels: `ceil(3σ)`.
pub fn kernel_radius(sigma: f64) -> usize {
    (3.0 * sigma).ceil() as usize
}

/// The sampled Gaussian `exp(-i²/2σ²)`, `i ∈ [-r, r]`, normalised to sum 1 (computed in f64).
pub fn gaussian_taps(sigma: f64, radius: usize) -> Vec<f64> {
    let r = radius as i64;
    let raw: Vec<f64> = (-r..=r)
        .map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|v| v / sum).collect()
}

/// Border handling of the separable filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    /// Repeat the edge voxel (ONNX `Pad` mode `edge`).
    Edge,
    /// Mirror about the edge, the edge voxel repeated (`scipy.ndimage` mode `reflect`).
    Reflect,
}

fn border_index(i: isize, n: usize, b: Border) -> usize {
    let n = n as isize;
    let r = match b {
        Border::Edge => i.clamp(0, n - 1),
        Border::Reflect => {
            let period = 2 * n;
            let m = i.rem_euclid(period);
            if m < n {
                m
            } else {
                period - 1 - m
            }
        }
    };
    r as usize
}

/// Convolves a `[z][y][x]` volume along `axis` with symmetric `taps` (odd length).
pub fn conv_axis(v: &[f32], shape: [usize; 3], axis: usize, taps: &[f64], b: Border) -> Vec<f32> {
    if taps.len() <= 1 {
        return v.to_vec();
    }
    let [nz, ny, nx] = shape;
    let r = (taps.len() / 2) as isize;
    let mut out = vec![0f32; v.len()];
    let plane = ny * nx;
    out.par_chunks_mut(plane).enumerate().for_each(|(z, o)| {
        for y in 0..ny {
            for x in 0..nx {
                let (pos, n) = match axis {
                    0 => (z, nz),
                    1 => (y, ny),
                    _ => (x, nx),
                };
                let mut acc = 0.0f64;
                for (k, w) in taps.iter().enumerate() {
                    let j = border_index(pos as isize + k as isize - r, n, b);
                    let idx = match axis {
                        0 => (j * ny + y) * nx + x,
                        1 => (z * ny + j) * nx + x,
                        _ => (z * ny + y) * nx + j,
                    };
                    acc += w * f64::from(v[idx]);
                }
                o[y * nx + x] = acc as f32;
            }
        }
    });
    out
}

/// Gaussian low-pass with in-plane σ `sxy` and z σ `sz` (pixels), kernels truncated at
/// `ceil(3σ)`, edge padding; σ = 0 leaves that axis alone.
pub fn gaussian_blur(v: &[f32], shape: [usize; 3], sxy: f64, sz: f64) -> Vec<f32> {
    let taps = |s: f64| {
        if s > 0.0 {
            gaussian_taps(s, kernel_radius(s))
        } else {
            vec![1.0]
        }
    };
    let (txy, tz) = (taps(sxy), taps(sz));
    let a = conv_axis(v, shape, 2, &txy, Border::Edge);
    let a = conv_axis(&a, shape, 1, &txy, Border::Edge);
    conv_axis(&a, shape, 0, &tz, Border::Edge)
}

/// Interpolation kernels for upsampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interp {
    Linear,
    /// Keys cubic convolution, a = -0.5 (Catmull-Rom).
    Cubic,
}

fn upsample_axis(v: &[f32], shape: [usize; 3], axis: usize, n_out: usize, it: Interp) -> Vec<f32> {
    let n_in = shape[axis];
    let f = n_out as f64 / n_in as f64;
    // Per output index: (source indices, weights).
    let plan: Vec<Vec<(usize, f64)>> = (0..n_out)
        .map(|j| {
            let s = ((j as f64 + 0.5) / f - 0.5).clamp(0.0, (n_in - 1) as f64);
            let i0 = s.floor();
            let t = s - i0;
            let i0 = i0 as isize;
            let clamp = |k: isize| k.clamp(0, n_in as isize - 1) as usize;
            match it {
                Interp::Linear => vec![(clamp(i0), 1.0 - t), (clamp(i0 + 1), t)],
                Interp::Cubic => {
                    let a = -0.5;
                    let k = |x: f64| {
                        let x = x.abs();
                        if x <= 1.0 {
                            (a + 2.0) * x.powi(3) - (a + 3.0) * x * x + 1.0
                        } else if x < 2.0 {
                            a * x.powi(3) - 5.0 * a * x * x + 8.0 * a * x - 4.0 * a
                        } else {
                            0.0
                        }
                    };
                    (-1..=2).map(|d| (clamp(i0 + d), k(t - d as f64))).collect()
                }
            }
        })
        .collect();
    let mut out_shape = shape;
    out_shape[axis] = n_out;
    let [oz, oy, ox] = out_shape;
    let [_, ny, nx] = shape;
    let mut out = vec![0f32; oz * oy * ox];
    out.par_chunks_mut(oy * ox).enumerate().for_each(|(z, o)| {
        for y in 0..oy {
            for x in 0..ox {
                let (j, idx): (usize, &dyn Fn(usize) -> usize) = match axis {
                    0 => (z, &|k| (k * ny + y) * nx + x),
                    1 => (y, &|k| (z * ny + k) * nx + x),
                    _ => (x, &|k| (z * ny + y) * nx + k),
                };
                o[y * ox + x] = plan[j]
                    .iter()
                    .map(|&(k, w)| w * f64::from(v[idx(k)]))
                    .sum::<f64>() as f32;
            }
        }
    });
    out
}

/// Upsamples `v` to `shape` (each axis an integer multiple or not; centres aligned).
pub fn upsample(v: &Volume, shape: [usize; 3], it: Interp) -> Volume {
    let mut data = v.values.clone();
    let mut cur = v.shape;
    for axis in [2, 1, 0] {
        data = upsample_axis(&data, cur, axis, shape[axis], it);
        cur[axis] = shape[axis];
    }
    let spacing = [0, 1, 2].map(|a| v.spacing[a] * v.shape[a] as f64 / shape[a] as f64);
    Volume::new(format!("{} upsampled", v.name), shape, spacing, data)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn vol(shape: [usize; 3], f: impl Fn(usize, usize, usize) -> f32) -> Volume {
        Volume::from_fn("t", shape, f)
    }

    #[test]
    fn border_modes() {
        assert_eq!(border_index(-1, 5, Border::Reflect), 0);
        assert_eq!(border_index(-2, 5, Border::Reflect), 1);
        assert_eq!(border_index(5, 5, Border::Reflect), 4);
        assert_eq!(border_index(6, 5, Border::Reflect), 3);
        assert_eq!(border_index(-3, 5, Border::Edge), 0);
        assert_eq!(border_index(9, 5, Border::Edge), 4);
    }

    #[test]
    fn upsampling_reproduces_linear_ramps() {
        let lo = vol([5, 6, 6], |z, y, x| (z * 40 + y * 10 + x) as f32);
        for it in [Interp::Linear, Interp::Cubic] {
            let up = upsample(&lo, [20, 12, 12], it);
            assert_eq!(up.shape, [20, 12, 12]);
            // Interior voxel: dst (9, 5, 6) -> src ((9.5/4 - 0.5), (5.5/2 - 0.5), (6.5/2 - 0.5)).
            let want = (9.5 / 4.0 - 0.5) * 40.0 + (5.5 / 2.0 - 0.5) * 10.0 + (6.5 / 2.0 - 0.5);
            let got = f64::from(up.values[up.idx(9, 5, 6)]);
            assert!((got - want).abs() < 1e-3, "{it:?} {got} {want}");
        }
    }
}
