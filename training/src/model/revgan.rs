//! The 3D RevGAN generator pair with its shared reversible core (seed 000; `shared/MODELS.md` §1),
//! and the memory-efficient reversible backward pass.
//!
//! `A → B`: `enc_a`, the core's blocks 0..N forward, `dec_b`. `B → A`: `enc_b`, the core's blocks
//! N-1..0 each inverted, `dec_a`. A block is an additive coupling on the channel halves:
//! `y1 = x1 + F(x2)`, `y2 = x2 + G(y1)`; inverse `x2 = y2 − G(y1)`, `x1 = y1 − F(x2)`.
//!
//! # Reversible backward
//!
//! Plain autodiff keeps every block's activations until the backward pass. Here the core runs
//! without autodiff ([`RevGan::core_detached`]: on `model.valid()`, the inner backend); the decoder
//! reads a fresh leaf tensor standing in for the core's output. Once the loss graph downstream of
//! that leaf has been backpropagated, [`RevGan::core_surrogate`] walks the blocks from the last one
//! applied to the first: it rebuilds the block's input from its output with the block's inverse,
//! re-runs that one block with autodiff on a fresh leaf, backpropagates `sum(y · ∂L/∂y)`, reads
//! `∂L/∂x` from the leaf and merges the block's parameter gradients into one [`GradientsParams`].
//! It finally returns `sum(h · ∂L/∂h)` for the encoder output `h`, whose backward pass gives the
//! encoder its gradients. Only one block's activations are alive at a time, so activation memory
//! does not grow with depth (seed 000, Table 2).

use super::{materialize, skip_conv, skip_taps, Coupling, Decoder, Encoder, RevGanConfig};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::PadMode;
use burn::tensor::Tensor;

/// Errors of the reversible backward pass.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RevGanError {
    #[error(
        "the reversible backward pass found no gradient for {0}: the loss does not depend on it"
    )]
    MissingGradient(&'static str),
    #[error(
        "cannot grow a core of {from} reversible blocks into one of {to}: a core only grows \
         (new blocks are appended after the trained ones)"
    )]
    FewerBlocks { from: usize, to: usize },
}

/// Translation direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Domain A (source, e.g. sharp kernel / low resolution) to domain B (target).
    AtoB,
    /// Domain B to domain A (the core run inverted).
    BtoA,
}

impl Direction {
    pub fn reverse(self) -> Self {
        match self {
            Direction::AtoB => Direction::BtoA,
            Direction::BtoA => Direction::AtoB,
        }
    }
}

/// One reversible additive-coupling block on `2c` channels (`c = ngf`).
#[derive(Module, Debug)]
pub struct RevBlock<B: Backend> {
    pub f: Coupling<B>,
    pub g: Coupling<B>,
}

impl<B: Backend> RevBlock<B> {
    pub fn new(half_channels: usize, device: &B::Device) -> Self {
        Self {
            f: Coupling::new(half_channels, device),
            g: Coupling::new(half_channels, device),
        }
    }

    fn halves(x: Tensor<B, 5>) -> (Tensor<B, 5>, Tensor<B, 5>) {
        let c = x.dims()[1] / 2;
        (x.clone().narrow(1, 0, c), x.narrow(1, c, c))
    }

    /// `[N, 2c, d, h, w] -> [N, 2c, d, h, w]`: `y1 = x1 + F(x2)`, `y2 = x2 + G(y1)`
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let (x1, x2) = Self::halves(x);
        let y1 = x1 + self.f.forward(x2.clone());
        let y2 = x2 + self.g.forward(y1.clone());
        Tensor::cat(vec![y1, y2], 1)
    }

    /// This block made exactly the identity: the last convolution (weight and bias) of F and of G
    /// set to zero, so `F = G = 0` and `y = x` (forward and inverse). `conv1` keeps its weights, so
    /// the first gradient step reaches `conv2` (its input, `relu(IN(conv1(·)))`, is not zero).
    pub fn into_identity(mut self) -> Self {
        for c in [&mut self.f.conv2, &mut self.g.conv2] {
            let w = c.weight.val();
            c.weight = Param::from_tensor(w.zeros_like());
            c.bias = super::zero_bias(c.bias.take());
        }
        self
    }

    /// `[N, 2c, d, h, w] -> [N, 2c, d, h, w]`: `x2 = y2 − G(y1)`, `x1 = y1 − F(x2)`
    pub fn inverse(&self, y: Tensor<B, 5>) -> Tensor<B, 5> {
        let (y1, y2) = Self::halves(y);
        let x2 = y2 - self.g.forward(y1.clone());
        let x1 = y1 - self.f.forward(x2.clone());
        Tensor::cat(vec![x1, x2], 1)
    }
}

