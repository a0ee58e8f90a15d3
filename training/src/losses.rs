//! The loss functions of the GAN objectives (seed 000; `shared/MODELS.md` §1): BCE on logits for
//! the paired (pix2pix) discriminators, least squares against a constant for the unpaired (LSGAN,
//! CycleGAN) ones, and L1 for the reconstruction and cycle terms. Each reduces a `[N, C, D, H, W]`
//! tensor to its mean, a `[1]` tensor. The weights (λ) are in [`crate::config::TrainConfig`].
//!
//! Issue 12 adds the differentiable 3-D SSIM and its cycle loss (seed 004), the Gram matrix and
//! the cycle-perceptual / cycle-style losses on feature maps (seed 003), and the box average of the
//! amortised mode's low-resolution view (seed 002).
//!
//! Issue 11 adds the noise-texture term ([`texture`]): the distance of two volumes' maps of local
//! high-frequency RMS, a term a target with its own noise realisation can be matched on.

use burn::tensor::backend::Backend;
use burn::tensor::module::conv3d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

/// Mean binary cross-entropy of logits `x` against a constant `target` (numerically stable form
/// `max(x, 0) − x·t + log(1 + e^−|x|)`).
///
/// `[N, C, D, H, W] -> [1]`
pub fn bce_logits<B: Backend>(x: Tensor<B, 5>, target: f64) -> Tensor<B, 1> {
    let soft = x.clone().abs().neg().exp().log1p();
    (x.clone().clamp_min(0.0) - x * target + soft).mean()
}

/// Mean squared error against a constant (LSGAN). `[N, C, D, H, W] -> [1]`
pub fn mse_const<B: Backend>(x: Tensor<B, 5>, target: f64) -> Tensor<B, 1> {
    (x - target).powi_scalar(2).mean()
}

/// Mean absolute error. `[N, C, D, H, W], [N, C, D, H, W] -> [1]`
pub fn l1<B: Backend>(x: Tensor<B, 5>, y: Tensor<B, 5>) -> Tensor<B, 1> {
    (x - y).abs().mean()
}

/// Window of the differentiable 3-D SSIM: Gaussian σ = 1.5, radius 5 (11 taps), as
/// [`crate::metrics::ssim3d`].
pub const SSIM_SIGMA: f64 = 1.5;
pub const SSIM_RADIUS: usize = 5;

/// Normalised Gaussian taps of the SSIM window.
fn ssim_taps() -> Vec<f32> {
    let raw: Vec<f64> = (-(SSIM_RADIUS as isize)..=SSIM_RADIUS as isize)
        .map(|i| (-((i * i) as f64) / (2.0 * SSIM_SIGMA * SSIM_SIGMA)).exp())
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|v| (v / sum) as f32).collect()
}

/// Separable Gaussian window over D, H and W without padding (a "valid" convolution):
/// `[N, 1, D, H, W] -> [N, 1, D - 10, H - 10, W - 10]`.
fn ssim_window<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    let taps = ssim_taps();
    let k = taps.len();
    let device = x.device();
    let mut y = x;
    for shape in [[1, 1, k, 1, 1], [1, 1, 1, k, 1], [1, 1, 1, 1, k]] {
        let w = Tensor::<B, 5>::from_data(TensorData::new(taps.clone(), shape), &device);
        y = conv3d(y, w, None, ConvOptions::new([1; 3], [0; 3], [1; 3], 1));
    }
    y
}

