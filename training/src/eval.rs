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
//! **Metrics.** Output and target are mapped through the HU window to [-1, 1] and clipped, as the
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

use ct_harmonizer::config::{ConfigError, Settings};
use ct_harmonizer::dicom::slab::Slab;
use ct_harmonizer::model::manifest::{EvaluationRow, ManifestError, Task};
use ct_harmonizer::model::{ModelDir, TranslateError, Translator};
use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::data::{load_volume, DataError, HuWindow, Volume};
use crate::export::{gaussian_taps, kernel_radius};
use crate::export_model::data_label;

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

/// One held-out case.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub sharp: Option<Volume>,
    pub soft: Volume,
    pub thick: Option<Volume>,
}

fn find_member(dir: &Path, what: &str) -> Option<PathBuf> {
    crate::train::find_member(dir, &[what])
}

/// Loads every case folder under `dir` (sorted by name); a folder without `soft` is skipped.
pub fn load_cases(dir: &Path) -> Result<Vec<Case>, EvalError> {
    let io = |source| EvalError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    subdirs.retain(|p| p.is_dir());
    subdirs.sort();
    let mut cases = Vec::new();
    for d in subdirs {
        let Some(soft) = find_member(&d, "soft") else {
            continue;
        };
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let soft = load_volume(&soft)?;
        let sharp = find_member(&d, "sharp")
            .map(|p| load_volume(&p))
            .transpose()?;
        let thick = find_member(&d, "thick")
            .map(|p| load_volume(&p))
            .transpose()?;
        if let Some(s) = &sharp {
            if s.shape != soft.shape {
                return Err(EvalError::Shape(format!(
                    "case {name}: sharp {:?} and soft {:?} differ in shape",
                    s.shape, soft.shape
                )));
            }
        }
        cases.push(Case {
            name,
            sharp,
            soft,
            thick,
        });
    }
    if cases.is_empty() {
        return Err(EvalError::Pairs {
            path: dir.to_owned(),
            reason: "no case folders with a `soft` member (see `ct-train synth`)".into(),
        });
    }
    Ok(cases)
}

/// Border handling of the separable filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    /// Repeat the edge voxel (ONNX `Pad` mode `edge`).
    Edge,
    /// Mirror about the edge, the edge voxel repeated (`scipy.ndimage` mode `reflect`).
    Reflect,
}

fn border_index(i: isize, n: usize, b: Border) -> usize {
    let n = n as isize;
    let r = match b {
        Border::Edge => i.clamp(0, n - 1),
        Border::Reflect => {
            let period = 2 * n;
            let m = i.rem_euclid(period);
            if m < n {
                m
            } else {
                period - 1 - m
            }
        }
    };
    r as usize
}

/// Convolves a `[z][y][x]` volume along `axis` with symmetric `taps` (odd length).
pub fn conv_axis(v: &[f32], shape: [usize; 3], axis: usize, taps: &[f64], b: Border) -> Vec<f32> {
    if taps.len() <= 1 {
        return v.to_vec();
    }
    let [nz, ny, nx] = shape;
    let r = (taps.len() / 2) as isize;
    let mut out = vec![0f32; v.len()];
    let plane = ny * nx;
    out.par_chunks_mut(plane).enumerate().for_each(|(z, o)| {
        for y in 0..ny {
            for x in 0..nx {
                let (pos, n) = match axis {
                    0 => (z, nz),
                    1 => (y, ny),
                    _ => (x, nx),
                };
                let mut acc = 0.0f64;
                for (k, w) in taps.iter().enumerate() {
                    let j = border_index(pos as isize + k as isize - r, n, b);
                    let idx = match axis {
                        0 => (j * ny + y) * nx + x,
                        1 => (z * ny + j) * nx + x,
                        _ => (z * ny + y) * nx + j,
                    };
                    acc += w * f64::from(v[idx]);
                }
                o[y * nx + x] = acc as f32;
            }
        }
    });
    out
}

