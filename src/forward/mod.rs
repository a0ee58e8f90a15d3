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

use crate::tls::TlsError;

/// Errors delivering a job. Association failures, refused presentation contexts and non-success
/// statuses are reported distinctly.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("destination {destination}: association failed: {source}")]
    Association {
        destination: String,
        #[source]
        source: Box<AssociationFailure>,
    },
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
    #[error("destination {destination}: {source}")]
    Protocol {
        destination: String,
        #[source]
        source: Box<ProtocolFailure>,
    },
    #[error("destination {destination}: no answer within {seconds} s")]
    Timeout { destination: String, seconds: u64 },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Dicom {
        path: PathBuf,
        #[source]
        source: Box<dicom_object::ReadError>,
    },
    #[error("{path}: file shorter than its meta group")]
    Truncated { path: PathBuf },
    #[error("{path}: copy task failed: {source}")]
    CopyTask {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("unknown destination {0:?} (not in the configuration)")]
    UnknownDestination(String),
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
}

/// Why an association with a destination could not be established.
#[derive(Debug, thiserror::Error)]
pub enum AssociationFailure {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("TLS to {addr} (server name {server_name}): {}", crate::tls::describe_error(.source.as_ref()))]
    TlsHandshake {
        addr: String,
        server_name: String,
        #[source]
        source: Box<dicom_ul::association::Error>,
    },
    /// What dicom-ul reports on a plain connection for any answer to the A-ASSOCIATE-RQ it could
    /// not read (its TLS probe runs on whatever arrived): a TLS port, a PDU over our maximum, or
    /// not DICOM.
    #[error("the answer to our A-ASSOCIATE-RQ is not a DICOM PDU we can read: a TLS port (set tls = true), a PDU longer than {max_pdu} bytes, or not DICOM")]
    Unreadable { max_pdu: u32 },
    #[error(transparent)]
    Establish(Box<dicom_ul::association::Error>),
}

impl AssociationFailure {
    /// The failure of a plain (non-TLS) association request.
    pub fn plain(e: dicom_ul::association::Error) -> Self {
        match e {
            dicom_ul::association::Error::TlsNotSupported => AssociationFailure::Unreadable {
                max_pdu: scu::MAX_PDU,
            },
            e => AssociationFailure::Establish(Box::new(e)),
        }
    }
}

impl From<dicom_ul::association::Error> for ProtocolFailure {
    fn from(e: dicom_ul::association::Error) -> Self {
        ProtocolFailure::Ul(Box::new(e))
    }
}

/// What went wrong on an established association (or around it).
#[derive(Debug, thiserror::Error)]
pub enum ProtocolFailure {
    #[error("reading the instances to send failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Ul(Box<dicom_ul::association::Error>),
    #[error(transparent)]
    Dimse(#[from] crate::dicom::dimse::DimseError),
    #[error("association aborted by peer: {0:?}")]
    Aborted(dicom_ul::pdu::AbortRQSource),
    #[error("peer released the association mid-transfer")]
    Released,
    #[error("unexpected PDU {0:?}")]
    UnexpectedPdu(Box<dicom_ul::Pdu>),
    #[error("the response's command set exceeds {limit} bytes")]
    CommandTooLarge { limit: usize },
    #[error("answered command 0x{field:04X} to message {responded} for SOP instance {sop_instance:?}, not a C-STORE-RSP to message {message_id} for {expected}")]
    WrongResponse {
        field: u16,
        responded: u16,
        sop_instance: String,
        message_id: u16,
        expected: String,
    },
}
