//! Training pairs: `DIR/{source,target}` or `DIR/*/{source,target}` (aliases `sharp`/`soft` for the
//! kernel task, `thick`/`soft` or `low`/`high` for super-resolution, as `ct-train synth` writes
//! them), each a DICOM series folder or a `.nii`/`.nii.gz` file, loaded in HU and mapped to model
//! units through the run's HU window. A super-resolution source is resampled trilinearly onto its
//! target's grid (the factor is recorded as `scale` in `train.json`).
//!
//! An unpaired set as `ct-train synth --unpaired` writes it (`DIR/a/*/source` and `DIR/b/*/target`,
//! different anatomy per domain) is read as pairs of the i-th case of each domain (the grids must
//! match); only unpaired training (`--mode unpaired`) makes sense on it. Data from `synth` (a
//! `synth.toml` in `DIR` or its parent) must be of this `ct-train`'s `synth_format`
//! ([`crate::data::synth::check_data_format`]).

use super::{load_volume, DataError};
use crate::config::{HuWindow, TaskArg};
use crate::resample::{upsample, Interp};
use crate::volume::Volume;
use std::path::{Path, PathBuf};

/// One case in model units: the same anatomy in domain A (source) and B (target), on the same grid.
#[derive(Debug, Clone, PartialEq)]
pub struct PairedVolume {
    pub a: Volume,
    pub b: Volume,
}

/// Source-domain member names per task, and the target's (module docs).
const KERNEL_A: [&str; 2] = ["source", "sharp"];
const SUPERRES_A: [&str; 3] = ["source", "thick", "low"];
const B_NAMES: [&str; 3] = ["target", "soft", "high"];

/// The first of `names` present in `dir`: a DICOM series folder, `NAME.nii.gz` or `NAME.nii`.
pub fn find_member(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().find_map(|n| {
        [
            dir.join(n),
            dir.join(format!("{n}.nii.gz")),
            dir.join(format!("{n}.nii")),
        ]
        .into_iter()
        .find(|p| p.exists())
    })
}

/// Training pairs and the super-resolution factor (z, y, x) between their source and target grids.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingData {
    pub pairs: Vec<PairedVolume>,
    /// `[1, 1, 1]` for the kernel task.
    pub scale: [usize; 3],
}

/// Loads `DIR/{source,target}` or `DIR/*/{source,target}` (aliases in the module docs), each a
/// DICOM series folder or a NIfTI file. For super-resolution the source is resampled onto the
/// target's grid by trilinear interpolation (MODELS.md §1; the exported model does the same with
/// ONNX `Resize`), and every case must have the same whole-number factor per axis.
pub fn load_pairs(
    dir: &Path,
    hu_window: [f32; 2],
    task: TaskArg,
) -> Result<TrainingData, DataError> {
    let a_names: &[&str] = match task {
        TaskArg::Kernel => &KERNEL_A,
        TaskArg::Superres => &SUPERRES_A,
    };
    let window = HuWindow::new(hu_window[0], hu_window[1]).map_err(|e| DataError::Training {
        path: dir.to_owned(),
        reason: e.to_string(),
    })?;
    crate::data::synth::check_data_format(dir)?;
    let mut cases = Vec::new();
    let case_dirs = |d: &Path| -> Result<Vec<PathBuf>, DataError> {
        let mut subs: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|source| DataError::Io {
                path: d.to_owned(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        subs.sort();
        Ok(subs)
    };
    if let (Some(a), Some(b)) = (find_member(dir, a_names), find_member(dir, &B_NAMES)) {
        cases.push((a, b));
    } else if dir.join("a").is_dir() && dir.join("b").is_dir() {
        let a: Vec<PathBuf> = case_dirs(&dir.join("a"))?
            .iter()
            .filter_map(|s| find_member(s, a_names))
            .collect();
        let b: Vec<PathBuf> = case_dirs(&dir.join("b"))?
            .iter()
            .filter_map(|s| find_member(s, &B_NAMES))
            .collect();
        cases.extend(a.into_iter().zip(b));
    } else {
        for s in case_dirs(dir)? {
            if let (Some(a), Some(b)) = (find_member(&s, a_names), find_member(&s, &B_NAMES)) {
                cases.push((a, b));
            }
        }
    }
    if cases.is_empty() {
        return Err(DataError::Training {
            path: dir.to_owned(),
            reason: format!(
                "no case found: expected members {a_names:?} and {B_NAMES:?} (DICOM series folders or \
                 .nii/.nii.gz files), directly or in one folder per case"
            ),
        });
    }
    let mut scale: Option<[usize; 3]> = None;
    let mut pairs = Vec::new();
    for (pa, pb) in cases {
        let data_err = |path: &Path, reason: String| DataError::Training {
            path: path.to_owned(),
            reason,
        };
        let a = load_volume(&pa).map_err(|e| data_err(&pa, e.to_string()))?;
        let b = load_volume(&pb).map_err(|e| data_err(&pb, e.to_string()))?;
        let mut f = [1usize; 3];
        for (fa, (&na, &nb)) in f.iter_mut().zip(a.shape.iter().zip(&b.shape)) {
            if na == 0 || !nb.is_multiple_of(na) || (task == TaskArg::Kernel && na != nb) {
                return Err(data_err(
                    &pb,
                    format!(
                        "grid {:?} does not match its source {} {:?}{}",
                        b.shape,
                        pa.display(),
                        a.shape,
                        match task {
                            TaskArg::Kernel => " (the kernel task needs equal grids)",
                            TaskArg::Superres => " (each axis must be a whole multiple)",
                        }
                    ),
                ));
            }
            *fa = nb / na;
        }
        if *scale.get_or_insert(f) != f {
            return Err(data_err(
                &pb,
                format!(
                    "scale {f:?} differs from the other cases' {:?}",
                    scale.unwrap_or(f)
                ),
            ));
        }
        let a = if f == [1, 1, 1] {
            a
        } else {
            upsample(&a, b.shape, Interp::Linear)
        };
        pairs.push(PairedVolume {
            a: a.to_model_units(window),
            b: b.to_model_units(window),
        });
    }
    Ok(TrainingData {
        pairs,
        scale: scale.unwrap_or([1; 3]),
    })
}