/// Gaussian low-pass with in-plane σ `sxy` and z σ `sz` (pixels), kernels truncated at
/// `ceil(3σ)`, edge padding; σ = 0 leaves that axis alone.
pub fn gaussian_blur(v: &[f32], shape: [usize; 3], sxy: f64, sz: f64) -> Vec<f32> {
    let taps = |s: f64| {
        if s > 0.0 {
            gaussian_taps(s, kernel_radius(s))
        } else {
            vec![1.0]
        }
    };
    let (txy, tz) = (taps(sxy), taps(sz));
    let a = conv_axis(v, shape, 2, &txy, Border::Edge);
    let a = conv_axis(&a, shape, 1, &txy, Border::Edge);
    conv_axis(&a, shape, 0, &tz, Border::Edge)
}

/// Image-quality figures of one output against its target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    pub mae: f64,
    pub psnr: f64,
    pub ssim: f64,
    /// Emphysema index (%) of the output and of the target over the target's lung mask.
    pub ei_output: Option<f64>,
    pub ei_target: Option<f64>,
}

fn mse(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        / a.len().max(1) as f64
}

/// 3-D SSIM of two volumes in [-1, 1] (data range 2), Gaussian window σ = 1.5 (see the module docs).
pub fn ssim3d(a: &[f32], b: &[f32], shape: [usize; 3]) -> f64 {
    let sigma = 1.5;
    let radius = (3.5 * sigma + 0.5) as usize;
    let raw: Vec<f64> = (-(radius as isize)..=radius as isize)
        .map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = raw.iter().sum();
    let taps: Vec<f64> = raw.iter().map(|v| v / sum).collect();
    let filt = |v: &[f32]| {
        let mut o = v.to_vec();
        for axis in 0..3 {
            o = conv_axis(&o, shape, axis, &taps, Border::Reflect);
        }
        o
    };
    let prod = |f: &dyn Fn(f32, f32) -> f32| -> Vec<f32> {
        a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
    };
    let (mx, my) = (filt(a), filt(b));
    let sxx = filt(&prod(&|x, _| x * x));
    let syy = filt(&prod(&|_, y| y * y));
    let sxy = filt(&prod(&|x, y| x * y));
    let (c1, c2) = ((0.01f64 * 2.0).powi(2), (0.03f64 * 2.0).powi(2));
    let [nz, ny, nx] = shape;
    let range = |n: usize| {
        if n > 2 * radius {
            radius..n - radius
        } else {
            0..n
        }
    };
    let (rz, ry, rx) = (range(nz), range(ny), range(nx));
    let mut total = 0.0;
    let mut count = 0usize;
    for z in rz {
        for y in ry.clone() {
            for x in rx.clone() {
                let i = (z * ny + y) * nx + x;
                let (ux, uy) = (f64::from(mx[i]), f64::from(my[i]));
                let vx = f64::from(sxx[i]) - ux * ux;
                let vy = f64::from(syy[i]) - uy * uy;
                let cxy = f64::from(sxy[i]) - ux * uy;
                total += ((2.0 * ux * uy + c1) * (2.0 * cxy + c2))
                    / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
                count += 1;
            }
        }
    }
    total / count.max(1) as f64
}

/// Smallest in-plane lung region kept in the mask (mm²).
pub const LUNG_MIN_AREA_MM2: f64 = 300.0;

