//! Configuration of a training run, in Burn's style: one [`TrainConfig`] (a `burn::config::Config`,
//! saved as `train.json` beside the weights, and a `clap::Args` the `train` command flattens), the
//! run's enums ([`TaskArg`], [`ModeArg`], [`SkipInit`]) and the HU window that maps HU onto the
//! networks' [-1, 1] ([`HuWindow`], the one definition of that mapping and of the seed's window).
//!
//! The bottom layer of the crate: it imports nothing from the other modules.

use burn::config::Config;

/// The seed's HU window as saved in `train.json` ([`HuWindow::SEED`]).
pub const HU_WINDOW: [f32; 2] = [HuWindow::SEED.lo, HuWindow::SEED.hi];

/// An HU window whose low end is not below its high end.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("invalid HU window [{0}, {1}]: the low end must be below the high end")]
pub struct WindowError(pub f32, pub f32);

/// Linear map of an HU window onto [-1, 1] (seed 000: [-1150, 350]), clipping outside it. The one
/// definition of the HU <-> model-unit mapping: training, export, evaluation and the validation
/// pictures all go through it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HuWindow {
    pub lo: f32,
    pub hi: f32,
}

impl Default for HuWindow {
    fn default() -> Self {
        Self::SEED
    }
}

impl HuWindow {
    /// The seed's window (seed 000: "uniformly redistributed from [-1150, 350] HU" to [-1, 1]).
    pub const SEED: HuWindow = HuWindow {
        lo: -1150.0,
        hi: 350.0,
    };
    /// [`Self::SEED`] as a command-line value (`--hu-window`, `--window`).
    pub const SEED_ARG: &'static str = "-1150,350";

    pub fn new(lo: f32, hi: f32) -> Result<Self, WindowError> {
        if lo.is_finite() && hi.is_finite() && lo < hi {
            Ok(Self { lo, hi })
        } else {
            Err(WindowError(lo, hi))
        }
    }

    /// `[lo, hi]`, as saved in `train.json`.
    pub fn to_array(self) -> [f32; 2] {
        [self.lo, self.hi]
    }

    /// HU -> [-1, 1] (clipped to the window).
    pub fn to_unit(&self, hu: f32) -> f32 {
        self.to_unit_unclipped(hu.clamp(self.lo, self.hi))
    }

    /// HU -> model units by the same linear map, without clipping (thresholds outside the window).
    pub fn to_unit_unclipped(&self, hu: f32) -> f32 {
        (hu - self.lo) / (self.hi - self.lo) * 2.0 - 1.0
    }

    /// [-1, 1] -> HU.
    pub fn to_hu(&self, v: f32) -> f32 {
        (v + 1.0) * 0.5 * (self.hi - self.lo) + self.lo
    }
}

/// What a model translates.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskArg {
    /// Sharp to soft reconstruction kernel (same grid).
    Kernel,
    /// Low to high resolution; the source is resampled onto the high-resolution grid first (MODELS.md
    /// §1: "the network sees equal input and output sizes").
    Superres,
}

/// How a learnable skip filter starts (`--skip-init`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SkipInit {
    /// A→B: the baseline Gaussian (`RevGanConfig::skip_sigma`); B→A: the identity.
    Baseline,
    /// Both directions: the least-squares linear filter on the training pairs ([`crate::lsq`]).
    Lsq,
}

/// Paired (pix2pix loss) or unpaired (CycleGAN loss) training.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ModeArg {
    Paired,
    Unpaired,
}

