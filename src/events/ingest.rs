//! Events of the ingest stages: the SCP (connections, TLS, associations, C-STORE) and the watched
//! folder.

use std::fmt::{Debug, Display};
use std::path::Path;
use tracing::{debug, error, info, warn};

use crate::metrics::Metrics;

/// The SCP's TLS configuration cannot be loaded: no association is accepted.
pub struct TlsConfigFailed<'a> {
    pub reason: &'a dyn Display,
}

impl TlsConfigFailed<'_> {
    pub fn emit(self) {
        error!(event = "tls_config_failed", reason = %self.reason, "cannot load the SCP's TLS configuration; not accepting associations");
    }
}

/// `accept` failed (rate-limited: `suppressed` lines were not written since the last one).
pub struct AcceptFailed<'a> {
    pub reason: &'a dyn Display,
    pub suppressed: u64,
    pub retry_ms: u128,
}

impl AcceptFailed<'_> {
    pub fn emit(self) {
        warn!(event = "accept_failed", reason = %self.reason, suppressed = self.suppressed, retry_ms = self.retry_ms, "cannot accept a connection");
    }
}

/// A connection was closed because too many are in the association handshake. Counts an
/// association rejected.
pub struct HandshakeLimit<'a> {
    pub peer: &'a dyn Display,
    pub limit: usize,
    /// Lines not written since the last one (rate-limited); `None`: this one is not written.
    pub suppressed: Option<u64>,
}

impl HandshakeLimit<'_> {
    pub fn emit(self, metrics: &Metrics) {
        if let Some(suppressed) = self.suppressed {
            warn!(event = "handshake_limit", peer = %self.peer, limit = self.limit, suppressed, "too many connections in the association handshake; closed");
        }
        metrics.associations_rejected.inc();
    }
}

/// The TLS handshake failed. Counts an association rejected and records the audit rejection.
pub struct TlsHandshakeFailed<'a> {
    pub peer: &'a dyn Display,
    pub reason: &'a str,
}

impl TlsHandshakeFailed<'_> {
    pub fn emit(self, metrics: &Metrics) {
        metrics.associations_rejected.inc();
        warn!(event = "tls_handshake_failed", peer = %self.peer, reason = %self.reason, "TLS handshake failed; connection closed");
        crate::audit::rejected(&format!("TLS handshake failed: {}", self.reason));
    }
}

/// TLS is established with a peer (`subject`: its client certificate's).
pub struct TlsEstablished<'a> {
    pub peer: &'a dyn Display,
    pub subject: Option<&'a str>,
}

impl TlsEstablished<'_> {
    pub fn emit(self) {
        debug!(event = "tls_established", peer = %self.peer, subject = ?self.subject);
    }
}

/// The client certificate's subject is not allowed. Records the audit rejection.
pub struct TlsSubjectRejected<'a> {
    pub peer: &'a dyn Display,
    pub calling_ae: &'a str,
    pub subject: &'a str,
}

impl TlsSubjectRejected<'_> {
    pub fn emit(self) {
        warn!(event = "tls_subject_rejected", peer = %self.peer, calling_ae = %self.calling_ae, subject = %self.subject, "client certificate subject not in server.tls.allowed_subjects; association rejected");
        crate::audit::rejected("client certificate subject not in server.tls.allowed_subjects");
    }
}

/// No association slot became free in time: the request is rejected (transient).
pub struct AssociationSlotsFull<'a> {
    pub calling_ae: &'a str,
    pub peer: &'a dyn Display,
    pub limit: usize,
    pub waited_seconds: u64,
}

impl AssociationSlotsFull<'_> {
    pub fn emit(self) {
        warn!(event = "association_slots_full", calling_ae = %self.calling_ae, peer = %self.peer, limit = self.limit, waited_seconds = self.waited_seconds, "no free association slot; rejected (transient)");
    }
}

/// An association was rejected. Counts it and records the audit rejection.
pub struct AssociationRejected<'a> {
    pub calling_ae: &'a str,
    pub called_ae: &'a str,
    pub peer: &'a dyn Display,
    pub reason: &'a str,
}

impl AssociationRejected<'_> {
    pub fn emit(self, metrics: &Metrics) {
        metrics.associations_rejected.inc();
        warn!(
            event = "association_rejected",
            calling_ae = self.calling_ae,
            called_ae = self.called_ae,
            peer = %self.peer,
            reason = self.reason,
            "association rejected"
        );
        crate::audit::rejected(self.reason);
    }
}

/// An association was accepted.
pub struct AssociationAccepted<'a> {
    pub calling_ae: &'a str,
    pub peer: &'a dyn Display,
}

impl AssociationAccepted<'_> {
    pub fn emit(self) {
        debug!(event = "association_accepted", calling_ae = %self.calling_ae, peer = %self.peer);
    }
}

