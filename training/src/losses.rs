//! The loss functions of the GAN objectives (seed 000; `shared/MODELS.md` §1): BCE on logits for
//! the paired (pix2pix) discriminators, least squares against a constant for the unpaired (LSGAN,
//! CycleGAN) ones, and L1 for the reconstruction and cycle terms. Each reduces a `[N, C, D, H, W]`
//! tensor to its mean, a `[1]` tensor. The weights (λ) are in [`crate::config::TrainConfig`].

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
