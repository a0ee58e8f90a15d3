//! One training iteration's generator half: the paired (pix2pix) and unpaired (CycleGAN) generator
//! losses and their gradients, with the reversible core's memory-efficient backward
//! ([`crate::model::revgan`]) or plain autodiff (`naive`). Gradients are accumulated into one
//! [`GradientsParams`] for both directions; the caller takes the optimizer step.
//!
//! Tensors: patches are `[1, 1, P, P, P]` (model units); discriminator outputs are patch logits
//! `[1, 1, P/4 - 2, P/4 - 2, P/4 - 2]`; losses are `[1]`.

use super::TrainError;
use crate::config::{CycleLoss, TrainConfig};
use crate::losses::{
    bce_logits, box_down, l1, mse_const, perceptual, ssim_loss, style, texture_excess,
    texture_with, tv_xy,
};
use crate::model::{CoreSegment, Direction, Discriminator, Discriminators, RevGan, RevGanError};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

pub(crate) fn scalar<B: Backend>(t: &Tensor<B, 1>) -> f64 {
    t.clone().into_scalar().elem::<f64>()
}

/// Loss values of one step (for the CSV and the progress line).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepLosses {
    /// Generator adversarial terms A→B and B→A.
    pub gan_ab: f64,
    pub gan_ba: f64,
    /// L1 (paired) or cycle (unpaired) terms, already weighted by λ: A→B (or A→B→A) and B→A.
    pub rec_ab: f64,
    pub rec_ba: f64,
    /// Discriminator losses.
    pub d_a: f64,
    pub d_b: f64,
    /// Noise-texture terms A→B and B→A (issue 11), already weighted by `lambda_texture`; 0 when
    /// off.
    pub tex_ab: f64,
    pub tex_ba: f64,
    /// The total-variation term of the A→B output (issue 11), weighted by `lambda_tv`; 0 when off.
    pub tv_ab: f64,
}

impl StepLosses {
    pub fn generator(&self) -> f64 {
        self.gan_ab
            + self.gan_ba
            + self.rec_ab
            + self.rec_ba
            + self.tex_ab
            + self.tex_ba
            + self.tv_ab
    }
}

/// The core as a tracked tensor (`naive`) or a detached [`CoreSegment`] whose leaf stands in.
fn core_stage<B: AutodiffBackend>(
    gen: &RevGan<B>,
    dir: Direction,
    h: Tensor<B, 5>,
    naive: bool,
) -> (Tensor<B, 5>, Option<CoreSegment<B>>) {
    if naive {
        (gen.core_forward(dir, h), None)
    } else {
        let seg = gen.core_detached(dir, h);
        (seg.leaf.clone(), Some(seg))
    }
}

/// Backward of a stage loss whose graph may read a core segment's leaf: merges the generators'
/// gradients into `acc`, then runs the reversible backward and the encoder's backward.
fn backward_stage<B: AutodiffBackend>(
    gen: &RevGan<B>,
    loss: Tensor<B, 1>,
    seg: Option<CoreSegment<B>>,
    acc: &mut GradientsParams,
) -> Result<B::Gradients, TrainError> {
    let mut grads = loss.backward();
    gen.absorb(&mut grads, acc);
    if let Some(seg) = seg {
        let sur = gen.core_surrogate(seg, &grads, acc)?;
        let mut g = sur.backward();
        gen.absorb(&mut g, acc);
    }
    Ok(grads)
}

/// Values of one paired direction's generator terms (each weighted) and its output.
pub struct PairedTerms<B: Backend> {
    pub gan: f64,
    pub rec: f64,
    pub texture: f64,
    pub tv: f64,
    pub fake: Tensor<B, 5>,
}

