//! DICOM layer: everything that reads or writes DICOM, with no notion of models or of the daemon.
//! Headers ([`header`]) read through the bounded pre-parser ([`guard`]); files and folders to headers
//! ([`files`]) and headers to series ([`series`]); from a series' slice headers to a validated
//! geometry ([`geometry`]), and pixel data to HU slab by slab ([`slab`], [`decode`]: memory does not
//! grow with the number of slices); the writer toolkit ([`write`]: UIDs, Part 10 files written
//! atomically); the DIMSE command codec ([`dimse`]) shared by the SCP and the SCU. Shared with the
//! training program.
//!
//! Layering rule (checked by `scripts/layers.sh`): a module imports only from layers below it.
//! This folder uses only `util`, `config` and `events` (and its files do not import each other in a
//! circle).

pub mod decode;
pub mod dimse;
pub mod files;
pub mod geometry;
pub mod guard;
pub mod header;
pub mod series;
pub mod slab;
pub mod write;

pub use geometry::Geometry;
pub use header::SliceHeader;
pub use slab::SlabReader;

use std::path::PathBuf;

/// Errors building a volume. Each names the file or series and the reason.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{path}: not a readable DICOM file: {source}")]
    NotDicom {
        path: PathBuf,
        #[source]
        source: Box<dicom_object::ReadError>,
    },
    /// Refused by the bounded pre-parser (the reason, not the file, is its message).
    #[error("{path}: not a readable DICOM file: {}", guard_reason(.source))]
    Guard {
        path: PathBuf,
        #[source]
        source: crate::dicom::guard::GuardError,
    },
    #[error("{path}: missing {tag}")]
    MissingTag { path: PathBuf, tag: String },
    #[error("series {series_uid}: {reason}")]
    Geometry { series_uid: String, reason: String },
    #[error("{path}: unsupported transfer syntax {uid} ({name}): its pixel data cannot be decoded by this build")]
    UnsupportedTransferSyntax {
        path: PathBuf,
        uid: String,
        name: String,
    },
    #[error("{path}: cannot decode pixel data: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("slice index {index} beyond the series' {slices} slices")]
    SliceIndex { index: usize, slices: usize },
}

/// The pre-parser's reason without the file it names (the error names it already).
fn guard_reason(e: &crate::dicom::guard::GuardError) -> String {
    match e {
        crate::dicom::guard::GuardError::File { reason, .. } => reason.to_string(),
        other => other.to_string(),
    }
}