/// Everything that decides a training run (saved as `train.json`; a resumed run must match).
#[derive(Config, Debug, PartialEq, clap::Args)]
pub struct TrainConfig {
    /// What the model translates.
    #[arg(long, value_enum, default_value = "kernel")]
    pub task: TaskArg,
    /// Paired (pix2pix loss) or unpaired (CycleGAN loss) training.
    #[arg(long, value_enum, default_value = "paired")]
    pub mode: ModeArg,
    /// Plain autodiff through the core instead of the reversible backward.
    #[config(default = false)]
    #[arg(long, help = "Plain autodiff through the core (reference for tests and the memory benchmark)", long_help = None)]
    pub naive: bool,
    /// Optimizer steps (iterations of one G step and one D step, batch 1).
    #[config(default = 1000)]
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// Cubic patch edge in voxels (seed 000: 64 kernel, 128 super-resolution; smaller on the CPU).
    #[config(default = 32)]
    #[arg(long, default_value_t = 32, help = "Cubic patch edge (multiple of 4, at least 16)", long_help = None)]
    pub patch: usize,
    #[config(default = 0)]
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Adam learning rate (MODELS.md §1: 2e-4).
    #[config(default = 2e-4)]
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Adam betas (MODELS.md §1: (0.5, 0.999)).
    #[config(default = 0.5)]
    #[arg(long, default_value_t = 0.5)]
    pub beta1: f32,
    #[config(default = 0.999)]
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f32,
    /// Paired L1 weight (MODELS.md §1: λ = 100).
    #[config(default = 100.0)]
    #[arg(long, default_value_t = 100.0, help = "Paired L1 weight", long_help = None)]
    pub lambda_l1: f64,
    /// Unpaired cycle weight (MODELS.md §1: λ = 10 per direction).
    #[config(default = 10.0)]
    #[arg(long, default_value_t = 10.0, help = "Unpaired cycle weight", long_help = None)]
    pub lambda_cycle: f64,
    /// Weight of the adversarial term in the generator loss (MODELS.md §1: 1). 0 trains the
    /// generators on the L1 / cycle term alone and skips the discriminators (a departure, used
    /// where the figure of merit is PSNR, which an adversarial term trades away).
    #[config(default = 1.0)]
    #[arg(long, default_value_t = 1.0, help = "Adversarial weight in the generator loss; 0 = L1 / cycle only, discriminators untrained", long_help = None)]
    pub lambda_gan: f64,
    /// Keep the learnable skip filters fixed at their starting taps (with `--skip-init lsq`: the
    /// least-squares filter, which is already the best linear map in the squared-error sense; Adam
    /// moves each of its hundreds of taps by about the learning rate per step, which undoes it).
    #[config(default = false)]
    #[arg(long, help = "With --skip-kernel: keep the skip filters at their starting taps (train the branch only)", long_help = None)]
    pub freeze_skip: bool,
    /// Unpaired image pool size (MODELS.md §1: 50).
    #[config(default = 50)]
    #[arg(long, default_value_t = 50)]
    pub pool_size: usize,
    /// Steps of linear learning-rate decay at the end; `None` = steps / 6.
    #[arg(long, help = "Steps of linear learning-rate decay at the end (default: steps / 6)", long_help = None)]
    pub decay_steps: Option<u64>,
    /// Steps of linear learning-rate warm-up at the start (0 = none, as the reference). Adam's
    /// first steps move every weight by about the learning rate whatever its gradient, which
    /// throws a zero-started residual branch far off at once; a warm-up avoids that.
    #[config(default = 0)]
    #[arg(long, default_value_t = 0, help = "Steps of linear learning-rate warm-up at the start (default: none)", long_help = None)]
    pub warmup_steps: u64,
    /// Steps between checkpoints (and validation pictures); 0 counts as 1.
    #[config(default = 100)]
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// HU window mapped onto [-1, 1] as "LO,HI" (seed 000: -1150,350). Input outside it is clipped,
    /// so a model meant to keep bone and metal faithful needs a wider one.
    #[config(default = "HU_WINDOW")]
    #[arg(long, default_value = HuWindow::SEED_ARG, value_parser = parse_window)]
    pub hu_window: [f32; 2],
    /// Training data: DIR/{source,target} (or sharp/soft, low/high), or one such folder per case;
    /// saved as given, as the description of the training data in the manifest's provenance.
    #[config(default = "String::new()")]
    #[arg(long, default_value = "", hide_default_value = true, help = "Training data: DIR/{source,target} (or sharp/soft, low/high), or one such folder per case (required unless --unpaired-a/--unpaired-b)", long_help = None)]
    pub data: String,
    /// Target grid / source grid per axis (z, y, x), measured from the data: `[1, 1, 1]` for the
    /// kernel task, `[4, 2, 2]` for `ct-train synth`'s thick-slice source.
    #[config(default = "[1, 1, 1]")]
    #[arg(skip = [1usize, 1, 1])]
    pub scale: [usize; 3],
    /// Start of the learnable skip filters (only with `RevGanConfig::skip_kernel` > 0).
    #[config(default = "SkipInit::Baseline")]
    #[arg(long, value_enum, default_value = "baseline", help = "With --skip-kernel: start the skip filters as the baseline Gaussian / identity, or as the least-squares linear filters fitted on the training pairs", long_help = None)]
    pub skip_init: SkipInit,
    // Options of issue 12 (seed 002-004). Each default is the training of before, bit for bit.
    /// Unpaired cycle loss: `l1` (CycleGAN) or `ssim` (`1 − 3-D SSIM`, seed 004), times
    /// `lambda_cycle`.
    #[config(default = "CycleLoss::L1")]
    #[arg(long, value_enum, default_value = "l1", help = "Unpaired cycle loss: l1, or ssim (1 - 3-D SSIM, seed 004); times --lambda-cycle", long_help = None)]
    pub cycle_loss: CycleLoss,
    /// Unpaired identity loss `lambda_identity · lambda_cycle · |G_ab(b) − b|₁` (+ B→A); CycleGAN's
    /// 0.5 (seed 004). 0 = off.
    #[config(default = 0.0)]
    #[arg(long, default_value_t = 0.0, help = "Unpaired identity loss weight, a factor of --lambda-cycle (CycleGAN: 0.5); 0 = off", long_help = None)]
    pub lambda_identity: f64,
    /// Unpaired cycle-perceptual loss weight (seed 003): L1 between the source domain's
    /// discriminator features of an input and of its cycle reconstruction. 0 = off.
    #[config(default = 0.0)]
    #[arg(long, default_value_t = 0.0, help = "Unpaired cycle-perceptual loss weight (seed 003; discriminator features); 0 = off", long_help = None)]
    pub lambda_perceptual: f64,
    /// Unpaired cycle-style loss weight (seed 003): squared distance of the Gram matrices of
    /// those features. 0 = off.
    #[config(default = 0.0)]
    #[arg(long, default_value_t = 0.0, help = "Unpaired cycle-style loss weight (seed 003; Gram matrices of discriminator features); 0 = off", long_help = None)]
    pub lambda_style: f64,
    /// Generator steps per discriminator step (seed 004: 4 worked best); 1 = every step.
    #[config(default = 1)]
    #[arg(long = "k", default_value_t = 1, help = "Generator:discriminator update ratio: the discriminators step once per K generator steps (seed 004: 4)", long_help = None)]
    pub k: u64,
    /// Generator learning rate (default: `lr`; seed 004: 1e-4), same schedule.
    #[arg(long, help = "Generator learning rate (default: --lr)", long_help = None)]
    pub lr_g: Option<f64>,
    /// Discriminator learning rate (default: `lr`; seed 004: 1e-3), same schedule.
    #[arg(long, help = "Discriminator learning rate (default: --lr)", long_help = None)]
    pub lr_d: Option<f64>,
    /// HA-GAN's amortisation (seed 002): every step also trains on the whole training volume
    /// box-averaged to low resolution, with its own L1 / cycle term and a term tying the patch's
    /// output to the low-resolution output at the patch's position.
    #[config(default = false)]
    #[arg(long, help = "HA-GAN amortised training: a low-resolution whole volume plus one high-resolution patch at its position per step", long_help = None)]
    pub amortised: bool,
    /// Low-resolution factor of the amortised mode, the same on every axis; 0 = per axis, the
    /// smallest factor that brings the volume within the patch edge.
    #[config(default = 0)]
    #[arg(long, default_value_t = 0, help = "With --amortised: downsampling factor of the whole volume (0 = per axis, the smallest that fits the patch)", long_help = None)]
    pub amortised_factor: usize,
    /// Weight of the amortised mode's low-resolution terms, relative to the patch's.
    #[config(default = 1.0)]
    #[arg(long, default_value_t = 1.0, help = "With --amortised: weight of the low-resolution whole-volume terms", long_help = None)]
    pub lambda_lowres: f64,
    /// Unpaired training on two separate sets: domain A (source) volumes, a DICOM series folder,
    /// a `.nii`/`.nii.gz` file or a folder of such (one case each).
    #[arg(long, help = "Unpaired data, domain A (source): a series folder, NIfTI file or a folder of them (with --unpaired-b, instead of --data)", long_help = None)]
    pub unpaired_a: Option<String>,
    /// Domain B (target) volumes of the unpaired sets.
    #[arg(long, help = "Unpaired data, domain B (target): as --unpaired-a", long_help = None)]
    pub unpaired_b: Option<String>,
    /// First step (0-based) whose generator loss has the adversarial term (issue 11). The
    /// discriminators train on every step with `lambda_gan` > 0, so a run resumed with the term
    /// turned on (`--resume --lambda-gan W --gan-from-step S`, S past the checkpoint's step) first
    /// trains its never-trained discriminators against the generator it has, and only then lets
    /// their verdict move the generator (a discriminator warm-up). 0 = from the first step.
    #[config(default = 0)]
    #[arg(long, default_value_t = 0, help = "First step whose generator loss has the adversarial term; the discriminators train from the first step (a discriminator warm-up when a run is resumed with --lambda-gan turned on); 0 = from the start", long_help = None)]
    pub gan_from_step: u64,
    /// Paired: the discriminators judge residuals (issue 11): `(src − skip(src), x − skip(src))`
    /// instead of `(src, x)`, `skip` the generator's own skip filter of that direction (detached),
    /// so that what differs between output and target (noise texture of a few HU) is not buried
    /// under the anatomy both share. Needs a residual generator.
    #[config(default = false)]
    #[arg(long, help = "Paired: the discriminators judge residuals, (source, image) minus the generator's skip filter of the source (residual generators only)", long_help = None)]
    pub d_residual: bool,
    /// Paired: weight of the noise-texture term in the generator loss (issue 11;
    /// [`crate::losses::texture`]): `lambda_texture · mean|local_noise(fake) − local_noise(target)|`,
    /// the local RMS of a 3³ box high-pass over 7³ windows, which matches the target's noise level
    /// without its noise realisation. 0 = off (the training of before, bit for bit).
    #[config(default = 0.0)]
    #[arg(long, default_value_t = 0.0, help = "Paired: weight of the noise-texture term (L1 between the local high-pass RMS maps of output and target); 0 = off", long_help = None)]
    pub lambda_texture: f64,
    /// Weight of the B→A direction's noise-texture term (default: `lambda_texture`). The B→A
    /// generator's target is the noisier domain: matching its noise level means making noise up
    /// from an input that holds little, against the L1 term, and through the shared reversible
    /// core that pull reaches the A→B translation too (issue 11: measured).
    #[arg(long, help = "Paired: weight of the B->A direction's noise-texture term (default: --lambda-texture)", long_help = None)]
    pub lambda_texture_ba: Option<f64>,
    /// In-plane edge of the noise-texture term's blur (odd, 3 to 15): the high-pass is the image
    /// minus its `3 × N × N` box mean, so a wider blur lets lower noise frequencies in.
    #[config(default = 3)]
    #[arg(long, default_value_t = 3, help = "Paired: in-plane edge of the noise-texture term's box blur (odd, 3-15; the high-pass is the image minus its 3 x N x N mean)", long_help = None)]
    pub texture_blur: usize,
    /// One-sided noise-texture term: only output noise above the target's counts
    /// ([`crate::losses::texture_excess`]), so the term never asks for more high-frequency energy.
    #[config(default = false)]
    #[arg(long, help = "Paired: one-sided noise-texture term, only local noise above the target's counts", long_help = None)]
    pub texture_one_sided: bool,
    /// Paired: weight of the total-variation term on the A→B output (issue 11;
    /// [`crate::losses::tv_xy`]): `lambda_tv · mean sqrt(∂x² + ∂y² + ε)` in-plane. Against a target
    /// with its own noise the L1 term's gradient in a uniform region is that noise's, so a small
    /// edge-preserving prior decides there (the target itself is a TV-blended reconstruction,
    /// `data::synth::ir`). 0 = off (the training of before, bit for bit).
    #[config(default = 0.0)]
    #[arg(long, default_value_t = 0.0, help = "Paired: weight of an in-plane total-variation term on the A->B output (edge-preserving smoothness of uniform regions); 0 = off", long_help = None)]
    pub lambda_tv: f64,
}

