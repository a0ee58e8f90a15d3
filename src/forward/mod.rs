//! Forward stage: a durable outbox of jobs (one per series and destination), sent by C-STORE SCU or
//! copied to a folder, retried with exponential back-off, dead-lettered after the configured number
//! of attempts. Spool and derived files are deleted only when no job (queued or dead) still needs them.
//! The jobs themselves live in [`crate::outbox`] (a lower layer: the processing stage writes them,
//! metrics and `jobs` read them).
//!
//! Layering rule (checked by `scripts/layers.sh`): a module imports only from layers below it.
//! Forward uses the outbox, the spool, metrics, tls, audit and the DICOM layer (DIMSE codec).

pub mod scu;
pub mod worker;

use std::path::PathBuf;

/// Errors delivering a job. Association failures, refused presentation contexts and non-success
/// statuses are reported distinctly.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("destination {destination}: association failed: {reason}")]
    Association { destination: String, reason: String },
    #[error("destination {destination} refused the presentation context for SOP class {sop_class} in transfer syntax {transfer_syntax}")]
    Refused {
        destination: String,
        sop_class: String,
        transfer_syntax: String,
    },
    #[error("destination {destination} answered status 0x{status:04X} for SOP instance {sop_instance}{comment}")]
    Status {
        destination: String,
        status: u16,
        sop_instance: String,
        comment: String,
    },
    #[error("destination {destination} refused {} of {total} instance(s): {list}", .refused.len())]
    Instances {
        destination: String,
        total: usize,
        refused: Vec<scu::Refusal>,
        /// The refusals as text (SOP Instance UIDs and statuses), for the message.
        list: String,
    },
    #[error("destination {destination}: {reason}")]
    Protocol { destination: String, reason: String },
    #[error("destination {destination}: no answer within {seconds} s")]
    Timeout { destination: String, seconds: u64 },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("unknown destination {0:?} (not in the configuration)")]
    UnknownDestination(String),
    #[error("outbox {path}: {reason}")]
    Outbox { path: PathBuf, reason: String },
}

impl From<crate::outbox::OutboxError> for ForwardError {
    fn from(e: crate::outbox::OutboxError) -> Self {
        match e {
            crate::outbox::OutboxError::Io { path, reason } => {
                ForwardError::Outbox { path, reason }
            }
        }
    }
}