/// Both generators of a 3D RevGAN: per-domain encoders and decoders around one shared core.
#[derive(Module, Debug)]
pub struct RevGan<B: Backend> {
    pub enc_a: Encoder<B>,
    pub dec_a: Decoder<B>,
    pub enc_b: Encoder<B>,
    pub dec_b: Decoder<B>,
    pub core: Vec<RevBlock<B>>,
    /// [`RevGanConfig::residual`]: the output is the source plus the decoder's output.
    pub residual: bool,
    /// [`RevGanConfig::branch_scale`].
    pub branch_scale: f64,
}

impl<B: Backend> RevGan<B> {
    /// A freshly initialised generator pair (N(0, 0.02) weights, zero-initialised last convs of F
    /// and G). Call `B::seed` first for reproducible weights.
    pub fn new(cfg: &RevGanConfig, device: &B::Device) -> Self {
        // The skip filters: B→A starts as the identity, A→B as the baseline Gaussian.
        let skip = |sigma: Option<f64>| {
            (cfg.skip_kernel > 0).then(|| {
                let (d, k) = (cfg.skip_depth, cfg.skip_kernel);
                skip_conv(d, k, skip_taps(d, k, sigma), device)
            })
        };
        let m = Self {
            enc_a: Encoder::new(cfg.ngf, device),
            dec_a: Decoder::new(cfg.ngf, cfg.residual, skip(None), device),
            enc_b: Encoder::new(cfg.ngf, device),
            dec_b: Decoder::new(cfg.ngf, cfg.residual, skip(Some(cfg.skip_sigma)), device),
            core: (0..cfg.blocks)
                .map(|_| RevBlock::new(cfg.ngf, device))
                .collect(),
            residual: cfg.residual,
            branch_scale: cfg.branch_scale,
        };
        materialize(&m);
        m
    }

    /// Grows a trained generator pair `old` into this one (built for more blocks, e.g. fresh from
    /// [`Self::new`]): every parameter of `old` (encoders, decoders with their skip filters, its
    /// `k` blocks, keeping their [`burn::module::ParamId`]s so an optimizer record still finds them)
    /// followed by this model's blocks `k..` made exactly the identity ([`RevBlock::into_identity`]).
    /// A→B runs the old blocks then the new ones, B→A the new ones' inverses (the identity) then
    /// the old ones': both generators compute what `old` computed, until training moves the new
    /// blocks. Errors when `old` has more blocks than this model.
    pub fn grown_from(self, old: RevGan<B>) -> Result<Self, RevGanError> {
        let (from, to) = (old.core.len(), self.core.len());
        if from > to {
            return Err(RevGanError::FewerBlocks { from, to });
        }
        let mut core = old.core;
        core.extend(
            self.core
                .into_iter()
                .skip(from)
                .map(RevBlock::into_identity),
        );
        Ok(Self {
            enc_a: old.enc_a,
            dec_a: old.dec_a,
            enc_b: old.enc_b,
            dec_b: old.dec_b,
            core,
            residual: old.residual,
            branch_scale: old.branch_scale,
        })
    }

    /// The source domain's encoder: `[N, 1, D, H, W] -> [N, 2ngf, D/2, H/2, W/2]` (D, H, W even)
    pub fn encode(&self, dir: Direction, x: Tensor<B, 5>) -> Tensor<B, 5> {
        match dir {
            Direction::AtoB => self.enc_a.forward(x),
            Direction::BtoA => self.enc_b.forward(x),
        }
    }