/// The unpaired cycle loss (`--cycle-loss`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum CycleLoss {
    /// `|x̂ − x|₁` (CycleGAN).
    L1,
    /// `1 − SSIM(x̂, x)`, 3-D, Gaussian window σ 1.5 (seed 004).
    Ssim,
}

/// An option of issue 12 out of its range, or given where it has no meaning.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptionError {
    #[error("--k 0: the generator:discriminator update ratio must be at least 1 (1 = a discriminator step every step)")]
    ZeroK,
    #[error("--{name} {value}: expected a finite weight >= 0")]
    Weight { name: &'static str, value: f64 },
    #[error("--{name} {value}: expected a finite learning rate > 0")]
    LearningRate { name: &'static str, value: f64 },
    #[error("--{name}: applies to --mode unpaired only")]
    UnpairedOnly { name: &'static str },
    #[error("--d-residual: applies to --mode paired only")]
    DResidualPaired,
    #[error("--lambda-texture: applies to --mode paired only (it compares the output with its paired target)")]
    TexturePaired,
    #[error(
        "--lambda-tv: applies to --mode paired only (the paired A->B output is what it smooths)"
    )]
    TvPaired,
    #[error("--texture-blur {0}: expected an odd edge from 3 to 15 voxels")]
    TextureBlur(usize),
    #[error("--unpaired-a and --unpaired-b go together, with --mode unpaired and --task kernel (a super-resolution source needs its pair's grid)")]
    UnpairedSets,
}

