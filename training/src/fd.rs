//! Fréchet distance between two sets of feature vectors (seed 004 evaluates with FID), with the
//! features taken from **our own trained discriminator**: FID's Inception-v3 network is not
//! available offline (and was trained on photographs, not CT), so the figure here is a Fréchet
//! distance on a CT discriminator's features, comparable only between models scored with the same
//! discriminator checkpoint, never with published FID values.
//!
//! `FD = |μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½)` (Dowson & Landau 1982; the same value as
//! the usual `Tr((Σ₁Σ₂)^½)` form), computed with symmetric eigen-decompositions (cyclic Jacobi),
//! in `f64`.
//!
//! Features ([`disc_features`]): the channel means of the discriminator's last intermediate
//! feature map φ₃ (`4·ndf` values per patch), the analogue of FID's pooled Inception features.
//! [`load_discriminators`] reads them from a `ct-train train` run directory. `ct-train eval
//! --fd-features RUN` uses [`FdExtractor`]: the target-domain discriminator (`b`) of a RevGAN
//! kernel run, fed `patch`³ patches (the run's training patch) on a half-overlapping grid of every
//! held-out case, in the run's HU window; a paired run's conditional discriminator sees
//! `[sharp input, candidate]` as in training. Its features are the channel means **and standard
//! deviations** of φ₁ (`2·ndf` values), not φ₃'s means: φ₂ and φ₃ are instance-normalised per
//! patch, so their channel means carry little of the image (on the realistic held-out pairs, φ₃
//! means put the four kernel baselines at 0.00000 to 5 decimals), while φ₁ (first convolution +
//! LeakyReLU, no normalisation) keeps the intensity (means) and the noise and edge content
//! (deviations). The figure is biased by the number of patches (a few dozen per case against
//! `2·ndf` dimensions): compare rows of one evaluation only.

use crate::config::{HuWindow, ModeArg, TaskArg};
use crate::model::{param_shapes, Direction, Discriminator, Discriminators};
use crate::trainer::{read_configs, CHECKPOINT_DIR};
use crate::volume::Volume;
use burn::backend::Flex;
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use std::path::{Path, PathBuf};

/// Errors of the Fréchet distance.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error("{what}: need at least 2 feature vectors, got {got}")]
    TooFew { what: &'static str, got: usize },
    #[error("{what}: feature vector {index} has {got} values, expected {expected}")]
    Dimension {
        what: &'static str,
        index: usize,
        got: usize,
        expected: usize,
    },
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("patch of {got} values, expected {patch}^3")]
    Patch { got: usize, patch: usize },
    #[error("discriminator features: {0}")]
    Tensor(String),
}

/// Most patches per case [`FdExtractor::features`] takes (evenly spaced over the grid).
pub const FD_MAX_PATCHES: usize = 64;

/// Patches per discriminator forward pass.
const FD_BATCH: usize = 8;

/// The feature extractor of `ct-train eval --fd-features RUN` (module docs).
#[derive(Debug)]
pub struct FdExtractor {
    disc: Discriminator<Flex>,
    conditional: bool,
    patch: usize,
    window: HuWindow,
    /// The run directory, for messages and the report.
    pub run: PathBuf,
}

impl FdExtractor {
    /// Loads the target-domain discriminator of the RevGAN kernel run in `run`; a missing or
    /// unreadable checkpoint, another task or a MEGAN run is an error naming the path.
    pub fn load(run: &Path) -> Result<Self, FdError> {
        let bad = |path: PathBuf, reason: String| FdError::Checkpoint { path, reason };
        if !run.is_dir() {
            return Err(bad(run.to_owned(), "no such run directory".into()));
        }
        if run.join(crate::trainer::megan::MEGAN_CONFIG).exists() {
            return Err(bad(
                run.to_owned(),
                "a MEGAN run: its discriminators are conditioned on the edge map and the LR stage's output, not a feature extractor for --fd-features; give a RevGAN kernel run".into(),
            ));
        }
        let (_, cfg) = read_configs(run).map_err(|e| bad(run.to_owned(), e.to_string()))?;
        if cfg.task != TaskArg::Kernel {
            return Err(bad(
                run.to_owned(),
                "trained for another task than kernel: its discriminator judges other images"
                    .into(),
            ));
        }
        let window = HuWindow::new(cfg.hu_window[0], cfg.hu_window[1])
            .map_err(|e| bad(run.join(crate::trainer::TRAIN_CONFIG), e.to_string()))?;
        let discs = load_discriminators::<Flex>(run, &Default::default())?;
        Ok(Self {
            disc: discs.target(Direction::AtoB).clone(),
            conditional: cfg.mode == ModeArg::Paired,
            patch: cfg.patch,
            window,
            run: run.to_owned(),
        })
    }

