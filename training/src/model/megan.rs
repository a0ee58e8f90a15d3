//! MEGAN, the multi-scale patch GAN (seed 001; `shared/MODELS.md` §2), scaled for our CPU: the
//! configuration [`MeganConfig`] (saved beside the weights as `megan.json`), the ResNet generator
//! [`MeganGenerator`] used by both stages, and the stage layout.
//!
//! Two stages, as the daemon's multi-stage contract runs them (`src/model` module docs):
//! - **LR** (low resolution): sees the *whole* source volume block-averaged by `lr_factor`
//!   (`ct_harmonizer::model::stages::block_mean`) and produces the target at that resolution.
//!   Input channels `[source]`. (MEGAN's LR stage makes the image from an edge map alone; ours
//!   translates a CT, so it sees the downsampled source.)
//! - **HR** (full resolution): refines patches, conditioned on the LR output up-sampled
//!   nearest-neighbour and on the edge map of the source patch: input channels
//!   `[source, edges, previous]`. The edge map is the documented simpler gradient-magnitude map
//!   (`ct_harmonizer::model::stages::edge_map`, not Canny: no non-maximum suppression or
//!   hysteresis), computed by the same function in training and in the daemon.
//!
//! Discriminators are the 3-D PatchGAN of [`super::Discriminator`] (LSGAN outputs): the LR one sees
//! `cat(source, image)`, the HR one `cat(edges, previous, image)` (MODELS.md §2: "the HR one takes
//! cat(edges, image, LR patch)").
//!
//! Departures from MODELS.md §2 for the CPU (all in [`MeganConfig`]): `ngf` 8 instead of 64, one
//! stride-2 down/up level instead of two, 2 residual blocks instead of 6, no dropout (inference is
//! deterministic and equal to the exported graph), one HR stage (one doubling per HR stage in the
//! reference; ours jumps `lr_factor` at once), edges by gradient magnitude (above), padding by edge
//! replication (the daemon's tiles see the same borders as the training patches).

use super::{conv3d, normal_init, replication_pad, zero_bias, Discriminator};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv3d, ConvTranspose3d, ConvTranspose3dConfig};
use burn::tensor::activation::{relu, tanh};
use burn::tensor::backend::Backend;
use burn::tensor::ops::PadMode;
use burn::tensor::Tensor;

/// Generator convolutions: k3 (MODELS.md §2: "Conv3d(k3) 64 channels").
pub const MEGAN_KERNEL: usize = 3;
/// Up-sampling: ConvTranspose3d(k4, s2, p1) (MODELS.md §2).
pub const MEGAN_UP_KERNEL: usize = 4;
/// Output convolution: Conv3d(k7, p3) to 1 channel (MODELS.md §2).
pub const MEGAN_OUT_KERNEL: usize = 7;
pub const MEGAN_OUT_PAD: usize = 3;
/// LSGAN + L1 weight λ = 10 (MODELS.md §2).
pub const MEGAN_LAMBDA_L1: f64 = 10.0;
/// The discriminator is updated only while its accuracy is at most 0.8 (MODELS.md §2).
pub const MEGAN_D_ACCURACY_MAX: f64 = 0.8;
/// Gaussian noise N(0, 0.01) on the edge input while training (MODELS.md §2).
pub const MEGAN_EDGE_NOISE: f64 = 0.01;
/// Smallest LR volume edge and HR patch edge the PatchGAN discriminator takes (two stride-2 and
/// two k4 s1 p1 convolutions, as `check_patch` of the RevGAN).
pub const MEGAN_MIN_EDGE: usize = 16;