impl TrainConfig {
    /// Checks the options of issue 12 (their defaults always pass).
    pub fn check_options(&self) -> Result<(), OptionError> {
        if self.k == 0 {
            return Err(OptionError::ZeroK);
        }
        for (name, value) in [
            ("lambda-identity", self.lambda_identity),
            ("lambda-perceptual", self.lambda_perceptual),
            ("lambda-style", self.lambda_style),
            ("lambda-lowres", self.lambda_lowres),
            ("lambda-texture", self.lambda_texture),
            ("lambda-texture-ba", self.lambda_texture_ba.unwrap_or(0.0)),
            ("lambda-tv", self.lambda_tv),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(OptionError::Weight { name, value });
            }
        }
        for (name, value) in [("lr-g", self.lr_g), ("lr-d", self.lr_d)] {
            if let Some(value) = value.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(OptionError::LearningRate { name, value });
            }
        }
        if self.mode == ModeArg::Paired {
            let set = [
                ("lambda-identity", self.lambda_identity > 0.0),
                ("lambda-perceptual", self.lambda_perceptual > 0.0),
                ("lambda-style", self.lambda_style > 0.0),
                ("cycle-loss", self.cycle_loss != CycleLoss::L1),
            ];
            if let Some((name, _)) = set.iter().find(|(_, on)| *on) {
                return Err(OptionError::UnpairedOnly { name });
            }
        }
        if self.d_residual && self.mode != ModeArg::Paired {
            return Err(OptionError::DResidualPaired);
        }
        let blur = self.texture_blur;
        if blur.is_multiple_of(2) || !(3..=crate::losses::TEXTURE_BLUR_MAX).contains(&blur) {
            return Err(OptionError::TextureBlur(blur));
        }
        if self.texture_on() && self.mode != ModeArg::Paired {
            return Err(OptionError::TexturePaired);
        }
        if self.lambda_tv > 0.0 && self.mode != ModeArg::Paired {
            return Err(OptionError::TvPaired);
        }
        let sets = (self.unpaired_a.is_some(), self.unpaired_b.is_some());
        if sets.0 != sets.1
            || (sets.0 && (self.mode != ModeArg::Unpaired || self.task != TaskArg::Kernel))
        {
            return Err(OptionError::UnpairedSets);
        }
        Ok(())
    }

    /// Weights of the noise-texture term of the A→B and B→A directions (issue 11).
    pub fn texture_weights(&self) -> [f64; 2] {
        [
            self.lambda_texture,
            self.lambda_texture_ba.unwrap_or(self.lambda_texture),
        ]
    }

    /// Whether either direction has the noise-texture term.
    pub fn texture_on(&self) -> bool {
        self.texture_weights().iter().any(|w| *w > 0.0)
    }

    /// Weight of the generator's adversarial term at `step` (0-based): `lambda_gan` from
    /// `gan_from_step` on, 0 before.
    pub fn lambda_gan_at(&self, step: u64) -> f64 {
        if step < self.gan_from_step {
            0.0
        } else {
            self.lambda_gan
        }
    }

    /// Whether the unpaired data come from two separate sets (`--unpaired-a/-b`).
    pub fn separate_domains(&self) -> bool {
        self.unpaired_a.is_some() && self.unpaired_b.is_some()
    }

    /// Generator learning rate at `step`: [`Self::lr_at`]'s schedule on `lr_g` (default `lr`).
    pub fn lr_g_at(&self, step: u64) -> f64 {
        self.scheduled(self.lr_g.unwrap_or(self.lr), step)
    }

    /// Discriminator learning rate at `step`: [`Self::lr_at`]'s schedule on `lr_d` (default `lr`).
    pub fn lr_d_at(&self, step: u64) -> f64 {
        self.scheduled(self.lr_d.unwrap_or(self.lr), step)
    }
}