/// Mean 3-D SSIM of two single-channel volumes in [-1, 1] (data range 2, C1 = (0.01·2)²,
/// C2 = (0.03·2)²), Gaussian window σ 1.5 over the positions whose whole window lies inside
/// (every axis must exceed 10 voxels). Differentiable; on such volumes it equals
/// [`crate::metrics::ssim3d`] (whose reflected border never reaches those positions) up to float
/// rounding. `[N, 1, D, H, W], [N, 1, D, H, W] -> [1]`
pub fn ssim3d<B: Backend>(x: Tensor<B, 5>, y: Tensor<B, 5>) -> Tensor<B, 1> {
    let (c1, c2) = ((0.01f64 * 2.0).powi(2), (0.03f64 * 2.0).powi(2));
    let mx = ssim_window(x.clone());
    let my = ssim_window(y.clone());
    let sxx = ssim_window(x.clone() * x.clone()) - mx.clone() * mx.clone();
    let syy = ssim_window(y.clone() * y.clone()) - my.clone() * my.clone();
    let sxy = ssim_window(x * y) - mx.clone() * my.clone();
    let num = (mx.clone() * my.clone() * 2.0 + c1) * (sxy * 2.0 + c2);
    let den = (mx.clone() * mx + my.clone() * my + c1) * (sxx + syy + c2);
    (num / den).mean()
}

/// The SSIM cycle loss of seed 004: `1 − SSIM(x, y)`. `[N, 1, D, H, W] x 2 -> [1]`
pub fn ssim_loss<B: Backend>(x: Tensor<B, 5>, y: Tensor<B, 5>) -> Tensor<B, 1> {
    ssim3d(x, y).neg() + 1.0
}

/// Gram matrices of feature maps, normalised by the feature map size (channels × voxels):
/// `G[n] = F[n]·F[n]ᵀ / (C·D·H·W)` with `F[n]` the `[C, D·H·W]` features of sample n
/// (Cycle-MedGAN, seed 003; Johnson et al.'s normalisation). `[N, C, D, H, W] -> [N, C, C]`
pub fn gram<B: Backend>(f: Tensor<B, 5>) -> Tensor<B, 3> {
    let [n, c, d, h, w] = f.dims();
    let m = d * h * w;
    let f = f.reshape([n, c, m]);
    f.clone().matmul(f.swap_dims(1, 2)) / (c * m) as f64
}

/// Cycle-perceptual loss (seed 003): `Σ_l λ_l · mean|φ_l(x) − φ_l(x̂)|` over feature maps of one
/// network, with equal layer weights λ_l = 1/L (the paper's are not published).
pub fn perceptual<B: Backend>(fx: &[Tensor<B, 5>], fy: &[Tensor<B, 5>]) -> Tensor<B, 1> {
    layer_mean(fx, fy, |a, b| l1(a, b))
}

/// Cycle-style loss (seed 003): `Σ_l λ_l · ‖Gram(φ_l(x)) − Gram(φ_l(x̂))‖²` (squared Frobenius
/// norm, summed over the batch), λ_l = 1/L.
pub fn style<B: Backend>(fx: &[Tensor<B, 5>], fy: &[Tensor<B, 5>]) -> Tensor<B, 1> {
    layer_mean(fx, fy, |a, b| (gram(a) - gram(b)).powi_scalar(2).sum())
}

/// `(1/L) Σ_l term(fx_l, fy_l)`; zero for no layers.
fn layer_mean<B: Backend>(
    fx: &[Tensor<B, 5>],
    fy: &[Tensor<B, 5>],
    term: impl Fn(Tensor<B, 5>, Tensor<B, 5>) -> Tensor<B, 1>,
) -> Tensor<B, 1> {
    let weight = 1.0 / fx.len().max(1) as f64;
    let mut total: Option<Tensor<B, 1>> = None;
    for (a, b) in fx.iter().zip(fy) {
        let t = term(a.clone(), b.clone()) * weight;
        total = Some(match total {
            Some(s) => s + t,
            None => t,
        });
    }
    match (total, fx.first()) {
        (Some(t), _) => t,
        (None, Some(f)) => Tensor::zeros([1], &f.device()),
        (None, None) => Tensor::zeros([1], &Default::default()),
    }
}