/// No C-STORE completed for too long: the association is aborted.
pub struct AssociationIdle<'a> {
    pub calling_ae: &'a str,
    pub peer: &'a dyn Display,
    pub seconds: u64,
}

impl AssociationIdle<'_> {
    pub fn emit(self) {
        warn!(event = "association_idle", calling_ae = %self.calling_ae, peer = %self.peer, seconds = self.seconds, "no C-STORE completed for too long; association aborted to free its slot");
    }
}

/// The peer aborted the association.
pub struct AssociationAborted<'a> {
    pub calling_ae: &'a str,
}

impl AssociationAborted<'_> {
    pub fn emit(self) {
        info!(event = "association_aborted", calling_ae = %self.calling_ae, "peer aborted; acknowledged instances are kept");
    }
}

/// A PDU that has no place in an established association: aborted.
pub struct UnexpectedPdu<'a> {
    pub calling_ae: &'a str,
    pub pdu: &'a dyn Debug,
}

impl UnexpectedPdu<'_> {
    pub fn emit(self) {
        warn!(event = "unexpected_pdu", calling_ae = %self.calling_ae, pdu = ?self.pdu);
    }
}

/// The association ended on a receive error (connection closed, read timeout).
pub struct AssociationEnded<'a> {
    pub calling_ae: &'a str,
    pub reason: &'a dyn Display,
}

impl AssociationEnded<'_> {
    pub fn emit(self) {
        info!(event = "association_ended", calling_ae = %self.calling_ae, reason = %self.reason);
    }
}

/// P-DATA on a presentation context that was not accepted: aborted.
pub struct PdataOnUnacceptedContext<'a> {
    pub calling_ae: &'a str,
    pub peer: &'a dyn Display,
    pub context_id: u8,
}

impl PdataOnUnacceptedContext<'_> {
    pub fn emit(self) {
        warn!(event = "pdata_on_unaccepted_context", calling_ae = %self.calling_ae, peer = %self.peer, context_id = self.context_id, "P-DATA on a presentation context that was not accepted; association aborted");
    }
}

/// A command set over the limit: aborted.
pub struct CommandTooLarge<'a> {
    pub calling_ae: &'a str,
    pub peer: &'a dyn Display,
    pub limit: usize,
}

impl CommandTooLarge<'_> {
    pub fn emit(self) {
        warn!(event = "command_too_large", calling_ae = %self.calling_ae, peer = %self.peer, limit = self.limit, "command set exceeds the limit; association aborted");
    }
}

/// A command set that does not decode: aborted.
pub struct BadCommand<'a> {
    pub calling_ae: &'a str,
    pub reason: &'a dyn Display,
}

impl BadCommand<'_> {
    pub fn emit(self) {
        warn!(event = "bad_command", calling_ae = %self.calling_ae, reason = %self.reason);
    }
}

/// A DIMSE command other than C-ECHO and C-STORE: aborted.
pub struct UnsupportedCommand<'a> {
    pub calling_ae: &'a str,
    pub field: u16,
}

impl UnsupportedCommand<'_> {
    pub fn emit(self) {
        warn!(event = "unsupported_command", calling_ae = %self.calling_ae, field = self.field);
    }
}

/// A data set without a C-STORE command: aborted.
pub struct UnexpectedData<'a> {
    pub calling_ae: &'a str,
    pub peer: &'a dyn Display,
}

impl UnexpectedData<'_> {
    pub fn emit(self) {
        warn!(event = "unexpected_data", calling_ae = %self.calling_ae, peer = %self.peer, "data set without a C-STORE command; association aborted");
    }
}

/// A data set on another presentation context than its command: aborted.
pub struct ContextMismatch<'a> {
    pub calling_ae: &'a str,
    pub peer: &'a dyn Display,
    pub command_context: u8,
    pub data_context: u8,
}

impl ContextMismatch<'_> {
    pub fn emit(self) {
        warn!(event = "context_mismatch", calling_ae = %self.calling_ae, peer = %self.peer, command_context = self.command_context, data_context = self.data_context, "data set on another presentation context than its command; association aborted");
    }
}

/// A data set over `server.max_dataset_mib`: aborted.
pub struct DatasetTooLarge<'a> {
    pub calling_ae: &'a str,
    pub peer: &'a dyn Display,
    pub limit_bytes: usize,
}

impl DatasetTooLarge<'_> {
    pub fn emit(self) {
        warn!(event = "dataset_too_large", calling_ae = %self.calling_ae, peer = %self.peer, limit_bytes = self.limit_bytes, "data set exceeds server.max_dataset_mib; association aborted");
    }
}

/// An instance was refused with a failure status. Counts an instance rejected.
pub struct InstanceRejected<'a> {
    pub calling_ae: &'a str,
    pub sop_instance_uid: &'a str,
    pub status: u16,
    pub reason: &'a str,
}