/// Architecture and loss constants of a MEGAN run (saved as `megan.json`; module docs list the
/// departures from the reference).
#[derive(Config, Debug, PartialEq)]
pub struct MeganConfig {
    /// Generator base channels (MODELS.md §2: 64; 8 on the CPU).
    #[config(default = 8)]
    pub ngf: usize,
    /// Discriminator base channels (pix2pix default 64; 8 on the CPU).
    #[config(default = 8)]
    pub ndf: usize,
    /// Residual blocks at half resolution (MODELS.md §2: 6; 2 on the CPU).
    #[config(default = 2)]
    pub res_blocks: usize,
    /// Series voxels per LR-stage voxel (z, y, x) (MODELS.md §2: 2 per HR stage; ours one HR stage
    /// for the whole factor, 4 by default so that the LR stage's whole-volume input stays small).
    #[config(default = "[4, 4, 4]")]
    pub lr_factor: [usize; 3],
    /// HR training patch edge (voxels); must cover the HR receptive field.
    #[config(default = 40)]
    pub patch: usize,
    /// L1 weight beside LSGAN (MODELS.md §2: λ = 10).
    #[config(default = 10.0)]
    pub lambda_l1: f64,
    /// D is updated only while its accuracy on the step's real and fake outputs is at most this
    /// (MODELS.md §2: 0.8).
    #[config(default = 0.8)]
    pub d_accuracy_max: f64,
    /// Standard deviation of the noise on the edge input in training (MODELS.md §2: 0.01).
    #[config(default = 0.01)]
    pub edge_noise: f64,
}

/// Errors about a MEGAN configuration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MeganError {
    #[error("megan: ngf = {0} and ndf = {1}: at least 1 channel each")]
    Channels(usize, usize),
    #[error("megan: lr factor {0:?}: each factor must be at least 1 and one above 1")]
    Factor([usize; 3]),
    #[error("megan: patch {patch} is smaller than the HR stage's receptive field ({field} voxels: radius {radius}); use --patch {field} or more")]
    PatchTooSmall {
        patch: usize,
        field: usize,
        radius: usize,
    },
    #[error("megan: patch {0}: the discriminator needs an even edge of at least 16 voxels")]
    PatchOdd(usize),
    #[error("megan: volume {name} of {dims:?} voxels downsampled by {factor:?} gives {low:?}: the LR discriminator needs at least 16 voxels per axis")]
    LowTooSmall {
        name: String,
        dims: [usize; 3],
        factor: [usize; 3],
        low: [usize; 3],
    },
}

impl MeganConfig {
    /// Checks the sizes the layers need, and that the HR patch covers its receptive field.
    pub fn validate(&self) -> Result<(), MeganError> {
        if self.ngf == 0 || self.ndf == 0 {
            return Err(MeganError::Channels(self.ngf, self.ndf));
        }
        if self.lr_factor.contains(&0) || self.lr_factor == [1, 1, 1] {
            return Err(MeganError::Factor(self.lr_factor));
        }
        let radius = self.hr_radius();
        let field = 2 * radius + 1;
        if self.patch < field {
            return Err(MeganError::PatchTooSmall {
                patch: self.patch,
                field,
                radius,
            });
        }
        if self.patch < MEGAN_MIN_EDGE || !self.patch.is_multiple_of(2) {
            return Err(MeganError::PatchOdd(self.patch));
        }
        Ok(())
    }

    /// Convolutional receptive-field radius of a generator (voxels of its own grid): k3 in (1), k3
    /// s2 down (1), 2 k3 per residual block at half resolution (2 voxels each), the k4 s2 up (2),
    /// k7 out (3), plus 1 for the stride's phase: `8 + 4 · res_blocks`.
    pub fn radius(&self) -> usize {
        8 + 4 * self.res_blocks
    }

    /// The HR stage's valid margin: [`MeganConfig::radius`] plus the edge map's 1 voxel.
    pub fn hr_radius(&self) -> usize {
        self.radius() + 1
    }
}

/// InstanceNorm3d with affine parameters (MODELS.md §2: "IN(affine)"), ε = 1e-5, weight 1 and
/// bias 0 at start (PyTorch).
#[derive(Module, Debug)]
pub struct AffineNorm<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
    pub beta: Param<Tensor<B, 1>>,
}

impl<B: Backend> AffineNorm<B> {
    pub fn new(channels: usize, device: &B::Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([channels], device)),
            beta: Param::from_tensor(Tensor::zeros([channels], device)),
        }
    }

    /// `[N, C, D, H, W] -> [N, C, D, H, W]`
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [c] = self.gamma.dims();
        let g = self.gamma.val().reshape([1, c, 1, 1, 1]);
        let b = self.beta.val().reshape([1, c, 1, 1, 1]);
        super::instance_norm(x) * g + b
    }
}

