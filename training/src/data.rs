//! Training data: volumes from DICOM series folders (through the daemon's own volume code), NIfTI
//! files and InVesalius projects; the HU window that maps them onto the networks' [-1, 1]; and a
//! seeded, foreground-biased random 3-D patch sampler with flip augmentation.

use ct_harmonizer::dicom::files::{scan, IngestError};
use ct_harmonizer::dicom::geometry::{sort_and_check, GeometryLimits};
use ct_harmonizer::dicom::series;
use ct_harmonizer::dicom::{SlabReader, VolumeError};
use ct_harmonizer::samples::{self, Rng, SampleError};
use std::path::{Path, PathBuf};

use crate::nifti::{self, NiftiError};

/// Errors loading volumes or sampling patches. Each names the file or folder and the reason.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Nifti(#[from] NiftiError),
    #[error("{path}: {source}")]
    Ingest { path: PathBuf, source: IngestError },
    #[error("{path}: {source}")]
    Volume { path: PathBuf, source: VolumeError },
    #[error(transparent)]
    Sample(#[from] SampleError),
    #[error("{path}: {reason}")]
    Source { path: PathBuf, reason: String },
    #[error("{name}: volume of shape (z, y, x) {shape:?} is smaller than the patch {patch:?}")]
    TooSmall {
        name: String,
        shape: [usize; 3],
        patch: [usize; 3],
    },
    #[error("paired volumes {a} {sa:?} and {b} {sb:?} do not have the same shape")]
    ShapeMismatch {
        a: String,
        sa: [usize; 3],
        b: String,
        sb: [usize; 3],
    },
    #[error("invalid HU window [{0}, {1}]: the low end must be below the high end")]
    Window(f32, f32),
}

/// A volume in HU, `[z][y][x]` contiguous, with its voxel size (z, y, x) in mm.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Where it came from (file, folder or generator), for messages.
    pub name: String,
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    pub hu: Vec<f32>,
}

impl Volume {
    pub fn new(
        name: impl Into<String>,
        shape: [usize; 3],
        spacing: [f64; 3],
        hu: Vec<f32>,
    ) -> Self {
        Self {
            name: name.into(),
            shape,
            spacing,
            hu,
        }
    }

    pub fn len(&self) -> usize {
        self.hu.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hu.is_empty()
    }

    /// Index of voxel (z, y, x).
    pub fn idx(&self, z: usize, y: usize, x: usize) -> usize {
        (z * self.shape[1] + y) * self.shape[2] + x
    }

    /// Axial slice `z` (rows × columns).
    pub fn slice(&self, z: usize) -> &[f32] {
        let plane = self.shape[1] * self.shape[2];
        &self.hu[z * plane..(z + 1) * plane]
    }

    /// The sub-volume starting at `origin` of size `size` (must lie inside).
    pub fn crop(&self, origin: [usize; 3], size: [usize; 3]) -> Volume {
        let mut hu = Vec::with_capacity(size.iter().product());
        for z in origin[0]..origin[0] + size[0] {
            for y in origin[1]..origin[1] + size[1] {
                let i = self.idx(z, y, origin[2]);
                hu.extend_from_slice(&self.hu[i..i + size[2]]);
            }
        }
        Volume::new(self.name.clone(), size, self.spacing, hu)
    }
}

/// Linear map of an HU window onto [-1, 1] (seed 000: [-1150, 350]), clipping outside it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HuWindow {
    pub lo: f32,
    pub hi: f32,
}

impl Default for HuWindow {
    fn default() -> Self {
        Self {
            lo: -1150.0,
            hi: 350.0,
        }
    }
}

impl HuWindow {
    pub fn new(lo: f32, hi: f32) -> Result<Self, DataError> {
        if lo.is_finite() && hi.is_finite() && lo < hi {
            Ok(Self { lo, hi })
        } else {
            Err(DataError::Window(lo, hi))
        }
    }

    /// HU -> [-1, 1] (clipped to the window).
    pub fn to_unit(&self, hu: f32) -> f32 {
        (hu.clamp(self.lo, self.hi) - self.lo) / (self.hi - self.lo) * 2.0 - 1.0
    }

    /// [-1, 1] -> HU.
    pub fn to_hu(&self, v: f32) -> f32 {
        (v + 1.0) * 0.5 * (self.hi - self.lo) + self.lo
    }
}