/// Generator gradients of one paired direction:
/// `BCE(D(src, fake), 1) + λ·|fake − tgt| + λ_texture·texture(fake, tgt)` (the last only with
/// a texture weight > 0 for `dir`: without it the loss and its graph are those of before).
pub fn paired_generator<B: AutodiffBackend>(
    gen: &RevGan<B>,
    disc: &Discriminators<B>,
    dir: Direction,
    src: Tensor<B, 5>,
    tgt: Tensor<B, 5>,
    cfg: &TrainConfig,
    acc: &mut GradientsParams,
) -> Result<PairedTerms<B::InnerBackend>, TrainError> {
    let h = gen.encode(dir, src.clone());
    let (core_out, seg) = core_stage(gen, dir, h, cfg.naive);
    // [1, 1, P, P, P]
    let fake = gen.decode(dir, core_out, src.clone());
    // [1]; texture: local noise maps [1, 1, P - 8, P - b - 5, P - b - 5] compared (b the blur)
    let [w_ab, w_ba] = cfg.texture_weights();
    let w_tex = match dir {
        Direction::AtoB => w_ab,
        Direction::BtoA => w_ba,
    };
    let tex = (w_tex > 0.0).then(|| {
        let (f, t, blur) = (fake.clone(), tgt.clone(), cfg.texture_blur);
        let term = if cfg.texture_one_sided {
            texture_excess(f, t, blur)
        } else {
            texture_with(f, t, blur)
        };
        term * w_tex
    });
    // [1]; A→B only: the B→A target is the sharp, noisy domain.
    let tv = (dir == Direction::AtoB && cfg.lambda_tv > 0.0)
        .then(|| tv_xy(fake.clone()) * cfg.lambda_tv);
    let rec = l1(fake.clone(), tgt) * cfg.lambda_l1;
    let gan = (cfg.lambda_gan > 0.0).then(|| {
        bce_logits(
            disc.target(dir)
                .forward(gen.disc_input(dir, src, fake.clone(), cfg.d_residual)),
            1.0,
        )
    });
    let values = (
        gan.as_ref().map_or(0.0, scalar),
        scalar(&rec),
        tex.as_ref().map_or(0.0, scalar),
        tv.as_ref().map_or(0.0, scalar),
    );
    let rest = match tex {
        Some(t) => rec + t,
        None => rec,
    };
    let rest = match tv {
        Some(t) => rest + t,
        None => rest,
    };
    backward_stage(gen, with_adversarial(rest, gan, cfg), seg, acc)?;
    Ok(PairedTerms {
        gan: values.0,
        rec: values.1,
        texture: values.2,
        tv: values.3,
        fake: fake.inner(),
    })
}

