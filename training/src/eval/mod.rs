//! `ct-train eval`: how close translators get to the target on held-out simulated pairs, next to the
//! classical alternatives, in one table (printed and written as CSV).
//!
//! **Data.** `--pairs DIR` holds one folder per case as `ct-train synth` writes them: `sharp`, `soft`
//! and optionally `thick`, each a DICOM series folder or a `.nii` / `.nii.gz` file. The kernel task
//! maps `sharp` to `soft`; super-resolution maps `thick` (4× z, 2× x/y coarser) to `soft`.
//!
//! **Methods.** Models run through the daemon's own inference code (`ModelDir::open`, which checks the
//! ONNX hash, then `Translator::open`, `plan` and `translate` slab by slab with the valid-core tiling),
//! so the figures are what the daemon would produce. Baselines for kernels, each tuned or fitted on
//! the `--tune` volumes only (a set of cases disjoint from the held-out ones, on the same voxel
//! grid: another grid is an error naming both, `--allow-grid-mismatch` turns it into a warning),
//! selected by `--baselines`: the identity (the sharp input itself); a Gaussian low-pass whose
//! in-plane σ and z σ are tuned separately, in that order, by grid search (minimum MSE; edge
//! padding, kernels truncated at `ceil(3σ)` as the shipped baseline does); the best linear filter,
//! a least-squares d×k×k FIR plus bias (`--fir 3x9x9`, [`crate::lsq::fit_fir`]: a constant or
//! ill-conditioned tuning set is an error, not a baseline); and TV denoising (Chambolle 2004)
//! followed by the Gaussian, λ and σ tuned jointly ([`baselines::tune_tv`]). For super-resolution
//! trilinear and tricubic (Keys, a = -0.5) upsampling, voxel centres aligned
//! (`src = (dst + 0.5)/f - 0.5`, edges clamped).
//!
//! **Metrics** ([`crate::metrics`]). Output and target are mapped through the HU window to [-1, 1] and clipped, as the
//! networks see them. MAE; PSNR with data range 2 (`10 log10(4 / MSE)`); 3-D SSIM with a Gaussian
//! window σ = 1.5 truncated at radius 5 (`int(3.5 σ + 0.5)`, scikit-image's default), population
//! covariances, K1 = 0.01, K2 = 0.03, data range 2, mirror-reflected borders and the mean taken after
//! cropping the 5-voxel border (as `skimage.metrics.structural_similarity(gaussian_weights=True)`).
//! Emphysema index (LAA-950): percent of lung voxels under -950 HU, in the output and in the target,
//! over one lung mask taken from the target: per axial slice, voxels under -500 HU that are not
//! connected (4-neighbourhood, through voxels under -500 HU) to the slice border — i.e. air inside the
//! body — restricted to in-plane connected regions of at least 300 mm² (this drops the trachea, main
//! bronchi and bowel gas). Reported only when the mask holds at least 1 % of the volume (not for
//! head CT).
//!
//! **Physics figures** ([`figures`], [`crate::physics`]; off with `--no-physics`), on ROIs fixed per
//! case from the target (`--roi` side, `--max-rois` per class): noise std in soft-tissue and lung
//! ROIs (output / target ratio), the radially averaged NPS of the soft-tissue ROIs (peak and mean
//! frequency ratio, relative L2 distance to the target's), Perc15 of the lung (error in HU) with the
//! emphysema index, both with Bland–Altman bias and limits of agreement over the cases (mean rows),
//! MTF50 on a simulated rod phantom ([`edge`]; ratio to the soft reconstruction's), and texture
//! reproducibility: the share of (feature, ROI class) with Lin's CCC ≥ 0.85 between output and
//! target over the ROIs (34 IBSI first-order and GLCM features × soft tissue and lung).
//! **QC inserts.** When the pairs' `synth.toml` records a case's quality-control inserts
//! (`[case.inserts]`, [`load_inserts`]; realistic `ct-train synth` phantoms), that case is measured
//! on them ([`crate::physics::insert_rois`]): noise std over the water cylinder's region clear of
//! the rod and over the lung-foam cylinder's (pixel centres 2 px inside the walls, every slice), on
//! the residual after the per-pixel mean over the slices (ICRU 87 ensemble subtraction, the
//! inserts being the same on every slice); the NPS (on that residual) on square ROIs of the
//! largest multiple of 4, at least 8 px, that fit the water region, one per slice, else the lung
//! foam's (a region holding no such square is a warning naming the case and the insert: at 128²
//! the water cylinder, 9 px in radius around a 2.8-px rod, holds none); the table prints per case
//! what was used. Texture CCC stays on the automatic ROIs (uniform inserts differ by noise only:
//! their CCC is about 0 for every method). MTF50 comes from each case's own rod
//! ([`crate::physics::mtf_rod_insert`]) in every row, the mean rows averaging the cases; the rod
//! phantom stays the figure for cases without inserts. An insert outside the image, or a
//! malformed `[case.inserts]`, is an error naming `synth.toml`, the case and the insert or key.
//! `ct-train eval` also draws `<csv stem>-nps.png` (mean NPS curves) and
//! `<csv stem>-bland-altman.png` (emphysema index per method) beside the CSV.
//!
//! Files: this module (options, the run, the CLI), [`cases`] (held-out cases, running a model),
//! [`baselines`] (the tuned classical baselines) and [`tv`] (TV denoising), [`figures`] and
//! [`edge`] (physics figures, the MTF phantom), [`report`] (table, CSV, manifest rows).

pub mod baselines;
pub mod cases;
pub mod edge;
pub mod figures;
pub mod report;
pub mod tv;

pub use baselines::{fit_linear, tune_gaussian, tune_tv, GaussianTuning, LinearTuning, TvTuning};
pub use cases::{load_cases, load_inserts, run_model, Case};
pub use figures::{Physics, PhysicsOptions};
pub use report::{format_table, manifest_rows, record_in_manifest, write_csv, EvalReport, Row};

