//! Total-variation denoising of a volume, slice by slice: the edge-preserving denoiser of the tuned
//! nonlinear baseline (Chambolle's projection algorithm for the Rudin–Osher–Fatemi problem, A.
//! Chambolle, J. Math. Imaging Vision 20:89–97, 2004). The per-slice solver is the one the
//! simulated scanner's nonlinear reconstruction uses ([`crate::data::synth::ir::tv_denoise`], τ = 1/8,
//! [`TV_ITERATIONS`] iterations): one implementation for the data and the baseline.

use crate::data::synth::ir::{self, TV_ITERATIONS};
use crate::volume::Volume;
use rayon::prelude::*;

/// TV-denoises one rows × cols slice with weight `lambda` (HU).
pub fn tv_denoise_slice(f: &[f32], rows: usize, cols: usize, lambda: f64) -> Vec<f32> {
    ir::tv_denoise(f, rows, cols, lambda, TV_ITERATIONS)
}

/// TV-denoises every axial slice of `v` with weight `lambda` (HU).
pub fn tv_denoise(v: &Volume, lambda: f64) -> Vec<f32> {
    let [_, ny, nx] = v.shape;
    let mut out = vec![0f32; v.len()];
    out.par_chunks_mut(ny * nx)
        .zip(v.values.par_chunks(ny * nx))
        .for_each(|(o, s)| o.copy_from_slice(&tv_denoise_slice(s, ny, nx, lambda)));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::lib_bridge::Rng;

    #[test]
    fn tv_removes_noise_and_keeps_the_edge() {
        let mut rng = Rng::new(2);
        let clean = Volume::from_fn("c", [1, 40, 40], |_, _, x| if x < 20 { 0.0 } else { 300.0 });
        let mut noisy = clean.clone();
        noisy
            .values
            .iter_mut()
            .for_each(|v| *v += 30.0 * rng.normal() as f32);
        let out = tv_denoise(&noisy, 40.0);
        let err = |a: &[f32]| {
            (a.iter()
                .zip(&clean.values)
                .map(|(x, y)| f64::from(x - y).powi(2))
                .sum::<f64>()
                / a.len() as f64)
                .sqrt()
        };
        assert!(
            err(&out) < 0.5 * err(&noisy.values),
            "{} vs {}",
            err(&out),
            err(&noisy.values)
        );
        // The step survives: the means of the two sides stay ~300 HU apart.
        let side = |lo: usize, hi: usize| {
            let v: Vec<f64> = (0..40)
                .flat_map(|y| (lo..hi).map(move |x| (y, x)))
                .map(|(y, x)| f64::from(out[y * 40 + x]))
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        assert!(side(21, 40) - side(0, 19) > 250.0);
        // λ = 0 is the identity; a constant image is a fixed point.
        assert_eq!(tv_denoise(&noisy, 0.0), noisy.values);
        let c = Volume::from_fn("k", [1, 8, 8], |_, _, _| 40.0);
        assert!(tv_denoise(&c, 10.0).iter().all(|v| (v - 40.0).abs() < 1e-4));
    }
}
