//! Building blocks of the 3D RevGAN (seed 000; `shared/MODELS.md` §1): the model [`RevGanConfig`]
//! (saved beside the weights), the parameter-free instance normalisation, the per-domain encoder
//! and decoder, the F/G functions of the reversible coupling, and the 3-D PatchGAN discriminator.
//! The reversible core and the generator pair are in [`revgan`], the layers in [`generator`] and
//! [`discriminator`].
//!
//! Where a constant comes from is written next to it: "MODELS.md §1" means the reference code
//! `tychovdo/RevGAN` (3-D variant) as summarised there; "seed 000" the paper itself; "PyTorch" the
//! default of the PyTorch layer the reference code uses.
//!
//! Tensors are `[batch N, channels C, depth D, height H, width W]` (NCDHW, as ONNX and the daemon).

pub mod discriminator;
pub mod generator;
pub mod megan;
pub mod revgan;

pub use discriminator::{Discriminator, Discriminators};
pub use generator::{skip_conv, skip_taps, Coupling, Decoder, Encoder};
pub use revgan::{CoreSegment, Direction, RevBlock, RevGan, RevGanError};

use burn::config::Config;
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{Initializer, PaddingConfig3d};
use burn::tensor::backend::Backend;
use burn::tensor::ops::PadMode;
use burn::tensor::Tensor;

/// InstanceNorm3d epsilon (PyTorch default `eps = 1e-5`; ONNX `InstanceNormalization` default too).
pub const IN_EPSILON: f64 = 1e-5;
/// LeakyReLU slope of the PatchGAN discriminator (MODELS.md §1: LeakyReLU(0.2)).
pub const LEAKY_SLOPE: f64 = 0.2;
/// Standard deviation of the N(0, σ) weight initialisation (MODELS.md §1: "weights initialised
/// N(0, 0.02)", pix2pix/CycleGAN `init_type = normal`, `init_gain = 0.02`); biases start at 0.
pub const INIT_STD: f64 = 0.02;
/// Encoder/decoder outer convolution: ReplicationPad3d(2) + Conv3d(k5) (MODELS.md §1).
pub const OUTER_KERNEL: usize = 5;
pub const OUTER_PAD: usize = 2;
/// Down/up-sampling convolutions: k3, stride 2, zero pad 1, output padding 1 (MODELS.md §1).
pub const DOWN_KERNEL: usize = 3;
/// Coupling-function convolutions: ReplicationPad(1) + Conv3d(k3) (MODELS.md §1).
pub const CORE_KERNEL: usize = 3;
/// Largest learnable skip filter: its radius (7) stays within the generator's smallest receptive
/// radius (7 + 8·blocks), so the manifest's valid margin covers it.
pub const MAX_SKIP_KERNEL: usize = 15;
/// Discriminator convolutions: k4, padding 1 (MODELS.md §1, PatchGAN n_layers = 2).
pub const DISC_KERNEL: usize = 4;