/// The lung mask of a target volume in HU (see the module docs).
pub fn lung_mask(target: &Volume) -> Vec<bool> {
    let [_, ny, nx] = target.shape;
    let min_px = (LUNG_MIN_AREA_MM2 / (target.spacing[1] * target.spacing[2])).ceil() as usize;
    let mut mask = vec![false; target.len()];
    mask.par_chunks_mut(ny * nx).enumerate().for_each(|(z, m)| {
        let s = target.slice(z);
        let low: Vec<bool> = s.iter().map(|&v| v < -500.0).collect();
        // Outside air: flood fill from the border through low voxels.
        let mut outside = vec![false; ny * nx];
        let mut stack = Vec::new();
        for y in 0..ny {
            for x in 0..nx {
                if (y == 0 || x == 0 || y == ny - 1 || x == nx - 1) && low[y * nx + x] {
                    outside[y * nx + x] = true;
                    stack.push(y * nx + x);
                }
            }
        }
        let neighbours = |i: usize| {
            let (y, x) = (i / nx, i % nx);
            let mut n = [usize::MAX; 4];
            if y > 0 {
                n[0] = i - nx;
            }
            if y + 1 < ny {
                n[1] = i + nx;
            }
            if x > 0 {
                n[2] = i - 1;
            }
            if x + 1 < nx {
                n[3] = i + 1;
            }
            n
        };
        while let Some(i) = stack.pop() {
            for j in neighbours(i) {
                if j != usize::MAX && low[j] && !outside[j] {
                    outside[j] = true;
                    stack.push(j);
                }
            }
        }
        // Inner air regions, kept when large enough.
        let mut seen = vec![false; ny * nx];
        for start in 0..ny * nx {
            if !low[start] || outside[start] || seen[start] {
                continue;
            }
            let mut region = vec![start];
            seen[start] = true;
            let mut k = 0;
            while k < region.len() {
                for j in neighbours(region[k]) {
                    if j != usize::MAX && low[j] && !outside[j] && !seen[j] {
                        seen[j] = true;
                        region.push(j);
                    }
                }
                k += 1;
            }
            if region.len() >= min_px {
                for i in region {
                    m[i] = true;
                }
            }
        }
    });
    mask
}

/// Emphysema index (percent under -950 HU) of `hu` over `mask`.
pub fn emphysema_index(hu: &[f32], mask: &[bool]) -> Option<f64> {
    let n = mask.iter().filter(|&&m| m).count();
    if n == 0 || n * 100 < mask.len() {
        return None;
    }
    let low = hu
        .iter()
        .zip(mask)
        .filter(|(&v, &m)| m && v < -950.0)
        .count();
    Some(100.0 * low as f64 / n as f64)
}

/// Metrics of `output` against `target` (both in HU, same shape); `mask` is the target's lung mask.
pub fn metrics(output: &Volume, target: &Volume, mask: &[bool], w: HuWindow) -> Metrics {
    let ou: Vec<f32> = output.hu.iter().map(|&v| w.to_unit(v)).collect();
    let tu: Vec<f32> = target.hu.iter().map(|&v| w.to_unit(v)).collect();
    let mae = ou
        .iter()
        .zip(&tu)
        .map(|(&x, &y)| f64::from((x - y).abs()))
        .sum::<f64>()
        / ou.len().max(1) as f64;
    let e = mse(&ou, &tu);
    Metrics {
        mae,
        psnr: if e > 0.0 {
            10.0 * (4.0 / e).log10()
        } else {
            f64::INFINITY
        },
        ssim: ssim3d(&ou, &tu, target.shape),
        ei_output: emphysema_index(&output.hu, mask),
        ei_target: emphysema_index(&target.hu, mask),
    }
}

/// Interpolation kernels for upsampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interp {
    Linear,
    /// Keys cubic convolution, a = -0.5 (Catmull-Rom).
    Cubic,
}