/// Generator gradients of one unpaired cycle `src → fake → rec`:
/// `MSE(D(fake), 1) + λ·|rec − src|`. Returns (gan, weighted cycle, fake) values.
pub fn unpaired_generator<B: AutodiffBackend>(
    gen: &RevGan<B>,
    disc: &Discriminators<B>,
    dir: Direction,
    src: Tensor<B, 5>,
    cfg: &TrainConfig,
    acc: &mut GradientsParams,
) -> Result<(f64, f64, Tensor<B::InnerBackend, 5>), TrainError> {
    let back = dir.reverse();
    if cfg.naive {
        let fake = gen.forward_even(dir, src.clone());
        let rec = gen.forward_even(back, fake.clone());
        let gan = adversarial(disc.target(dir), fake.clone(), cfg);
        let cyc = cycle_term(disc.target(back), rec, src, cfg);
        let values = (gan.as_ref().map_or(0.0, scalar), scalar(&cyc));
        backward_stage(gen, with_adversarial(cyc, gan, cfg), None, acc)?;
        return Ok((values.0, values.1, fake.inner()));
    }
    // Stage 1: src -> fake (its core detached); stage 2: fake (as a leaf) -> rec.
    let h1 = gen.encode(dir, src.clone());
    let (o1, seg1) = core_stage(gen, dir, h1, false);
    let fake = gen.decode(dir, o1, src.clone());
    let gan = adversarial(disc.target(dir), fake.clone(), cfg);
    // The fake image enters stage 2 twice when the generator is residual (encoder input and skip);
    // each path gets its own leaf, since each backward pass consumes the graph it walks.
    let fake_leaf = Tensor::<B, 5>::from_inner(fake.clone().inner()).require_grad();
    let skip_leaf = Tensor::<B, 5>::from_inner(fake.clone().inner()).require_grad();
    let h2 = gen.encode(back, fake_leaf.clone());
    let (o2, seg2) = core_stage(gen, back, h2, false);
    let rec = gen.decode(back, o2, skip_leaf.clone());
    let cyc = cycle_term(disc.target(back), rec, src, cfg);
    let values = (gan.as_ref().map_or(0.0, scalar), scalar(&cyc));
    // Stage 2's backward (its core, then its encoder) gives the gradient at the fake image ...
    let mut grads = cyc.backward();
    let g_skip = skip_leaf.grad(&grads);
    gen.absorb(&mut grads, acc);
    let sur2 = match seg2 {
        Some(seg) => gen.core_surrogate(seg, &grads, acc)?,
        None => return Err(RevGanError::MissingGradient("the cycle's core").into()),
    };
    let mut g2 = sur2.backward();
    let mut g_fake = fake_leaf
        .grad(&g2)
        .ok_or(RevGanError::MissingGradient("the translated image"))?;
    if let Some(g) = g_skip {
        g_fake = g_fake + g;
    }
    gen.absorb(&mut g2, acc);
    // ... which stage 1 backpropagates together with the adversarial term.
    let through = (fake.clone() * Tensor::from_inner(g_fake)).sum();
    let stage1 = with_adversarial(through, gan, cfg);
    backward_stage(gen, stage1, seg1, acc)?;
    Ok((values.0, values.1, fake.inner()))
}

/// The unpaired cycle term of a reconstruction `rec` of `src`: `λ_cycle·|rec − src|₁` (or
/// `λ_cycle·(1 − SSIM)` with `cycle_loss = ssim`, seed 004), plus the cycle-perceptual and
/// cycle-style terms (seed 003) on the feature maps of `phi`, the discriminator of `src`'s domain.
/// With the defaults it is the plain L1 term, computed as before.
pub fn cycle_term<B: AutodiffBackend>(
    phi: &Discriminator<B>,
    rec: Tensor<B, 5>,
    src: Tensor<B, 5>,
    cfg: &TrainConfig,
) -> Tensor<B, 1> {
    let perceptual_on = cfg.lambda_perceptual > 0.0 || cfg.lambda_style > 0.0;
    let features = perceptual_on.then(|| (phi.features(src.clone()), phi.features(rec.clone())));
    let mut cyc = match cfg.cycle_loss {
        CycleLoss::L1 => l1(rec, src) * cfg.lambda_cycle,
        CycleLoss::Ssim => ssim_loss(rec, src) * cfg.lambda_cycle,
    };
    if let Some((fx, fr)) = features {
        if cfg.lambda_perceptual > 0.0 {
            cyc = cyc + perceptual(&fx, &fr) * cfg.lambda_perceptual;
        }
        if cfg.lambda_style > 0.0 {
            cyc = cyc + style(&fx, &fr) * cfg.lambda_style;
        }
    }
    cyc
}

/// Generator gradients of the unpaired identity loss of direction `dir` (CycleGAN, seed 004):
/// `lambda_identity·lambda_cycle·|G(x) − x|₁` with `x` from `dir`'s target domain. Returns its
/// value.
pub fn identity_generator<B: AutodiffBackend>(
    gen: &RevGan<B>,
    dir: Direction,
    x: Tensor<B, 5>,
    cfg: &TrainConfig,
    acc: &mut GradientsParams,
) -> Result<f64, TrainError> {
    let h = gen.encode(dir, x.clone());
    let (core_out, seg) = core_stage(gen, dir, h, cfg.naive);
    let same = gen.decode(dir, core_out, x.clone());
    let loss = l1(same, x) * (cfg.lambda_identity * cfg.lambda_cycle);
    let value = scalar(&loss);
    backward_stage(gen, loss, seg, acc)?;
    Ok(value)
}

