//! The loss functions of the GAN objectives (seed 000; `shared/MODELS.md` §1): BCE on logits for
//! the paired (pix2pix) discriminators, least squares against a constant for the unpaired (LSGAN,
//! CycleGAN) ones, and L1 for the reconstruction and cycle terms. Each reduces a `[N, C, D, H, W]`
//! tensor to its mean, a `[1]` tensor. The weights (λ) are in [`crate::config::TrainConfig`].

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

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
