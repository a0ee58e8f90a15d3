//! Training data: loading from DICOM series folders (through the daemon's own volume code), NIfTI
//! files and InVesalius projects ([`load`], [`nifti`]), training pairs ([`pairs`]), the one seeded
//! patch sampler ([`sampler`]) and the one random generator ([`rng`]), and the simulated data of
//! `ct-train synth` ([`synth`], [`phantom`], [`phantom_head`]).
//!
//! Every volume is the one [`crate::volume::Volume`] (re-exported here).
//!
//! Layering: `data` imports only from [`crate::lib_bridge`], [`crate::config`], [`crate::volume`]
//! and, for the super-resolution pairs, [`crate::resample`]; nothing here knows about models or
//! training.

pub mod amortised;
pub mod load;
pub mod nifti;
pub mod pairs;
pub mod phantom;
pub mod phantom_head;
pub mod rng;
pub mod sampler;
pub mod synth;

pub use crate::volume::Volume;
pub use load::{load_dicom_series, load_volume};
pub use pairs::{find_member, load_pairs, PairedVolume, TrainingData};
pub use rng::Rng;
pub use sampler::PatchSampler;

use crate::config::WindowError;
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
    #[error(
        "{path}: synth_format {found} is not the format {expected} this ct-train reads (format 1 is \
         the first `ct-train synth`, before separate acquisitions); regenerate the data with \
         `ct-train synth` (`--mode shared` gives the shared-sinogram pairs in the new format)"
    )]
    SynthFormat {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
}
