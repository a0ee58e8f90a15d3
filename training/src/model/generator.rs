//! The generator's layers (seed 000; `shared/MODELS.md` §1): the per-domain encoder and decoder
//! (with the optional learnable skip filter of a residual generator) and the F/G functions of the
//! reversible coupling. Tensors are NCDHW (`[N, C, D, H, W]`).

use super::{
    conv3d, instance_norm, normal_init, replication_pad, zero_bias, CORE_KERNEL, DOWN_KERNEL,
    OUTER_KERNEL, OUTER_PAD,
};
use burn::module::{Module, Param};
use burn::nn::conv::{Conv3d, Conv3dConfig, ConvTranspose3d, ConvTranspose3dConfig};
use burn::nn::PaddingConfig3d;
use burn::tensor::activation::{relu, tanh};
use burn::tensor::backend::Backend;
use burn::tensor::ops::PadMode;
use burn::tensor::Tensor;

/// Per-domain encoder: ReplicationPad3d(2), Conv3d(1→ngf, k5), IN, ReLU, Conv3d(ngf→2ngf, k3, s2,
/// zero pad 1), IN, ReLU (MODELS.md §1).
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub conv_in: Conv3d<B>,
    pub conv_down: Conv3d<B>,
}

impl<B: Backend> Encoder<B> {
    pub fn new(ngf: usize, device: &B::Device) -> Self {
        Self {
            conv_in: conv3d(1, ngf, OUTER_KERNEL, 1, 0, false, device),
            conv_down: conv3d(ngf, 2 * ngf, DOWN_KERNEL, 2, 1, false, device),
        }
    }

    /// `[N, 1, D, H, W]` (D, H, W even) `-> [N, 2ngf, D/2, H/2, W/2]`
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let x = relu(instance_norm(
            self.conv_in.forward(replication_pad(x, OUTER_PAD)),
        ));
        relu(instance_norm(self.conv_down.forward(x)))
    }
}

/// Per-domain decoder: ConvTranspose3d(2ngf→ngf, k3, s2, p1, output padding 1), IN, ReLU,
/// ReplicationPad3d(2), Conv3d(ngf→1, k5), Tanh (MODELS.md §1).
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    pub conv_up: ConvTranspose3d<B>,
    pub conv_out: Conv3d<B>,
    /// The learnable linear skip of a residual generator ([`super::RevGanConfig::skip_kernel`]).
    pub skip: Option<Conv3d<B>>,
}

/// A learnable skip filter Conv3d(1→1, d×k×k, no padding, zero bias) whose weights are `taps`
/// (row-major d×k×k).
pub fn skip_conv<B: Backend>(d: usize, k: usize, taps: Vec<f32>, device: &B::Device) -> Conv3d<B> {
    let mut c = Conv3dConfig::new([1, 1], [d, k, k])
        .with_padding(PaddingConfig3d::Explicit(0, 0, 0))
        .with_bias(true)
        .init(device);
    c.weight = Param::from_tensor(Tensor::from_data(
        burn::tensor::TensorData::new(taps, [1, 1, d, k, k]),
        device,
    ));
    c.bias = zero_bias(c.bias);
    c
}

/// d×k×k taps: in the middle z plane a separable sampled Gaussian normalised to sum 1 (σ in px),
/// or a centred delta when `sigma` is `None`; zero elsewhere.
pub fn skip_taps(d: usize, k: usize, sigma: Option<f64>) -> Vec<f32> {
    let r = (k / 2) as i64;
    let g: Vec<f64> = match sigma {
        Some(s) => {
            let raw: Vec<f64> = (-r..=r)
                .map(|i| (-((i * i) as f64) / (2.0 * s * s)).exp())
                .collect();
            let sum: f64 = raw.iter().sum();
            raw.iter().map(|v| v / sum).collect()
        }
        None => (-r..=r).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect(),
    };
    let plane: Vec<f32> = g
        .iter()
        .flat_map(|a| g.iter().map(move |b| (a * b) as f32))
        .collect();
    let mut out = vec![0f32; d * k * k];
    out[(d / 2) * k * k..(d / 2 + 1) * k * k].copy_from_slice(&plane);
    out
}

impl<B: Backend> Decoder<B> {
    /// `zero_out` zero-initialises the last convolution (residual generators start as their skip);
    /// `skip` is the learnable skip filter, if any.
    pub fn new(ngf: usize, zero_out: bool, skip: Option<Conv3d<B>>, device: &B::Device) -> Self {
        let mut conv_up = ConvTranspose3dConfig::new([2 * ngf, ngf], [DOWN_KERNEL; 3])
            .with_stride([2; 3])
            .with_padding([1; 3])
            .with_padding_out([1; 3])
            .with_bias(true)
            .with_initializer(normal_init())
            .init(device);
        conv_up.bias = zero_bias(conv_up.bias);
        Self {
            conv_up,
            conv_out: conv3d(ngf, 1, OUTER_KERNEL, 1, 0, zero_out, device),
            skip,
        }
    }

    /// The skip path of a residual generator: the learnable filter after edge padding,
    /// or the source itself. `[N, 1, D, H, W] -> [N, 1, D, H, W]`
    pub fn skip_forward(&self, src: Tensor<B, 5>) -> Tensor<B, 5> {
        match &self.skip {
            Some(c) => {
                let (rz, r) = (c.kernel_size[0] / 2, c.kernel_size[2] / 2);
                c.forward(src.pad([(rz, rz), (r, r), (r, r)], PadMode::Edge))
            }
            None => src,
        }
    }

    /// `[N, 2ngf, D/2, H/2, W/2] -> [N, 1, D, H, W]`, values in (-1, 1)
    pub fn forward(&self, h: Tensor<B, 5>) -> Tensor<B, 5> {
        let x = relu(instance_norm(self.conv_up.forward(h)));
        tanh(self.conv_out.forward(replication_pad(x, OUTER_PAD)))
    }
}

/// F or G of an additive coupling: IN, ReplicationPad(1), Conv3d(k3), IN, ReLU, ReplicationPad(1),
/// Conv3d(k3) whose weight and bias start at zero, so every block starts as the identity
/// (MODELS.md §1). Channels: `ngf → ngf → ngf` (half of the core's 2ngf).
#[derive(Module, Debug)]
pub struct Coupling<B: Backend> {
    pub conv1: Conv3d<B>,
    pub conv2: Conv3d<B>,
}

impl<B: Backend> Coupling<B> {
    pub fn new(channels: usize, device: &B::Device) -> Self {
        Self {
            conv1: conv3d(channels, channels, CORE_KERNEL, 1, 0, false, device),
            conv2: conv3d(channels, channels, CORE_KERNEL, 1, 0, true, device),
        }
    }

    /// `[N, ngf, d, h, w] -> [N, ngf, d, h, w]`
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let x = self.conv1.forward(replication_pad(instance_norm(x), 1));
        let x = relu(instance_norm(x));
        self.conv2.forward(replication_pad(x, 1))
    }
}