impl InstanceRejected<'_> {
    pub fn emit(self, metrics: &Metrics) {
        metrics.instances_rejected.inc();
        warn!(
            event = "instance_rejected",
            calling_ae = self.calling_ae,
            sop_instance_uid = self.sop_instance_uid,
            status = self.status,
            reason = self.reason,
            "instance refused"
        );
    }
}

/// An instance of a series delivered before was received again: acknowledged, not kept.
pub struct RetransmissionAcknowledged<'a> {
    pub calling_ae: &'a str,
    pub series_uid: &'a str,
    pub sop_instance_uid: &'a str,
}

impl RetransmissionAcknowledged<'_> {
    pub fn emit(self) {
        info!(event = "retransmission", calling_ae = %self.calling_ae, series_uid = %self.series_uid, sop_instance_uid = %self.sop_instance_uid, "instance of a delivered series received again; acknowledged, not reprocessed");
    }
}

/// The state folder is under its free-space watermark: an instance is refused (SCP) or left where
/// it is (watched folder, `path`).
pub struct DiskWatermark<'a> {
    pub path: Option<&'a Path>,
    pub reason: &'a dyn Display,
}

impl DiskWatermark<'_> {
    pub fn emit(self) {
        match self.path {
            Some(path) => {
                error!(event = "disk_watermark", path = %path.display(), reason = %self.reason)
            }
            None => error!(event = "disk_watermark", reason = %self.reason),
        }
    }
}

/// The spool's empty files made ahead cannot be created (full disk, permissions): each instance
/// creates its own meanwhile (and fails with its own error if the cause stays). Once per failure
/// streak; [`SpoolTmpPoolRecovered`] ends it.
pub struct SpoolTmpPoolFailed<'a> {
    pub dir: &'a Path,
    pub reason: &'a dyn Display,
}

impl SpoolTmpPoolFailed<'_> {
    pub fn emit(self) {
        warn!(event = "spool_tmp_pool_failed", dir = %self.dir.display(), reason = %self.reason, "cannot make spool files ahead; retried each second, instances create their own meanwhile");
    }
}

/// The spool's files made ahead can be created again after [`SpoolTmpPoolFailed`].
pub struct SpoolTmpPoolRecovered<'a> {
    pub dir: &'a Path,
}

impl SpoolTmpPoolRecovered<'_> {
    pub fn emit(self) {
        info!(event = "spool_tmp_pool_recovered", dir = %self.dir.display(), "spool files are made ahead again");
    }
}

/// A received instance cannot be written to the spool.
pub struct SpoolWriteFailed<'a> {
    pub reason: &'a dyn Display,
}

impl SpoolWriteFailed<'_> {
    pub fn emit(self) {
        error!(event = "spool_write_failed", reason = %self.reason);
    }
}

/// A file of the watched folder was moved to quarantine. Counts an instance rejected.
pub struct FileQuarantined<'a> {
    pub path: &'a Path,
    pub quarantined: &'a Path,
    pub reason: &'a str,
}

impl FileQuarantined<'_> {
    pub fn emit(self, metrics: &Metrics) {
        metrics.instances_rejected.inc();
        warn!(event = "file_quarantined", path = %self.path.display(), quarantined = %self.quarantined.display(), reason = self.reason)
    }
}

/// A rejected file of the watched folder cannot be moved to quarantine: left in place and ignored.
/// Counts an instance rejected.
pub struct FileQuarantineFailed<'a> {
    pub path: &'a Path,
    pub reason: &'a dyn Display,
}

impl FileQuarantineFailed<'_> {
    pub fn emit(self, metrics: &Metrics) {
        metrics.instances_rejected.inc();
        error!(event = "quarantine_failed", path = %self.path.display(), reason = %self.reason, "left in place and ignored while it stays");
    }
}

/// A file of the watched folder does not parse yet: tried again later.
pub struct FileIncomplete<'a> {
    pub path: &'a Path,
    pub reason: &'a dyn Display,
}

impl FileIncomplete<'_> {
    pub fn emit(self) {
        info!(event = "file_incomplete", path = %self.path.display(), reason = %self.reason, "left in place; tried again later");
    }
}

/// File system notifications are unavailable for the watched folder: it is polled.
pub struct WatchUnavailable<'a> {
    pub dir: &'a Path,
    pub reason: &'a dyn Display,
}

impl WatchUnavailable<'_> {
    pub fn emit(self) {
        warn!(event = "watch_unavailable", dir = %self.dir.display(), reason = %self.reason, "falling back to polling");
    }
}

/// A scan of the watched folder failed: scanned again with a fresh state.
pub struct WatchScanFailed<'a> {
    pub dir: &'a Path,
    pub reason: &'a dyn Display,
}

impl WatchScanFailed<'_> {
    pub fn emit(self) {
        error!(event = "watch_scan_failed", dir = %self.dir.display(), reason = %self.reason, "scanning again with a fresh state");
    }
}