/// Architecture of a 3D RevGAN (generator pair + shared core + two discriminators).
///
/// Departures from the reference (written here as MODELS.md asks):
/// - `ngf` defaults to 32 as in the chest-CT runs, but CPU training uses smaller values (`--ngf`).
/// - The discriminators' norm layer is the same affine-free instance norm as the generator's: the
///   reference uses its `--norm` option; with batch size 1 (the reference's), a training-mode batch
///   norm computes exactly the per-channel statistics of the single volume, i.e. an instance norm.
/// - The generator accepts any D, H, W: odd sizes are edge-padded by one voxel at the end of that
///   axis before the stride-2 encoder and the output is cropped back (the reference needs even
///   sizes; our daemon's tiles at a volume's edge can be odd). Even sizes are untouched.
#[derive(Config, Debug, PartialEq, clap::Args)]
pub struct RevGanConfig {
    /// Generator base channels (MODELS.md §1: ngf = 32 for the chest-CT runs).
    #[config(default = 32)]
    #[arg(long, default_value_t = 32, help = "Generator base channels (reference: 32)", long_help = None)]
    pub ngf: usize,
    /// Discriminator base channels (pix2pix/CycleGAN default ndf = 64).
    #[config(default = 64)]
    #[arg(long, default_value_t = 64, help = "Discriminator base channels (reference: 64)", long_help = None)]
    pub ndf: usize,
    /// Reversible blocks in the shared core (seed 000 Table 1: "+2R" = 2; plain rows most likely 0).
    #[config(default = 2)]
    #[arg(long, default_value_t = 2, help = "Reversible blocks in the shared core (seed 000's \"+2R\" = 2)", long_help = None)]
    pub blocks: usize,
    /// True for the paired (pix2pix) discriminator input cat(source, image), 2 channels; false for
    /// the unpaired (CycleGAN) one, 1 channel (MODELS.md §1).
    #[config(default = true)]
    #[arg(skip = true)]
    pub conditional: bool,
    /// Global residual connection (a departure from seed 000, off by default): the generator's
    /// output is `source + decoder(...)`, with the decoder's last Conv3d zero-initialised so that
    /// every generator starts as the identity, as each coupling block does. The correction a
    /// kernel or super-resolution model must learn is small next to the image itself (the sharp
    /// input is already 32.7 dB from its soft target); without the skip, the tanh decoder has to
    /// rebuild absolute HU through instance normalisations that discard each patch's mean. This is
    /// the VDSR-style global skip (Kim et al., CVPR 2016). The ablation table in the README trains
    /// both.
    #[config(default = false)]
    #[arg(long, help = "Global residual generator: output = source + decoder (see `RevGanConfig::residual`)", long_help = None)]
    pub residual: bool,
    /// In-plane size k of a learnable linear skip filter (odd, 3..=15; 0 = the plain identity
    /// skip), used with `residual`: the output is `skip(source) + decoder(...)`, the skip being
    /// an edge-padded Conv3d(1→1, kernel 1×k×k). A kernel change is, to first order, a linear
    /// in-plane filter, which the stride-2 encoder/decoder cannot represent voxel by voxel; the skip
    /// can. The A→B skip starts as the classical baseline (Gaussian σ = `skip_sigma`), the B→A
    /// skip as the identity (a delta), so the generators start as baseline and identity.
    #[config(default = 0)]
    #[arg(long, default_value_t = 0, help = "With --residual: a learnable in-plane k×k linear skip filter instead of the identity skip (odd, 3..=15; the A→B one starts as the baseline Gaussian). 0 = identity skip", long_help = None)]
    pub skip_kernel: usize,
    /// σ (px) of the A→B skip's starting Gaussian: the least-squares fit of a Gaussian MTF to the
    /// Hann/ramp filter ratio (`ct-train export-baseline`, 0.7849 px).
    #[config(default = 0.7849)]
    #[arg(skip = RevGanConfig::new().skip_sigma)]
    pub skip_sigma: f64,
    /// Depth (z taps, odd, 1..=15) of the learnable skip filter: 1 for kernel models (kernel
    /// differences are in-plane), more for super-resolution, where the skip sharpens along z too.
    #[config(default = 1)]
    #[arg(long, default_value_t = 1, help = "With --skip-kernel: z taps of the skip filter (odd; 1 = in-plane only)", long_help = None)]
    pub skip_depth: usize,
    /// Factor on the decoder's output in a residual generator (1 = none): `skip(source) +
    /// branch_scale · decoder(...)`, the residual scaling of EDSR (Lim et al., CVPRW 2017). With a
    /// skip that already starts at the baseline, Adam's first steps move all of the zero-started
    /// last convolution's weights at once and throw the output far off (measured here: L1 from
    /// 0.002 to 0.08 in one step); a small factor keeps the branch a refinement.
    #[config(default = 1.0)]
    #[arg(long, default_value_t = 1.0, help = "With --residual: factor on the decoder branch (residual scaling; 1 = none)", long_help = None)]
    pub branch_scale: f64,
}

/// Errors about a model configuration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("ngf = {0}: the generator needs an even number >= 2 of base channels (the core splits 2*ngf channels into halves)")]
    Ngf(usize),
    #[error("ndf = {0}: the discriminator needs at least 1 base channel")]
    Ndf(usize),
    #[error(
        "skip kernel {0}: expected 0 (identity skip) or an odd size from 3 to 15, with --residual"
    )]
    SkipKernel(usize),
    #[error("skip depth {0}: expected an odd number of z taps from 1 to 15, with --skip-kernel")]
    SkipDepth(usize),
    #[error("branch scale {0}: expected a positive number")]
    BranchScale(f64),
    #[error("patch {patch}: the discriminator needs at least 16 voxels per axis (two stride-2 and two k4 s1 p1 convolutions)")]
    PatchTooSmall { patch: usize },
}