/// Box average over blocks of `f` voxels per axis (z, y, x), the low-resolution view of the
/// amortised mode; each axis must be a multiple of its factor.
/// `[N, C, D, H, W] -> [N, C, D/fz, H/fy, W/fx]`
pub fn box_down<B: Backend>(x: Tensor<B, 5>, f: [usize; 3]) -> Tensor<B, 5> {
    let [n, c, d, h, w] = x.dims();
    let (d2, h2, w2) = (d / f[0], h / f[1], w / f[2]);
    let x = x.reshape([n * c * d2, f[0], h2, f[1], w2, f[2]]);
    let x = x.mean_dim(5).mean_dim(3).mean_dim(1);
    x.reshape([n, c, d2, h2, w2])
}

/// In-plane edge of the texture term's blur by default: the high-pass is `x` minus its
/// `3 × 3 × 3` box mean (`--texture-blur` widens it in plane: `3 × N × N`).
pub const TEXTURE_BLUR: usize = 3;
/// Largest in-plane blur edge (`--texture-blur`): a 32³ patch keeps 12 voxels per axis.
pub const TEXTURE_BLUR_MAX: usize = 15;
/// Edge of the texture term's local window: the noise level is the RMS of the high-pass over
/// `7 × 7 × 7` voxels (343 samples; the map of one noise realisation scatters around the level
/// by some 20 % voxel to voxel, which averages out over the patch and over steps).
pub const TEXTURE_WINDOW: usize = 7;
/// Added under the square root of the local RMS (model units², a floor of 1e-4, 0.2 HU on the
/// seed's window), so that its gradient stays finite on a constant volume.
const TEXTURE_EPS: f64 = 1e-8;

/// Box mean of edges `k` (z, y, x) without padding (separable, a fixed convolution, so it runs on
/// every backend): `[N, 1, D, H, W] -> [N, 1, D - kz + 1, H - ky + 1, W - kx + 1]`.
fn box_valid<B: Backend>(x: Tensor<B, 5>, k: [usize; 3]) -> Tensor<B, 5> {
    let device = x.device();
    let mut y = x;
    for (axis, shape) in [[1, 1, k[0], 1, 1], [1, 1, 1, k[1], 1], [1, 1, 1, 1, k[2]]]
        .into_iter()
        .enumerate()
    {
        let taps = vec![1.0 / k[axis] as f32; k[axis]];
        let w = Tensor::<B, 5>::from_data(TensorData::new(taps, shape), &device);
        y = conv3d(y, w, None, ConvOptions::new([1; 3], [0; 3], [1; 3], 1));
    }
    y
}

/// Local noise level of a single-channel volume with the default blur ([`local_noise_with`],
/// `blur` 3). `[N, 1, D, H, W] -> [N, 1, D - 8, H - 8, W - 8]`
pub fn local_noise<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    local_noise_with(x, TEXTURE_BLUR)
}

/// Local noise level of a single-channel volume: the high-pass `h = x − box(x)`, `box` the mean
/// over `3 × blur × blur` voxels (z, y, x; `blur` odd, on the voxels whose neighbourhood lies
/// inside), then `sqrt(box₇(h²) + ε)` over 7³ windows. With `e = blur − 1`:
/// `[N, 1, D, H, W] -> [N, 1, D - 8, H - e - 6, W - e - 6]`
pub fn local_noise_with<B: Backend>(x: Tensor<B, 5>, blur: usize) -> Tensor<B, 5> {
    let [n, c, d, h, w] = x.dims();
    let (rz, r) = (TEXTURE_BLUR / 2, blur / 2);
    // [N, 1, D - 2, H - e, W - e]
    let centre = x
        .clone()
        .slice([0..n, 0..c, rz..d - rz, r..h - r, r..w - r]);
    let high = centre - box_valid(x, [TEXTURE_BLUR, blur, blur]);
    // [N, 1, D - 8, H - e - 6, W - e - 6]
    (box_valid(high.powi_scalar(2), [TEXTURE_WINDOW; 3]) + TEXTURE_EPS).sqrt()
}

