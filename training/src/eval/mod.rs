//! `ct-train eval`: how close translators get to the target on held-out simulated pairs, next to the
//! classical alternatives, in one table (printed and written as CSV).
//!
//! **Data.** `--pairs DIR` holds one folder per case as `ct-train synth` writes them: `sharp`, `soft`
//! and optionally `thick`, each a DICOM series folder or a `.nii` / `.nii.gz` file. The kernel task
//! maps `sharp` to `soft`; super-resolution maps `thick` (4× z, 2× x/y coarser) to `soft`.
//!
//! **Methods.** Models run through the daemon's own inference code (`ModelDir::open`, which checks the
//! ONNX hash, then `Translator::open`, `plan` and `translate` slab by slab with the valid-core tiling),
//! so the figures are what the daemon would produce. Baselines: for kernels the identity (the sharp
//! input itself) and a Gaussian low-pass whose in-plane σ and z σ are tuned separately, in that order,
//! by grid search on the `--tune` volumes (minimum MSE; edge padding, kernels truncated at
//! `ceil(3σ)` as the shipped baseline does); for super-resolution trilinear and tricubic (Keys,
//! a = -0.5) upsampling, voxel centres aligned (`src = (dst + 0.5)/f - 0.5`, edges clamped).
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
//! Files: this module (options, the run, the CLI), [`cases`] (held-out cases, running a model),
//! [`baselines`] (the tuned classical baselines), [`report`] (table, CSV, manifest rows).

pub mod baselines;
pub mod cases;
pub mod report;

pub use baselines::{tune_gaussian, GaussianTuning};
pub use cases::{load_cases, run_model, Case};
pub use report::{format_table, manifest_rows, record_in_manifest, write_csv, EvalReport, Row};

use crate::config::HuWindow;
use crate::data::{DataError, Volume};
use crate::export::trained::data_label;
use crate::lib_bridge::{
    ConfigError, Manifest, ManifestError, ModelDir, ModelKind, Settings, Task, TranslateError,
    Translator,
};
use crate::metrics::{lung_mask, metrics, Metrics};
use crate::resample::{gaussian_blur, upsample, Interp};
use std::path::PathBuf;

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
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `ct-train eval` options.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub pairs: PathBuf,
    pub models: Vec<PathBuf>,
    pub csv: PathBuf,
    /// Volumes for tuning the Gaussian baseline (the eval pairs themselves when `None`).
    pub tune: Option<PathBuf>,
    pub window: HuWindow,
    /// Daemon settings file (defaults + environment when `None`).
    pub config: Option<PathBuf>,
}

pub(crate) fn task_name(t: Task) -> &'static str {
    match t {
        Task::Kernel => "kernel",
        Task::Superres => "superres",
    }
}

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
    let cases = load_cases(&o.pairs)?;
    let w = o.window;

    let kernel_cases: Vec<&Case> = cases.iter().filter(|c| c.sharp.is_some()).collect();
    let (tuning, tuned_on, tuned_on_label) = if kernel_cases.is_empty() {
        (None, String::new(), String::new())
    } else if let Some(t) = &o.tune {
        let tc = load_cases(t)?;
        let pairs: Vec<(&Volume, &Volume)> = tc
            .iter()
            .filter_map(|c| c.sharp.as_ref().map(|s| (s, &c.soft)))
            .collect();
        if pairs.is_empty() {
            return Err(EvalError::Pairs {
                path: t.clone(),
                reason: "no case with both `sharp` and `soft` to tune the Gaussian on".into(),
            });
        }
        (
            Some(tune_gaussian(&pairs, w)),
            t.display().to_string(),
            data_label(t),
        )
    } else {
        tracing::warn!("no --tune volumes: the Gaussian baseline is tuned on the evaluation set");
        let pairs: Vec<(&Volume, &Volume)> = kernel_cases
            .iter()
            .filter_map(|c| c.sharp.as_ref().map(|s| (s, &c.soft)))
            .collect();
        (
            Some(tune_gaussian(&pairs, w)),
            format!("{} (the evaluation set itself)", o.pairs.display()),
            format!("{} (the evaluation set itself)", data_label(&o.pairs)),
        )
    };

    let mut rows = Vec::new();
    for c in &cases {
        let mask = lung_mask(&c.soft);
        let mut push = |task, method: String, out: &Volume| -> Result<(), EvalError> {
            if out.shape != c.soft.shape {
                return Err(EvalError::Shape(format!(
                    "case {}: {method} output {:?} but target {:?}",
                    c.name, out.shape, c.soft.shape
                )));
            }
            rows.push(Row {
                case: c.name.clone(),
                task,
                method,
                metrics: metrics(out, &c.soft, &mask, w),
            });
            Ok(())
        };
        if let Some(sharp) = &c.sharp {
            push("kernel", "identity (sharp input)".into(), sharp)?;
            if let Some(g) = tuning {
                let b = gaussian_blur(&sharp.values, sharp.shape, g.sigma_xy, g.sigma_z);
                let v = Volume::new("gaussian", sharp.shape, sharp.spacing, b);
                push(
                    "kernel",
                    format!("gaussian sxy={:.3} sz={:.2}", g.sigma_xy, g.sigma_z),
                    &v,
                )?;
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
            push(task_name(task), label, &out)?;
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
            });
        }
        rows.extend(means);
    }
    Ok(EvalReport {
        rows,
        tuning,
        tuned_on,
        tuned_on_label,
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
    /// Training pairs on which the Gaussian baseline's sigmas are tuned (default: the eval pairs,
    /// with a warning).
    #[arg(long)]
    pub tune: Option<PathBuf>,
    /// HU window mapped onto [-1, 1] for the metrics, as "LO,HI".
    #[arg(long, default_value = HuWindow::SEED_ARG)]
    pub window: String,
    /// ct-harmonizer settings file (ONNX Runtime location, device, tile size).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write the figures into each --model's manifest (`[[evaluation]]`: the model's mean row and
    /// every baseline's of the same task), replacing the rows it held; the ONNX file is untouched.
    #[arg(long)]
    pub record: bool,
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
    let o = EvalOptions {
        pairs: a.pairs,
        models: a.models,
        csv: a.csv,
        tune: a.tune,
        window: HuWindow::new(lo, hi)?,
        config: a.config,
    };
    let r = evaluate(&o)?;
    print!("{}", format_table(&r));
    write_csv(&o.csv, &r)?;
    println!("wrote {}", o.csv.display());
    if a.record {
        let n = r
            .rows
            .iter()
            .map(|row| row.case.as_str())
            .filter(|c| *c != "mean")
            .collect::<std::collections::BTreeSet<_>>();
        let dataset = format!(
            "{} ({} held-out case{}: {}; Gaussian tuned on {})",
            data_label(&o.pairs),
            n.len(),
            if n.len() == 1 { "" } else { "s, mean" },
            n.into_iter().collect::<Vec<_>>().join(", "),
            r.tuned_on_label
        );
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
        };
        let e = evaluate(&o).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("model.onnx") && msg.contains("corrupted"),
            "{msg}"
        );
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
}