impl RevGanConfig {
    /// Checks the sizes the layers need.
    pub fn validate(&self) -> Result<(), ModelError> {
        let k = self.skip_kernel;
        if k != 0 && (!self.residual || k.is_multiple_of(2) || !(3..=MAX_SKIP_KERNEL).contains(&k))
        {
            return Err(ModelError::SkipKernel(k));
        }
        let d = self.skip_depth;
        if d.is_multiple_of(2) || d > MAX_SKIP_KERNEL || (d > 1 && k == 0) {
            return Err(ModelError::SkipDepth(d));
        }
        if !(self.branch_scale.is_finite() && self.branch_scale > 0.0) {
            return Err(ModelError::BranchScale(self.branch_scale));
        }
        if self.ngf < 2 || !self.ngf.is_multiple_of(2) {
            return Err(ModelError::Ngf(self.ngf));
        }
        if self.ndf == 0 {
            return Err(ModelError::Ndf(self.ndf));
        }
        Ok(())
    }

    /// Input channels of a discriminator.
    pub fn disc_channels(&self) -> usize {
        if self.conditional {
            2
        } else {
            1
        }
    }

    /// Receptive-field radius of the generator in input voxels (per axis): ReplicationPad(2)+k5 adds
    /// 2, the k3 stride-2 convolution 1, each of the 4 k3 convolutions per reversible block (two in
    /// F, two in G) 1 voxel at half resolution = 2 input voxels, the k3 s2 transposed convolution at
    /// most 2, and the final k5 convolution 2: `7 + 8 * blocks`. Instance normalisation is global
    /// per tile, so this bounds only the convolutional part (see `export::trained`).
    pub fn receptive_radius(&self) -> usize {
        7 + 8 * self.blocks
    }
}

/// Weight initialiser N(0, [`INIT_STD`]) (MODELS.md §1).
pub fn normal_init() -> Initializer {
    Initializer::Normal {
        mean: 0.0,
        std: INIT_STD,
    }
}

pub(crate) fn zero_bias<B: Backend>(
    conv_bias: Option<Param<Tensor<B, 1>>>,
) -> Option<Param<Tensor<B, 1>>> {
    conv_bias.map(|b| {
        let [c] = b.dims();
        Param::from_tensor(Tensor::zeros([c], &b.device()))
    })
}

/// A Conv3d without padding (padding is explicit, as in the reference), bias on, N(0, 0.02) weights,
/// zero bias; `zero = true` zero-initialises the weight too (the last conv of F and G).
pub fn conv3d<B: Backend>(
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    zero_pad: usize,
    zero: bool,
    device: &B::Device,
) -> Conv3d<B> {
    let init = if zero {
        Initializer::Zeros
    } else {
        normal_init()
    };
    let mut conv = Conv3dConfig::new([cin, cout], [kernel; 3])
        .with_stride([stride; 3])
        .with_padding(PaddingConfig3d::Explicit(zero_pad, zero_pad, zero_pad))
        .with_bias(true)
        .with_initializer(init)
        .init(device);
    conv.bias = zero_bias(conv.bias);
    conv
}

/// Parameter-free instance normalisation over (D, H, W) per sample and channel (InstanceNorm3d with
/// `affine = False`, `track_running_stats = False`, MODELS.md §1): biased variance, ε = 1e-5.
///
/// `[N, C, D, H, W] -> [N, C, D, H, W]`
pub fn instance_norm<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    let mean = x.clone().mean_dim(4).mean_dim(3).mean_dim(2);
    let centered = x - mean;
    let var = centered
        .clone()
        .powi_scalar(2)
        .mean_dim(4)
        .mean_dim(3)
        .mean_dim(2);
    centered / (var + IN_EPSILON).sqrt()
}

/// Replication (edge) padding of `p` voxels on both sides of D, H and W.
///
/// `[N, C, D, H, W] -> [N, C, D + 2p, H + 2p, W + 2p]`
pub fn replication_pad<B: Backend>(x: Tensor<B, 5>, p: usize) -> Tensor<B, 5> {
    x.pad([(p, p), (p, p), (p, p)], PadMode::Edge)
}

/// Burn initialises parameters lazily, on first use, so the order of random draws (and with a
/// seeded backend, the weights themselves) would depend on which path touches a parameter first.
/// This visits every float parameter once, in module order, right after construction.
pub fn materialize<B: Backend, M: Module<B>>(module: &M) {
    struct Touch;
    impl<B: Backend> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
}