/// The noise-texture term (issue 11) with the default blur ([`texture_with`], `blur` 3).
/// `[N, 1, D, H, W] x 2 -> [1]` (every axis at least 9 voxels)
pub fn texture<B: Backend>(x: Tensor<B, 5>, y: Tensor<B, 5>) -> Tensor<B, 1> {
    texture_with(x, y, TEXTURE_BLUR)
}

/// The noise-texture term (issue 11): `mean |local_noise(x) − local_noise(y)|`, the L1 distance
/// of the two volumes' maps of local high-frequency RMS ([`local_noise_with`]). It compares how
/// much noise (and fine detail) each neighbourhood holds, not where each noise grain lies, so a
/// target with its own, independent noise realisation can be matched: L1 against such a target
/// rewards the conditional median, which keeps whatever noise the generator cannot tell from
/// structure. The idea is that of the noise-level / NPS-matching terms of CT denoising (matching
/// the local noise statistics or noise power spectrum of the output to the reference's rather
/// than each voxel); this form (box high-pass, local RMS, L1) is ours, chosen to be cheap and
/// backend-generic. A wider `blur` lets lower frequencies of the noise into the high-pass.
/// `[N, 1, D, H, W] x 2 -> [1]` (D at least 9, H and W at least blur + 6)
pub fn texture_with<B: Backend>(x: Tensor<B, 5>, y: Tensor<B, 5>, blur: usize) -> Tensor<B, 1> {
    l1(local_noise_with(x, blur), local_noise_with(y, blur))
}

/// Smoothing of the in-plane total variation ([`tv_xy`]): `(1e-4)²`, 1e-4 being 0.2 HU in the
/// training window of 4150 HU, far under the gradients of noise (tens of HU per voxel).
pub const TV_EPS: f64 = 1e-8;

/// The in-plane isotropic total variation (issue 11; Rudin, Osher and Fatemi, *Physica D* 60:259,
/// 1992): `mean sqrt((x[y, x+1] − x[y, x])² + (x[y+1, x] − x[y, x])² + ε)` over the voxels whose
/// two forward neighbours exist, per axial slice, as the simulated scanner's nonlinear
/// reconstruction (`data::synth::ir`) smooths. `[N, C, D, H, W] -> [1]` (H, W at least 2)
pub fn tv_xy<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 1> {
    let [n, c, d, h, w] = x.dims();
    // [N, C, D, H - 1, W - 1] each
    let centre = x.clone().slice([0..n, 0..c, 0..d, 0..h - 1, 0..w - 1]);
    let dx = x.clone().slice([0..n, 0..c, 0..d, 0..h - 1, 1..w]) - centre.clone();
    let dy = x.slice([0..n, 0..c, 0..d, 1..h, 0..w - 1]) - centre;
    (dx.powi_scalar(2) + dy.powi_scalar(2) + TV_EPS)
        .sqrt()
        .mean()
}