use crate::config::HuWindow;
use crate::data::{DataError, Volume};
use crate::export::trained::data_label;
use crate::lib_bridge::{
    ConfigError, Manifest, ManifestError, ModelDir, ModelKind, Settings, Task, TranslateError,
    Translator,
};
use crate::lsq::LsqError;
use crate::metrics::{lung_mask, metrics, Metrics};
use crate::physics::NpsCurve;
use crate::resample::{upsample, Interp};
use figures::{ccc_counts, ccc_structure_counts, mean_physics, CaseRef, ClassFeatures};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Errors evaluating. Each names the file or folder and the reason.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("model {dir}: {source}")]
    Model { dir: PathBuf, source: ManifestError },
    #[error("model {dir}: {source}")]
    Translate {
        dir: PathBuf,
        source: TranslateError,
    },
    #[error(transparent)]
    Config(Box<ConfigError>),
    #[error("{path}: {reason}")]
    Pairs { path: PathBuf, reason: String },
    #[error("{0}")]
    Shape(String),
    #[error("tuning case {tuning} is on another grid than held-out case {case}: voxel size {tuning_grid} against {case_grid}; the baselines are tuned in voxels and do not transfer (tune on cases of the held-out grid, or pass --allow-grid-mismatch)")]
    Grid {
        tuning: PathBuf,
        tuning_grid: String,
        case: PathBuf,
        case_grid: String,
    },
    #[error("{what} fitted on {path} ({cases}): {source}")]
    Baseline {
        what: &'static str,
        path: PathBuf,
        cases: String,
        #[source]
        source: LsqError,
    },
    #[error("{0}")]
    Option(String),
    #[error("--fd-features: {0}")]
    Fd(#[from] crate::fd::FdError),
    #[error(transparent)]
    Plot(Box<crate::plots::PlotError>),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: case {case}: {reason}")]
    Inserts {
        path: PathBuf,
        case: String,
        reason: String,
    },
    #[error("{path}: case {case}: {source}")]
    InsertRoi {
        path: PathBuf,
        case: String,
        #[source]
        source: crate::physics::RoiError,
    },
}

/// `ct-train eval` options.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub pairs: PathBuf,
    pub models: Vec<PathBuf>,
    pub csv: PathBuf,
    /// Volumes for tuning the baselines (the eval pairs themselves when `None`).
    pub tune: Option<PathBuf>,
    pub window: HuWindow,
    /// Daemon settings file (defaults + environment when `None`).
    pub config: Option<PathBuf>,
    /// Which kernel baselines run beside the identity.
    pub baselines: Baselines,
    /// Support of the least-squares FIR: (depth in z, in-plane size).
    pub fir: (usize, usize),
    /// Voxels drawn for the least-squares fit.
    pub fir_samples: usize,
    /// Physics figures (`None`: MAE, PSNR, SSIM and the emphysema index only).
    pub physics: Option<PhysicsOptions>,
    /// Warn instead of failing when the tuning cases are on another voxel grid.
    pub allow_grid_mismatch: bool,
    /// A RevGAN kernel run whose discriminator gives the Fréchet distance's features
    /// ([`crate::fd::FdExtractor`]; `None`: no FD).
    pub fd_features: Option<PathBuf>,
    /// Each kernel model's output also TV-denoised after it (issue 11: what an edge-preserving
    /// post-filter adds to a trained model): `(lambda HU, blend strength)` per extra row.
    pub post_tv: Vec<(f64, f32)>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            pairs: PathBuf::new(),
            models: Vec::new(),
            csv: PathBuf::new(),
            tune: None,
            window: HuWindow::default(),
            config: None,
            baselines: Baselines::default(),
            fir: (3, 9),
            fir_samples: DEFAULT_FIR_SAMPLES,
            physics: Some(PhysicsOptions::default()),
            allow_grid_mismatch: false,
            fd_features: None,
            post_tv: Vec::new(),
        }
    }
}

/// Voxels drawn for the least-squares FIR by default (a 3×9×9 filter has 244 unknowns).
pub const DEFAULT_FIR_SAMPLES: usize = 100_000;

/// The kernel baselines that run (the identity always does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Baselines {
    pub gaussian: bool,
    pub linear: bool,
    pub tv: bool,
}

impl Default for Baselines {
    fn default() -> Self {
        Self {
            gaussian: true,
            linear: true,
            tv: true,
        }
    }
}

impl Baselines {
    /// Parses a comma-separated list of `identity`, `gaussian`, `linear`, `tv`.
    pub fn parse(s: &str) -> Result<Self, EvalError> {
        let mut b = Self {
            gaussian: false,
            linear: false,
            tv: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "identity" => {}
                "gaussian" => b.gaussian = true,
                "linear" => b.linear = true,
                "tv" => b.tv = true,
                other => {
                    return Err(EvalError::Option(format!(
                        "--baselines {s:?}: unknown baseline {other:?}; use identity, gaussian, linear, tv"
                    )))
                }
            }
        }
        Ok(b)
    }
}

/// Parses `--fir DxKxK` (in-plane sides equal and odd, depth odd).
pub fn parse_fir(s: &str) -> Result<(usize, usize), EvalError> {
    let v: Vec<Option<usize>> = s.split('x').map(|p| p.trim().parse().ok()).collect();
    match v.as_slice() {
        [Some(d), Some(k), Some(k2)] if k == k2 && d % 2 == 1 && k % 2 == 1 => Ok((*d, *k)),
        _ => Err(EvalError::Option(format!(
            "--fir {s:?}: expected DxKxK with odd D and K, e.g. 3x9x9"
        ))),
    }
}

fn grid_text(v: &Volume) -> String {
    format!(
        "{:.4}x{:.4}x{:.4} mm (z, y, x; shape {:?})",
        v.spacing[0], v.spacing[1], v.spacing[2], v.shape
    )
}

/// Same voxel size within 1 % on every axis.
fn same_grid(a: &Volume, b: &Volume) -> bool {
    a.spacing
        .iter()
        .zip(&b.spacing)
        .all(|(x, y)| (x - y).abs() <= 0.01 * x.abs().max(y.abs()))
}

/// Refuses (or, when allowed, warns about) tuning cases on another voxel grid than a held-out
/// case.
fn check_grids(
    tune_dir: &Path,
    tuning: &[&Case],
    pairs_dir: &Path,
    held_out: &[&Case],
    allow: bool,
) -> Result<(), EvalError> {
    for c in held_out {
        for t in tuning {
            if same_grid(&t.soft, &c.soft) {
                continue;
            }
            let e = EvalError::Grid {
                tuning: tune_dir.join(&t.name),
                tuning_grid: grid_text(&t.soft),
                case: pairs_dir.join(&c.name),
                case_grid: grid_text(&c.soft),
            };
            if !allow {
                return Err(e);
            }
            tracing::warn!("{e}");
            break;
        }
    }
    Ok(())
}

pub(crate) fn task_name(t: Task) -> &'static str {
    match t {
        Task::Kernel => "kernel",
        Task::Superres => "superres",
    }
}

/// Discriminator features of one volume's patches ([`crate::fd::FdExtractor::features`]).
type FdFeatures = Vec<Vec<f64>>;

