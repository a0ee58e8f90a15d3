//! Training data: one [`Volume`] type (HU as loaded, or model units once mapped through an
//! [`HuWindow`]), loading from DICOM series folders (through the daemon's own volume code), NIfTI
//! files and InVesalius projects ([`load`], [`nifti`]), training pairs ([`pairs`]), the one seeded
//! patch sampler ([`sampler`]) and the one random generator ([`rng`]), and the simulated data of
//! `ct-train synth` ([`synth`], [`phantom`]).
//!
//! Layering: `data` imports only from the library bridge ([`crate::lib_bridge`]) and, for the
//! super-resolution pairs, [`crate::resample`]; nothing here knows about models or training.

pub mod load;
pub mod nifti;
pub mod pairs;
pub mod phantom;
pub mod rng;
pub mod sampler;
pub mod synth;

pub use load::{load_dicom_series, load_volume};
pub use pairs::{find_member, load_pairs, PairedVolume, TrainingData};
pub use rng::Rng;
pub use sampler::PatchSampler;

use crate::config::{HuWindow, WindowError};
use crate::lib_bridge::{IngestError, SampleError, VolumeError};
use nifti::NiftiError;
use std::path::PathBuf;

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
    #[error(
        "training data {name}: volume {shape:?} (z, y, x) is smaller than the {patch}^3 patch"
    )]
    TooSmall {
        name: String,
        shape: [usize; 3],
        patch: usize,
    },
    #[error("no training volumes")]
    NoVolumes,
    #[error("training data {path}: {reason}")]
    Training { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("paired volumes {a} {sa:?} and {b} {sb:?} do not have the same shape")]
    ShapeMismatch {
        a: String,
        sa: [usize; 3],
        b: String,
        sb: [usize; 3],
    },
    #[error(transparent)]
    Window(#[from] WindowError),
}

/// A volume, `[z][y][x]` contiguous, with its voxel size (z, y, x) in mm. Its values are HU as
/// loaded or simulated, or model units ([-1, 1]) once mapped by [`Volume::to_model_units`].
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Where it came from (file, folder or generator), for messages.
    pub name: String,
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    pub values: Vec<f32>,
}

impl Volume {
    pub fn new(
        name: impl Into<String>,
        shape: [usize; 3],
        spacing: [f64; 3],
        values: Vec<f32>,
    ) -> Self {
        Self {
            name: name.into(),
            shape,
            spacing,
            values,
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Index of voxel (z, y, x).
    pub fn idx(&self, z: usize, y: usize, x: usize) -> usize {
        (z * self.shape[1] + y) * self.shape[2] + x
    }

    /// Axial slice `z` (rows × columns).
    pub fn slice(&self, z: usize) -> &[f32] {
        let plane = self.shape[1] * self.shape[2];
        &self.values[z * plane..(z + 1) * plane]
    }

    /// The sub-volume starting at `origin` of size `size` (must lie inside).
    pub fn crop(&self, origin: [usize; 3], size: [usize; 3]) -> Volume {
        let mut values = Vec::with_capacity(size.iter().product());
        for z in origin[0]..origin[0] + size[0] {
            for y in origin[1]..origin[1] + size[1] {
                let i = self.idx(z, y, origin[2]);
                values.extend_from_slice(&self.values[i..i + size[2]]);
            }
        }
        Volume::new(self.name.clone(), size, self.spacing, values)
    }

    /// The same volume in model units: every HU value through `window` ([`HuWindow::to_unit`]).
    pub fn to_model_units(&self, window: HuWindow) -> Volume {
        Volume::new(
            self.name.clone(),
            self.shape,
            self.spacing,
            self.values.iter().map(|&h| window.to_unit(h)).collect(),
        )
    }
}