/// Residual block at half resolution: pad1–conv3–IN–ReLU–pad1–conv3–IN, plus the input
/// (MODELS.md §2, dropout left out: module docs).
#[derive(Module, Debug)]
pub struct ResBlock<B: Backend> {
    pub conv1: Conv3d<B>,
    pub norm1: AffineNorm<B>,
    pub conv2: Conv3d<B>,
    pub norm2: AffineNorm<B>,
}

impl<B: Backend> ResBlock<B> {
    pub fn new(channels: usize, device: &B::Device) -> Self {
        Self {
            conv1: conv3d(channels, channels, MEGAN_KERNEL, 1, 0, false, device),
            norm1: AffineNorm::new(channels, device),
            conv2: conv3d(channels, channels, MEGAN_KERNEL, 1, 0, false, device),
            norm2: AffineNorm::new(channels, device),
        }
    }

    /// `[N, 2ngf, d, h, w] -> [N, 2ngf, d, h, w]`
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let h = relu(
            self.norm1
                .forward(self.conv1.forward(replication_pad(x.clone(), 1))),
        );
        x + self
            .norm2
            .forward(self.conv2.forward(replication_pad(h, 1)))
    }
}

/// The ResNet generator of both stages (MODELS.md §2, scaled: module docs).
#[derive(Module, Debug)]
pub struct MeganGenerator<B: Backend> {
    pub conv_in: Conv3d<B>,
    pub norm_in: AffineNorm<B>,
    pub conv_down: Conv3d<B>,
    pub norm_down: AffineNorm<B>,
    pub blocks: Vec<ResBlock<B>>,
    pub conv_up: ConvTranspose3d<B>,
    pub norm_up: AffineNorm<B>,
    pub conv_out: Conv3d<B>,
}

impl<B: Backend> MeganGenerator<B> {
    /// A generator of `in_channels` input channels (1 for LR, 3 for HR).
    pub fn new(cfg: &MeganConfig, in_channels: usize, device: &B::Device) -> Self {
        let ngf = cfg.ngf;
        let mut conv_up = ConvTranspose3dConfig::new([2 * ngf, ngf], [MEGAN_UP_KERNEL; 3])
            .with_stride([2; 3])
            .with_padding([1; 3])
            .with_bias(true)
            .with_initializer(normal_init())
            .init(device);
        conv_up.bias = zero_bias(conv_up.bias);
        Self {
            conv_in: conv3d(in_channels, ngf, MEGAN_KERNEL, 1, 0, false, device),
            norm_in: AffineNorm::new(ngf, device),
            conv_down: conv3d(ngf, 2 * ngf, MEGAN_KERNEL, 2, 1, false, device),
            norm_down: AffineNorm::new(2 * ngf, device),
            blocks: (0..cfg.res_blocks)
                .map(|_| ResBlock::new(2 * ngf, device))
                .collect(),
            conv_up,
            norm_up: AffineNorm::new(ngf, device),
            conv_out: conv3d(ngf, 1, MEGAN_OUT_KERNEL, 1, 0, false, device),
        }
    }

    /// `[N, C, D, H, W] -> [N, 1, D, H, W]`, values in (-1, 1). Odd D, H or W are edge-padded by
    /// one voxel at their end for the stride-2 level and the output is cut back (as the RevGAN).
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [n, _, d, h, w] = x.dims();
        // [N, C, D', H', W'], each even
        let x = x.pad([(0, d % 2), (0, h % 2), (0, w % 2)], PadMode::Edge);
        // [N, ngf, D', H', W']
        let x = relu(
            self.norm_in
                .forward(self.conv_in.forward(replication_pad(x, 1))),
        );
        // [N, 2ngf, D'/2, H'/2, W'/2]
        let mut x = relu(self.norm_down.forward(self.conv_down.forward(x)));
        for b in &self.blocks {
            // [N, 2ngf, D'/2, H'/2, W'/2]
            x = b.forward(x);
        }
        // [N, ngf, D', H', W']
        let x = relu(self.norm_up.forward(self.conv_up.forward(x)));
        // [N, 1, D', H', W']
        let y = tanh(self.conv_out.forward(replication_pad(x, MEGAN_OUT_PAD)));
        // [N, 1, D, H, W]
        y.slice([0..n, 0..1, 0..d, 0..h, 0..w])
    }
}

