//! Samplers of issue 12: unpaired training on two separate sets of volumes (`--unpaired-a DIR
//! --unpaired-b DIR`: different cases per domain, not the two halves of paired data), and HA-GAN's
//! amortised sampling (seed 002, `--amortised`): one random high-resolution patch plus the whole
//! volume it comes from, box-averaged to low resolution, with the patch's position.
//!
//! A domain set is a DICOM series folder, a `.nii`/`.nii.gz` file, or a folder holding such
//! volumes at any depth (a folder without sub-folders or NIfTI files is one DICOM series), so the
//! per-domain layout of `ct-train synth` and a plain folder of cases both load.
//!
//! Amortised positions are multiples of the low-resolution factor, so a patch covers whole
//! low-resolution voxels: the patch's `cells` low-resolution voxels per axis start at
//! `origin / factor` in the low-resolution volume. No flips (a flipped patch has no position in
//! the unflipped whole volume).

use super::rng::{Rng, RngExt};
use super::{load_volume, DataError, PairedVolume, Volume};
use crate::config::HuWindow;
use std::path::{Path, PathBuf};

/// Draws per patch while its mean is air, as [`super::sampler::FOREGROUND_TRIES`].
const TRIES: usize = super::sampler::FOREGROUND_TRIES;

/// The volumes of one domain set (see the module docs), sorted by path.
pub fn domain_paths(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    fn is_nifti(p: &Path) -> bool {
        let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        n.ends_with(".nii") || n.ends_with(".nii.gz")
    }
    fn visit(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
        if dir.is_file() {
            if is_nifti(dir) {
                out.push(dir.to_owned());
            }
            return Ok(());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| DataError::Io {
                path: dir.to_owned(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        entries.sort();
        let nested: Vec<&PathBuf> = entries
            .iter()
            .filter(|p| p.is_dir() || is_nifti(p))
            .collect();
        if nested.is_empty() {
            if !entries.is_empty() {
                out.push(dir.to_owned());
            }
            return Ok(());
        }
        for p in nested {
            visit(p, out)?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    if !dir.exists() {
        return Err(DataError::Training {
            path: dir.to_owned(),
            reason: "does not exist".into(),
        });
    }
    visit(dir, &mut out)?;
    if out.is_empty() {
        return Err(DataError::Training {
            path: dir.to_owned(),
            reason: "no volume found (expected a DICOM series folder, .nii/.nii.gz files, or \
                     folders of them)"
                .into(),
        });
    }
    Ok(out)
}

/// Loads every volume of a domain set in model units.
pub fn load_domain(dir: &Path, window: [f32; 2]) -> Result<Vec<Volume>, DataError> {
    let w = HuWindow::new(window[0], window[1])?;
    domain_paths(dir)?
        .iter()
        .map(|p| {
            load_volume(p)
                .map(|v| v.to_model_units(w))
                .map_err(|e| DataError::Training {
                    path: p.clone(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// The two domains' volumes: paired (case i of A and of B on one grid) or two separate sets.
#[derive(Debug, Clone)]
pub struct DomainSets {
    pub a: Vec<Volume>,
    pub b: Vec<Volume>,
    pub paired: bool,
}

impl DomainSets {
    /// Paired cases.
    pub fn from_pairs(pairs: Vec<PairedVolume>) -> Self {
        let (a, b) = pairs.into_iter().map(|p| (p.a, p.b)).unzip();
        Self { a, b, paired: true }
    }

    /// Checks every volume holds a `patch`³ cube, paired volumes share one grid, and neither
    /// domain is empty.
    fn check(&self, patch: usize) -> Result<(), DataError> {
        if self.a.is_empty() || self.b.is_empty() {
            return Err(DataError::NoVolumes);
        }
        for v in self.a.iter().chain(&self.b) {
            if v.shape.iter().any(|&d| d < patch) {
                return Err(DataError::TooSmall {
                    name: v.name.clone(),
                    shape: v.shape,
                    patch,
                });
            }
        }
        if self.paired {
            for (a, b) in self.a.iter().zip(&self.b) {
                if a.shape != b.shape || self.a.len() != self.b.len() {
                    return Err(DataError::ShapeMismatch {
                        a: a.name.clone(),
                        sa: a.shape,
                        b: b.name.clone(),
                        sb: b.shape,
                    });
                }
            }
        }
        Ok(())
    }
}

/// `p`³ values of `v` from `origin`, with flips.
fn extract(v: &Volume, p: usize, origin: [usize; 3], flip: [bool; 3]) -> Vec<f32> {
    let [_, h, w] = v.shape;
    let mut out = Vec::with_capacity(p * p * p);
    for z in 0..p {
        let sz = origin[0] + if flip[0] { p - 1 - z } else { z };
        for y in 0..p {
            let sy = origin[1] + if flip[1] { p - 1 - y } else { y };
            let row = (sz * h + sy) * w + origin[2];
            if flip[2] {
                out.extend(v.values[row..row + p].iter().rev());
            } else {
                out.extend_from_slice(&v.values[row..row + p]);
            }
        }
    }
    out
}

fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len().max(1) as f32
}

/// Random patches of two separate domain sets, drawn independently per domain, with the flips
/// and the foreground retries of [`super::PatchSampler`].
#[derive(Debug, Clone)]
pub struct DomainSampler {
    sets: DomainSets,
    patch: usize,
    air: f32,
}

impl DomainSampler {
    pub fn new(sets: DomainSets, patch: usize, window: [f32; 2]) -> Result<Self, DataError> {
        sets.check(patch)?;
        let air = HuWindow::new(window[0], window[1])?.to_unit_unclipped(super::sampler::AIR_HU);
        Ok(Self { sets, patch, air })
    }

    fn draw(&self, rng: &mut Rng, vols: &[Volume]) -> Vec<f32> {
        let p = self.patch;
        let mut out = Vec::new();
        for _ in 0..TRIES {
            let v = &vols[rng.below(vols.len())];
            let origin = v.shape.map(|d| rng.below(d - p + 1));
            let flip = [rng.below(2) == 1, rng.below(2) == 1, rng.below(2) == 1];
            out = extract(v, p, origin, flip);
            if mean(&out) > self.air {
                break;
            }
        }
        out
    }

    /// `(a, b)` patches, one from each domain, independent.
    pub fn sample(&self, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
        let a = self.draw(rng, &self.sets.a);
        let b = self.draw(rng, &self.sets.b);
        (a, b)
    }
}

/// A whole volume at low resolution (box average over `factor` voxels per axis, the trailing
/// remainder and, for an even size, one more low-resolution voxel dropped).
#[derive(Debug, Clone, PartialEq)]
pub struct LowRes {
    pub values: Vec<f32>,
    /// (z, y, x), each even.
    pub shape: [usize; 3],
}

impl LowRes {
    /// Box average of `v` by `factor` per axis; each low-resolution size is rounded down to even
    /// (the generator's stride-2 layers), at least 2.
    pub fn of(v: &Volume, factor: [usize; 3]) -> Self {
        let shape: [usize; 3] = std::array::from_fn(|i| {
            let n = v.shape[i] / factor[i];
            (n - n % 2).max(2).min(n)
        });
        let [_, h, w] = v.shape;
        let cells = (factor[0] * factor[1] * factor[2]) as f32;
        let mut values = Vec::with_capacity(shape.iter().product());
        for z in 0..shape[0] {
            for y in 0..shape[1] {
                for x in 0..shape[2] {
                    let mut s = 0.0f32;
                    for dz in 0..factor[0] {
                        for dy in 0..factor[1] {
                            let row =
                                ((z * factor[0] + dz) * h + y * factor[1] + dy) * w + x * factor[2];
                            s += v.values[row..row + factor[2]].iter().sum::<f32>();
                        }
                    }
                    values.push(s / cells);
                }
            }
        }
        Self { values, shape }
    }
}

/// One amortised draw for each domain: a high-resolution patch and the whole volume it comes
/// from at low resolution, with the patch's position.
#[derive(Debug, Clone, PartialEq)]
pub struct AmortisedView {
    /// `patch`³ values (model units).
    pub patch: Vec<f32>,
    /// Origin (z, y, x) of the patch in the full-resolution volume, a multiple of the factor.
    pub origin: [usize; 3],
    /// The whole volume at low resolution.
    pub low: LowRes,
}

impl AmortisedView {
    /// Where the patch lies in the low-resolution volume: its first voxel.
    pub fn low_origin(&self, factor: [usize; 3]) -> [usize; 3] {
        std::array::from_fn(|i| self.origin[i] / factor[i])
    }
}

/// One amortised step's data: A and B views (the same case and place when paired).
#[derive(Debug, Clone, PartialEq)]
pub struct AmortisedSample {
    pub a: AmortisedView,
    pub b: AmortisedView,
    /// Low-resolution factor (z, y, x).
    pub factor: [usize; 3],
    /// Low-resolution voxels a patch covers per axis (`patch / factor`).
    pub cells: [usize; 3],
}

/// HA-GAN's amortised sampler (module docs).
#[derive(Debug, Clone)]
pub struct AmortisedSampler {
    sets: DomainSets,
    low_a: Vec<LowRes>,
    low_b: Vec<LowRes>,
    patch: usize,
    factor: [usize; 3],
    air: f32,
}

/// The low-resolution factor per axis: `factor` on every axis, or (0) per axis the smallest that
/// brings the largest volume of the sets within `patch`.
pub fn amortised_factor(sets: &DomainSets, patch: usize, factor: usize) -> [usize; 3] {
    if factor > 0 {
        return [factor; 3];
    }
    std::array::from_fn(|i| {
        let largest = sets
            .a
            .iter()
            .chain(&sets.b)
            .map(|v| v.shape[i])
            .max()
            .unwrap_or(1);
        largest.div_ceil(patch.max(1)).max(1)
    })
}

impl AmortisedSampler {
    /// `factor` 0 = automatic ([`amortised_factor`]). The factor must leave at least one
    /// low-resolution voxel per patch axis.
    pub fn new(
        sets: DomainSets,
        patch: usize,
        factor: usize,
        window: [f32; 2],
    ) -> Result<Self, DataError> {
        sets.check(patch)?;
        let factor = amortised_factor(&sets, patch, factor);
        if factor.iter().any(|&f| f > patch / 2) {
            return Err(DataError::Training {
                path: PathBuf::from("--amortised-factor"),
                reason: format!(
                    "factor {factor:?} leaves less than 2 low-resolution voxels in a {patch}^3 patch"
                ),
            });
        }
        let low_a: Vec<LowRes> = sets.a.iter().map(|v| LowRes::of(v, factor)).collect();
        let low_b: Vec<LowRes> = sets.b.iter().map(|v| LowRes::of(v, factor)).collect();
        let cells = factor.map(|f| patch / f);
        let vols = sets.a.iter().zip(&low_a).chain(sets.b.iter().zip(&low_b));
        for (v, low) in vols {
            if low.shape.iter().zip(cells).any(|(&n, c)| n < c) {
                return Err(DataError::Training {
                    path: PathBuf::from(&v.name),
                    reason: format!(
                        "volume {:?} at factor {factor:?} is {:?} voxels, smaller than a {patch}^3                          patch's {cells:?} low-resolution voxels",
                        v.shape, low.shape
                    ),
                });
            }
        }
        let air = HuWindow::new(window[0], window[1])?.to_unit_unclipped(super::sampler::AIR_HU);
        Ok(Self {
            sets,
            low_a,
            low_b,
            patch,
            factor,
            air,
        })
    }

    pub fn factor(&self) -> [usize; 3] {
        self.factor
    }

    /// Low-resolution voxels a patch covers per axis.
    pub fn cells(&self) -> [usize; 3] {
        self.factor.map(|f| self.patch / f)
    }

    /// A random origin in `v` (multiple of the factor) whose patch lies inside `v` and whose
    /// low-resolution cells lie inside `low`.
    fn origin(&self, rng: &mut Rng, v: &Volume, low: &LowRes) -> [usize; 3] {
        let cells = self.cells();
        std::array::from_fn(|i| {
            let f = self.factor[i];
            let by_full = (v.shape[i] - self.patch) / f;
            let by_low = low.shape[i].saturating_sub(cells[i]);
            f * rng.below(by_full.min(by_low) + 1)
        })
    }

    /// (case, origin) of a foreground-biased draw in domain A or B.
    fn draw(&self, rng: &mut Rng, domain_b: bool) -> (usize, [usize; 3]) {
        let (vols, lows) = if domain_b {
            (&self.sets.b, &self.low_b)
        } else {
            (&self.sets.a, &self.low_a)
        };
        let mut pick = (0, [0; 3]);
        for _ in 0..TRIES {
            let case = rng.below(vols.len());
            let origin = self.origin(rng, &vols[case], &lows[case]);
            pick = (case, origin);
            if mean(&extract(&vols[case], self.patch, origin, [false; 3])) > self.air {
                break;
            }
        }
        pick
    }

    fn view(&self, domain_b: bool, case: usize, origin: [usize; 3]) -> AmortisedView {
        let (v, low) = if domain_b {
            (&self.sets.b[case], &self.low_b[case])
        } else {
            (&self.sets.a[case], &self.low_a[case])
        };
        AmortisedView {
            patch: extract(v, self.patch, origin, [false; 3]),
            origin,
            low: low.clone(),
        }
    }

    /// One draw: when paired, A and B at the same case and place; else independent.
    pub fn sample(&self, rng: &mut Rng) -> AmortisedSample {
        let (ca, oa) = self.draw(rng, false);
        let (cb, ob) = if self.sets.paired {
            (ca, oa)
        } else {
            self.draw(rng, true)
        };
        AmortisedSample {
            a: self.view(false, ca, oa),
            b: self.view(true, cb, ob),
            factor: self.factor,
            cells: self.cells(),
        }
    }

    /// `(a, b)` patches for the validation pictures (A and B of one draw).
    pub fn sample_patches(&self, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
        let s = self.sample(rng);
        (s.a.patch, s.b.patch)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A volume whose every voxel value encodes its position (distinct, all above air).
    fn coded(name: &str, shape: [usize; 3], off: f32) -> Volume {
        let n = shape.iter().product();
        Volume::new(
            name,
            shape,
            [1.0; 3],
            (0..n).map(|i| i as f32 * 1e-3 + off).collect(),
        )
    }

    #[test]
    fn amortised_patch_matches_its_position_in_the_full_and_low_volumes() {
        let shape = [20, 40, 48];
        let sets = DomainSets {
            a: vec![coded("a0", shape, 0.0), coded("a1", shape, 100.0)],
            b: vec![coded("b0", shape, 0.5), coded("b1", shape, 100.5)],
            paired: true,
        };
        let s = AmortisedSampler::new(sets.clone(), 16, 0, [-1150.0, 350.0]).unwrap();
        // Auto factor: the smallest per axis that brings 20, 40, 48 within 16.
        assert_eq!(s.factor(), [2, 3, 3]);
        assert_eq!(s.cells(), [8, 5, 5]);
        let mut rng = Rng::new(4);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..30 {
            let d = s.sample(&mut rng);
            let case = usize::from(d.a.patch[0] >= 100.0);
            let full = &sets.a[case];
            // The patch is the full volume's cube at its origin ...
            assert_eq!(d.a.patch, extract(full, 16, d.a.origin, [false; 3]));
            let [_, h, w] = shape;
            let o = d.a.origin;
            assert_eq!(d.a.patch[0], full.values[(o[0] * h + o[1]) * w + o[2]]);
            // ... at a multiple of the factor, and paired B is at the same place.
            assert!(o.iter().zip(d.factor).all(|(o, f)| o % f == 0), "{o:?}");
            assert_eq!((d.b.origin, d.b.patch[0] - d.a.patch[0]), (o, 0.5));
            // The low-resolution cells of the patch are the box averages of its voxels.
            let lo = d.a.low_origin(d.factor);
            let [lz, ly, lx] = d.a.low.shape;
            assert!(lz >= lo[0] + 8 && ly >= lo[1] + 5 && lx >= lo[2] + 5);
            let cell = d.a.low.values[(lo[0] * ly + lo[1]) * lx + lo[2]];
            let mut sum = 0.0;
            for z in 0..2 {
                for y in 0..3 {
                    for x in 0..3 {
                        sum += d.a.patch[(z * 16 + y) * 16 + x];
                    }
                }
            }
            assert!((cell - sum / 18.0).abs() < 1e-3, "{cell} {sum}");
            seen.insert(o);
        }
        assert!(seen.len() > 5, "positions vary: {seen:?}");
        let e = AmortisedSampler::new(sets, 16, 9, [-1150.0, 350.0]).unwrap_err();
        assert!(e.to_string().contains("factor"), "{e}");
        // Factor 3 on a 16-voxel axis: 5 low-resolution voxels, rounded to an even 4, fewer than
        // the patch's 5 cells.
        let small = DomainSets {
            a: vec![coded("s", [16, 30, 30], 0.0)],
            b: vec![coded("t", [16, 30, 30], 0.0)],
            paired: true,
        };
        let e = AmortisedSampler::new(small, 16, 3, [-1150.0, 350.0]).unwrap_err();
        assert!(e.to_string().contains("smaller than a 16^3"), "{e}");
    }

    #[test]
    fn low_resolution_is_a_box_average_with_even_sizes() {
        let v = coded("v", [6, 7, 9], 0.0);
        let low = LowRes::of(&v, [2, 2, 3]);
        // 6/2 = 3 -> 2, 7/2 = 3 -> 2, 9/3 = 3 -> 2.
        assert_eq!(low.shape, [2, 2, 2]);
        let at = |z: usize, y: usize, x: usize| v.values[(z * 7 + y) * 9 + x];
        let mut s = 0.0;
        for z in 2..4 {
            for y in 2..4 {
                for x in 3..6 {
                    s += at(z, y, x);
                }
            }
        }
        assert!((low.values[7] - s / 12.0).abs() < 1e-5);
    }

    #[test]
    fn separate_domains_draw_from_their_own_sets() {
        let dir = tempfile::tempdir().unwrap();
        // Domain A: two NIfTI cases in sub-folders; domain B: one file.
        let a = dir.path().join("a");
        for (i, sub) in ["c1", "c2"].iter().enumerate() {
            let d = a.join(sub);
            std::fs::create_dir_all(&d).unwrap();
            let v = Volume::new("x", [16, 16, 16], [1.0; 3], vec![-100.0 * i as f32; 4096]);
            crate::data::nifti::write(
                &d.join("ct.nii.gz"),
                v.shape,
                [1.0; 3],
                &v.values,
                crate::data::nifti::WriteType::Float32,
            )
            .unwrap();
        }
        let b = dir.path().join("b.nii");
        let vb = Volume::new("y", [16, 18, 20], [1.0; 3], vec![200.0; 16 * 18 * 20]);
        crate::data::nifti::write(
            &b,
            vb.shape,
            [1.0; 3],
            &vb.values,
            crate::data::nifti::WriteType::Float32,
        )
        .unwrap();
        assert_eq!(domain_paths(&a).unwrap().len(), 2);
        let w = [-1150.0, 350.0];
        let sets = DomainSets {
            a: load_domain(&a, w).unwrap(),
            b: load_domain(&b, w).unwrap(),
            paired: false,
        };
        assert_eq!(sets.b[0].shape, [16, 18, 20]);
        let s = DomainSampler::new(sets, 16, w).unwrap();
        let hw = HuWindow::SEED;
        let mut rng = Rng::new(1);
        let mut a_values = std::collections::HashSet::new();
        for _ in 0..20 {
            let (pa, pb) = s.sample(&mut rng);
            a_values.insert(pa[0].to_bits());
            assert!(pb.iter().all(|&v| (v - hw.to_unit(200.0)).abs() < 1e-5));
        }
        assert_eq!(a_values.len(), 2, "both A cases are drawn");
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let e = load_domain(&empty, w).unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains("no volume"), "{e}");
    }
}