impl TrainConfig {
    /// Learning rate at `step` (0-based): linear from lr / warm-up steps up to lr over the warm-up,
    /// constant, then linear to 0 over the last decay steps.
    pub fn lr_at(&self, step: u64) -> f64 {
        self.scheduled(self.lr, step)
    }

    /// The schedule of [`Self::lr_at`] on a base rate `lr`.
    fn scheduled(&self, lr: f64, step: u64) -> f64 {
        let warm = if step < self.warmup_steps {
            (step + 1) as f64 / self.warmup_steps as f64
        } else {
            1.0
        };
        warm * self.decayed_lr(lr, step)
    }

    fn decayed_lr(&self, lr: f64, step: u64) -> f64 {
        let decay = self
            .decay_steps
            .unwrap_or(self.steps / 6)
            .clamp(1, self.steps.max(1));
        let start = self.steps.saturating_sub(decay);
        if step < start {
            lr
        } else {
            lr * (self.steps - step) as f64 / (decay + 1) as f64
        }
    }
}

/// Parses "LO,HI" into an HU window (LO < HI, both finite).
pub fn parse_window(s: &str) -> Result<[f32; 2], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| x.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{s:?}: {e}"))?;
    match v[..] {
        [lo, hi] if lo.is_finite() && hi.is_finite() && lo < hi => Ok([lo, hi]),
        _ => Err(format!("{s:?}: expected LO,HI with LO < HI")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn window_maps_onto_unit_range() {
        let w = HuWindow::default();
        assert_eq!(w.to_unit(-1150.0), -1.0);
        assert_eq!(w.to_unit(350.0), 1.0);
        assert_eq!(w.to_unit(-2000.0), -1.0);
        assert_eq!(w.to_unit(3000.0), 1.0);
        assert!((w.to_hu(w.to_unit(-400.0)) + 400.0).abs() < 1e-3);
        assert!(HuWindow::new(10.0, -10.0).is_err());
    }

    #[test]
    fn the_seed_window_is_one_value() {
        assert_eq!(parse_window(HuWindow::SEED_ARG), Ok(HU_WINDOW));
        assert_eq!(HuWindow::SEED.to_array(), HU_WINDOW);
        assert_eq!(
            TrainConfig::new(TaskArg::Kernel, ModeArg::Paired).hu_window,
            HU_WINDOW
        );
    }

    #[test]
    fn lr_schedule_decays_linearly_to_zero() {
        let c = TrainConfig::new(TaskArg::Kernel, ModeArg::Paired)
            .with_steps(12)
            .with_decay_steps(Some(3));
        assert_eq!(c.lr_at(0), 2e-4);
        assert_eq!(c.lr_at(8), 2e-4);
        assert!((c.lr_at(9) - 2e-4 * 3.0 / 4.0).abs() < 1e-12);
        assert!((c.lr_at(11) - 2e-4 / 4.0).abs() < 1e-12);
    }

    #[test]
    fn issue_12_options_default_to_todays_training_and_are_checked() {
        let c = TrainConfig::new(TaskArg::Kernel, ModeArg::Unpaired).with_steps(12);
        assert_eq!(c.check_options(), Ok(()));
        assert_eq!((c.k, c.cycle_loss, c.amortised), (1, CycleLoss::L1, false));
        for s in 0..12 {
            assert_eq!(c.lr_g_at(s).to_bits(), c.lr_at(s).to_bits());
            assert_eq!(c.lr_d_at(s).to_bits(), c.lr_at(s).to_bits());
        }
        let sep = c.clone().with_lr_g(Some(1e-4)).with_lr_d(Some(1e-3));
        assert_eq!(sep.lr_g_at(0), 1e-4);
        assert_eq!(sep.lr_d_at(0), 1e-3);
        assert!((sep.lr_d_at(11) - 1e-3 / 3.0).abs() < 1e-15);
        let e = c.clone().with_k(0).check_options().unwrap_err();
        assert_eq!(e, OptionError::ZeroK);
        assert!(e.to_string().contains("--k 0"), "{e}");
        assert!(matches!(
            c.clone().with_lambda_style(-1.0).check_options(),
            Err(OptionError::Weight {
                name: "lambda-style",
                ..
            })
        ));
        assert!(matches!(
            c.clone().with_lr_d(Some(0.0)).check_options(),
            Err(OptionError::LearningRate { name: "lr-d", .. })
        ));
        let paired = TrainConfig::new(TaskArg::Kernel, ModeArg::Paired);
        assert_eq!(
            paired
                .clone()
                .with_cycle_loss(CycleLoss::Ssim)
                .check_options(),
            Err(OptionError::UnpairedOnly { name: "cycle-loss" })
        );
        assert_eq!(
            c.clone().with_unpaired_a(Some("x".into())).check_options(),
            Err(OptionError::UnpairedSets)
        );
        let both = c
            .with_unpaired_a(Some("x".into()))
            .with_unpaired_b(Some("y".into()));
        assert_eq!(both.check_options(), Ok(()));
        assert!(both.separate_domains());
        let mut superres = both;
        superres.task = TaskArg::Superres;
        assert_eq!(superres.check_options(), Err(OptionError::UnpairedSets));
    }

    #[test]
    fn lambda_texture_defaults_to_off_and_rejects_bad_weights() {
        let c = TrainConfig::new(TaskArg::Kernel, ModeArg::Paired);
        assert_eq!(c.lambda_texture, 0.0);
        assert_eq!(c.clone().with_lambda_texture(100.0).check_options(), Ok(()));
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let e = c
                .clone()
                .with_lambda_texture(bad)
                .check_options()
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    OptionError::Weight {
                        name: "lambda-texture",
                        ..
                    }
                ),
                "{bad}: {e:?}"
            );
            assert!(e.to_string().starts_with("--lambda-texture "), "{e}");
            assert!(e.to_string().contains("finite weight >= 0"), "{e}");
        }
        assert_eq!(c.texture_weights(), [0.0, 0.0]);
        let one_way = c
            .clone()
            .with_lambda_texture(300.0)
            .with_lambda_texture_ba(Some(0.0));
        assert_eq!(one_way.texture_weights(), [300.0, 0.0]);
        assert_eq!(
            c.clone().with_lambda_texture(3.0).texture_weights(),
            [3.0, 3.0]
        );
        assert!(matches!(
            c.clone().with_lambda_texture_ba(Some(-2.0)).check_options(),
            Err(OptionError::Weight {
                name: "lambda-texture-ba",
                ..
            })
        ));
        for bad in [0, 2, 4, 17] {
            let e = c
                .clone()
                .with_texture_blur(bad)
                .check_options()
                .unwrap_err();
            assert_eq!(e, OptionError::TextureBlur(bad));
            assert!(
                e.to_string().contains(&format!("--texture-blur {bad}")),
                "{e}"
            );
        }
        assert_eq!(c.clone().with_texture_blur(7).check_options(), Ok(()));
        let unpaired =
            TrainConfig::new(TaskArg::Kernel, ModeArg::Unpaired).with_lambda_texture(1.0);
        assert_eq!(unpaired.check_options(), Err(OptionError::TexturePaired));
        // The total-variation term likewise (issue 11), and its weight is checked like the others.
        let mut tv = TrainConfig::new(TaskArg::Kernel, ModeArg::Unpaired);
        tv.lambda_tv = 1.0;
        assert_eq!(tv.check_options(), Err(OptionError::TvPaired));
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let mut t = TrainConfig::new(TaskArg::Kernel, ModeArg::Paired);
            t.lambda_tv = bad;
            assert!(
                matches!(
                    t.check_options(),
                    Err(OptionError::Weight {
                        name: "lambda-tv",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        // A train.json of before (no such key) reads as 0: trainer::run's
        // resume_accepts_a_new_lambda_texture.
    }

    #[test]
    fn lr_warms_up_linearly() {
        let c = TrainConfig::new(TaskArg::Kernel, ModeArg::Paired)
            .with_steps(100)
            .with_warmup_steps(4);
        assert!((c.lr_at(0) - 2e-4 / 4.0).abs() < 1e-12);
        assert!((c.lr_at(2) - 2e-4 * 3.0 / 4.0).abs() < 1e-12);
        assert_eq!(c.lr_at(3), 2e-4);
        assert_eq!(c.lr_at(50), 2e-4);
    }
}