/// Runs the evaluation (without printing).
pub fn evaluate(o: &EvalOptions) -> Result<EvalReport, EvalError> {
    let settings =
        Settings::load(o.config.as_deref()).map_err(|e| EvalError::Config(Box::new(e)))?;
    // Open every model first, so a bad model fails before minutes of work.
    let mut translators = Vec::new();
    for dir in &o.models {
        let md = ModelDir::open(dir).map_err(|source| EvalError::Model {
            dir: dir.clone(),
            source,
        })?;
        let t = Translator::open(md, &settings).map_err(|source| EvalError::Translate {
            dir: dir.clone(),
            source,
        })?;
        translators.push(t);
    }
    let fd_x = match &o.fd_features {
        Some(run) => Some(crate::fd::FdExtractor::load(run)?),
        None => None,
    };
    let cases = load_cases(&o.pairs)?;
    let inserts = load_inserts(&o.pairs, &cases)?;
    let mut roi_notes = Vec::new();
    let w = o.window;

    let kernel_cases: Vec<&Case> = cases.iter().filter(|c| c.sharp.is_some()).collect();
    let same_as_pairs = |t: &Path| {
        std::fs::canonicalize(t)
            .ok()
            .is_some_and(|a| std::fs::canonicalize(&o.pairs).ok() == Some(a))
    };
    let mut timings: Vec<(String, f64)> = Vec::new();
    let mut tuning = None;
    let mut linear = None;
    let mut tv = None;
    let (mut tuned_on, mut tuned_on_label) = (String::new(), String::new());
    if !kernel_cases.is_empty() {
        let loaded;
        let (tune_cases, tune_dir): (Vec<&Case>, PathBuf) = match &o.tune {
            Some(t) if !same_as_pairs(t) => {
                loaded = load_cases(t)?;
                let tc: Vec<&Case> = loaded.iter().filter(|c| c.sharp.is_some()).collect();
                if tc.is_empty() {
                    return Err(EvalError::Pairs {
                        path: t.clone(),
                        reason: "no case with both `sharp` and `soft` to tune the baselines on"
                            .into(),
                    });
                }
                check_grids(t, &tc, &o.pairs, &kernel_cases, o.allow_grid_mismatch)?;
                tuned_on = t.display().to_string();
                tuned_on_label = data_label(t);
                (tc, t.clone())
            }
            _ => {
                tracing::warn!(
                    "no --tune volumes apart from the evaluation set: the baselines are tuned on the evaluation set"
                );
                tuned_on = format!("{} (the evaluation set itself)", o.pairs.display());
                tuned_on_label = format!("{} (the evaluation set itself)", data_label(&o.pairs));
                (kernel_cases.clone(), o.pairs.clone())
            }
        };
        let pairs: Vec<(&Volume, &Volume)> = tune_cases
            .iter()
            .filter_map(|c| c.sharp.as_ref().map(|s| (s, &c.soft)))
            .collect();
        let names = tune_cases
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut timed = |what: &str, started: Instant| {
            let s = started.elapsed().as_secs_f64();
            tracing::info!(baseline = what, seconds = s, "tuned");
            timings.push((format!("tune {what}"), s));
        };
        if o.baselines.gaussian {
            let t0 = Instant::now();
            tuning = Some(tune_gaussian(&pairs, w));
            timed("gaussian", t0);
        }
        if o.baselines.linear {
            let t0 = Instant::now();
            let (d, k) = o.fir;
            linear = Some(fit_linear(&pairs, d, k, o.fir_samples).map_err(|source| {
                EvalError::Baseline {
                    what: "the best linear filter",
                    path: tune_dir.clone(),
                    cases: names.clone(),
                    source,
                }
            })?);
            timed("linear", t0);
        }
        if o.baselines.tv {
            let t0 = Instant::now();
            tv = Some(tune_tv(&pairs, w));
            timed("tv", t0);
        }
    }
    let gaussian_label =
        |g: &GaussianTuning| format!("gaussian sxy={:.3} sz={:.2}", g.sigma_xy, g.sigma_z);
    let linear_label = |l: &LinearTuning| {
        format!(
            "best linear {}x{}x{} (least squares)",
            l.depth, l.size, l.size
        )
    };
    let tv_label = |t: &TvTuning| {
        format!(
            "tv lambda={:.1} + gaussian sxy={:.3} sz={:.2}",
            t.lambda, t.gaussian.sigma_xy, t.gaussian.sigma_z
        )
    };
    // The kernel methods as (label, output of an input volume), models included.
    let baseline_outputs = |v: &Volume| -> Vec<(String, Volume)> {
        let mk = |values: Vec<f32>| Volume::new(v.name.clone(), v.shape, v.spacing, values);
        let mut out = vec![("identity (sharp input)".to_string(), v.clone())];
        if let Some(g) = &tuning {
            out.push((gaussian_label(g), mk(g.apply(v))));
        }
        if let Some(l) = &linear {
            out.push((linear_label(l), mk(l.apply(v))));
        }
        if let Some(t) = &tv {
            out.push((tv_label(t), mk(t.apply(v))));
        }
        out
    };

    // MTF50 of every kernel method on the simulated rod phantom.
    let mut mtf: Vec<(String, (f64, f64))> = Vec::new();
    let mut edge_settings = None;
    if let (Some(_), Some(first)) = (o.physics, kernel_cases.first()) {
        let t0 = Instant::now();
        let e = edge::edge_phantom(&o.pairs, first.soft.spacing);
        if let Some(target) = e.mtf50(&e.soft) {
            let mut outs = baseline_outputs(&e.sharp);
            for t in translators
                .iter_mut()
                .filter(|t| t.manifest().task == Task::Kernel)
            {
                let label = format!("{} {}", t.manifest().name, t.manifest().version);
                outs.push((label, run_model(t, &e.sharp)?));
            }
            for (label, v) in outs {
                if let Some(m) = e.mtf50(&v) {
                    mtf.push((label, (m, target)));
                }
            }
        }
        edge_settings = Some(e.settings);
        timings.push(("mtf phantom".into(), t0.elapsed().as_secs_f64()));
    }

    let t_cases = Instant::now();
    let mut rows = Vec::new();
    // Per (task, method): the texture features of every case (output, target) and the NPS curves.
    let mut feats: Vec<((&'static str, String), ClassFeatures, usize)> = Vec::new();
    let mut target_feats: Vec<ClassFeatures> = Vec::new();
    let mut nps_out: Vec<(String, NpsCurve)> = Vec::new();
    let mut nps_target: Vec<NpsCurve> = Vec::new();
    // Fréchet distance: discriminator features of each case's target, and of each kernel
    // method's output at the same patches, per (case, method).
    let mut fd_target: Vec<FdFeatures> = Vec::new();
    let mut fd_feats: Vec<((usize, String), FdFeatures)> = Vec::new();
    for (ci, c) in cases.iter().enumerate() {
        let mask = lung_mask(&c.soft);
        let fd_case = match (&fd_x, &c.sharp) {
            (Some(x), Some(sharp)) => Some((x, sharp)),
            _ => None,
        };
        if let Some((x, sharp)) = fd_case {
            fd_target.push(x.features(sharp, &c.soft)?);
        } else {
            fd_target.push(Vec::new());
        }
        let reference = match (o.physics, inserts[ci]) {
            (Some(p), Some(ins)) => {
                let rois = crate::physics::insert_rois(c.soft.shape, &ins, p.max_rois).map_err(
                    |source| EvalError::InsertRoi {
                        path: o.pairs.join("synth.toml"),
                        case: c.name.clone(),
                        source,
                    },
                )?;
                for class in [&rois.soft, &rois.lung] {
                    if let Some(why) = &class.skipped {
                        tracing::warn!(case = %c.name, "{why}");
                    }
                }
                let r = CaseRef::with_inserts(&c.soft, mask.clone(), p, ins, rois);
                roi_notes.extend(r.insert_note().map(|n| format!("{}: {n}", c.name)));
                Some(r)
            }
            (p, _) => p.map(|p| CaseRef::new(&c.soft, mask.clone(), p)),
        };
        if let Some(r) = &reference {
            target_feats.push(r.features.clone());
            nps_target.extend(r.nps.clone());
        } else {
            target_feats.push(ClassFeatures::default());
        }
        let mut push = |task, method: String, out: &Volume| -> Result<(), EvalError> {
            if out.shape != c.soft.shape {
                return Err(EvalError::Shape(format!(
                    "case {}: {method} output {:?} but target {:?}",
                    c.name, out.shape, c.soft.shape
                )));
            }
            let physics = match &reference {
                Some(r) => {
                    let (p, f, nps) = r.measure(out);
                    feats.push(((task, method.clone()), f, ci));
                    if task == "kernel" {
                        nps_out.extend(nps.map(|n| (method.clone(), n)));
                    }
                    p
                }
                None => Physics::default(),
            };
            if let (Some((x, sharp)), "kernel") = (fd_case, task) {
                fd_feats.push(((ci, method.clone()), x.features(sharp, out)?));
            }
            rows.push(Row {
                case: c.name.clone(),
                task,
                method,
                metrics: metrics(out, &c.soft, &mask, w),
                physics,
            });
            Ok(())
        };
        if let Some(sharp) = &c.sharp {
            for (label, v) in baseline_outputs(sharp) {
                push("kernel", label, &v)?;
            }
        }
        if let Some(th) = &c.thick {
            for (it, name) in [(Interp::Linear, "trilinear"), (Interp::Cubic, "tricubic")] {
                push("superres", name.into(), &upsample(th, c.soft.shape, it))?;
            }
        }
        for t in translators.iter_mut() {
            let task = t.manifest().task;
            let input = match task {
                Task::Kernel => c.sharp.as_ref(),
                Task::Superres => c.thick.as_ref(),
            };
            let Some(input) = input else { continue };
            let label = format!("{} {}", t.manifest().name, t.manifest().version);
            let out = run_model(t, input)?;
            if task == Task::Kernel {
                for &(lambda, strength) in &o.post_tv {
                    let v = post_tv(&out, lambda, strength);
                    push("kernel", format!("{label} + tv {lambda}:{strength}"), &v)?;
                }
            }
            push(task_name(task), label, &out)?;
        }
    }
    timings.push(("cases".into(), t_cases.elapsed().as_secs_f64()));
    // FD per case, and of the features pooled over the cases for the "mean" rows.
    let mut fd = Vec::new();
    let mut fd_methods: Vec<&String> = Vec::new();
    for ((ci, m), f) in &fd_feats {
        let d = crate::fd::frechet_of_features(f, &fd_target[*ci])?;
        fd.push((cases[*ci].name.clone(), m.clone(), d));
        if !fd_methods.contains(&m) {
            fd_methods.push(m);
        }
    }
    if cases.len() > 1 {
        for m in fd_methods {
            let mut out = Vec::new();
            let mut target = Vec::new();
            for ((ci, _), f) in fd_feats.iter().filter(|((_, x), _)| x == m) {
                out.extend(f.iter().cloned());
                target.extend(fd_target[*ci].iter().cloned());
            }
            let d = crate::fd::frechet_of_features(&out, &target)?;
            fd.push(("mean".to_string(), m.clone(), d));
        }
    }
    let mtf_of = |task: &str, method: &str| {
        (task == "kernel")
            .then(|| mtf.iter().find(|(m, _)| m == method).map(|(_, v)| *v))
            .flatten()
    };
    if cases.len() == 1 {
        for r in rows.iter_mut() {
            r.physics.mtf50 = r.physics.mtf50.or(mtf_of(r.task, &r.method));
        }
    }
    // Means over cases per (task, method).
    let mut keys: Vec<(&'static str, String)> = Vec::new();
    for r in &rows {
        if !keys.iter().any(|(t, m)| *t == r.task && *m == r.method) {
            keys.push((r.task, r.method.clone()));
        }
    }
    if cases.len() > 1 {
        let mut means = Vec::new();
        for (task, method) in keys {
            let sel: Vec<&Row> = rows
                .iter()
                .filter(|r| r.task == task && r.method == method)
                .collect();
            let n = sel.len() as f64;
            let avg =
                |f: &dyn Fn(&Metrics) -> f64| sel.iter().map(|r| f(&r.metrics)).sum::<f64>() / n;
            let avg_opt = |f: &dyn Fn(&Metrics) -> Option<f64>| {
                let v: Vec<f64> = sel.iter().filter_map(|r| f(&r.metrics)).collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            let ei: Vec<(f64, f64)> = sel
                .iter()
                .filter_map(|r| r.metrics.ei_output.zip(r.metrics.ei_target))
                .collect();
            let mut physics =
                mean_physics(&sel.iter().map(|r| &r.physics).collect::<Vec<_>>(), &ei);
            physics.mtf50 = physics.mtf50.or(mtf_of(task, &method));
            let pooled: Vec<(&ClassFeatures, &ClassFeatures)> = feats
                .iter()
                .filter(|((t, m), _, _)| *t == task && *m == method)
                .map(|(_, f, ci)| (f, &target_feats[*ci]))
                .collect();
            physics.ccc = ccc_counts(&pooled);
            physics.ccc_structure = ccc_structure_counts(&pooled);
            means.push(Row {
                case: "mean".into(),
                task,
                method,
                metrics: Metrics {
                    mae: avg(&|m| m.mae),
                    psnr: avg(&|m| m.psnr),
                    ssim: avg(&|m| m.ssim),
                    ei_output: avg_opt(&|m| m.ei_output.zip(m.ei_target).map(|(a, _)| a)),
                    ei_target: avg_opt(&|m| m.ei_output.zip(m.ei_target).map(|(_, b)| b)),
                },
                physics,
            });
        }
        rows.extend(means);
    }
    // Mean NPS curves per kernel method (and the target's), for the plot.
    let mut nps = Vec::new();
    if let Some(t) = NpsCurve::average(&nps_target.iter().collect::<Vec<_>>()) {
        nps.push(("target".to_string(), t));
    }
    let mut methods: Vec<&String> = Vec::new();
    for (m, _) in &nps_out {
        if !methods.contains(&m) {
            methods.push(m);
        }
    }
    for m in methods {
        let curves: Vec<&NpsCurve> = nps_out
            .iter()
            .filter(|(x, _)| x == m)
            .map(|(_, c)| c)
            .collect();
        if let Some(c) = NpsCurve::average(&curves) {
            nps.push((m.clone(), c));
        }
    }
    Ok(EvalReport {
        rows,
        tuning,
        tuned_on,
        tuned_on_label,
        linear,
        tv,
        edge_settings,
        roi_notes,
        nps,
        timings,
        fd,
        fd_features: fd_x.map(|x| x.run.display().to_string()),
    })
}

/// Command-line arguments of `ct-train eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Held-out pairs: one folder per case with `sharp`, `soft` and optionally `thick`.
    #[arg(long)]
    pub pairs: PathBuf,
    /// Model folder (model.onnx + model.toml); repeat for several.
    #[arg(long = "model")]
    pub models: Vec<PathBuf>,
    /// CSV file to write.
    #[arg(long)]
    pub csv: PathBuf,
    /// Tuning pairs, disjoint from --pairs and on the same voxel grid, on which every baseline is
    /// tuned or fitted (the Gaussian's sigmas, the least-squares FIR, TV's lambda); default: the
    /// eval pairs, with a warning.
    #[arg(long)]
    pub tune: Option<PathBuf>,
    /// Kernel baselines beside the identity: comma-separated gaussian, linear (least-squares FIR),
    /// tv (TV denoising + Gaussian).
    #[arg(long, default_value = "identity,gaussian,linear,tv")]
    pub baselines: String,
    /// Support of the least-squares FIR, DxKxK (z, y, x).
    #[arg(long, default_value = "3x9x9")]
    pub fir: String,
    /// Voxels drawn from the tuning pairs for the least-squares fit.
    #[arg(long, default_value_t = DEFAULT_FIR_SAMPLES)]
    pub fir_samples: usize,
    /// Side (pixels) of the square ROIs of the noise, NPS and texture figures.
    #[arg(long, default_value_t = 32)]
    pub roi: usize,
    /// Most ROIs per class (soft tissue, lung) per case.
    #[arg(long, default_value_t = 48)]
    pub max_rois: usize,
    /// Skip the physics figures (noise, NPS, MTF, Perc15, Bland-Altman, texture CCC) and the plots.
    #[arg(long)]
    pub no_physics: bool,
    /// Warn instead of failing when a tuning case is on another voxel grid than a held-out case.
    #[arg(long)]
    pub allow_grid_mismatch: bool,
    /// HU window mapped onto [-1, 1] for the metrics, as "LO,HI".
    #[arg(long, default_value = HuWindow::SEED_ARG)]
    pub window: String,
    /// ct-harmonizer settings file (ONNX Runtime location, device, tile size).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Fréchet distance of each kernel method's output to the target on the features of this
    /// RevGAN kernel run's discriminator (its run directory; FID's Inception network is not
    /// available offline): CSV column `fd`, manifest field `fd`.
    #[arg(long, value_name = "RUN_DIR")]
    pub fd_features: Option<PathBuf>,
    /// Write the figures into each --model's manifest (`[[evaluation]]`: the model's mean row and
    /// every baseline's of the same task), replacing the rows it held; the ONNX file is untouched.
    #[arg(long)]
    pub record: bool,
    /// Also each kernel model followed by TV denoising (the baseline's solver, per axial slice):
    /// comma-separated LAMBDA[:STRENGTH], lambda in HU, strength in (0, 1] the blend with the
    /// model's output (default 1); one extra row per item, "<model> + tv LAMBDA:STRENGTH".
    #[arg(long, value_name = "LAMBDA[:STRENGTH],...")]
    pub post_tv: Option<String>,
}

/// Parses `--post-tv`: `LAMBDA[:STRENGTH]` items, lambda > 0 HU, strength in (0, 1].
fn parse_post_tv(spec: &str) -> anyhow::Result<Vec<(f64, f32)>> {
    spec.split(',')
        .map(|item| {
            let mut it = item.trim().splitn(2, ':');
            let lambda = it.next().and_then(|x| x.trim().parse::<f64>().ok());
            let strength = match it.next() {
                None => Some(1.0),
                Some(s) => s.trim().parse::<f32>().ok(),
            };
            match (lambda, strength) {
                (Some(l), Some(s)) if l.is_finite() && l > 0.0 && s > 0.0 && s <= 1.0 => Ok((l, s)),
                _ => anyhow::bail!(
                    "--post-tv {item:?}: expected LAMBDA[:STRENGTH] with lambda > 0 HU and strength in (0, 1]"
                ),
            }
        })
        .collect()
}

/// A model's output TV-denoised per axial slice (weight `lambda` HU) and blended with it:
/// `out + strength · (tv(out) − out)`.
fn post_tv(out: &Volume, lambda: f64, strength: f32) -> Volume {
    let d = tv::tv_denoise(out, lambda);
    let values = out
        .values
        .iter()
        .zip(&d)
        .map(|(a, b)| a + strength * (b - a))
        .collect();
    Volume::new(out.name.clone(), out.shape, out.spacing, values)
}

/// Runs `ct-train eval` from its arguments: prints the table and writes the CSV.
pub fn run_cli(a: EvalArgs) -> anyhow::Result<()> {
    let parts: Vec<&str> = a.window.split(',').map(str::trim).collect();
    let (Some(lo), Some(hi), 2) = (
        parts.first().and_then(|v| v.parse::<f32>().ok()),
        parts.get(1).and_then(|v| v.parse::<f32>().ok()),
        parts.len(),
    ) else {
        anyhow::bail!("--window {:?}: expected two numbers LO,HI", a.window);
    };
    let post_tv = match &a.post_tv {
        Some(spec) => parse_post_tv(spec)?,
        None => Vec::new(),
    };
    if a.record && !post_tv.is_empty() {
        anyhow::bail!("--record with --post-tv: the post-filtered rows are not the model's; record without --post-tv");
    }
    let o = EvalOptions {
        pairs: a.pairs,
        models: a.models,
        csv: a.csv,
        tune: a.tune,
        window: HuWindow::new(lo, hi)?,
        config: a.config,
        baselines: Baselines::parse(&a.baselines)?,
        fir: parse_fir(&a.fir)?,
        fir_samples: a.fir_samples.max(1),
        physics: (!a.no_physics).then_some(PhysicsOptions {
            roi: a.roi,
            max_rois: a.max_rois,
        }),
        allow_grid_mismatch: a.allow_grid_mismatch,
        fd_features: a.fd_features,
        post_tv,
    };
    let started = Instant::now();
    let r = evaluate(&o)?;
    print!("{}", format_table(&r));
    write_csv(&o.csv, &r)?;
    println!("wrote {}", o.csv.display());
    if o.physics.is_some() {
        for p in report::write_plots(&o.csv, &r)? {
            println!("wrote {}", p.display());
        }
    }
    println!("evaluation took {:.1} s", started.elapsed().as_secs_f64());
    if a.record {
        let n = r
            .rows
            .iter()
            .map(|row| row.case.as_str())
            .filter(|c| *c != "mean")
            .collect::<std::collections::BTreeSet<_>>();
        let dataset = format!(
            "{} ({} held-out case{}: {}; baselines tuned on {})",
            data_label(&o.pairs),
            n.len(),
            if n.len() == 1 { "" } else { "s, mean" },
            n.into_iter().collect::<Vec<_>>().join(", "),
            r.tuned_on_label
        );
        let dataset = match &o.fd_features {
            Some(run) => format!(
                "{dataset}; fd on the discriminator of run {}",
                data_label(run)
            ),
            None => dataset,
        };
        let manifests = o
            .models
            .iter()
            .map(|dir| {
                ModelDir::open(dir)
                    .map(|md| md.manifest)
                    .map_err(|source| EvalError::Model {
                        dir: dir.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let label = |m: &Manifest| format!("{} {}", m.name, m.version);
        for (dir, m) in o.models.iter().zip(&manifests) {
            let others: Vec<String> = manifests
                .iter()
                .filter(|x| x.kind == ModelKind::Trained && label(x) != label(m))
                .map(label)
                .collect();
            record_in_manifest(dir, manifest_rows(&r, m.task, &dataset, &others))?;
            println!(
                "recorded the figures in {}",
                dir.join(crate::export::MANIFEST_FILE).display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::resample::gaussian_blur;
    use crate::volume::Volume;
    use std::path::Path;

    fn vol(shape: [usize; 3], f: impl Fn(usize, usize, usize) -> f32) -> Volume {
        Volume::from_fn("t", shape, f)
    }

    #[test]
    fn blur_keeps_constants_and_tuning_finds_the_blur() {
        let s = [6, 20, 20];
        let c = vol(s, |_, _, _| 40.0);
        assert!(gaussian_blur(&c.values, s, 1.2, 0.7)
            .iter()
            .all(|&v| (v - 40.0).abs() < 1e-3));
        let sharp = vol(s, |z, y, x| {
            if (y * 7 + x * 13 + z * 5) % 4 == 0 {
                200.0
            } else {
                -400.0
            }
        });
        let soft = Volume::new(
            "soft",
            s,
            [1.0; 3],
            gaussian_blur(&sharp.values, s, 1.0, 0.0),
        );
        let g = tune_gaussian(&[(&sharp, &soft)], HuWindow::default());
        assert!((g.sigma_xy - 1.0).abs() < 0.01 && g.sigma_z == 0.0, "{g:?}");
    }

    #[test]
    fn corrupted_model_is_a_clear_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m");
        crate::export::export_baseline(&m, None).unwrap();
        let onnx = m.join("model.onnx");
        let mut b = std::fs::read(&onnx).unwrap();
        let k = b.len() / 2;
        b[k] ^= 0xff;
        std::fs::write(&onnx, b).unwrap();
        let o = EvalOptions {
            pairs: dir.path().join("none"),
            models: vec![m.clone()],
            csv: dir.path().join("x.csv"),
            tune: None,
            window: HuWindow::default(),
            config: None,
            ..EvalOptions::default()
        };
        let e = evaluate(&o).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("model.onnx") && msg.contains("corrupted"),
            "{msg}"
        );
    }

    /// `--post-tv` (issue 11): items parsed with their defaults, a bad item named; the filter
    /// keeps a constant volume, smooths noise, and a strength of 0.5 lands halfway.
    #[test]
    fn post_tv_parses_its_items_and_blends_the_filtered_output() {
        assert_eq!(
            parse_post_tv("6, 25:0.5").unwrap(),
            vec![(6.0, 1.0), (25.0, 0.5)]
        );
        for bad in ["0", "-3", "x", "10:0", "10:1.5", "10:y", "NaN", "inf"] {
            let e = parse_post_tv(bad).unwrap_err().to_string();
            assert!(e.contains("--post-tv") && e.contains(bad), "{bad}: {e}");
        }
        let flat = vol([2, 16, 16], |_, _, _| 40.0);
        assert!(post_tv(&flat, 10.0, 1.0)
            .values
            .iter()
            .all(|v| (v - 40.0).abs() < 1e-3));
        let mut rng = crate::lib_bridge::Rng::new(3);
        let noise: Vec<f32> = (0..2 * 32 * 32)
            .map(|_| 30.0 * (rng.uniform() as f32 - 0.5))
            .collect();
        let noisy = vol([2, 32, 32], |z, y, x| 40.0 + noise[(z * 32 + y) * 32 + x]);
        let std = |v: &Volume| {
            let m = v.values.iter().sum::<f32>() / v.len() as f32;
            (v.values.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32).sqrt()
        };
        let full = post_tv(&noisy, 10.0, 1.0);
        let half = post_tv(&noisy, 10.0, 0.5);
        assert!(
            std(&full) < 0.5 * std(&noisy),
            "{} {}",
            std(&full),
            std(&noisy)
        );
        for ((h, f), n) in half.values.iter().zip(&full.values).zip(&noisy.values) {
            assert!((h - (n + f) / 2.0).abs() < 1e-3);
        }
    }

    #[test]
    fn figures_are_recorded_in_the_manifest_without_touching_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("gaussian-soft-baseline");
        std::fs::create_dir_all(&m).unwrap();
        let shipped =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/gaussian-soft-baseline");
        for f in ["model.onnx", "model.toml"] {
            std::fs::copy(shipped.join(f), m.join(f)).unwrap();
        }
        let row = |case: &str, task, method: &str, psnr| Row {
            case: case.into(),
            task,
            method: method.into(),
            metrics: Metrics {
                mae: 0.01,
                psnr,
                ssim: 0.9,
                ei_output: None,
                ei_target: None,
            },
            physics: Physics::default(),
        };
        let r = EvalReport {
            rows: vec![
                row("a", "kernel", "identity (sharp input)", 30.0),
                row("mean", "kernel", "identity (sharp input)", 31.0),
                row("mean", "kernel", "gaussian-soft-baseline 1.0.0", 50.0),
                row("mean", "superres", "tricubic", 20.0),
            ],
            tuning: None,
            tuned_on: "x".into(),
            tuned_on_label: "x/".into(),
            ..EvalReport::default()
        };
        let rows = manifest_rows(&r, Task::Kernel, "held-out", &[]);
        assert_eq!(rows.len(), 2);
        let others = ["gaussian-soft-baseline 1.0.0".to_string()];
        assert_eq!(
            manifest_rows(&r, Task::Kernel, "held-out", &others).len(),
            1
        );
        assert!(rows.iter().all(|e| e.dataset == "held-out"));
        record_in_manifest(&m, rows.clone()).unwrap();
        let md = ModelDir::open(&m).unwrap();
        assert_eq!(md.manifest.evaluation, rows);
        assert_eq!(
            std::fs::read(m.join("model.onnx")).unwrap(),
            std::fs::read(shipped.join("model.onnx")).unwrap()
        );
    }

    /// A noisy body with a lung (sharp) and its Gaussian-blurred copy (soft), written as a case.
    fn write_case(dir: &Path, name: &str, seed: u64, spacing: [f64; 3], constant: bool) {
        let mut rng = crate::lib_bridge::Rng::new(seed);
        let mut sharp = vol([4, 64, 64], |_, y, x| {
            let (dy, dx) = (y as f64 - 32.0, x as f64 - 32.0);
            if (dy * dy + dx * dx).sqrt() > 30.0 {
                -1000.0
            } else if (12..30).contains(&y) && (14..50).contains(&x) {
                -850.0
            } else {
                40.0
            }
        });
        if constant {
            sharp.values.iter_mut().for_each(|v| *v = 40.0);
        } else {
            sharp
                .values
                .iter_mut()
                .for_each(|v| *v += 30.0 * rng.normal() as f32);
        }
        let soft = gaussian_blur(&sharp.values, sharp.shape, 1.0, 0.0);
        write_pair(&dir.join(name), sharp.shape, spacing, &sharp.values, &soft);
    }

    /// Writes `sharp.nii` and `soft.nii` (float32, `spacing` in mm, z y x) into the case folder
    /// `case`, as the eval tests' fixtures.
    pub(in crate::eval) fn write_pair(
        case: &Path,
        shape: [usize; 3],
        spacing: [f64; 3],
        sharp: &[f32],
        soft: &[f32],
    ) {
        use crate::data::nifti::{write, WriteType};
        std::fs::create_dir_all(case).unwrap();
        for (file, values) in [("sharp.nii", sharp), ("soft.nii", soft)] {
            write(&case.join(file), shape, spacing, values, WriteType::Float32).unwrap();
        }
    }

    fn small_options(dir: &Path) -> EvalOptions {
        EvalOptions {
            pairs: dir.join("heldout"),
            csv: dir.join("out/eval.csv"),
            tune: Some(dir.join("tune")),
            fir: (1, 7),
            fir_samples: 20_000,
            physics: Some(PhysicsOptions {
                roi: 16,
                max_rois: 12,
            }),
            ..EvalOptions::default()
        }
    }

    #[test]
    fn tuning_set_on_another_grid_is_a_clear_error_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        write_case(
            &dir.path().join("heldout"),
            "case-a",
            1,
            [2.0, 0.7, 0.7],
            false,
        );
        write_case(
            &dir.path().join("tune"),
            "tune-b",
            2,
            [2.0, 0.9, 0.9],
            false,
        );
        let mut o = small_options(dir.path());
        o.physics = None;
        let e = evaluate(&o).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, EvalError::Grid { .. }), "{msg}");
        for want in [
            "tune/tune-b",
            "heldout/case-a",
            "0.9000",
            "0.7000",
            "another grid",
        ] {
            assert!(msg.contains(want), "{want:?} not in {msg}");
        }
        // Allowed explicitly, the same sets evaluate (with a warning).
        o.allow_grid_mismatch = true;
        o.baselines = Baselines::parse("identity,gaussian").unwrap();
        assert!(evaluate(&o).is_ok());
    }

    #[test]
    fn singular_baseline_fit_on_a_constant_tuning_volume_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        write_case(
            &dir.path().join("heldout"),
            "case-a",
            1,
            [2.0, 0.7, 0.7],
            false,
        );
        write_case(&dir.path().join("tune"), "flat", 2, [2.0, 0.7, 0.7], true);
        let mut o = small_options(dir.path());
        o.baselines = Baselines::parse("linear").unwrap();
        o.physics = None;
        let e = evaluate(&o).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                EvalError::Baseline {
                    source: LsqError::Constant { .. },
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.contains("best linear filter")
                && msg.contains("tune")
                && msg.contains("flat")
                && msg.contains("constant"),
            "{msg}"
        );
        assert!(Baselines::parse("identity,median").is_err());
        assert_eq!(parse_fir("3x9x9").unwrap(), (3, 9));
        assert!(parse_fir("3x9x7").is_err() && parse_fir("2x9x9").is_err());
    }

    /// Every baseline and every figure on small volumes: the best linear filter matches a target
    /// that is a Gaussian blur of the input (a linear filter inside its support), the identity
    /// keeps the input's noise, the CSV and both plots are written.
    #[test]
    fn every_baseline_and_figure_on_small_cases() {
        let dir = tempfile::tempdir().unwrap();
        let sp = [2.0, 0.7, 0.7];
        write_case(&dir.path().join("heldout"), "case-a", 1, sp, false);
        write_case(&dir.path().join("heldout"), "case-b", 2, sp, false);
        write_case(&dir.path().join("tune"), "tune-c", 3, sp, false);
        let o = small_options(dir.path());
        let r = evaluate(&o).unwrap();
        let mean = |prefix: &str| {
            r.rows
                .iter()
                .find(|x| x.case == "mean" && x.method.starts_with(prefix))
                .unwrap_or_else(|| panic!("no mean row {prefix}: {:?}", r.rows))
        };
        let (id, g, l, tv) = (
            mean("identity"),
            mean("gaussian"),
            mean("best linear 1x7x7"),
            mean("tv "),
        );
        assert!(l.metrics.psnr > 60.0, "{:?}", l.metrics);
        assert!(g.metrics.psnr > id.metrics.psnr + 10.0 && tv.metrics.psnr > id.metrics.psnr);
        let noise = Physics::ratio(id.physics.noise_soft).unwrap();
        assert!(noise > 2.0, "identity noise ratio {noise}");
        let lin = Physics::ratio(l.physics.noise_soft).unwrap();
        assert!((lin - 1.0).abs() < 0.05, "linear noise ratio {lin}");
        assert!(l.physics.ccc_share().unwrap() > id.physics.ccc_share().unwrap());
        assert!(l.physics.ei_ba.is_some() && l.physics.perc15_ba.is_some());
        let m = Physics::ratio(id.physics.mtf50).unwrap();
        assert!(m > 1.05, "sharp input MTF50 ratio {m}");
        assert!(l.physics.nps_distance.unwrap() < id.physics.nps_distance.unwrap());
        write_csv(&o.csv, &r).unwrap();
        let csv = std::fs::read_to_string(&o.csv).unwrap();
        let header = csv.lines().next().unwrap();
        assert!(header.starts_with(
            "case,task,method,mae,psnr,ssim,ei_output,ei_target,ei_error,perc15_output"
        ));
        assert!(csv
            .lines()
            .skip(1)
            .all(|l| l.split(',').count() == report::CSV_COLUMNS.len()));
        let pngs = report::write_plots(&o.csv, &r).unwrap();
        assert_eq!(pngs.len(), 2);
        let table = format_table(&r);
        assert!(
            table.contains("best linear filter") && table.contains("TV (Chambolle)"),
            "{table}"
        );
        let rows = manifest_rows(&r, Task::Kernel, "held-out", &[]);
        assert!(rows
            .iter()
            .all(|e| e.noise_ratio_soft.is_some() && e.ccc_share.is_some()));
    }

    /// A noisy 16×32×32 body (sharp) and its Gaussian-blurred copy (soft), deep enough for a 16³
    /// discriminator patch.
    fn write_deep_case(dir: &Path, name: &str, seed: u64) {
        let mut rng = crate::lib_bridge::Rng::new(seed);
        let mut sharp = vol([16, 32, 32], |_, y, x| {
            let (dy, dx) = (y as f64 - 16.0, x as f64 - 16.0);
            if (dy * dy + dx * dx).sqrt() > 15.0 {
                -1000.0
            } else if (6..14).contains(&y) {
                -850.0
            } else {
                40.0
            }
        });
        sharp
            .values
            .iter_mut()
            .for_each(|v| *v += 60.0 * rng.normal() as f32);
        let soft = gaussian_blur(&sharp.values, sharp.shape, 1.2, 0.0);
        write_pair(
            &dir.join(name),
            sharp.shape,
            [1.0, 0.7, 0.7],
            &sharp.values,
            &soft,
        );
    }

    /// A paired RevGAN kernel run directory holding only what `--fd-features` reads: model.json,
    /// train.json (patch 16) and checkpoint/discriminators.mpk (ndf 2, untrained weights).
    fn write_fd_run(run: &Path) {
        use crate::config::{ModeArg, TaskArg, TrainConfig};
        use crate::model::{Discriminators, RevGanConfig};
        use burn::module::Module;
        use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
        let ck = run.join(crate::trainer::CHECKPOINT_DIR);
        std::fs::create_dir_all(&ck).unwrap();
        let m = RevGanConfig::new().with_ngf(2).with_ndf(2);
        std::fs::write(run.join("model.json"), serde_json::to_string(&m).unwrap()).unwrap();
        let mut t = TrainConfig::new(TaskArg::Kernel, ModeArg::Paired);
        t.patch = 16;
        std::fs::write(run.join("train.json"), serde_json::to_string(&t).unwrap()).unwrap();
        Discriminators::<burn::backend::Flex>::new(&m, &Default::default())
            .save_file(
                ck.join("discriminators"),
                &NamedMpkFileRecorder::<FullPrecisionSettings>::new(),
            )
            .unwrap();
    }

    /// `--fd-features`: every kernel row (per case and mean) gets a Fréchet distance on the run's
    /// discriminator features, in the CSV, the table and the manifest rows; the tuned Gaussian
    /// (the target is a blur of the input) is far nearer the target than the noisy identity.
    /// Bad runs are clear errors naming the path: missing, no checkpoint, a checkpoint of other
    /// shapes than model.json, a MEGAN run, a run of another task.
    #[test]
    fn frechet_distance_on_a_runs_discriminator_and_bad_runs_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        write_deep_case(&dir.path().join("heldout"), "case-a", 1);
        write_deep_case(&dir.path().join("heldout"), "case-b", 2);
        write_deep_case(&dir.path().join("tune"), "tune-c", 3);
        let run = dir.path().join("fd-run");
        write_fd_run(&run);
        let mut o = small_options(dir.path());
        o.physics = None;
        o.baselines = Baselines::parse("identity,gaussian").unwrap();
        o.fd_features = Some(run.clone());
        let r = evaluate(&o).unwrap();
        for row in r.rows.iter().filter(|x| x.task == "kernel") {
            let d = r.fd_of(row).unwrap_or_else(|| panic!("no FD for {row:?}"));
            assert!(d.is_finite() && d >= 0.0, "{d}");
        }
        let fd = |case: &str, prefix: &str| {
            r.fd.iter()
                .find(|(c, m, _)| c == case && m.starts_with(prefix))
                .map(|x| x.2)
                .unwrap()
        };
        let (id, g) = (fd("mean", "identity"), fd("mean", "gaussian"));
        assert!(id > 10.0 * g && id > 0.0, "identity {id}, gaussian {g}");
        assert!(fd("case-a", "identity") > 0.0);
        write_csv(&o.csv, &r).unwrap();
        let csv = std::fs::read_to_string(&o.csv).unwrap();
        assert!(csv.lines().next().unwrap().ends_with(",fd"));
        assert!(csv
            .lines()
            .skip(1)
            .all(|l| l.split(',').count() == report::CSV_COLUMNS.len() && !l.ends_with(',')));
        assert!(format_table(&r).contains("not FID"));
        let rows = manifest_rows(&r, Task::Kernel, "held-out", &[]);
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|e| e.fd.is_some()));

        let msg = |o: &EvalOptions| evaluate(o).unwrap_err().to_string();
        o.fd_features = Some(dir.path().join("no-such-run"));
        let e = msg(&o);
        assert!(
            e.contains("--fd-features") && e.contains("no-such-run"),
            "{e}"
        );
        // A checkpoint of other shapes than its model.json.
        let other = dir.path().join("other-run");
        write_fd_run(&other);
        let m = crate::model::RevGanConfig::new().with_ngf(2).with_ndf(4);
        std::fs::write(other.join("model.json"), serde_json::to_string(&m).unwrap()).unwrap();
        o.fd_features = Some(other.clone());
        let e = msg(&o);
        assert!(e.contains("other-run") && e.contains("checkpoint"), "{e}");
        // No checkpoint file.
        std::fs::remove_file(run.join("checkpoint/discriminators.mpk")).unwrap();
        o.fd_features = Some(run.clone());
        let e = msg(&o);
        assert!(e.contains("fd-run") && e.contains("checkpoint"), "{e}");
        write_fd_run(&run);
        std::fs::write(run.join("megan.json"), "{}").unwrap();
        let e = msg(&o);
        assert!(e.contains("fd-run") && e.contains("MEGAN"), "{e}");
        std::fs::remove_file(run.join("megan.json")).unwrap();
        let t = std::fs::read_to_string(run.join("train.json")).unwrap();
        std::fs::write(
            run.join("train.json"),
            t.replace("\"kernel\"", "\"superres\""),
        )
        .unwrap();
        let e = msg(&o);
        assert!(e.contains("fd-run") && e.contains("another task"), "{e}");
    }
}