fn upsample_axis(v: &[f32], shape: [usize; 3], axis: usize, n_out: usize, it: Interp) -> Vec<f32> {
    let n_in = shape[axis];
    let f = n_out as f64 / n_in as f64;
    // Per output index: (source indices, weights).
    let plan: Vec<Vec<(usize, f64)>> = (0..n_out)
        .map(|j| {
            let s = ((j as f64 + 0.5) / f - 0.5).clamp(0.0, (n_in - 1) as f64);
            let i0 = s.floor();
            let t = s - i0;
            let i0 = i0 as isize;
            let clamp = |k: isize| k.clamp(0, n_in as isize - 1) as usize;
            match it {
                Interp::Linear => vec![(clamp(i0), 1.0 - t), (clamp(i0 + 1), t)],
                Interp::Cubic => {
                    let a = -0.5;
                    let k = |x: f64| {
                        let x = x.abs();
                        if x <= 1.0 {
                            (a + 2.0) * x.powi(3) - (a + 3.0) * x * x + 1.0
                        } else if x < 2.0 {
                            a * x.powi(3) - 5.0 * a * x * x + 8.0 * a * x - 4.0 * a
                        } else {
                            0.0
                        }
                    };
                    (-1..=2).map(|d| (clamp(i0 + d), k(t - d as f64))).collect()
                }
            }
        })
        .collect();
    let mut out_shape = shape;
    out_shape[axis] = n_out;
    let [oz, oy, ox] = out_shape;
    let [_, ny, nx] = shape;
    let mut out = vec![0f32; oz * oy * ox];
    out.par_chunks_mut(oy * ox).enumerate().for_each(|(z, o)| {
        for y in 0..oy {
            for x in 0..ox {
                let (j, idx): (usize, &dyn Fn(usize) -> usize) = match axis {
                    0 => (z, &|k| (k * ny + y) * nx + x),
                    1 => (y, &|k| (z * ny + k) * nx + x),
                    _ => (x, &|k| (z * ny + y) * nx + k),
                };
                o[y * ox + x] = plan[j]
                    .iter()
                    .map(|&(k, w)| w * f64::from(v[idx(k)]))
                    .sum::<f64>() as f32;
            }
        }
    });
    out
}

/// Upsamples `v` to `shape` (each axis an integer multiple or not; centres aligned).
pub fn upsample(v: &Volume, shape: [usize; 3], it: Interp) -> Volume {
    let mut data = v.hu.clone();
    let mut cur = v.shape;
    for axis in [2, 1, 0] {
        data = upsample_axis(&data, cur, axis, shape[axis], it);
        cur[axis] = shape[axis];
    }
    let spacing = [0, 1, 2].map(|a| v.spacing[a] * v.shape[a] as f64 / shape[a] as f64);
    Volume::new(format!("{} upsampled", v.name), shape, spacing, data)
}

/// Runs a translator over a whole volume, slab by slab, as the daemon does.
pub fn run_model(t: &mut Translator, input: &Volume) -> Result<Volume, EvalError> {
    let dir = t.model_dir().dir.clone();
    let terr = |source| EvalError::Translate {
        dir: dir.clone(),
        source,
    };
    let [nz, ny, nx] = input.shape;
    let [sz, sy, sx] = t.manifest().scale();
    let (oy, ox) = (ny * sy, nx * sx);
    let mut out = vec![0f32; nz * sz * oy * ox];
    let plane = ny * nx;
    for zt in t.plan(0, nz).map_err(terr)? {
        let slab = Slab {
            z0: zt.start,
            depth: zt.len,
            rows: ny,
            columns: nx,
            hu: input.hu[zt.start * plane..(zt.start + zt.len) * plane].to_vec(),
        };
        let o = t.translate(&slab, zt).map_err(terr)?;
        if o.rows != oy || o.columns != ox {
            return Err(EvalError::Shape(format!(
                "model {}: output slab {}x{} where {oy}x{ox} was expected",
                dir.display(),
                o.rows,
                o.columns
            )));
        }
        let start = o.z0 * oy * ox;
        out[start..start + o.hu.len()].copy_from_slice(&o.hu);
    }
    Ok(Volume::new(
        format!("{} -> {}", input.name, t.manifest().name),
        [nz * sz, oy, ox],
        [
            input.spacing[0] / sz as f64,
            input.spacing[1] / sy as f64,
            input.spacing[2] / sx as f64,
        ],
        out,
    ))
}

/// Result of the Gaussian grid search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianTuning {
    pub sigma_xy: f64,
    pub sigma_z: f64,
    /// Mean MSE (on [-1, 1]) over the tuning volumes at the optimum.
    pub mse: f64,
    pub volumes: usize,
}

