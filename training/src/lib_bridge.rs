//! Everything this crate takes from the `ct_harmonizer` library, in one place: the daemon's volume
//! code (DICOM scanning, series grouping, geometry, slab decoding), the model contract (manifest,
//! model directories, the translator used by `eval`), its settings, and the test-data generators
//! (`samples`: the SplitMix64 generator, DICOM series writer, the InVesalius head CT) that
//! `ct-train synth` and the data tests use. When the library moves a module, only this file changes.

pub use ct_harmonizer::config::{ConfigError, Settings};
pub use ct_harmonizer::dicom::files::{scan, IngestError};
pub use ct_harmonizer::dicom::geometry::{sort_and_check, GeometryLimits};
pub use ct_harmonizer::dicom::series::group as group_series;
pub use ct_harmonizer::dicom::slab::Slab;
pub use ct_harmonizer::dicom::{SlabReader, VolumeError};
pub use ct_harmonizer::model::manifest::{
    hex, EvaluationRow, Intensity, Kernels, Manifest, ManifestError, ModelDir, ModelKind,
    Provenance, Stage, StageInput, Task, Tensors,
};
pub use ct_harmonizer::model::stages;
pub use ct_harmonizer::model::{Control, TranslateError, Translator};
pub use ct_harmonizer::samples::{read_inv3, Rng, SampleError, SeriesSpec, CRANIUM_INV3};