/// Loads a volume: a folder holding one DICOM series, a `.nii` / `.nii.gz` file, or an InVesalius
/// `.inv3` project.
pub fn load_volume(path: &Path) -> Result<Volume, DataError> {
    if path.is_dir() {
        let mut all = load_dicom_series(path)?;
        return match all.len() {
            1 => Ok(all.remove(0)),
            n => Err(DataError::Source {
                path: path.to_owned(),
                reason: format!("holds {n} DICOM series; point at a folder with exactly one"),
            }),
        };
    }
    if nifti::is_nifti_name(path) {
        let v = nifti::read(path)?;
        return Ok(Volume::new(
            path.display().to_string(),
            v.shape,
            v.spacing,
            v.data,
        ));
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("inv3"))
    {
        let v = samples::read_inv3(path)?;
        return Ok(Volume::new(
            path.display().to_string(),
            v.shape,
            v.spacing,
            v.hu.iter().map(|&x| f32::from(x)).collect(),
        ));
    }
    if !path.exists() {
        return Err(DataError::Source {
            path: path.to_owned(),
            reason: "no such file or folder".into(),
        });
    }
    Err(DataError::Source {
        path: path.to_owned(),
        reason: "not a DICOM series folder, a .nii / .nii.gz file or an .inv3 project".into(),
    })
}

/// Loads every DICOM series under `dir` (recursively), sorted and checked by the daemon's geometry
/// code and decoded to HU slab by slab. Series are returned in (study, series) UID order.
pub fn load_dicom_series(dir: &Path) -> Result<Vec<Volume>, DataError> {
    let found = scan(&[dir.to_owned()]).map_err(|source| DataError::Ingest {
        path: dir.to_owned(),
        source,
    })?;
    if let Some(e) = found.rejected.into_iter().next() {
        return Err(DataError::Volume {
            path: dir.to_owned(),
            source: e,
        });
    }
    let groups = series::group(found.images);
    if groups.is_empty() {
        return Err(DataError::Source {
            path: dir.to_owned(),
            reason: "no DICOM images found".into(),
        });
    }
    let limits = GeometryLimits {
        spacing_tolerance: 0.1,
        max_tilt_degrees: 30.0,
    };
    let mut out = Vec::with_capacity(groups.len());
    for mut s in groups {
        let verr = |source| DataError::Volume {
            path: dir.to_owned(),
            source,
        };
        let g = sort_and_check(&s.series_uid, &mut s.slices, limits).map_err(verr)?;
        let n = g.slices();
        let mut reader = SlabReader::new(s.slices, g.rows, g.columns);
        let mut hu = Vec::with_capacity(n * g.rows * g.columns);
        const SLAB: usize = 16;
        let mut z0 = 0;
        while z0 < n {
            let depth = SLAB.min(n - z0);
            hu.extend_from_slice(&reader.read(z0, depth).map_err(verr)?.hu);
            z0 += depth;
        }
        out.push(Volume::new(
            format!("{} (series {})", dir.display(), s.series_uid),
            [n, g.rows, g.columns],
            [g.spacing, g.pixel_spacing[0], g.pixel_spacing[1]],
            hu,
        ));
    }
    Ok(out)
}

/// Patch sampler settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchConfig {
    /// Patch size (z, y, x) in voxels.
    pub size: [usize; 3],
    /// Voxels above this HU count as body (foreground).
    pub body_hu: f32,
    /// A patch is accepted when at least this fraction of its voxels is body.
    pub min_body_fraction: f64,
    /// Draws per patch before giving up and keeping the most-foreground draw seen.
    pub max_tries: usize,
    /// Random flips along (z, y, x) with probability 1/2 each, where true.
    pub flip: [bool; 3],
}

impl Default for PatchConfig {
    fn default() -> Self {
        Self {
            size: [32, 32, 32],
            body_hu: -500.0,
            min_body_fraction: 0.3,
            max_tries: 20,
            flip: [false, true, true],
        }
    }
}

/// One sampled patch (or pair of patches from the same place), in [-1, 1] units.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    pub origin: [usize; 3],
    pub size: [usize; 3],
    /// Which axes (z, y, x) were flipped.
    pub flipped: [bool; 3],
    /// Body fraction of the chosen draw (measured on the first volume).
    pub body_fraction: f64,
    /// One `[z][y][x]` buffer per input volume, same geometry and flips for all.
    pub data: Vec<Vec<f32>>,
}

/// Seeded random 3-D patch sampler, foreground-biased: draws whose body fraction is under
/// `min_body_fraction` are rejected, at most `max_tries` times.
#[derive(Debug, Clone)]
pub struct PatchSampler {
    pub config: PatchConfig,
    pub window: HuWindow,
    rng: Rng,
}