/// The shapes of every float parameter, in module order. Burn's record loading does not check
/// shapes, so loaders compare a loaded module's shapes with a freshly built one's.
pub fn param_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<Vec<usize>> {
    struct Shapes(Vec<Vec<usize>>);
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.dims().to_vec());
        }
    }
    let mut s = Shapes(Vec::new());
    module.visit(&mut s);
    s.0
}

/// Checks that a training patch is large enough for the discriminator.
pub fn check_patch(patch: usize) -> Result<(), ModelError> {
    if patch < 16 || !patch.is_multiple_of(4) {
        return Err(ModelError::PatchTooSmall { patch });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    type B = Flex;

    #[test]
    fn shapes() {
        let dev = Default::default();
        let x = Tensor::<B, 5>::random([1, 1, 8, 8, 8], Distribution::Default, &dev);
        let e = Encoder::<B>::new(4, &dev);
        let h = e.forward(x);
        assert_eq!(h.dims(), [1, 8, 4, 4, 4]);
        let d = Decoder::<B>::new(4, false, None, &dev);
        assert_eq!(d.forward(h).dims(), [1, 1, 8, 8, 8]);
        let disc = Discriminator::<B>::new(2, 2, &dev);
        let x = Tensor::<B, 5>::zeros([1, 2, 16, 16, 16], &dev);
        assert_eq!(disc.forward(x).dims(), [1, 1, 2, 2, 2]);
    }

    #[test]
    fn instance_norm_is_zero_mean_unit_variance() {
        let dev = Default::default();
        let x = Tensor::<B, 5>::random([2, 3, 4, 4, 4], Distribution::Normal(5.0, 3.0), &dev);
        let y = instance_norm(x);
        let m: Vec<f32> = y
            .clone()
            .mean_dim(4)
            .mean_dim(3)
            .mean_dim(2)
            .into_data()
            .to_vec()
            .unwrap();
        assert!(m.iter().all(|v| v.abs() < 1e-4), "{m:?}");
        let v: Vec<f32> = y
            .powi_scalar(2)
            .mean_dim(4)
            .mean_dim(3)
            .mean_dim(2)
            .into_data()
            .to_vec()
            .unwrap();
        assert!(v.iter().all(|v| (v - 1.0).abs() < 1e-3), "{v:?}");
    }

    #[test]
    fn zero_init_coupling_is_zero() {
        let dev = Default::default();
        let f = Coupling::<B>::new(2, &dev);
        let x = Tensor::<B, 5>::random([1, 2, 4, 4, 4], Distribution::Default, &dev);
        let y: Vec<f32> = f.forward(x).into_data().to_vec().unwrap();
        assert!(y.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn config_checks() {
        assert!(RevGanConfig::new().validate().is_ok());
        assert_eq!(
            RevGanConfig::new().with_ngf(3).validate(),
            Err(ModelError::Ngf(3))
        );
        assert!(check_patch(8).is_err());
        assert!(check_patch(16).is_ok());
        assert_eq!(RevGanConfig::new().with_blocks(2).receptive_radius(), 23);
        let r = RevGanConfig::new().with_residual(true);
        assert!(r.clone().with_skip_kernel(9).validate().is_ok());
        for k in [2, 1, 17] {
            assert_eq!(
                r.clone().with_skip_kernel(k).validate(),
                Err(ModelError::SkipKernel(k))
            );
        }
        assert_eq!(
            RevGanConfig::new().with_skip_kernel(9).validate(),
            Err(ModelError::SkipKernel(9))
        );
        assert_eq!(
            r.with_branch_scale(0.0).validate(),
            Err(ModelError::BranchScale(0.0))
        );
        let g = skip_taps(1, 5, Some(0.8));
        assert!((g.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(skip_taps(1, 3, None), [0., 0., 0., 0., 1., 0., 0., 0., 0.]);
        let d = skip_taps(3, 3, None);
        assert_eq!(d.len(), 27);
        assert_eq!(d[13], 1.0);
        assert_eq!(d.iter().sum::<f32>(), 1.0);
        assert_eq!(
            RevGanConfig::new()
                .with_residual(true)
                .with_skip_kernel(5)
                .with_skip_depth(2)
                .validate(),
            Err(ModelError::SkipDepth(2))
        );
    }
}