/// Where a high-resolution patch's translation sits in the low-resolution whole volume (the
/// amortised mode's position): the patch's translation (no gradient), the factor per axis, the
/// low-resolution voxels the patch covers and their first index.
pub struct Anchor<B: Backend> {
    pub fake_patch: Tensor<B, 5>,
    pub factor: [usize; 3],
    pub cells: [usize; 3],
    pub low_origin: [usize; 3],
}

/// What the low-resolution term of [`lowres_generator`] compares: a paired low-resolution
/// target, the patch's [`Anchor`], and the weight of their sum.
pub struct LowTerms<B: AutodiffBackend> {
    pub target: Option<Tensor<B, 5>>,
    pub anchor: Option<Anchor<B::InnerBackend>>,
    pub weight: f64,
}

/// Generator gradients of the amortised mode's low-resolution term for `dir` (HA-GAN, seed 002):
/// the generator on the whole low-resolution source `low`, then
/// `weight·(|G(low) − target|₁ + |G(low)[at the patch] − boxavg(G(patch))|₁)`, the first part
/// when a paired low-resolution `target` is given, the second (the position term: the whole
/// volume's translation must agree with the patch's at the patch's place) when `anchor` is.
/// Returns its value.
pub fn lowres_generator<B: AutodiffBackend>(
    gen: &RevGan<B>,
    dir: Direction,
    low: Tensor<B, 5>,
    terms: LowTerms<B>,
    cfg: &TrainConfig,
    acc: &mut GradientsParams,
) -> Result<f64, TrainError> {
    let LowTerms {
        target,
        anchor,
        weight,
    } = terms;
    let h = gen.encode(dir, low.clone());
    let (core_out, seg) = core_stage(gen, dir, h, cfg.naive);
    let fake = gen.decode(dir, core_out, low.clone());
    let mut loss: Option<Tensor<B, 1>> = target.map(|t| l1(fake.clone(), t));
    if let Some(a) = anchor {
        let (c, o) = (a.cells, a.low_origin);
        let span = [c[0] * a.factor[0], c[1] * a.factor[1], c[2] * a.factor[2]];
        let patch = a
            .fake_patch
            .slice([0..1, 0..1, 0..span[0], 0..span[1], 0..span[2]]);
        let pooled = Tensor::<B, 5>::from_inner(box_down(patch, a.factor));
        let at = fake.slice([
            0..1,
            0..1,
            o[0]..o[0] + c[0],
            o[1]..o[1] + c[1],
            o[2]..o[2] + c[2],
        ]);
        let t = l1(at, pooled);
        loss = Some(match loss {
            Some(l) => l + t,
            None => t,
        });
    }
    let Some(loss) = loss else {
        return Ok(0.0);
    };
    let loss = loss * weight;
    let value = scalar(&loss);
    backward_stage(gen, loss, seg, acc)?;
    Ok(value)
}

/// The unpaired generator's adversarial term `MSE(D(fake), 1)` (LSGAN), or `None` when
/// `lambda_gan` is 0.
fn adversarial<B: AutodiffBackend>(
    disc: &Discriminator<B>,
    fake: Tensor<B, 5>,
    cfg: &TrainConfig,
) -> Option<Tensor<B, 1>> {
    (cfg.lambda_gan > 0.0).then(|| mse_const(disc.forward(fake), 1.0))
}

/// `rest + lambda_gan · gan` (just `rest` without an adversarial term).
fn with_adversarial<B: Backend>(
    rest: Tensor<B, 1>,
    gan: Option<Tensor<B, 1>>,
    cfg: &TrainConfig,
) -> Tensor<B, 1> {
    match gan {
        Some(g) => g * cfg.lambda_gan + rest,
        None => rest,
    }
}