/// Input channels of each stage's generator and discriminator.
pub const LR_IN: usize = 1;
pub const HR_IN: usize = 3;
pub const LR_DISC_IN: usize = 2;
pub const HR_DISC_IN: usize = 3;

/// The two generators of a MEGAN (the exported part).
#[derive(Module, Debug)]
pub struct MeganGenerators<B: Backend> {
    pub lr: MeganGenerator<B>,
    pub hr: MeganGenerator<B>,
}

impl<B: Backend> MeganGenerators<B> {
    pub fn new(cfg: &MeganConfig, device: &B::Device) -> Self {
        Self {
            lr: MeganGenerator::new(cfg, LR_IN, device),
            hr: MeganGenerator::new(cfg, HR_IN, device),
        }
    }
}

/// The two discriminators of a MEGAN.
#[derive(Module, Debug)]
pub struct MeganDiscriminators<B: Backend> {
    pub lr: Discriminator<B>,
    pub hr: Discriminator<B>,
}

impl<B: Backend> MeganDiscriminators<B> {
    pub fn new(cfg: &MeganConfig, device: &B::Device) -> Self {
        Self {
            lr: Discriminator::new(LR_DISC_IN, cfg.ndf, device),
            hr: Discriminator::new(HR_DISC_IN, cfg.ndf, device),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    type B = Flex;

    #[test]
    fn generator_keeps_the_shape_even_and_odd() {
        let dev = Default::default();
        let cfg = MeganConfig::new().with_ngf(2).with_res_blocks(1);
        let g = MeganGenerator::<B>::new(&cfg, 3, &dev);
        for dims in [[1, 3, 8, 8, 8], [1, 3, 7, 9, 6]] {
            let x = Tensor::<B, 5>::random(dims, Distribution::Default, &dev);
            assert_eq!(g.forward(x).dims(), [1, 1, dims[2], dims[3], dims[4]]);
        }
    }

    #[test]
    fn patch_smaller_than_the_receptive_field_is_refused() {
        let cfg = MeganConfig::new();
        assert_eq!(cfg.hr_radius(), 17);
        assert!(cfg.validate().is_ok());
        let small = cfg.clone().with_patch(32);
        assert_eq!(
            small.validate(),
            Err(MeganError::PatchTooSmall {
                patch: 32,
                field: 35,
                radius: 17
            })
        );
        let msg = small.validate().unwrap_err().to_string();
        assert!(msg.contains("receptive field"), "{msg}");
        assert_eq!(
            cfg.clone().with_patch(36).with_res_blocks(1).validate(),
            Ok(())
        );
        assert_eq!(
            cfg.clone().with_lr_factor([1, 1, 1]).validate(),
            Err(MeganError::Factor([1, 1, 1]))
        );
        assert_eq!(cfg.with_patch(37).validate(), Err(MeganError::PatchOdd(37)));
    }

    /// A one-voxel change moves the output within the receptive radius far more than beyond it
    /// (beyond it, only through the instance norms' statistics).
    #[test]
    fn receptive_radius_bounds_the_reach_of_a_voxel() {
        let dev = Default::default();
        let cfg = MeganConfig::new().with_ngf(2).with_res_blocks(1);
        let g = MeganGenerator::<B>::new(&cfg, 1, &dev);
        let n = 40;
        let x = Tensor::<B, 5>::random([1, 1, n, n, n], Distribution::Default, &dev);
        let mut bumped: Vec<f32> = x.clone().into_data().to_vec().unwrap();
        bumped[(20 * n + 20) * n + 20] += 1.0;
        let xb =
            Tensor::<B, 5>::from_data(burn::tensor::TensorData::new(bumped, [1, 1, n, n, n]), &dev);
        let d: Vec<f32> = (g.forward(xb) - g.forward(x))
            .abs()
            .into_data()
            .to_vec()
            .unwrap();
        let r = cfg.radius();
        let (mut near, mut far) = (0f32, 0f32);
        for (i, v) in d.iter().enumerate() {
            let (z, y, xx) = (i / (n * n), (i / n) % n, i % n);
            let dist = [z, y, xx].iter().map(|&c| c.abs_diff(20)).max().unwrap();
            if dist <= r {
                near = near.max(*v);
            } else {
                far = far.max(*v);
            }
        }
        assert!(near > 10.0 * far, "near {near} far {far}");
    }
}