    /// The paired discriminator's input for the image `x` translated (or to be translated) from
    /// `src` in direction `dir`: `(src, x)`, or with `residual` (`--d-residual`) and a residual
    /// generator `(src − s, x − s)`, `s` this direction's skip filter of `src` (detached):
    /// `[N, 1, D, H, W], [N, 1, D, H, W] -> [N, 2, D, H, W]`
    pub fn disc_input(
        &self,
        dir: Direction,
        src: Tensor<B, 5>,
        x: Tensor<B, 5>,
        residual: bool,
    ) -> Tensor<B, 5> {
        if !(residual && self.residual) {
            return Tensor::cat(vec![src, x], 1);
        }
        let dec = match dir {
            Direction::AtoB => &self.dec_b,
            Direction::BtoA => &self.dec_a,
        };
        let s = dec.skip_forward(src.clone()).detach();
        Tensor::cat(vec![src - s.clone(), x - s], 1)
    }

    /// The target domain's decoder, plus the source image `src` when the generator is residual:
    /// `[N, 2ngf, D/2, H/2, W/2], [N, 1, D, H, W] -> [N, 1, D, H, W]`
    pub fn decode(&self, dir: Direction, h: Tensor<B, 5>, src: Tensor<B, 5>) -> Tensor<B, 5> {
        let dec = match dir {
            Direction::AtoB => &self.dec_b,
            Direction::BtoA => &self.dec_a,
        };
        let y = dec.forward(h);
        if !self.residual {
            y
        } else if self.branch_scale == 1.0 {
            y + dec.skip_forward(src)
        } else {
            y * self.branch_scale + dec.skip_forward(src)
        }
    }

    /// The core, forward (A→B) or inverted (B→A): `[N, 2ngf, d, h, w] -> [N, 2ngf, d, h, w]`
    pub fn core_forward(&self, dir: Direction, mut h: Tensor<B, 5>) -> Tensor<B, 5> {
        match dir {
            Direction::AtoB => {
                for b in &self.core {
                    h = b.forward(h);
                }
            }
            Direction::BtoA => {
                for b in self.core.iter().rev() {
                    h = b.inverse(h);
                }
            }
        }
        h
    }

    /// Encoder, core and decoder on even sizes:
    /// `[N, 1, D, H, W] -> [N, 1, D, H, W]` (D, H, W even)
    pub fn forward_even(&self, dir: Direction, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let h = self.core_forward(dir, self.encode(dir, x.clone()));
        self.decode(dir, h, x)
    }

    /// The whole generator for any size: axes of odd length are edge-padded by one voxel at their
    /// end, translated, and cropped back (the exported ONNX graph does the same).
    /// `[N, 1, D, H, W] -> [N, 1, D, H, W]`
    pub fn forward(&self, dir: Direction, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [n, c, d, h, w] = x.dims();
        let (pd, ph, pw) = (d % 2, h % 2, w % 2);
        if pd + ph + pw == 0 {
            return self.forward_even(dir, x);
        }
        let x = x.pad([(0, pd), (0, ph), (0, pw)], PadMode::Edge);
        self.forward_even(dir, x)
            .slice([0..n, 0..c, 0..d, 0..h, 0..w])
    }
}

/// (a value, the loss gradient at it) on the inner backend.
type InnerPair<B> = (
    Tensor<<B as AutodiffBackend>::InnerBackend, 5>,
    Tensor<<B as AutodiffBackend>::InnerBackend, 5>,
);

/// A core run without autodiff: the encoder output `input` (tracked), the core's output (inner
/// backend) and the fresh leaf the decoder reads instead of it.
pub struct CoreSegment<B: AutodiffBackend> {
    pub dir: Direction,
    pub input: Tensor<B, 5>,
    pub output: Tensor<B::InnerBackend, 5>,
    pub leaf: Tensor<B, 5>,
}

/// Adds every gradient of `add` into `acc` (summing where both hold one), for the parameters of
/// the visited module.
struct MergeGrads<'a> {
    acc: &'a mut GradientsParams,
    add: &'a mut GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for MergeGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(g) = self.add.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        let sum = match self.acc.remove::<B::InnerBackend, D>(param.id) {
            Some(a) => a + g,
            None => g,
        };
        self.acc.register::<B::InnerBackend, D>(param.id, sum);
    }
}

/// Merges `add` into `acc` for the parameters of `module`.
pub fn merge_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    acc: &mut GradientsParams,
    mut add: GradientsParams,
    module: &M,
) {
    let mut v = MergeGrads { acc, add: &mut add };
    module.visit(&mut v);
}

