//! The 3-D PatchGAN discriminators (seed 000; `shared/MODELS.md` §1). Tensors are NCDHW.

use super::{
    conv3d, instance_norm, materialize, Direction, RevGanConfig, DISC_KERNEL, LEAKY_SLOPE,
};
use burn::module::Module;
use burn::nn::conv::Conv3d;
use burn::tensor::activation::leaky_relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// 3-D PatchGAN discriminator, n_layers = 2 (MODELS.md §1): Conv3d(k4, s2, p1, ndf) + LeakyReLU(0.2);
/// Conv3d(k4, s2, p1, 2ndf) + IN + LeakyReLU; Conv3d(k4, s1, p1, 4ndf) + IN + LeakyReLU;
/// Conv3d(k4, s1, p1, 1). Outputs logits (paired: BCE with a sigmoid; unpaired: LSGAN).
#[derive(Module, Debug)]
pub struct Discriminator<B: Backend> {
    pub conv1: Conv3d<B>,
    pub conv2: Conv3d<B>,
    pub conv3: Conv3d<B>,
    pub conv4: Conv3d<B>,
}

impl<B: Backend> Discriminator<B> {
    pub fn new(in_channels: usize, ndf: usize, device: &B::Device) -> Self {
        Self {
            conv1: conv3d(in_channels, ndf, DISC_KERNEL, 2, 1, false, device),
            conv2: conv3d(ndf, 2 * ndf, DISC_KERNEL, 2, 1, false, device),
            conv3: conv3d(2 * ndf, 4 * ndf, DISC_KERNEL, 1, 1, false, device),
            conv4: conv3d(4 * ndf, 1, DISC_KERNEL, 1, 1, false, device),
        }
    }

    /// `[N, Cin, D, H, W] -> [N, 1, D/4 - 2, H/4 - 2, W/4 - 2]` patch logits (D, H, W multiples
    /// of 4, at least 16)
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let x = leaky_relu(self.conv1.forward(x), LEAKY_SLOPE);
        let x = leaky_relu(instance_norm(self.conv2.forward(x)), LEAKY_SLOPE);
        let x = leaky_relu(instance_norm(self.conv3.forward(x)), LEAKY_SLOPE);
        self.conv4.forward(x)
    }

    /// The three intermediate feature maps φ_1..φ_3 (the activations after the first three
    /// layers, the same computation as [`Self::forward`] before its last convolution): the
    /// feature extractor of the cycle-perceptual and cycle-style losses (seed 003, with our own
    /// discriminator since no pre-trained network is available offline) and of the Fréchet
    /// distance ([`crate::fd`]).
    ///
    /// `[N, Cin, D, H, W] -> [[N, ndf, D/2, ..], [N, 2ndf, D/4, ..], [N, 4ndf, D/4 - 1, ..]]`
    pub fn features(&self, x: Tensor<B, 5>) -> [Tensor<B, 5>; 3] {
        let f1 = leaky_relu(self.conv1.forward(x), LEAKY_SLOPE);
        let f2 = leaky_relu(instance_norm(self.conv2.forward(f1.clone())), LEAKY_SLOPE);
        let f3 = leaky_relu(instance_norm(self.conv3.forward(f2.clone())), LEAKY_SLOPE);
        [f1, f2, f3]
    }
}

/// Both discriminators: `a` judges domain A images, `b` domain B images.
#[derive(Module, Debug)]
pub struct Discriminators<B: Backend> {
    pub a: Discriminator<B>,
    pub b: Discriminator<B>,
}

impl<B: Backend> Discriminators<B> {
    pub fn new(cfg: &RevGanConfig, device: &B::Device) -> Self {
        let d = Self {
            a: Discriminator::new(cfg.disc_channels(), cfg.ndf, device),
            b: Discriminator::new(cfg.disc_channels(), cfg.ndf, device),
        };
        materialize(&d);
        d
    }

    /// The discriminator of `dir`'s target domain.
    pub fn target(&self, dir: Direction) -> &Discriminator<B> {
        match dir {
            Direction::AtoB => &self.b,
            Direction::BtoA => &self.a,
        }
    }
}