/// The one-sided noise-texture term (issue 11): `mean max(0, local_noise(x) − local_noise(y))`,
/// only where `x` holds more high-frequency energy than `y` (excess noise), never rewarding more
/// detail where `x` holds less (there the L1 term decides). `[N, 1, D, H, W] x 2 -> [1]`
pub fn texture_excess<B: Backend>(x: Tensor<B, 5>, y: Tensor<B, 5>, blur: usize) -> Tensor<B, 1> {
    (local_noise_with(x, blur) - local_noise_with(y, blur))
        .clamp_min(0.0)
        .mean()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::data::rng::Rng;
    use burn::backend::{Autodiff, Flex};

    type B = Flex;
    type A = Autodiff<Flex>;

    fn t5<BB: Backend>(v: Vec<f32>, shape: [usize; 5]) -> Tensor<BB, 5> {
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    fn vals<BB: Backend, const D: usize>(t: Tensor<BB, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    /// A smooth random volume in [-1, 1] (a sum of a few waves), `n`³.
    fn smooth(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        let k: Vec<f64> = (0..9).map(|_| r.uniform() * 0.8 + 0.2).collect();
        let mut out = Vec::with_capacity(n * n * n);
        for z in 0..n {
            for y in 0..n {
                for x in 0..n {
                    let (z, y, x) = (z as f64, y as f64, x as f64);
                    let v = (k[0] * z + k[1] * y).sin() * 0.4
                        + (k[2] * x + k[3] * z).cos() * 0.3
                        + (k[4] * y + k[5] * x + k[6]).sin() * 0.2;
                    out.push(v as f32);
                }
            }
        }
        out
    }

    #[test]
    fn gram_of_a_known_feature_map() {
        let _serial = crate::autodiff_serial();
        // C = 2 channels of M = 2 voxels: rows (1, 2) and (3, 4); F·Fᵀ = [[5, 11], [11, 25]],
        // divided by C·M = 4.
        let f = t5::<B>(vec![1.0, 2.0, 3.0, 4.0], [1, 2, 1, 1, 2]);
        assert_eq!(vals(gram(f)), vec![1.25, 2.75, 2.75, 6.25]);
        // Two samples are separate matrices; the spatial layout does not matter.
        let f = t5::<B>(
            vec![1.0, 0.0, 0.0, 2.0, 1.0, 1.0, 1.0, 1.0],
            [2, 2, 2, 1, 1],
        );
        assert_eq!(vals(gram(f)), vec![0.25, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5]);
    }

    #[test]
    fn ssim_of_identical_shifted_and_constant_volumes() {
        let _serial = crate::autodiff_serial();
        let n = 16;
        let x = smooth(n, 1);
        let same = ssim3d(
            t5::<B>(x.clone(), [1, 1, n, n, n]),
            t5(x.clone(), [1, 1, n, n, n]),
        );
        assert!((vals(same)[0] - 1.0).abs() < 1e-6);
        // Shifted by one voxel along x (wrapping): lower, and the same figure as the evaluation's
        // SSIM (whose reflected border does not reach the positions averaged here).
        let shifted: Vec<f32> = (0..n * n * n)
            .map(|i| x[i - i % n + (i % n + 1) % n])
            .collect();
        let s = vals(ssim3d(
            t5::<B>(x.clone(), [1, 1, n, n, n]),
            t5(shifted.clone(), [1, 1, n, n, n]),
        ))[0];
        assert!(s < 0.99 && s > 0.0, "{s}");
        let reference = crate::metrics::ssim3d(&x, &shifted, [n, n, n]);
        assert!(
            (f64::from(s) - reference).abs() < 1e-4,
            "{s} vs {reference}"
        );
        // Constant volumes a and b: the contrast-structure term is (0 + C2) / (0 + C2) = 1, so
        // SSIM = (2ab + C1) / (a² + b² + C1), C1 = (0.01·2)².
        let (a, b) = (0.5f32, 0.3f32);
        let c = vals(ssim3d(
            t5::<B>(vec![a; 12 * 12 * 12], [1, 1, 12, 12, 12]),
            t5(vec![b; 12 * 12 * 12], [1, 1, 12, 12, 12]),
        ))[0];
        let c1 = 4e-4f64;
        let expected = (2.0 * 0.5 * 0.3 + c1) / (0.25 + 0.09 + c1);
        assert!((f64::from(c) - expected).abs() < 1e-5, "{c} vs {expected}");
        assert!((expected - 0.882_491).abs() < 1e-6);
        let loss = vals(ssim_loss(
            t5::<B>(vec![a; 1728], [1, 1, 12, 12, 12]),
            t5(vec![b; 1728], [1, 1, 12, 12, 12]),
        ))[0];
        assert!((f64::from(loss) - (1.0 - expected)).abs() < 1e-5);
    }

    /// Central finite differences of `f` at `x` along a few coordinates against autodiff.
    fn gradient_check(
        f: impl Fn(Tensor<A, 5>) -> Tensor<A, 1>,
        x: Vec<f32>,
        shape: [usize; 5],
        coords: &[usize],
        h: f32,
        tol: f64,
    ) {
        let xt = t5::<A>(x.clone(), shape).require_grad();
        let loss = f(xt.clone());
        let grads = loss.backward();
        let g = vals(xt.grad(&grads).unwrap());
        for &i in coords {
            let at = |d: f32| {
                let mut v = x.clone();
                v[i] += d;
                f64::from(vals(f(t5::<A>(v, shape)))[0])
            };
            let fd = (at(h) - at(-h)) / (2.0 * f64::from(h));
            let an = f64::from(g[i]);
            assert!(
                (fd - an).abs() <= tol * an.abs().max(fd.abs()).max(1e-3),
                "coordinate {i}: finite difference {fd} vs autodiff {an}"
            );
        }
    }

    #[test]
    fn style_and_ssim_losses_pass_a_finite_difference_gradient_check() {
        let _serial = crate::autodiff_serial();
        let mut r = Rng::new(3);
        // Style: features x against fixed features y, 3 channels of 2×2×2.
        let shape = [1, 3, 2, 2, 2];
        let x: Vec<f32> = (0..24).map(|_| r.uniform() as f32 * 2.0 - 1.0).collect();
        let y: Vec<f32> = (0..24).map(|_| r.uniform() as f32 * 2.0 - 1.0).collect();
        let style_of = |xt: Tensor<A, 5>| {
            let yt = t5::<A>(y.clone(), shape);
            style(&[xt.clone(), xt], &[yt.clone(), yt])
        };
        gradient_check(style_of, x, shape, &[0, 5, 11, 17, 23], 1e-2, 2e-2);
        // SSIM loss: a 12³ volume against a smooth reference.
        let n = 12;
        let reference = smooth(n, 7);
        let x: Vec<f32> = reference
            .iter()
            .map(|v| v + (r.uniform() as f32 - 0.5) * 0.3)
            .collect();
        let ssim_of = |xt: Tensor<A, 5>| ssim_loss(xt, t5::<A>(reference.clone(), [1, 1, n, n, n]));
        gradient_check(
            ssim_of,
            x,
            [1, 1, n, n, n],
            &[0, 300, 870, 1000, 1500],
            2e-2,
            5e-2,
        );
    }

    #[test]
    fn perceptual_is_zero_for_equal_features_and_layer_averaged() {
        let _serial = crate::autodiff_serial();
        let f = t5::<B>(vec![1.0, 2.0, 3.0, 4.0], [1, 1, 1, 2, 2]);
        let g = t5::<B>(vec![2.0, 2.0, 3.0, 2.0], [1, 1, 1, 2, 2]);
        let one = std::slice::from_ref(&f);
        assert_eq!(vals(perceptual(one, one))[0], 0.0);
        // Layer 1: mean |f - g| = 3/4; layer 2: 0; weights 1/2.
        let p = vals(perceptual(&[f.clone(), f.clone()], &[g, f]))[0];
        assert!((p - 0.375).abs() < 1e-7, "{p}");
    }

    #[test]
    fn box_down_averages_blocks() {
        let _serial = crate::autodiff_serial();
        let v: Vec<f32> = (0..2 * 4 * 6).map(|i| i as f32).collect();
        let d = vals(box_down(t5::<B>(v.clone(), [1, 1, 2, 4, 6]), [2, 2, 3]));
        // Block (0, 0, 0): z 0..2, y 0..2, x 0..3.
        let mut s = 0.0;
        for z in 0..2 {
            for y in 0..2 {
                for x in 0..3 {
                    s += v[(z * 4 + y) * 6 + x];
                }
            }
        }
        assert_eq!(d.len(), 4);
        assert!((d[0] - s / 12.0).abs() < 1e-5);
    }

    /// `smooth(n, 5)` plus `amp` times uniform white noise of stream `seed`.
    fn noisy(n: usize, amp: f32, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        smooth(n, 5)
            .into_iter()
            .map(|v| v + amp * (r.uniform() as f32 - 0.5))
            .collect()
    }

    #[test]
    fn tv_xy_is_flat_zero_and_a_step_counts_once_per_voxel_of_its_edge() {
        let n = 8;
        let flat = tv_xy(t5::<B>(vec![0.3; n * n * n], [1, 1, n, n, n]));
        assert!((vals(flat)[0] as f64 - TV_EPS.sqrt()).abs() < 1e-6);
        // A step of height 0.5 across x at x = 4: one voxel of each (n - 1)-long row of the
        // (n - 1) x (n - 1) in-plane domain sees it.
        let step: Vec<f32> = (0..n * n * n)
            .map(|i| if i % n >= 4 { 0.5 } else { 0.0 })
            .collect();
        let got = vals(tv_xy(t5::<B>(step, [1, 1, n, n, n])))[0] as f64;
        let want = 0.5 / (n - 1) as f64;
        assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        // Only in-plane: a step along z costs nothing.
        let z: Vec<f32> = (0..n * n * n)
            .map(|i| if i / (n * n) >= 4 { 0.5 } else { 0.0 })
            .collect();
        assert!((vals(tv_xy(t5::<B>(z, [1, 1, n, n, n])))[0] as f64) < 1e-3);
    }

    /// Its gradient smooths noise: one descent step lowers the noise of a noisy flat volume.
    #[test]
    fn tv_xy_gradient_lowers_the_noise_of_a_flat_volume() {
        let n = 12;
        let mut r = Rng::new(5);
        let noisy: Vec<f32> = (0..n * n * n)
            .map(|_| (r.uniform() as f32 - 0.5) * 0.1)
            .collect();
        let std = |v: &[f32]| {
            let m = v.iter().sum::<f32>() / v.len() as f32;
            (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32).sqrt()
        };
        let x = t5::<A>(noisy.clone(), [1, 1, n, n, n]).require_grad();
        let g = tv_xy(x.clone()).backward();
        let grad = vals(x.grad(&g).unwrap());
        // The term is a mean over n (n - 1)² voxels: a step of 1e-3 per voxel of the sum.
        let lr = 1e-3 * (n * (n - 1) * (n - 1)) as f32;
        let stepped: Vec<f32> = noisy.iter().zip(&grad).map(|(a, d)| a - lr * d).collect();
        assert!(
            std(&stepped) < 0.95 * std(&noisy),
            "{} vs {}",
            std(&stepped),
            std(&noisy)
        );
    }

    #[test]
    fn texture_is_zero_for_identical_volumes_and_ignores_the_noise_realisation() {
        let _serial = crate::autodiff_serial();
        let n = 16;
        let shape = [1, 1, n, n, n];
        let x = noisy(n, 0.02, 1);
        assert_eq!(
            local_noise(t5::<B>(x.clone(), shape)).dims(),
            [1, 1, 8, 8, 8]
        );
        let same = vals(texture(t5::<B>(x.clone(), shape), t5(x.clone(), shape)))[0];
        assert_eq!(same, 0.0);
        // Another realisation at the same level is close; twice the level is far: the term
        // measures the amount of noise, not its grains.
        let other = vals(texture(
            t5::<B>(noisy(n, 0.02, 2), shape),
            t5(x.clone(), shape),
        ))[0];
        let double = vals(texture(t5::<B>(noisy(n, 0.04, 2), shape), t5(x, shape)))[0];
        assert!(double > 0.0 && other < 0.4 * double, "{other} vs {double}");
    }

    #[test]
    fn texture_gradient_removes_noise_from_an_output_noisier_than_its_target() {
        let _serial = crate::autodiff_serial();
        let n = 16;
        let shape = [1, 1, n, n, n];
        let base = smooth(n, 5);
        let target = t5::<A>(noisy(n, 0.02, 3), shape);
        for (amp, sign) in [(0.06f32, 1.0f64), (0.005, -1.0)] {
            let x = noisy(n, amp, 4);
            let xt = t5::<A>(x.clone(), shape).require_grad();
            let loss = texture(xt.clone(), target.clone());
            let before = f64::from(vals(loss.clone())[0]);
            assert!(before > 0.0);
            let g = vals(xt.grad(&loss.backward()).unwrap());
            // Noisier than the target: the gradient points along the output's own noise (a step
            // down removes it); less noisy: against it (a step down adds noise).
            let along: f64 = g
                .iter()
                .zip(x.iter().zip(&base))
                .map(|(g, (x, b))| f64::from(*g) * f64::from(x - b))
                .sum();
            assert!(along * sign > 0.0, "amplitude {amp}: {along}");
            let gmax = g.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step: Vec<f32> = x.iter().zip(&g).map(|(x, g)| x - 1e-3 * g / gmax).collect();
            let after = f64::from(vals(texture(t5::<A>(step, shape), target.clone()))[0]);
            assert!(after < before, "amplitude {amp}: {after} vs {before}");
        }
    }

    #[test]
    fn one_sided_texture_counts_only_excess_noise() {
        let _serial = crate::autodiff_serial();
        let n = 16;
        let shape = [1, 1, n, n, n];
        let target = noisy(n, 0.02, 3);
        let of = |x: Vec<f32>| {
            vals(texture_excess(
                t5::<B>(x, shape),
                t5(target.clone(), shape),
                3,
            ))[0]
        };
        assert_eq!(of(target.clone()), 0.0);
        // More noise: positive, and at most the two-sided term.
        let x = noisy(n, 0.06, 4);
        let excess = of(x.clone());
        let both = vals(texture(t5::<B>(x, shape), t5(target.clone(), shape)))[0];
        assert!(excess > 0.0 && excess <= both + 1e-7, "{excess} vs {both}");
        // Far less noise than the target: next to nothing (a few windows where the noise grains
        // happen to add to the shared structure's high-pass), where the two-sided term is large.
        let x = noisy(n, 0.002, 4);
        let less = of(x.clone());
        let both = vals(texture(t5::<B>(x, shape), t5(target.clone(), shape)))[0];
        assert!(
            less < 0.2 * both && less < 0.05 * excess,
            "{less} vs {both}"
        );
    }

    #[test]
    fn texture_passes_a_finite_difference_gradient_check() {
        let _serial = crate::autodiff_serial();
        let n = 10;
        let shape = [1, 1, n, n, n];
        let mut r = Rng::new(9);
        let y: Vec<f32> = (0..n * n * n).map(|_| r.uniform() as f32 * 0.1).collect();
        let x: Vec<f32> = (0..n * n * n).map(|_| r.uniform() as f32 * 0.3).collect();
        let of = |xt: Tensor<A, 5>| texture(xt, t5::<A>(y.clone(), shape));
        gradient_check(of, x, shape, &[0, 111, 444, 555, 999], 1e-3, 5e-2);
        // A wider in-plane blur: 3 x 7 x 7, then the 7³ window.
        let n = 14;
        let shape = [1, 1, n, n, n];
        let y: Vec<f32> = (0..n * n * n).map(|_| r.uniform() as f32 * 0.1).collect();
        let x: Vec<f32> = (0..n * n * n).map(|_| r.uniform() as f32 * 0.3).collect();
        let xt = t5::<B>(x.clone(), shape);
        assert_eq!(local_noise_with(xt, 7).dims(), [1, 1, 6, 2, 2]);
        let of = |xt: Tensor<A, 5>| texture_with(xt, t5::<A>(y.clone(), shape), 7);
        gradient_check(of, x, shape, &[0, 500, 1372, 2000, 2743], 1e-3, 5e-2);
    }
}