impl<B: AutodiffBackend> RevGan<B> {
    /// Moves this module's parameter gradients out of `grads` into `acc` (summing).
    pub fn absorb(&self, grads: &mut B::Gradients, acc: &mut GradientsParams) {
        let add = GradientsParams::from_module(grads, self);
        merge_grads(acc, add, self);
    }

    /// Runs the core without autodiff on the encoder output `input`:
    /// `[N, 2ngf, d, h, w] -> CoreSegment` whose `leaf` is `[N, 2ngf, d, h, w]`.
    pub fn core_detached(&self, dir: Direction, input: Tensor<B, 5>) -> CoreSegment<B> {
        let mut h = input.clone().inner();
        match dir {
            Direction::AtoB => {
                for b in &self.core {
                    h = b.valid().forward(h);
                }
            }
            Direction::BtoA => {
                for b in self.core.iter().rev() {
                    h = b.valid().inverse(h);
                }
            }
        }
        let leaf = Tensor::from_inner(h.clone()).require_grad();
        CoreSegment {
            dir,
            input,
            output: h,
            leaf,
        }
    }

    /// Backpropagates through one block applied as `op` (forward or inverse), given that
    /// operation's output and the loss gradient at it; returns (the operation's input, the
    /// gradient at it) and merges the block's parameter gradients into `acc`.
    fn block_backward(
        &self,
        block: &RevBlock<B>,
        inverse_op: bool,
        out: Tensor<B::InnerBackend, 5>,
        grad_out: Tensor<B::InnerBackend, 5>,
        acc: &mut GradientsParams,
    ) -> Result<InnerPair<B>, RevGanError> {
        let valid = block.valid();
        // Rebuild the operation's input from its output.
        let input = if inverse_op {
            valid.forward(out)
        } else {
            valid.inverse(out)
        };
        let leaf = Tensor::<B, 5>::from_inner(input.clone()).require_grad();
        let y = if inverse_op {
            block.inverse(leaf.clone())
        } else {
            block.forward(leaf.clone())
        };
        let mut grads = (y * Tensor::from_inner(grad_out)).sum().backward();
        let grad_in = leaf
            .grad(&grads)
            .ok_or(RevGanError::MissingGradient("a reversible block's input"))?;
        self.absorb(&mut grads, acc);
        Ok((input, grad_in))
    }