    /// Patch corners (z, y, x) on a half-overlapping grid over `shape`, at most
    /// [`FD_MAX_PATCHES`] evenly spaced; an error when the volume is smaller than a patch.
    fn corners(&self, name: &str, shape: [usize; 3]) -> Result<Vec<[usize; 3]>, FdError> {
        let p = self.patch;
        if shape.iter().any(|&n| n < p) {
            return Err(FdError::Tensor(format!(
                "{name}: volume {shape:?} is smaller than the discriminator's {p}^3 patch ({})",
                self.run.display()
            )));
        }
        let axis = |n: usize| {
            let step = (p / 2).max(1);
            let mut v: Vec<usize> = (0..=(n - p)).step_by(step).collect();
            if v.last() != Some(&(n - p)) {
                v.push(n - p);
            }
            v
        };
        let mut all = Vec::new();
        for z in axis(shape[0]) {
            for y in axis(shape[1]) {
                for x in axis(shape[2]) {
                    all.push([z, y, x]);
                }
            }
        }
        if all.len() > FD_MAX_PATCHES {
            let n = all.len();
            all = (0..FD_MAX_PATCHES)
                .map(|i| all[i * n / FD_MAX_PATCHES])
                .collect();
        }
        Ok(all)
    }

    fn cut(&self, v: &Volume, c: [usize; 3]) -> Vec<f32> {
        let p = self.patch;
        let [_, h, w] = v.shape;
        let mut out = Vec::with_capacity(p * p * p);
        for z in c[0]..c[0] + p {
            for y in c[1]..c[1] + p {
                let row = (z * h + y) * w + c[2];
                out.extend(
                    v.values[row..row + p]
                        .iter()
                        .map(|&x| self.window.to_unit(x)),
                );
            }
        }
        out
    }

    /// Features of `candidate` (HU, the grid of `source`) at the grid's patches; `source` is the
    /// sharp input a paired run's discriminator is conditioned on (ignored by an unpaired one).
    pub fn features(&self, source: &Volume, candidate: &Volume) -> Result<Vec<Vec<f64>>, FdError> {
        if source.shape != candidate.shape {
            return Err(FdError::Tensor(format!(
                "{}: shape {:?} differs from the input's {:?}",
                candidate.name, candidate.shape, source.shape
            )));
        }
        let corners = self.corners(&candidate.name, candidate.shape)?;
        let p = self.patch;
        let ch = if self.conditional { 2 } else { 1 };
        let dev = Default::default();
        let mut out = Vec::with_capacity(corners.len());
        for chunk in corners.chunks(FD_BATCH) {
            let mut data = Vec::with_capacity(chunk.len() * ch * p * p * p);
            for &c in chunk {
                if self.conditional {
                    data.extend(self.cut(source, c));
                }
                data.extend(self.cut(candidate, c));
            }
            let x = Tensor::<Flex, 5>::from_data(
                TensorData::new(data, [chunk.len(), ch, p, p, p]),
                &dev,
            );
            let [f1, _, _] = self.disc.features(x);
            let [n, c, d, h, w] = f1.dims();
            let flat = f1.reshape([n, c, d * h * w]);
            let mean = flat.clone().mean_dim(2);
            let std = (flat - mean.clone()).powf_scalar(2.0).mean_dim(2).sqrt();
            let pooled = Tensor::cat(vec![mean, std], 1).reshape([n, 2 * c]);
            let v: Vec<f32> = pooled
                .into_data()
                .convert::<f32>()
                .to_vec()
                .map_err(|e| FdError::Tensor(format!("{e:?}")))?;
            out.extend(
                v.chunks(2 * c)
                    .map(|r| r.iter().map(|&x| f64::from(x)).collect()),
            );
        }
        Ok(out)
    }
}

/// Mean and covariance (row-major `d × d`) of a set of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    pub mean: Vec<f64>,
    pub cov: Vec<f64>,
}