impl PatchSampler {
    pub fn new(config: PatchConfig, window: HuWindow, seed: u64) -> Self {
        Self {
            config,
            window,
            rng: Rng::new(seed),
        }
    }

    fn below(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n as u64) as usize
    }

    /// Fails when `v` is smaller than the patch along any axis.
    pub fn check(&self, v: &Volume) -> Result<(), DataError> {
        let p = self.config.size;
        if (0..3).any(|a| v.shape[a] < p[a] || p[a] == 0) {
            return Err(DataError::TooSmall {
                name: v.name.clone(),
                shape: v.shape,
                patch: p,
            });
        }
        Ok(())
    }

    fn body_fraction(&self, v: &Volume, o: [usize; 3]) -> f64 {
        let p = self.config.size;
        let mut n = 0usize;
        for z in o[0]..o[0] + p[0] {
            for y in o[1]..o[1] + p[1] {
                let i = v.idx(z, y, o[2]);
                n += v.hu[i..i + p[2]]
                    .iter()
                    .filter(|&&h| h > self.config.body_hu)
                    .count();
            }
        }
        n as f64 / p.iter().product::<usize>() as f64
    }

    /// Samples one patch of `v`.
    pub fn sample(&mut self, v: &Volume) -> Result<Patch, DataError> {
        self.sample_paired(&[v])
    }

    /// Samples patches at the same place, with the same flips, from volumes of one shape (a source
    /// and its target). Foreground is judged on the first volume.
    pub fn sample_paired(&mut self, vols: &[&Volume]) -> Result<Patch, DataError> {
        let Some(first) = vols.first() else {
            return Err(DataError::Source {
                path: PathBuf::new(),
                reason: "no volume to sample from".into(),
            });
        };
        for v in &vols[1..] {
            if v.shape != first.shape {
                return Err(DataError::ShapeMismatch {
                    a: first.name.clone(),
                    sa: first.shape,
                    b: v.name.clone(),
                    sb: v.shape,
                });
            }
        }
        self.check(first)?;
        let p = self.config.size;
        let mut best = ([0usize; 3], -1.0f64);
        for _ in 0..self.config.max_tries.max(1) {
            let o = [
                self.below(first.shape[0] - p[0] + 1),
                self.below(first.shape[1] - p[1] + 1),
                self.below(first.shape[2] - p[2] + 1),
            ];
            let f = self.body_fraction(first, o);
            if f > best.1 {
                best = (o, f);
            }
            if f >= self.config.min_body_fraction {
                break;
            }
        }
        let mut flipped = [false; 3];
        for (a, fl) in flipped.iter_mut().enumerate() {
            *fl = self.config.flip[a] && self.rng.next_u64() & 1 == 1;
        }
        let o = best.0;
        let data = vols
            .iter()
            .map(|v| {
                let mut out = Vec::with_capacity(p.iter().product());
                for pz in 0..p[0] {
                    let z = o[0] + if flipped[0] { p[0] - 1 - pz } else { pz };
                    for py in 0..p[1] {
                        let y = o[1] + if flipped[1] { p[1] - 1 - py } else { py };
                        let row = &v.hu[v.idx(z, y, o[2])..v.idx(z, y, o[2]) + p[2]];
                        if flipped[2] {
                            out.extend(row.iter().rev().map(|&h| self.window.to_unit(h)));
                        } else {
                            out.extend(row.iter().map(|&h| self.window.to_unit(h)));
                        }
                    }
                }
                out
            })
            .collect();
        Ok(Patch {
            origin: o,
            size: p,
            flipped,
            body_fraction: best.1,
            data,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use ct_harmonizer::samples::SeriesSpec;

    fn ramp_volume(shape: [usize; 3]) -> Volume {
        let n = shape.iter().product();
        // Body (0 HU) only in the upper half of x; air elsewhere.
        let hu = (0..n)
            .map(|i| {
                if i % shape[2] >= shape[2] / 2 {
                    0.0
                } else {
                    -1000.0
                }
            })
            .collect();
        Volume::new("test", shape, [1.0, 1.0, 1.0], hu)
    }

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
    fn sampler_is_seeded_foreground_biased_and_flips_consistently() {
        let v = ramp_volume([6, 10, 20]);
        let cfg = PatchConfig {
            size: [4, 4, 4],
            min_body_fraction: 1.0,
            max_tries: 50,
            flip: [true, true, true],
            ..PatchConfig::default()
        };
        let mut a = PatchSampler::new(cfg.clone(), HuWindow::default(), 9);
        let mut b = PatchSampler::new(cfg.clone(), HuWindow::default(), 9);
        let mut flips_seen = [false; 3];
        for _ in 0..20 {
            let pa = a.sample(&v).unwrap();
            assert_eq!(pa, b.sample(&v).unwrap());
            assert!(pa.origin[2] >= 10, "{pa:?}");
            assert_eq!(pa.body_fraction, 1.0);
            for (s, f) in flips_seen.iter_mut().zip(pa.flipped) {
                *s |= f;
            }
        }
        assert_eq!(flips_seen, [true; 3]);
        // Paired patches see the same voxels: x-index volume, flipped in x, reads backwards.
        let n = 6 * 10 * 20;
        let xs = Volume::new(
            "xs",
            [6, 10, 20],
            [1.0; 3],
            (0..n).map(|i| (i % 20) as f32 * 10.0 - 300.0).collect(),
        );
        let mut s = PatchSampler::new(
            PatchConfig {
                size: [2, 2, 3],
                min_body_fraction: 0.0,
                ..cfg
            },
            HuWindow::new(-300.0, -100.0).unwrap(),
            3,
        );
        for _ in 0..10 {
            let p = s.sample_paired(&[&xs, &xs]).unwrap();
            assert_eq!(p.data[0], p.data[1]);
            let row: Vec<f32> = p.data[0][..3].to_vec();
            let x0 = p.origin[2] as f32;
            let expect: Vec<f32> = (0..3)
                .map(|k| {
                    let x = if p.flipped[2] {
                        x0 + 2.0 - k as f32
                    } else {
                        x0 + k as f32
                    };
                    (x * 10.0) / 200.0 * 2.0 - 1.0
                })
                .collect();
            for (r, e) in row.iter().zip(expect) {
                assert!((r - e).abs() < 1e-5, "{row:?} {p:?}");
            }
        }
    }

    #[test]
    fn gives_up_after_bounded_retries_and_rejects_small_volumes() {
        let air = Volume::new("air", [4, 4, 4], [1.0; 3], vec![-1000.0; 64]);
        let mut s = PatchSampler::new(
            PatchConfig {
                size: [2, 2, 2],
                ..PatchConfig::default()
            },
            HuWindow::default(),
            1,
        );
        assert_eq!(s.sample(&air).unwrap().body_fraction, 0.0);
        let mut big = PatchSampler::new(PatchConfig::default(), HuWindow::default(), 1);
        let e = big.sample(&air).unwrap_err();
        assert!(matches!(e, DataError::TooSmall { .. }));
        assert!(e.to_string().contains("air") && e.to_string().contains("smaller"));
        let other = Volume::new("b", [4, 4, 5], [1.0; 3], vec![0.0; 80]);
        assert!(matches!(
            s.sample_paired(&[&air, &other]),
            Err(DataError::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn loads_dicom_and_nifti() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SeriesSpec::axial("data-test", 6, 5, 3, [2.0, 0.7, 0.6]);
        spec.write(&dir.path().join("dcm"), |z| {
            (0..30).map(|i| (z * 100 + i) as f32 - 50.0).collect()
        })
        .unwrap();
        let v = load_volume(&dir.path().join("dcm")).unwrap();
        assert_eq!(v.shape, [3, 6, 5]);
        assert!((v.spacing[0] - 2.0).abs() < 1e-9 && (v.spacing[2] - 0.6).abs() < 1e-9);
        // Sorted along the normal: z runs head to feet, sorted ascending in position, so the first
        // sorted slice is the last written one.
        let firsts: Vec<f32> = (0..3).map(|z| v.slice(z)[0]).collect();
        assert!(
            firsts == [150.0, 50.0, -50.0] || firsts == [-50.0, 50.0, 150.0],
            "{firsts:?}"
        );
        let nii = dir.path().join("v.nii.gz");
        nifti::write(&nii, v.shape, v.spacing, &v.hu, nifti::WriteType::Int16).unwrap();
        let w = load_volume(&nii).unwrap();
        assert_eq!((w.shape, &w.hu), (v.shape, &v.hu));
        assert!(load_volume(&dir.path().join("nothing")).is_err());
        let txt = dir.path().join("a.txt");
        std::fs::write(&txt, "x").unwrap();
        assert!(load_volume(&txt).unwrap_err().to_string().contains("a.txt"));
        let c = v.crop([1, 2, 1], [2, 2, 3]);
        assert_eq!(c.hu[0], v.hu[v.idx(1, 2, 1)]);
        assert_eq!(c.hu.len(), 12);
    }
}