    /// The reversible backward pass of `seg`: `grads` must come from a backward pass of a loss
    /// that reads `seg.leaf`. Merges the core's parameter gradients into `acc` and returns the
    /// scalar `sum(seg.input · ∂L/∂input)`, whose backward pass gives the encoder its gradients.
    pub fn core_surrogate(
        &self,
        seg: CoreSegment<B>,
        grads: &B::Gradients,
        acc: &mut GradientsParams,
    ) -> Result<Tensor<B, 1>, RevGanError> {
        let mut g = seg
            .leaf
            .grad(grads)
            .ok_or(RevGanError::MissingGradient("the core's output"))?;
        let mut out = seg.output;
        match seg.dir {
            // Applied blocks 0..N forward: undo N-1..0.
            Direction::AtoB => {
                for b in self.core.iter().rev() {
                    (out, g) = self.block_backward(b, false, out, g, acc)?;
                }
            }
            // Applied inverses of N-1..0: undo 0..N.
            Direction::BtoA => {
                for b in &self.core {
                    (out, g) = self.block_backward(b, true, out, g, acc)?;
                }
            }
        }
        Ok((seg.input * Tensor::from_inner(g)).sum())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::ParamId;
    use burn::nn::conv::Conv3d;
    use burn::tensor::{Distribution, TensorData};

    type I = Flex;
    type A = Autodiff<Flex>;

    /// Collects (id, flattened gradient) for every float parameter.
    struct Collect<'a> {
        grads: &'a GradientsParams,
        out: Vec<(ParamId, Vec<f32>)>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                self.out
                    .push((param.id, g.into_data().convert::<f32>().to_vec().unwrap()));
            }
        }
    }

    /// A model whose zero-initialised convs are randomised, so every block does something.
    fn model(blocks: usize) -> RevGan<A> {
        model_with(blocks, false)
    }

    /// A generator pair whose zero-initialised convolutions are randomised (so that every
    /// parameter gets a gradient).
    fn model_with(blocks: usize, residual: bool) -> RevGan<A> {
        let dev = Default::default();
        A::seed(&dev, 7);
        let cfg = RevGanConfig::new()
            .with_ngf(4)
            .with_blocks(blocks)
            .with_residual(residual);
        let mut m = RevGan::<A>::new(&cfg, &dev);
        let mut zeroed: Vec<&mut Conv3d<A>> = vec![&mut m.dec_a.conv_out, &mut m.dec_b.conv_out];
        for b in &mut m.core {
            zeroed.push(&mut b.f.conv2);
            zeroed.push(&mut b.g.conv2);
        }
        for c in zeroed {
            let dims = c.weight.dims();
            c.weight =
                Param::from_tensor(Tensor::random(dims, Distribution::Normal(0.0, 0.1), &dev));
        }
        m
    }

    #[test]
    fn residual_generator_starts_as_the_identity() {
        let _serial = crate::autodiff_serial();
        let dev = Default::default();
        let cfg = RevGanConfig::new()
            .with_ngf(4)
            .with_blocks(1)
            .with_residual(true);
        let m = RevGan::<I>::new(&cfg, &dev);
        let x = Tensor::<I, 5>::random([1, 1, 6, 8, 8], Distribution::Normal(0.0, 0.5), &dev);
        for dir in [Direction::AtoB, Direction::BtoA] {
            let err = (m.forward(dir, x.clone()) - x.clone())
                .abs()
                .max()
                .into_scalar();
            assert!(err < 1e-6, "{dir:?}: |G(x) - x| = {err}");
        }
        // With a learnable skip: A→B starts as the baseline Gaussian (a constant stays constant,
        // an impulse spreads in-plane only), B→A as the identity.
        let m = RevGan::<I>::new(&cfg.with_skip_kernel(5).with_branch_scale(0.1), &dev);
        let err = (m.forward(Direction::BtoA, x.clone()) - x.clone())
            .abs()
            .max()
            .into_scalar();
        assert!(err < 1e-6, "B→A: |G(x) - x| = {err}");
        let c = Tensor::<I, 5>::full([1, 1, 4, 8, 8], 0.3, &dev);
        let err = (m.forward(Direction::AtoB, c.clone()) - c)
            .abs()
            .max()
            .into_scalar();
        assert!(err < 1e-5, "A→B of a constant: {err}");
        let mut imp = vec![0f32; 4 * 8 * 8];
        imp[(2 * 8 + 4) * 8 + 4] = 1.0;
        let imp = Tensor::<I, 5>::from_data(TensorData::new(imp, [1, 1, 4, 8, 8]), &dev);
        let y: Vec<f32> = m
            .forward(Direction::AtoB, imp)
            .into_data()
            .to_vec()
            .unwrap();
        let at = |z: usize, yy: usize, xx: usize| y[(z * 8 + yy) * 8 + xx];
        assert!(at(2, 4, 4) < 0.5 && at(2, 4, 5) > 0.05 && at(1, 4, 4).abs() < 1e-6);
    }

    fn flat<B: AutodiffBackend>(m: &RevGan<B>, g: &GradientsParams) -> Vec<(ParamId, Vec<f32>)> {
        let mut c = Collect {
            grads: g,
            out: Vec::new(),
        };
        m.visit(&mut c);
        c.out
    }

    #[test]
    fn inverse_undoes_forward() {
        let _serial = crate::autodiff_serial();
        let m = model(2).valid();
        let dev = Default::default();
        let h = Tensor::<I, 5>::random([1, 8, 4, 4, 4], Distribution::Normal(0.0, 1.0), &dev);
        let y = m.core_forward(Direction::AtoB, h.clone());
        assert!((y.clone() - h.clone()).abs().max().into_scalar() > 1e-3);
        let back = m.core_forward(Direction::BtoA, y);
        let err = (back - h).abs().max().into_scalar();
        assert!(err < 1e-5, "inverse(forward(x)) differs by {err}");
    }

    #[test]
    fn odd_sizes_round_trip_shape() {
        let _serial = crate::autodiff_serial();
        let m = model(1).valid();
        let dev = Default::default();
        let x = Tensor::<I, 5>::random([1, 1, 5, 6, 7], Distribution::Default, &dev);
        assert_eq!(m.forward(Direction::AtoB, x).dims(), [1, 1, 5, 6, 7]);
    }

    /// Reversible gradients equal plain autodiff gradients, in both directions and through a
    /// cycle (A→B→A), for every parameter.
    #[test]
    fn reversible_gradients_equal_autodiff() {
        let _serial = crate::autodiff_serial();
        check_reversible_gradients(model(2));
    }

    #[test]
    fn reversible_gradients_equal_autodiff_with_residual() {
        let _serial = crate::autodiff_serial();
        check_reversible_gradients(model_with(2, true));
    }

    fn check_reversible_gradients(m: RevGan<A>) {
        let dev = Default::default();
        let x = Tensor::<A, 5>::random([1, 1, 8, 8, 8], Distribution::Normal(0.0, 0.5), &dev);
        let t = Tensor::<A, 5>::random([1, 1, 8, 8, 8], Distribution::Normal(0.0, 0.5), &dev);

        // Plain autodiff: L = |G_ab(x) - t| + |G_ba(G_ab(x)) - x|.
        let fake = m.forward_even(Direction::AtoB, x.clone());
        let rec = m.forward_even(Direction::BtoA, fake.clone());
        let loss = (fake - t.clone()).abs().mean() + (rec - x.clone()).abs().mean();
        let naive = GradientsParams::from_grads(loss.backward(), &m);

        // Reversible, stage by stage.
        let mut acc = GradientsParams::new();
        let h1 = m.encode(Direction::AtoB, x.clone());
        let s1 = m.core_detached(Direction::AtoB, h1);
        let fake = m.decode(Direction::AtoB, s1.leaf.clone(), x.clone());
        let fake_leaf = Tensor::<A, 5>::from_inner(fake.clone().inner()).require_grad();
        let skip_leaf = Tensor::<A, 5>::from_inner(fake.clone().inner()).require_grad();
        let h2 = m.encode(Direction::BtoA, fake_leaf.clone());
        let s2 = m.core_detached(Direction::BtoA, h2);
        let rec = m.decode(Direction::BtoA, s2.leaf.clone(), skip_leaf.clone());
        let mut g = (rec - x).abs().mean().backward();
        let g_skip = skip_leaf.grad(&g);
        assert_eq!(g_skip.is_some(), m.residual);
        m.absorb(&mut g, &mut acc);
        let sur2 = m.core_surrogate(s2, &g, &mut acc).unwrap();
        let mut g = sur2.backward();
        let mut g_fake = fake_leaf.grad(&g).unwrap();
        if let Some(s) = g_skip {
            g_fake = g_fake + s;
        }
        m.absorb(&mut g, &mut acc);
        let stage1 = (fake.clone() - t).abs().mean() + (fake * Tensor::from_inner(g_fake)).sum();
        let mut g = stage1.backward();
        m.absorb(&mut g, &mut acc);
        let sur1 = m.core_surrogate(s1, &g, &mut acc).unwrap();
        let mut g = sur1.backward();
        m.absorb(&mut g, &mut acc);

        let (a, b) = (flat(&m, &naive), flat(&m, &acc));
        assert_eq!(a.len(), b.len());
        assert_eq!(a.len(), m.num_params_tensors());
        let mut worst = 0f32;
        let mut scale = 0f32;
        for ((ia, ga), (ib, gb)) in a.iter().zip(&b) {
            assert_eq!(ia, ib);
            for (u, v) in ga.iter().zip(gb) {
                worst = worst.max((u - v).abs());
                scale = scale.max(u.abs());
            }
        }
        assert!(scale > 0.0);
        assert!(
            worst <= 1e-4 * scale.max(1.0),
            "max |naive - reversible| = {worst} (largest gradient {scale})"
        );
    }

    /// A 2-block pair (every convolution randomised) grown to 4 blocks: its new blocks are
    /// exactly the identity, so both generators give the old outputs on a random volume, and the
    /// old parameters are carried over with their ids.
    fn grown(from: usize, to: usize) -> (RevGan<A>, RevGan<A>) {
        let old = model_with(from, true);
        let cfg = RevGanConfig::new()
            .with_ngf(4)
            .with_blocks(to)
            .with_residual(true);
        let fresh = RevGan::<A>::new(&cfg, &Default::default());
        let g = fresh.grown_from(old.clone()).unwrap();
        (old, g)
    }

    #[test]
    fn grown_generator_computes_what_the_old_one_did() {
        let _serial = crate::autodiff_serial();
        let (old, g) = grown(2, 4);
        assert_eq!(g.core.len(), 4);
        let (old, g) = (old.valid(), g.valid());
        let dev = Default::default();
        let x = Tensor::<I, 5>::random([1, 1, 8, 10, 12], Distribution::Normal(0.0, 0.5), &dev);
        for dir in [Direction::AtoB, Direction::BtoA] {
            let a = old.forward(dir, x.clone());
            let b = g.forward(dir, x.clone());
            let moved = (a.clone() - x.clone()).abs().max().into_scalar();
            assert!(
                moved > 1e-3,
                "{dir:?}: the old model is not trivial ({moved})"
            );
            let err = (a - b).abs().max().into_scalar();
            assert!(
                err <= 1e-5,
                "{dir:?}: grown differs from the old model by {err}"
            );
        }
        // Every old parameter kept its value and its id (an optimizer record still finds it).
        let ids = |m: &RevGan<I>| {
            let mut c = Ids(Vec::new());
            m.visit(&mut c);
            c.0
        };
        let (a, b) = (ids(&old), ids(&g));
        assert!(b.len() > a.len());
        for (id, v) in &a {
            let found = b.iter().find(|p| p.0 == *id).map(|p| &p.1);
            assert_eq!(found, Some(v), "parameter {id:?} was not carried over");
        }
        // The new blocks' last convolutions are zero, their first ones are not.
        for blk in &g.core[2..] {
            for c in [&blk.f, &blk.g] {
                let w2 = c.conv2.weight.val().abs().max().into_scalar();
                let b2 = c
                    .conv2
                    .bias
                    .as_ref()
                    .unwrap()
                    .val()
                    .abs()
                    .max()
                    .into_scalar();
                let w1 = c.conv1.weight.val().abs().max().into_scalar();
                assert!(w2 == 0.0 && b2 == 0.0 && w1 > 0.0, "{w2} {b2} {w1}");
            }
        }
    }

    /// (id, values) of every float parameter, in module order.
    struct Ids(Vec<(ParamId, Vec<f32>)>);
    impl<B: Backend> ModuleVisitor<B> for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let v = param.val().into_data().convert::<f32>().to_vec().unwrap();
            self.0.push((param.id, v));
        }
    }

    /// Bad input: a core cannot shrink.
    #[test]
    fn growing_into_fewer_blocks_is_refused() {
        let _serial = crate::autodiff_serial();
        let old = model_with(2, true);
        let cfg = RevGanConfig::new()
            .with_ngf(4)
            .with_blocks(1)
            .with_residual(true);
        let fresh = RevGan::<A>::new(&cfg, &Default::default());
        let e = fresh.grown_from(old).unwrap_err();
        assert_eq!(e, RevGanError::FewerBlocks { from: 2, to: 1 });
        assert!(
            e.to_string().contains("2 reversible blocks into one of 1"),
            "{e}"
        );
        // As many blocks: a plain copy.
        let (old, same) = grown(2, 2);
        assert_eq!(same.core.len(), old.core.len());
    }

    /// The reversible backward of a grown model (identity blocks appended) still equals plain
    /// autodiff, and so does that of a grown model whose new blocks have moved.
    #[test]
    fn reversible_gradients_equal_autodiff_grown() {
        let _serial = crate::autodiff_serial();
        let (_, g) = grown(2, 4);
        check_reversible_gradients(g);
        let (_, mut g) = grown(1, 3);
        let dev = Default::default();
        for blk in &mut g.core[1..] {
            for c in [&mut blk.f.conv2, &mut blk.g.conv2] {
                let dims = c.weight.dims();
                c.weight =
                    Param::from_tensor(Tensor::random(dims, Distribution::Normal(0.0, 0.1), &dev));
            }
        }
        check_reversible_gradients(g);
    }

    trait CountTensors {
        fn num_params_tensors(&self) -> usize;
    }
    impl<B: AutodiffBackend> CountTensors for RevGan<B> {
        fn num_params_tensors(&self) -> usize {
            struct N(usize);
            impl<B: Backend> ModuleVisitor<B> for N {
                fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<B, D>>) {
                    self.0 += 1;
                }
            }
            let mut n = N(0);
            self.visit(&mut n);
            n.0
        }
    }
}