impl Gaussian {
    /// Sample mean and unbiased covariance (n − 1) of `features`.
    pub fn fit(what: &'static str, features: &[Vec<f64>]) -> Result<Self, FdError> {
        let n = features.len();
        if n < 2 {
            return Err(FdError::TooFew { what, got: n });
        }
        let d = features[0].len();
        for (index, f) in features.iter().enumerate() {
            if f.len() != d {
                return Err(FdError::Dimension {
                    what,
                    index,
                    got: f.len(),
                    expected: d,
                });
            }
        }
        let mut mean = vec![0.0; d];
        for f in features {
            for (m, v) in mean.iter_mut().zip(f) {
                *m += v / n as f64;
            }
        }
        let mut cov = vec![0.0; d * d];
        for f in features {
            for i in 0..d {
                let di = f[i] - mean[i];
                for j in i..d {
                    cov[i * d + j] += di * (f[j] - mean[j]);
                }
            }
        }
        for i in 0..d {
            for j in i..d {
                let v = cov[i * d + j] / (n - 1) as f64;
                cov[i * d + j] = v;
                cov[j * d + i] = v;
            }
        }
        Ok(Self { mean, cov })
    }

    fn dim(&self) -> usize {
        self.mean.len()
    }
}

/// Eigenvalues and eigenvectors (columns of the row-major `v`) of a symmetric `d × d` matrix, by
/// cyclic Jacobi rotations.
fn sym_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    let scale: f64 = a
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j] * a[i * d + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * scale {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// Square root of a symmetric positive semi-definite matrix (negative eigenvalues from rounding
/// clipped to 0).
fn sym_sqrt(a: &[f64], d: usize) -> Vec<f64> {
    let (w, v) = sym_eigen(a, d);
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            out[i * d + j] = (0..d)
                .map(|k| v[i * d + k] * w[k].max(0.0).sqrt() * v[j * d + k])
                .sum();
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                out[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    out
}

/// Fréchet distance between two Gaussians of the same dimension (module docs).
pub fn frechet_distance(g1: &Gaussian, g2: &Gaussian) -> Result<f64, FdError> {
    let d = g1.dim();
    if g2.dim() != d {
        return Err(FdError::Dimension {
            what: "second set",
            index: 0,
            got: g2.dim(),
            expected: d,
        });
    }
    let mean: f64 = g1
        .mean
        .iter()
        .zip(&g2.mean)
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    let s1 = sym_sqrt(&g1.cov, d);
    let mut m = matmul(&matmul(&s1, &g2.cov, d), &s1, d);
    // Symmetrise away rounding before the eigen-decomposition.
    for i in 0..d {
        for j in i + 1..d {
            let v = 0.5 * (m[i * d + j] + m[j * d + i]);
            m[i * d + j] = v;
            m[j * d + i] = v;
        }
    }
    let (w, _) = sym_eigen(&m, d);
    let cross: f64 = w.iter().map(|x| x.max(0.0).sqrt()).sum();
    let trace: f64 = (0..d).map(|i| g1.cov[i * d + i] + g2.cov[i * d + i]).sum();
    Ok((mean + trace - 2.0 * cross).max(0.0))
}

/// Fréchet distance between two sets of feature vectors (e.g. [`disc_features`] of target
/// patches and of the model's outputs at the same places).
pub fn frechet_of_features(a: &[Vec<f64>], b: &[Vec<f64>]) -> Result<f64, FdError> {
    frechet_distance(
        &Gaussian::fit("first set", a)?,
        &Gaussian::fit("second set", b)?,
    )
}

/// Features of `patch`³ patches (model units): per patch, the channel means of `disc`'s φ₃
/// ([`Discriminator::features`]). An unconditional (1-channel) discriminator: the unpaired
/// ones, or a paired one given a 2-channel input is not supported here.
pub fn disc_features<B: Backend>(
    disc: &Discriminator<B>,
    patches: &[Vec<f32>],
    patch: usize,
    device: &B::Device,
) -> Result<Vec<Vec<f64>>, FdError> {
    patches
        .iter()
        .map(|p| {
            if p.len() != patch * patch * patch {
                return Err(FdError::Patch {
                    got: p.len(),
                    patch,
                });
            }
            let x = Tensor::<B, 5>::from_data(
                TensorData::new(p.clone(), [1, 1, patch, patch, patch]),
                device,
            );
            let [_, _, f3] = disc.features(x);
            let [_, c, _, _, _] = f3.dims();
            let pooled = f3.mean_dim(4).mean_dim(3).mean_dim(2).reshape([c]);
            let v: Vec<f32> = pooled
                .into_data()
                .convert::<f32>()
                .to_vec()
                .map_err(|e| FdError::Tensor(format!("{e:?}")))?;
            Ok(v.into_iter().map(f64::from).collect())
        })
        .collect()
}

/// Loads both discriminators of a `ct-train train` run directory (its `checkpoint/`).
pub fn load_discriminators<B: Backend>(
    run: &Path,
    device: &B::Device,
) -> Result<Discriminators<B>, FdError> {
    let ck = run.join(CHECKPOINT_DIR);
    let bad = |reason: String| FdError::Checkpoint {
        path: ck.clone(),
        reason,
    };
    let (mut model_cfg, cfg) = read_configs(run).map_err(|e| bad(e.to_string()))?;
    model_cfg.conditional = cfg.mode == crate::config::ModeArg::Paired;
    let fresh = Discriminators::<B>::new(&model_cfg, device);
    let expected = param_shapes(&fresh);
    let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let disc = fresh
        .load_file(ck.join(crate::trainer::DISC_FILE), &rec, device)
        .map_err(|e| bad(e.to_string()))?;
    if param_shapes(&disc) != expected {
        return Err(bad(
            "discriminator parameter shapes differ from model.json".into()
        ));
    }
    Ok(disc)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::data::rng::Rng;

    /// Standard normal draws (Box-Muller on the crate's generator).
    fn normal(rng: &mut Rng) -> f64 {
        let u1 = rng.uniform().max(1e-12);
        let u2 = rng.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    #[test]
    fn identical_sets_are_at_distance_zero() {
        let mut rng = Rng::new(5);
        let f: Vec<Vec<f64>> = (0..50)
            .map(|_| (0..6).map(|_| normal(&mut rng)).collect())
            .collect();
        let d = frechet_of_features(&f, &f).unwrap();
        assert!(d.abs() < 1e-9, "{d}");
        // A shifted copy: only the mean term, |shift|² = 6 · 0.5².
        let g: Vec<Vec<f64>> = f
            .iter()
            .map(|v| v.iter().map(|x| x + 0.5).collect())
            .collect();
        let d = frechet_of_features(&f, &g).unwrap();
        assert!((d - 1.5).abs() < 1e-9, "{d}");
    }

    #[test]
    fn two_known_gaussians_match_the_closed_form() {
        // Σ₁ = 4·I: Tr((Σ₁Σ₂)^½) = 2·Tr(Σ₂^½), and for a 2×2 SPD matrix
        // Tr(M^½) = sqrt(tr M + 2·sqrt(det M)).
        let g1 = Gaussian {
            mean: vec![1.0, -2.0],
            cov: vec![4.0, 0.0, 0.0, 4.0],
        };
        let g2 = Gaussian {
            mean: vec![0.0, 1.0],
            cov: vec![2.0, 1.0, 1.0, 3.0],
        };
        let tr_sqrt = (5.0f64 + 2.0 * 5.0f64.sqrt()).sqrt();
        let expected = (1.0 + 9.0) + (8.0 + 5.0) - 2.0 * 2.0 * tr_sqrt;
        let d = frechet_distance(&g1, &g2).unwrap();
        assert!((d - expected).abs() < 1e-10, "{d} vs {expected}");
        // Symmetric in its arguments (the general, non-commuting case).
        let back = frechet_distance(&g2, &g1).unwrap();
        assert!((back - expected).abs() < 1e-10, "{back}");
        // Sampled: 20000 draws of each give the closed form within sampling error.
        let mut rng = Rng::new(11);
        let l2 = [[2f64.sqrt(), 0.0], [1.0 / 2f64.sqrt(), (2.5f64).sqrt()]];
        let a: Vec<Vec<f64>> = (0..20000)
            .map(|_| vec![1.0 + 2.0 * normal(&mut rng), -2.0 + 2.0 * normal(&mut rng)])
            .collect();
        let b: Vec<Vec<f64>> = (0..20000)
            .map(|_| {
                let (z0, z1) = (normal(&mut rng), normal(&mut rng));
                vec![l2[0][0] * z0, 1.0 + l2[1][0] * z0 + l2[1][1] * z1]
            })
            .collect();
        let ds = frechet_of_features(&a, &b).unwrap();
        assert!((ds - expected).abs() < 0.15, "{ds} vs {expected}");
        assert!(matches!(
            frechet_of_features(&a[..1], &b),
            Err(FdError::TooFew { got: 1, .. })
        ));
    }

    #[test]
    fn discriminator_features_have_one_value_per_channel() {
        use burn::backend::Flex;
        let dev = Default::default();
        let disc = Discriminator::<Flex>::new(1, 2, &dev);
        let p: Vec<f32> = (0..16 * 16 * 16).map(|i| (i % 7) as f32 * 0.1).collect();
        let f = disc_features(&disc, &[p.clone(), p], 16, &dev).unwrap();
        assert_eq!((f.len(), f[0].len()), (2, 8));
        assert_eq!(f[0], f[1]);
        assert!(disc_features(&disc, &[vec![0.0; 10]], 16, &dev).is_err());
    }
}