/// Grid search: in-plane σ over 0..=2.5 step 0.05 with no z blur, refined by golden-section search
/// within one step (to 0.001 px), then z σ over 0..=2 step 0.1 at the best in-plane σ. Pairs are
/// (sharp, soft).
pub fn tune_gaussian(pairs: &[(&Volume, &Volume)], w: HuWindow) -> GaussianTuning {
    let targets: Vec<Vec<f32>> = pairs
        .iter()
        .map(|(_, t)| t.hu.iter().map(|&v| w.to_unit(v)).collect())
        .collect();
    let cost = |sxy: f64, sz: f64| -> f64 {
        pairs
            .iter()
            .zip(&targets)
            .map(|((s, _), t)| {
                let b = gaussian_blur(&s.hu, s.shape, sxy, sz);
                let u: Vec<f32> = b.iter().map(|&v| w.to_unit(v)).collect();
                mse(&u, t)
            })
            .sum::<f64>()
            / pairs.len().max(1) as f64
    };
    let mut best = (0.0, 0.0, cost(0.0, 0.0));
    for i in 1..=50 {
        let s = i as f64 * 0.05;
        let c = cost(s, 0.0);
        if c < best.2 {
            best = (s, 0.0, c);
        }
    }
    // Refine the in-plane sigma by golden-section search within one grid step.
    if best.0 > 0.0 {
        let inv_phi = (5f64.sqrt() - 1.0) / 2.0;
        let (mut a, mut b) = (best.0 - 0.05, best.0 + 0.05);
        while b - a > 1e-3 {
            let (c, d) = (b - inv_phi * (b - a), a + inv_phi * (b - a));
            if cost(c, 0.0) < cost(d, 0.0) {
                b = d;
            } else {
                a = c;
            }
        }
        let s = 0.5 * (a + b);
        let c = cost(s, 0.0);
        if c < best.2 {
            best = (s, 0.0, c);
        }
    }
    for i in 1..=20 {
        let s = i as f64 * 0.1;
        let c = cost(best.0, s);
        if c < best.2 {
            best = (best.0, s, c);
        }
    }
    GaussianTuning {
        sigma_xy: best.0,
        sigma_z: best.1,
        mse: best.2,
        volumes: pairs.len(),
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: String,
    pub task: &'static str,
    pub method: String,
    pub metrics: Metrics,
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

/// What `eval` produced.
#[derive(Debug, Clone)]
pub struct EvalReport {
    pub rows: Vec<Row>,
    pub tuning: Option<GaussianTuning>,
    pub tuned_on: String,
    /// The same without machine paths (data folders by name), for manifests.
    pub tuned_on_label: String,
}

fn task_name(t: Task) -> &'static str {
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
                let b = gaussian_blur(&sharp.hu, sharp.shape, g.sigma_xy, g.sigma_z);
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

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_default()
}

/// The table as text.
pub fn format_table(r: &EvalReport) -> String {
    let mut s = String::new();
    if let Some(g) = r.tuning {
        s.push_str(&format!(
            "gaussian baseline tuned on {} volume(s) from {}: sigma_xy = {:.3} px, sigma_z = {:.2} px (MSE {:.3e})\n",
            g.volumes, r.tuned_on, g.sigma_xy, g.sigma_z, g.mse
        ));
    }
    let w = r
        .rows
        .iter()
        .map(|x| x.method.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let cw = r
        .rows
        .iter()
        .map(|x| x.case.len())
        .max()
        .unwrap_or(4)
        .max(4);
    s.push_str(&format!(
        "{:<cw$}  {:<8}  {:<w$}  {:>7}  {:>7}  {:>6}  {:>7}  {:>7}  {:>7}\n",
        "case", "task", "method", "MAE", "PSNR", "SSIM", "EI out", "EI tgt", "EI err"
    ));
    for x in &r.rows {
        let m = &x.metrics;
        let err = m.ei_output.zip(m.ei_target).map(|(a, b)| a - b);
        s.push_str(&format!(
            "{:<cw$}  {:<8}  {:<w$}  {:>7.4}  {:>7.2}  {:>6.4}  {:>7}  {:>7}  {:>7}\n",
            x.case,
            x.task,
            x.method,
            m.mae,
            m.psnr,
            m.ssim,
            opt(m.ei_output, 2),
            opt(m.ei_target, 2),
            opt(err, 2)
        ));
    }
    s
}

/// Writes the rows as CSV.
pub fn write_csv(path: &Path, r: &EvalReport) -> Result<(), EvalError> {
    let io = |source| EvalError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    writeln!(
        f,
        "case,task,method,mae,psnr,ssim,ei_output,ei_target,ei_error"
    )
    .map_err(io)?;
    for x in &r.rows {
        let m = &x.metrics;
        let err = m.ei_output.zip(m.ei_target).map(|(a, b)| a - b);
        writeln!(
            f,
            "{},{},\"{}\",{:.6},{:.4},{:.6},{},{},{}",
            x.case,
            x.task,
            x.method.replace('"', "'"),
            m.mae,
            m.psnr,
            m.ssim,
            opt(m.ei_output, 4),
            opt(m.ei_target, 4),
            opt(err, 4)
        )
        .map_err(io)?;
    }
    f.flush().map_err(io)
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
    #[arg(long, default_value = "-1150,350")]
    pub window: String,
    /// ct-harmonizer settings file (ONNX Runtime location, device, tile size).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write the figures into each --model's manifest (`[[evaluation]]`: the model's mean row and
    /// every baseline's of the same task), replacing the rows it held; the ONNX file is untouched.
    #[arg(long)]
    pub record: bool,
}

/// The rows of `r` that go into the manifest of a `task` model: means over cases (the only case
/// when there is one), every method of that task, with `dataset` naming the pairs.
/// Rows of other trained models evaluated in the same run (`others`, their labels) are left out:
/// a manifest lists its model against the baselines.
pub fn manifest_rows(
    r: &EvalReport,
    task: Task,
    dataset: &str,
    others: &[String],
) -> Vec<EvaluationRow> {
    let means = r.rows.iter().any(|row| row.case == "mean");
    r.rows
        .iter()
        .filter(|row| row.task == task_name(task) && (!means || row.case == "mean"))
        .filter(|row| !others.contains(&row.method))
        .map(|row| EvaluationRow {
            dataset: dataset.to_owned(),
            method: row.method.clone(),
            mae: row.metrics.mae,
            psnr: row.metrics.psnr,
            ssim: row.metrics.ssim,
        })
        .collect()
}

/// Replaces the `[[evaluation]]` rows of the manifest in `model` (see [`EvalArgs::record`]).
pub fn record_in_manifest(model: &Path, rows: Vec<EvaluationRow>) -> Result<(), EvalError> {
    let md = ModelDir::open(model).map_err(|source| EvalError::Model {
        dir: model.to_owned(),
        source,
    })?;
    let mut m = md.manifest;
    m.evaluation = rows;
    let path = model.join(crate::export::MANIFEST_FILE);
    let text = m.to_toml().map_err(|e| EvalError::Pairs {
        path: path.clone(),
        reason: format!("cannot serialize the manifest: {e}"),
    })?;
    crate::export::write_atomic(&path, text.as_bytes()).map_err(|source| EvalError::Io {
        path: path.clone(),
        source,
    })?;
    ModelDir::open(model).map_err(|source| EvalError::Model {
        dir: model.to_owned(),
        source,
    })?;
    Ok(())
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
        let label =
            |m: &ct_harmonizer::model::manifest::Manifest| format!("{} {}", m.name, m.version);
        for (dir, m) in o.models.iter().zip(&manifests) {
            let others: Vec<String> = manifests
                .iter()
                .filter(|x| {
                    x.kind == ct_harmonizer::model::manifest::ModelKind::Trained
                        && label(x) != label(m)
                })
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

    fn vol(shape: [usize; 3], f: impl Fn(usize, usize, usize) -> f32) -> Volume {
        let mut hu = Vec::new();
        for z in 0..shape[0] {
            for y in 0..shape[1] {
                for x in 0..shape[2] {
                    hu.push(f(z, y, x));
                }
            }
        }
        Volume::new("t", shape, [1.0, 1.0, 1.0], hu)
    }

    #[test]
    fn ssim_psnr_mae_basics() {
        let s = [12, 12, 12];
        let a = vol(s, |z, y, x| {
            ((z * 7 + y * 3 + x) % 11) as f32 * 100.0 - 900.0
        });
        let mask = vec![false; a.len()];
        let w = HuWindow::default();
        let m = metrics(&a, &a, &mask, w);
        assert_eq!(m.mae, 0.0);
        assert!(m.psnr.is_infinite());
        assert!((m.ssim - 1.0).abs() < 1e-6, "{m:?}");
        let b = vol(s, |z, y, x| a.hu[a.idx(z, y, x)] + 75.0);
        let m = metrics(&b, &a, &mask, w);
        assert!((m.mae - 0.1).abs() < 1e-6, "{m:?}");
        assert!((m.psnr - 10.0 * (4.0f64 / 0.01).log10()).abs() < 1e-3);
        // A pure offset near mid-window (mean ~0 on [-1, 1]) hits the luminance term hard.
        assert!(m.ssim < 0.9 && m.ssim > -1.0, "{m:?}");
        assert_eq!(m.ei_output, None);
    }

    #[test]
    fn border_modes() {
        assert_eq!(border_index(-1, 5, Border::Reflect), 0);
        assert_eq!(border_index(-2, 5, Border::Reflect), 1);
        assert_eq!(border_index(5, 5, Border::Reflect), 4);
        assert_eq!(border_index(6, 5, Border::Reflect), 3);
        assert_eq!(border_index(-3, 5, Border::Edge), 0);
        assert_eq!(border_index(9, 5, Border::Edge), 4);
    }

    #[test]
    fn blur_keeps_constants_and_tuning_finds_the_blur() {
        let s = [6, 20, 20];
        let c = vol(s, |_, _, _| 40.0);
        assert!(gaussian_blur(&c.hu, s, 1.2, 0.7)
            .iter()
            .all(|&v| (v - 40.0).abs() < 1e-3));
        let sharp = vol(s, |z, y, x| {
            if (y * 7 + x * 13 + z * 5) % 4 == 0 {
                200.0
            } else {
                -400.0
            }
        });
        let soft = Volume::new("soft", s, [1.0; 3], gaussian_blur(&sharp.hu, s, 1.0, 0.0));
        let g = tune_gaussian(&[(&sharp, &soft)], HuWindow::default());
        assert!((g.sigma_xy - 1.0).abs() < 0.01 && g.sigma_z == 0.0, "{g:?}");
    }

    #[test]
    fn upsampling_reproduces_linear_ramps() {
        let lo = vol([5, 6, 6], |z, y, x| (z * 40 + y * 10 + x) as f32);
        for it in [Interp::Linear, Interp::Cubic] {
            let up = upsample(&lo, [20, 12, 12], it);
            assert_eq!(up.shape, [20, 12, 12]);
            // Interior voxel: dst (9, 5, 6) -> src ((9.5/4 - 0.5), (5.5/2 - 0.5), (6.5/2 - 0.5)).
            let want = (9.5 / 4.0 - 0.5) * 40.0 + (5.5 / 2.0 - 0.5) * 10.0 + (6.5 / 2.0 - 0.5);
            let got = f64::from(up.hu[up.idx(9, 5, 6)]);
            assert!((got - want).abs() < 1e-3, "{it:?} {got} {want}");
        }
    }

    #[test]
    fn lung_mask_and_emphysema_index() {
        // Body disc of 0 HU with two inner air regions: a big "lung" with a quarter under -950,
        // and a small "trachea" that the area limit drops.
        let n = 48;
        let v = vol([2, n, n], |_, y, x| {
            let (dy, dx) = (y as f64 - 24.0, x as f64 - 24.0);
            let r = (dy * dy + dx * dx).sqrt();
            if r > 22.0 {
                -1000.0
            } else if (14..34).contains(&y) && (14..34).contains(&x) {
                if y < 19 {
                    -980.0
                } else {
                    -850.0
                }
            } else if (38..41).contains(&y) && (23..26).contains(&x) {
                -1000.0
            } else {
                0.0
            }
        });
        let mask = lung_mask(&v);
        let count = mask.iter().filter(|&&m| m).count();
        assert_eq!(count, 2 * 400);
        let ei = emphysema_index(&v.hu, &mask).unwrap();
        assert!((ei - 25.0).abs() < 1e-9, "{ei}");
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
