//! C-STORE SCP: one task per association (bounded by a semaphore), C-ECHO, the storage SOP classes of
//! CT plus a configurable pass-through list. Access control at association time: the called AE title
//! must be ours, and when an allow-list is configured the calling AE title and source address must be
//! on it. The success status goes out only after the instance is durably in the spool; when free disk
//! is under the watermark the answer is "out of resources". TCP_NODELAY is set on every socket.
//!
//! Hostile peers (issue 9): a connection holds only a handshake permit (`max_handshakes`) until it
//! has sent a complete, parseable A-ASSOCIATE-RQ within the ARTIM time (`artim_seconds`, peeked, not
//! consumed); an association slot (`max_associations`) is taken only for a request that passes
//! access control, waiting at most `slot_wait_seconds`, beyond which the caller gets A-ASSOCIATE-RJ
//! rejected-transient / local-limit-exceeded. An association that completes no C-STORE for
//! `association_idle_seconds` is aborted. P-DATA is buffered up to 64 KiB per command; a data set
//! is streamed to its spool temporary file as its fragments arrive, up to `max_dataset_mib`, then
//! the association is aborted. PDUs are read by [`super::wire`] (each fragment handed over in place
//! from one buffer reused for the association: no allocation or copy per PDU) and gathered into
//! 256 KiB chunks for the association's spool writer ([`SpoolWriter`]: one blocking task for the
//! life of the association, which opens the file, writes the chunks while the next fragments
//! arrive, and finishes the instance; chunk buffers are reused). After the last fragment the writer
//! ([`finish`]) runs the bounded pre-parser ([`crate::dicom::guard`], reading the file back from
//! the page cache while its `fdatasync` runs), checks it against its presentation context
//! (accepted, same as the command's, pixel encoding matching the transfer syntax), lets dicom-rs
//! parse its header (up to the pixel data), then commits it to the spool (see the durability
//! argument in [`crate::spool`]). Accept errors (EMFILE...) back off from 100 ms to 1 s with one
//! log line per 10 s.
//!
//! DICOM TLS (`server.tls`, see [`crate::tls`]): the TLS handshake comes first, under the ARTIM timer
//! and the handshake permit; a failed handshake (no client certificate, untrusted certificate, a
//! plain-TCP caller) is logged with the peer address and holds no slot. The decrypted stream is then
//! relayed through a local socket pair, so that the same ARTIM peek, slot and association code
//! serves TLS and plain TCP. A client certificate whose subject is not on `allowed_subjects` gets
//! A-ASSOCIATE-RJ (calling AE title not recognized), logged naming the subject.
//!
//! One file above ~600 lines because it is one cohesive thing: the life of an association (TLS,
//! negotiation, the P-DATA loop, C-STORE into the spool) is one state machine whose steps share its
//! limits and slots; what comes before an association is in [`super::accept`].

use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::server::AccessControl;
use dicom_ul::association::AsyncAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{Pdu, ServerAssociationOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::Settings;
use crate::dicom::dimse;
use crate::dicom::guard::{self, Limits};
use crate::dicom::header::{CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE};
use crate::events;
use crate::metrics::{Beat, Metrics};
use crate::series::Arrival;
use crate::spool::{Incoming, Spool, SpoolError};

pub use super::accept::MAX_ASSOCIATE_RQ_BYTES;
use super::accept::{
    is_resource_exhaustion, peek_associate_rq, reject_transient, socket_pair, Gate, RateLimited,
};
use super::wire::{PduReader, Received};

/// What the SCP answers to one C-STORE.
#[derive(Debug)]
pub enum StoreOutcome {
    /// Committed to the spool (durable) and announced to the series stage.
    Stored,
    /// An instance of a series delivered before, received again: acknowledged, not kept.
    Retransmission,
    /// Refused: the data set is not kept.
    Refused(StoreRefusal),
}

impl StoreOutcome {
    /// The DIMSE status of the C-STORE response.
    pub fn status(&self) -> u16 {
        match self {
            StoreOutcome::Stored | StoreOutcome::Retransmission => dimse::SUCCESS,
            StoreOutcome::Refused(r) => r.status(),
        }
    }

    /// The response's error comment (empty on success).
    pub fn comment(&self) -> String {
        match self {
            StoreOutcome::Stored | StoreOutcome::Retransmission => String::new(),
            StoreOutcome::Refused(r) => r.to_string(),
        }
    }
}

/// Why a C-STORE was refused. The message is the response's error comment: it names the reason,
/// never our temporary path.
#[derive(Debug, thiserror::Error)]
pub enum StoreRefusal {
    #[error("unknown presentation context")]
    UnknownContext,
    #[error("SOP class {sop_class} not accepted")]
    SopClassNotAccepted { sop_class: String },
    /// The bounded pre-parser refused the data set.
    #[error("{}", guard_comment(.0))]
    Guard(#[source] guard::GuardError),
    #[error("transfer syntax {ts_uid} unknown")]
    UnknownTransferSyntax { ts_uid: String },
    #[error("malformed dataset: {0}")]
    Malformed(#[source] Box<dicom_object::ReadError>),
    /// The parser panicked on the data set (its message).
    #[error("parser failed: {reason}")]
    ParserPanicked { reason: String },
    #[error("SOP class or instance differs from the command")]
    DatasetMismatch,
    #[error("{}", spool_comment(.0))]
    Spool(#[source] SpoolError),
    #[error("spool task failed: {0}")]
    SpoolTask(#[source] tokio::task::JoinError),
    /// The association's spool writer ended (never expected: it ends with the association).
    #[error("spool writer stopped")]
    SpoolWriterStopped,
    /// A data set with no C-STORE command before it (never expected: the association aborts).
    #[error("data set without a C-STORE command")]
    NoCommand,
}

impl StoreRefusal {
    /// The DIMSE status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            StoreRefusal::UnknownContext
            | StoreRefusal::Guard(_)
            | StoreRefusal::UnknownTransferSyntax { .. }
            | StoreRefusal::Malformed(_)
            | StoreRefusal::ParserPanicked { .. }
            | StoreRefusal::NoCommand
            | StoreRefusal::Spool(SpoolError::InvalidUid { .. }) => dimse::CANNOT_UNDERSTAND,
            StoreRefusal::SopClassNotAccepted { .. } => dimse::SOP_CLASS_NOT_SUPPORTED,
            StoreRefusal::DatasetMismatch => dimse::DATASET_MISMATCH,
            StoreRefusal::Spool(_)
            | StoreRefusal::SpoolTask(_)
            | StoreRefusal::SpoolWriterStopped => dimse::OUT_OF_RESOURCES,
        }
    }
}

/// The comment of a pre-parser refusal: the reason, not the file it was found in.
fn guard_comment(e: &guard::GuardError) -> String {
    match e {
        guard::GuardError::File { reason, .. } => reason.to_string(),
        other => other.to_string(),
    }
}

/// The comment of a spool error: a bad UID is named; the spool's own trouble is not detailed.
fn spool_comment(e: &SpoolError) -> String {
    match e {
        SpoolError::InvalidUid { .. } => e.to_string(),
        SpoolError::DiskFull { .. } => "spool disk full".into(),
        _ => "cannot write spool".into(),
    }
}

/// Why a response could not be sent to the calling AE (the association ends).
#[derive(Debug, thiserror::Error)]
pub enum ScpError {
    #[error("cannot encode the response to {calling_ae}: {source}")]
    Encode {
        calling_ae: String,
        #[source]
        source: dimse::DimseError,
    },
    #[error("cannot send the response to {calling_ae}: {source}")]
    Send {
        calling_ae: String,
        #[source]
        source: Box<dicom_ul::association::Error>,
    },
}

/// Verification SOP class.
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// Transfer syntaxes we accept (stored as received; decoded later): the DICOM layer's list.
pub use crate::dicom::decode::ACCEPTED_TRANSFER_SYNTAXES;

/// Largest command set buffered (the DICOM layer's bound, shared with the forward stage).
pub use crate::dicom::dimse::MAX_COMMAND_BYTES;
/// The ARTIM time of the current settings, in seconds.
fn server_artim(scp: &Scp) -> u64 {
    scp.settings.borrow().server.artim_seconds
}

/// The SCP stage.
pub struct Scp {
    pub settings: watch::Receiver<Arc<Settings>>,
    pub spool: Spool,
    /// Instances of recently completed series (retransmissions are recognised).
    pub recent: Arc<crate::series::Recent>,
    pub tx: mpsc::Sender<Arrival>,
    pub metrics: Arc<Metrics>,
    pub beat: Beat,
    /// Where the association tasks run (the supervisor awaits them at shutdown).
    pub associations: tokio_util::task::TaskTracker,
}

impl Scp {
    /// Accepts associations on `listener` until shutdown. Associations in progress end when their
    /// peer releases them or the shutdown signal arrives (instances not yet acknowledged are not kept;
    /// a C-STORE whose data set is complete is answered first: the supervisor awaits the tasks).
    pub async fn run(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let server = self.settings.borrow().server.clone();
        guard::install(Limits::from_settings(&server));
        let slots = Arc::new(Semaphore::new(server.max_associations));
        let handshakes = Arc::new(Semaphore::new(server.max_handshakes));
        let tls = if server.tls.enabled {
            match crate::tls::server_config(&server.tls) {
                Ok(cfg) => Some(tokio_rustls::TlsAcceptor::from(cfg)),
                Err(e) => {
                    events::TlsConfigFailed { reason: &e }.emit();
                    return;
                }
            }
        } else {
            None
        };
        let this = Arc::new(self);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let min_backoff = Duration::from_millis(100);
        let mut backoff = min_backoff;
        let mut accept_log = RateLimited::new(Duration::from_secs(10));
        let mut busy_log = RateLimited::new(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => this.beat.beat(),
                accepted = listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            let exhausted = is_resource_exhaustion(&e);
                            if let Some(suppressed) = accept_log.allow() {
                                events::AcceptFailed {
                                    reason: &e,
                                    suppressed,
                                    retry_ms: if exhausted { backoff.as_millis() } else { 0 },
                                }
                                .emit();
                            }
                            if exhausted {
                                // Out of descriptors: accepting again at once would spin.
                                tokio::select! {
                                    _ = shutdown.changed() => return,
                                    _ = tokio::time::sleep(backoff) => {}
                                }
                                this.beat.beat();
                                backoff = (backoff * 2).min(Duration::from_secs(1));
                            }
                            continue;
                        }
                    };
                    backoff = min_backoff;
                    let _ = socket.set_nodelay(true);
                    let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                        events::HandshakeLimit {
                            peer: &peer,
                            limit: server.max_handshakes,
                            suppressed: busy_log.allow(),
                        }
                        .emit(&this.metrics);
                        continue;
                    };
                    let slots = slots.clone();
                    let this = this.clone();
                    let shutdown = shutdown.clone();
                    let tls = tls.clone();
                    let over_tls = tls.is_some();
                    this.associations.clone().spawn(crate::audit::association(peer, over_tls, async move {
                        match tls {
                            Some(acceptor) => this.tls_connection(acceptor, socket, peer, handshake, slots, shutdown).await,
                            None => {
                                let deadline = Instant::now() + Duration::from_secs(server_artim(&this));
                                this.connection(socket, peer, handshake, slots, shutdown, None, deadline).await
                            }
                        }
                    }));
                }
            }
        }
    }

    /// One TLS connection: the TLS handshake under the ARTIM timer (holding only the handshake
    /// permit), then the decrypted stream relayed through a local socket pair to [`Self::connection`].
    async fn tls_connection(
        &self,
        acceptor: tokio_rustls::TlsAcceptor,
        socket: TcpStream,
        peer: SocketAddr,
        handshake: OwnedSemaphorePermit,
        slots: Arc<Semaphore>,
        shutdown: watch::Receiver<bool>,
    ) {
        let artim_seconds = server_artim(self);
        let deadline = Instant::now() + Duration::from_secs(artim_seconds);
        let rejected = |reason: String| {
            events::TlsHandshakeFailed {
                peer: &peer,
                reason: &reason,
            }
            .emit(&self.metrics);
        };
        let mut stop = shutdown.clone();
        let accepted = tokio::select! {
            r = tokio::time::timeout_at(deadline, acceptor.accept(socket)) => r,
            // Stopping: a connection that is not an association yet is closed, not waited for.
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return rejected(crate::tls::describe_error(&e)),
            Err(_) => {
                return rejected(format!("no TLS handshake within {artim_seconds} s (ARTIM)"))
            }
        };
        let subject = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| crate::tls::subject_of(c));
        events::TlsEstablished {
            peer: &peer,
            subject: subject.as_deref(),
        }
        .emit();
        crate::audit::tls_subject(subject.as_deref());
        let (local, relay) = match socket_pair() {
            Ok(x) => x,
            Err(e) => {
                return rejected(format!("cannot create the local relay: {e}"));
            }
        };
        let pump = tokio::spawn(async move {
            let (mut stream, mut relay) = (stream, relay);
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut relay).await;
        });
        let abort = pump.abort_handle();
        self.connection(
            local,
            peer,
            handshake,
            slots,
            shutdown,
            Some(subject),
            deadline,
        )
        .await;
        // The association is over (our end of the pair is closed): let the relay flush the last
        // PDUs and close_notify, then stop it.
        if tokio::time::timeout(Duration::from_secs(5), pump)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    /// One connection: the handshake under the ARTIM timer (until `deadline`), a slot for a valid
    /// request, then the association. `tls`: over TLS, the client certificate's subject.
    #[allow(clippy::too_many_arguments)]
    async fn connection(
        &self,
        socket: TcpStream,
        peer: SocketAddr,
        handshake: OwnedSemaphorePermit,
        slots: Arc<Semaphore>,
        shutdown: watch::Receiver<bool>,
        tls: Option<Option<String>>,
        deadline: Instant,
    ) {
        let settings = self.settings.borrow().clone();
        let s = &settings.server;
        let artim = Duration::from_secs(s.artim_seconds);
        let rejected = |calling: &str, called: &str, reason: &str| {
            events::AssociationRejected {
                calling_ae: calling,
                called_ae: called,
                peer: &peer,
                reason,
            }
            .emit(&self.metrics);
        };
        let mut stop = shutdown.clone();
        let peeked = tokio::select! {
            r = tokio::time::timeout_at(deadline, peek_associate_rq(&socket, s.max_pdu_length)) => r,
            // Stopping: a connection that is not an association yet is closed, not waited for.
            _ = stop.changed() => return,
        };
        let (rq, rq_len) = match peeked {
            Ok(Ok(x)) => x,
            Ok(Err(reason)) => return rejected("", "", &reason),
            Err(_) => {
                return rejected(
                    "",
                    "",
                    &format!("no A-ASSOCIATE-RQ within {} s (ARTIM)", s.artim_seconds),
                )
            }
        };
        let gate = Gate {
            ae_title: s.ae_title.clone(),
            allowed: s.allowed_callers.clone(),
            peer: peer.ip(),
            tls,
            allowed_subjects: s.tls.allowed_subjects.clone(),
        };
        // As the peer sent them (checked by the gate), and as logged (escaped: a title with a
        // newline or an escape sequence is refused by the gate, and must not forge a log line).
        let (raw_calling, raw_called) = (rq.calling_ae_title.trim(), rq.called_ae_title.trim());
        let (calling, called) = (
            crate::util::log::safe(raw_calling).into_owned(),
            crate::util::log::safe(raw_called).into_owned(),
        );
        crate::audit::request(&calling, &called);
        if !gate.subject_allowed() {
            let subject = gate.tls.clone().flatten().unwrap_or_default();
            events::TlsSubjectRejected {
                peer: &peer,
                calling_ae: &calling,
                subject: &subject,
            }
            .emit();
        }
        // Only a request that passes access control waits for a slot; the others are answered by
        // the negotiation below (a permanent rejection) without one.
        let slot = if gate
            .check_access(&s.ae_title, raw_calling, raw_called, None)
            .is_ok()
        {
            let wait = Duration::from_secs(s.slot_wait_seconds);
            let acquired = tokio::select! {
                r = tokio::time::timeout(wait, slots.acquire_owned()) => r,
                _ = stop.changed() => return,
            };
            match acquired {
                Ok(Ok(p)) => Some(p),
                _ => {
                    events::AssociationSlotsFull {
                        calling_ae: &calling,
                        peer: &peer,
                        limit: s.max_associations,
                        waited_seconds: s.slot_wait_seconds,
                    }
                    .emit();
                    rejected(
                        &calling,
                        &called,
                        "no free association slot (rejected-transient, local-limit-exceeded)",
                    );
                    reject_transient(socket, rq_len).await;
                    return;
                }
            }
        } else {
            None
        };
        self.association(socket, peer, gate, artim, handshake, shutdown)
            .await;
        drop(slot);
    }

    async fn association(
        &self,
        socket: TcpStream,
        peer: SocketAddr,
        gate: Gate,
        artim: Duration,
        handshake: OwnedSemaphorePermit,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let settings = self.settings.borrow().clone();
        let s = &settings.server;
        let limits = Limits::from_settings(s);
        let max_dataset = usize::try_from(limits.max_bytes).unwrap_or(usize::MAX);
        let idle = Duration::from_secs(s.association_idle_seconds);
        let mut opts = ServerAssociationOptions::new()
            .ae_access_control(gate)
            .ae_title(s.ae_title.clone())
            .max_pdu_length(s.max_pdu_length)
            .read_timeout(Duration::from_secs(s.read_timeout_seconds))
            .write_timeout(Duration::from_secs(s.write_timeout_seconds))
            .with_abstract_syntax(VERIFICATION)
            .with_abstract_syntax(CT_IMAGE_STORAGE)
            .with_abstract_syntax(ENHANCED_CT_IMAGE_STORAGE);
        for sop in &s.passthrough_sop_classes {
            opts = opts.with_abstract_syntax(sop.clone());
        }
        for ts in ACCEPTED_TRANSFER_SYNTAXES {
            opts = opts.with_transfer_syntax(*ts);
        }
        let established = tokio::select! {
            r = tokio::time::timeout(artim, opts.establish_async(socket)) => r,
            _ = shutdown.changed() => return,
        };
        drop(handshake);
        let mut assoc = match established {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                events::AssociationRejected {
                    calling_ae: "",
                    called_ae: "",
                    peer: &peer,
                    reason: &e.to_string(),
                }
                .emit(&self.metrics);
                return;
            }
            Err(_) => {
                events::AssociationRejected {
                    calling_ae: "",
                    called_ae: "",
                    peer: &peer,
                    reason: "negotiation timed out",
                }
                .emit(&self.metrics);
                return;
            }
        };
        let _ = assoc.inner_stream().set_nodelay(true);
        let mut writer = SpoolWriter::start(self.spool.clone(), self.recent.clone());
        let calling = dicom_ul::association::Association::peer_ae_title(&assoc)
            .trim()
            .to_string();
        let called = assoc.called_ae_title().trim().to_string();
        events::AssociationAccepted {
            calling_ae: &calling,
            peer: &peer,
        }
        .emit();
        // Only accepted contexts: a rejected one carries no usable transfer syntax.
        let contexts: Vec<(u8, String, String)> = assoc
            .presentation_contexts()
            .iter()
            .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| {
                (
                    pc.id,
                    pc.abstract_syntax.clone(),
                    pc.transfer_syntax.clone(),
                )
            })
            .collect();
        let mut command: Vec<u8> = Vec::new();
        let mut pending: Option<(dimse::Command, u8)> = None;
        // The data set of the pending C-STORE, streamed to its spool file as it arrives.
        let mut sink = Sink::Idle;
        let mut received: usize = 0;
        let mut idle_until = Instant::now() + idle;
        let read_timeout = Duration::from_secs(s.read_timeout_seconds);
        // From here on PDUs are read by our reader (values in place, one buffer reused); dicom-ul
        // sends the responses and the abort. Bytes it read past the negotiation come first.
        let max_pdu = assoc.acceptor_max_pdu_length();
        let mut reader = {
            let (_, read_buffer) = AsyncAssociation::get_mut(&mut assoc);
            PduReader::new(max_pdu, &read_buffer.split())
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.changed() => {
                    let _ = assoc.abort().await;
                    return;
                }
                _ = tokio::time::sleep_until(idle_until) => {
                    events::AssociationIdle {
                        calling_ae: &calling,
                        peer: &peer,
                        seconds: idle.as_secs(),
                    }
                    .emit();
                    let _ = assoc.abort().await;
                    return;
                }
                r = tokio::time::timeout(read_timeout, reader.next(assoc.inner_stream())) => r,
            };
            let fragment = match next {
                Ok(Ok(Received::Fragment {
                    pc,
                    command,
                    is_last,
                    start,
                    end,
                    bytes,
                })) => (pc, command, is_last, start, end, bytes),
                Ok(Ok(Received::Pdu(Pdu::ReleaseRQ))) => {
                    let _ = assoc.send(&Pdu::ReleaseRP).await;
                    return;
                }
                Ok(Ok(Received::Pdu(Pdu::AbortRQ { .. }))) => {
                    events::AssociationAborted {
                        calling_ae: &calling,
                    }
                    .emit();
                    return;
                }
                Ok(Ok(Received::Pdu(other))) => {
                    events::UnexpectedPdu {
                        calling_ae: &calling,
                        pdu: &other,
                    }
                    .emit();
                    let _ = assoc.abort().await;
                    return;
                }
                Ok(Err(e)) => {
                    events::AssociationEnded {
                        calling_ae: &calling,
                        reason: &e,
                    }
                    .emit();
                    return;
                }
                Err(_) => {
                    events::AssociationEnded {
                        calling_ae: &calling,
                        reason: &format_args!(
                            "nothing received for {} s (read timeout)",
                            read_timeout.as_secs()
                        ),
                    }
                    .emit();
                    return;
                }
            };
            let (pc, is_command, is_last, start, end, bytes) = fragment;
            if start && !contexts.iter().any(|(id, _, _)| *id == pc) {
                events::PdataOnUnacceptedContext {
                    calling_ae: &calling,
                    peer: &peer,
                    context_id: pc,
                }
                .emit();
                let _ = assoc.abort().await;
                return;
            }
            if is_command {
                if command.len() + bytes.len() > MAX_COMMAND_BYTES {
                    events::CommandTooLarge {
                        calling_ae: &calling,
                        peer: &peer,
                        limit: MAX_COMMAND_BYTES,
                    }
                    .emit();
                    let _ = assoc.abort().await;
                    return;
                }
                command.extend_from_slice(bytes);
                if !(end && is_last) {
                    continue;
                }
                let cmd = match dimse::decode(&command) {
                    Ok(c) => c,
                    Err(e) => {
                        events::BadCommand {
                            calling_ae: &calling,
                            reason: &e,
                        }
                        .emit();
                        let _ = assoc.abort().await;
                        return;
                    }
                };
                command.clear();
                if cmd.field == dimse::C_ECHO_RQ {
                    let rsp = dimse::response(
                        dimse::C_ECHO_RSP,
                        cmd.message_id,
                        VERIFICATION,
                        "",
                        dimse::SUCCESS,
                        "",
                    );
                    if self
                        .send_command(&mut assoc, pc, rsp, &calling)
                        .await
                        .is_err()
                    {
                        return;
                    }
                } else if cmd.field == dimse::C_STORE_RQ && cmd.has_dataset {
                    let ctx = contexts.iter().find(|(id, _, _)| *id == pc).cloned();
                    sink = self.admit(&settings, ctx, &cmd, &calling);
                    received = 0;
                    pending = Some((cmd, pc));
                } else {
                    events::UnsupportedCommand {
                        calling_ae: &calling,
                        field: cmd.field,
                    }
                    .emit();
                    let _ = assoc.abort().await;
                    return;
                }
                continue;
            }
            if start {
                let Some(cmd_pc) = pending.as_ref().map(|(_, p)| *p) else {
                    events::UnexpectedData {
                        calling_ae: &calling,
                        peer: &peer,
                    }
                    .emit();
                    let _ = assoc.abort().await;
                    return;
                };
                if cmd_pc != pc {
                    events::ContextMismatch {
                        calling_ae: &calling,
                        peer: &peer,
                        command_context: cmd_pc,
                        data_context: pc,
                    }
                    .emit();
                    let _ = assoc.abort().await;
                    return;
                }
            }
            if received.saturating_add(bytes.len()) > max_dataset {
                events::DatasetTooLarge {
                    calling_ae: &calling,
                    peer: &peer,
                    limit_bytes: max_dataset,
                }
                .emit();
                let _ = assoc.abort().await;
                return;
            }
            received += bytes.len();
            sink.push(bytes, &mut writer).await;
            idle_until = Instant::now() + idle;
            if !(end && is_last) {
                continue;
            }
            let Some((cmd, cmd_pc)) = pending.take() else {
                let _ = assoc.abort().await;
                return;
            };
            let ctx = contexts.iter().find(|(id, _, _)| *id == cmd_pc).cloned();
            let taken = std::mem::replace(&mut sink, Sink::Idle);
            let outcome = self
                .store(&limits, ctx, &cmd, &calling, &called, taken, &mut writer)
                .await;
            idle_until = Instant::now() + idle;
            let comment = outcome.comment();
            if let StoreOutcome::Refused(refusal) = &outcome {
                events::InstanceRejected {
                    calling_ae: &calling,
                    sop_instance_uid: &cmd.sop_instance,
                    status: refusal.status(),
                    reason: &comment,
                }
                .emit(&self.metrics);
            }
            let rsp = dimse::response(
                dimse::C_STORE_RSP,
                cmd.message_id,
                &cmd.sop_class,
                &cmd.sop_instance,
                outcome.status(),
                &comment,
            );
            if self
                .send_command(&mut assoc, cmd_pc, rsp, &calling)
                .await
                .is_err()
            {
                return;
            }
        }
    }

    async fn send_command(
        &self,
        assoc: &mut dicom_ul::association::server::AsyncServerAssociation<TcpStream>,
        pc: u8,
        bytes: Result<Vec<u8>, dimse::DimseError>,
        calling: &str,
    ) -> Result<(), ScpError> {
        let bytes = bytes.map_err(|source| ScpError::Encode {
            calling_ae: calling.to_string(),
            source,
        })?;
        assoc
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: bytes,
                }],
            })
            .await
            .map_err(|source| ScpError::Send {
                calling_ae: calling.to_string(),
                source: Box::new(source),
            })
    }

    /// At a C-STORE-RQ: checks the presentation context and SOP class; the association's spool
    /// writer opens the instance's spool file with the first data set bytes. A refusal is answered
    /// once the data set has been received (and discarded).
    fn admit(
        &self,
        settings: &Settings,
        ctx: Option<(u8, String, String)>,
        cmd: &dimse::Command,
        calling: &str,
    ) -> Sink {
        let Some((_, abstract_syntax, ts_uid)) = ctx else {
            return Sink::Discard(StoreRefusal::UnknownContext);
        };
        let allowed = abstract_syntax == CT_IMAGE_STORAGE
            || abstract_syntax == ENHANCED_CT_IMAGE_STORAGE
            || settings
                .server
                .passthrough_sop_classes
                .contains(&abstract_syntax);
        if !allowed || cmd.sop_class != abstract_syntax {
            return Sink::Discard(StoreRefusal::SopClassNotAccepted {
                sop_class: cmd.sop_class.clone(),
            });
        }
        Sink::File {
            open: Some(Open {
                sop_class: cmd.sop_class.clone(),
                sop_instance: cmd.sop_instance.clone(),
                ts_uid,
                calling: calling.to_string(),
            }),
            chunk: Vec::new(),
        }
    }

    /// Checks and commits one received instance: the last bytes of its data set go to the
    /// association's spool writer with the order to finish it (checks, `fdatasync`, commit).
    #[allow(clippy::too_many_arguments)]
    async fn store(
        &self,
        limits: &Limits,
        ctx: Option<(u8, String, String)>,
        cmd: &dimse::Command,
        calling: &str,
        called: &str,
        sink: Sink,
        writer: &mut SpoolWriter,
    ) -> StoreOutcome {
        use StoreOutcome::Refused;
        let (open, chunk) = match sink {
            Sink::Idle => return Refused(StoreRefusal::NoCommand),
            Sink::Discard(refusal) => return Refused(refusal),
            Sink::File { open, chunk } => (open, chunk),
        };
        if ctx.is_none() {
            return Refused(StoreRefusal::UnknownContext);
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Chunk {
            open,
            bytes: chunk,
            finish: Some(FinishJob {
                limits: *limits,
                sop_class: cmd.sop_class.clone(),
                sop_instance: cmd.sop_instance.clone(),
                reply,
            }),
        };
        if writer.tx.send(job).await.is_err() {
            return Refused(StoreRefusal::SpoolWriterStopped);
        }
        let stored = match answer.await {
            Err(_) => return Refused(StoreRefusal::SpoolWriterStopped),
            Ok(Ok(Finished::Stored(stored))) => stored,
            Ok(Ok(Finished::Retransmission { series_uid })) => {
                // Received, acknowledged and delivered before: acknowledged again, nothing kept.
                events::RetransmissionAcknowledged {
                    calling_ae: calling,
                    series_uid: &series_uid,
                    sop_instance_uid: &cmd.sop_instance,
                }
                .emit();
                return StoreOutcome::Retransmission;
            }
            Ok(Err(refusal)) => return Refused(refusal),
        };
        self.metrics.instances_received.inc();
        crate::audit::instance_stored(stored.bytes);
        self.metrics
            .last_instance_received_timestamp_seconds
            .set(crate::util::clock::now_seconds());
        let arrival = Arrival {
            study_uid: stored.study_uid,
            series_uid: stored.series_uid,
            sop_instance_uid: cmd.sop_instance.clone(),
            calling_ae: calling.to_string(),
            called_ae: called.to_string(),
            expected: stored.expected,
        };
        // Durable already: the series stage learns of it (waiting when it is busy: back-pressure).
        let _ = self.tx.send(arrival).await;
        StoreOutcome::Stored
    }
}

/// What [`finish`] made of a received instance.
enum Finished {
    Stored(Stored),
    /// An instance of a series delivered before (not kept).
    Retransmission {
        series_uid: String,
    },
}

/// An instance committed to the spool: what the series stage and the audit need.
struct Stored {
    study_uid: String,
    series_uid: String,
    expected: Option<usize>,
    bytes: usize,
}

/// Off the async workers, for one instance whose data set is in its spool file: the bounded
/// pre-parser (depth, declared lengths, size, pixel encoding against the context's transfer
/// syntax) and dicom-rs up to the pixel data, both reading the file back from the page cache
/// while its `fdatasync` runs on the blocking pool; the data set must name the command's SOP
/// class and instance; then the commit to the spool (see the durability argument in
/// [`crate::spool`]).
#[allow(clippy::too_many_arguments)]
fn finish(
    pool: &tokio::runtime::Handle,
    spool: &Spool,
    recent: &crate::series::Recent,
    mut incoming: Incoming,
    ts_uid: &str,
    limits: &Limits,
    sop_class: &str,
    sop_instance: &str,
) -> Result<Finished, StoreRefusal> {
    let file = incoming.reopen().map_err(spool_refusal)?;
    let path = incoming.path().to_path_buf();
    // The data synced while the file is checked (the sync waits on the disk, the check on the
    // CPU).
    let (synced_tx, synced_rx) = std::sync::mpsc::channel();
    pool.spawn_blocking(move || {
        let r = incoming.sync_data();
        let _ = synced_tx.send((incoming, r));
    });
    // A parser panic refuses this data set (cannot understand), not the spool (out of resources).
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_file(file, &path, ts_uid, limits)
    }));
    let Ok((incoming, synced)) = synced_rx.recv() else {
        return Err(StoreRefusal::SpoolWriterStopped);
    };
    // A refused data set is answered as such even when its sync failed too.
    let obj = match checked {
        Ok(checked) => checked?,
        Err(panic) => {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            return Err(StoreRefusal::ParserPanicked { reason });
        }
    };
    let text = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_default()
    };
    if text(tags::SOP_INSTANCE_UID) != sop_instance || text(tags::SOP_CLASS_UID) != sop_class {
        return Err(StoreRefusal::DatasetMismatch);
    }
    let expected = text(tags::NUMBER_OF_SERIES_RELATED_INSTANCES)
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0);
    let (study_uid, series_uid) = (
        text(tags::STUDY_INSTANCE_UID),
        text(tags::SERIES_INSTANCE_UID),
    );
    drop(obj);
    if recent.contains(&study_uid, &series_uid, sop_instance)
        && spool
            .series_dir(&study_uid, &series_uid)
            .is_ok_and(|d| !d.exists())
    {
        return Ok(Finished::Retransmission { series_uid });
    }
    synced.map_err(spool_refusal)?;
    let bytes = usize::try_from(incoming.dataset_bytes()).unwrap_or(usize::MAX);
    spool
        .commit(incoming, &study_uid, &series_uid)
        .map_err(spool_refusal)?;
    Ok(Finished::Stored(Stored {
        study_uid,
        series_uid,
        expected,
        bytes,
    }))
}

/// The refusal of a spool error (a full disk or a failed write is logged for the operator).
fn spool_refusal(e: SpoolError) -> StoreRefusal {
    match &e {
        SpoolError::InvalidUid { .. } => {}
        SpoolError::DiskFull { .. } => events::DiskWatermark {
            path: None,
            reason: &e,
        }
        .emit(),
        _ => events::SpoolWriteFailed { reason: &e }.emit(),
    }
    StoreRefusal::Spool(e)
}

/// Checks a received instance's spool file (guard, then dicom-rs up to the pixel data); the
/// comment of a refusal names the reason, not our temporary path.
fn check_file(
    file: std::fs::File,
    path: &std::path::Path,
    ts_uid: &str,
    limits: &Limits,
) -> Result<dicom_object::DefaultDicomObject, StoreRefusal> {
    guard::check_part10_open(file, path, limits).map_err(StoreRefusal::Guard)?;
    if TransferSyntaxRegistry.get(ts_uid).is_none() {
        return Err(StoreRefusal::UnknownTransferSyntax {
            ts_uid: ts_uid.to_string(),
        });
    }
    dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| StoreRefusal::Malformed(Box::new(e)))
}

/// Where the data set of the pending C-STORE goes.
enum Sink {
    /// No C-STORE pending.
    Idle,
    /// Refused at the command: the bytes are counted and dropped, the C-STORE answered with this
    /// refusal.
    Discard(StoreRefusal),
    /// Streamed to the instance's spool file by the association's spool writer, in chunks.
    File {
        /// The spool file to open, sent with the first chunk.
        open: Option<Open>,
        /// Bytes gathered for the next chunk.
        chunk: Vec<u8>,
    },
}

impl Sink {
    /// Gathers a fragment (copied from the reader's buffer); a full chunk goes to the writer,
    /// waiting when it has [`WRITER_QUEUE`] chunks to write already (back-pressure).
    async fn push(&mut self, bytes: &[u8], writer: &mut SpoolWriter) {
        let Sink::File { open, chunk } = self else {
            return;
        };
        if chunk.capacity() == 0 {
            *chunk = writer.buffer();
        }
        chunk.extend_from_slice(bytes);
        if chunk.len() < WRITE_CHUNK {
            return;
        }
        let job = Chunk {
            open: open.take(),
            bytes: std::mem::replace(chunk, writer.buffer()),
            finish: None,
        };
        // A writer gone (never expected) is answered at the end of the data set.
        let _ = writer.tx.send(job).await;
    }
}

/// Bytes gathered before a write (a few P-DATA fragments; never the whole data set of a CT image).
const WRITE_CHUNK: usize = 256 * 1024;
/// Chunks queued for the spool writer before the association waits for it.
const WRITER_QUEUE: usize = 4;

/// The spool file of the pending C-STORE, opened with its first chunk.
struct Open {
    sop_class: String,
    sop_instance: String,
    ts_uid: String,
    calling: String,
}

/// The order to finish the instance after this chunk, and where the answer goes.
struct FinishJob {
    limits: Limits,
    sop_class: String,
    sop_instance: String,
    reply: tokio::sync::oneshot::Sender<Result<Finished, StoreRefusal>>,
}

/// Work for the spool writer: open (first chunk), write, finish (last chunk).
struct Chunk {
    open: Option<Open>,
    bytes: Vec<u8>,
    finish: Option<FinishJob>,
}

/// The spool writer of one association: one blocking task for the life of the association that
/// owns the spool file of the pending C-STORE and does its open, writes, checks, `fdatasync` and
/// commit, in order, while the association's task goes on receiving (a file system that stalls on
/// a journal commit never stops the async workers). Chunk buffers come back for reuse.
struct SpoolWriter {
    tx: mpsc::Sender<Chunk>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl SpoolWriter {
    /// Starts the writer; it ends when the association drops this handle (a file not finished is
    /// removed).
    fn start(spool: Spool, recent: Arc<crate::series::Recent>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Chunk>(WRITER_QUEUE);
        let (spare_tx, spare) = std::sync::mpsc::channel();
        let pool = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut file: Option<(Result<Incoming, StoreRefusal>, String)> = None;
            while let Some(job) = rx.blocking_recv() {
                if let Some(o) = job.open {
                    let opened = spool
                        .begin(&o.sop_class, &o.sop_instance, &o.ts_uid, &o.calling)
                        .map_err(spool_refusal);
                    file = Some((opened, o.ts_uid));
                }
                if let Some((state, _)) = &mut file {
                    if let Ok(incoming) = state {
                        if let Err(e) = incoming.write(&job.bytes) {
                            // The temporary file goes; the rest of the data set is dropped.
                            *state = Err(spool_refusal(e));
                        }
                    }
                }
                let mut buf = job.bytes;
                buf.clear();
                let _ = spare_tx.send(buf);
                if let Some(f) = job.finish {
                    let answer = match file.take() {
                        Some((Ok(incoming), ts_uid)) => finish(
                            &pool,
                            &spool,
                            &recent,
                            incoming,
                            &ts_uid,
                            &f.limits,
                            &f.sop_class,
                            &f.sop_instance,
                        ),
                        Some((Err(refusal), _)) => Err(refusal),
                        None => Err(StoreRefusal::NoCommand),
                    };
                    let _ = f.reply.send(answer);
                }
            }
        });
        SpoolWriter { tx, spare }
    }

    /// A chunk buffer: one the writer gave back, else a new one.
    fn buffer(&mut self) -> Vec<u8> {
        self.spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(WRITE_CHUNK + 64 * 1024))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list() {
        let g = Gate {
            ae_title: "US".into(),
            allowed: vec!["CT1@127.0.0.1".into(), "CT2@*".into()],
            peer: "127.0.0.1".parse().unwrap(),
            tls: None,
            allowed_subjects: vec![],
        };
        assert!(g.check_access("US", "CT1", "US", None).is_ok());
        assert!(g.check_access("US", "CT2", "US", None).is_ok());
        assert!(g.check_access("US", "CT3", "US", None).is_err());
        assert!(g.check_access("US", "CT1", "THEM", None).is_err());
        let g2 = Gate {
            peer: "10.0.0.1".parse().unwrap(),
            ..g
        };
        assert!(g2.check_access("US", "CT1", "US", None).is_err());
    }

    #[test]
    fn ae_titles_outside_the_repertoire_are_refused() {
        use super::super::accept::ae_title_valid;
        use dicom_ul::pdu::AssociationRJServiceUserReason;
        for ok in ["CT1", "STORE SCU", "A", "0123456789ABCDEF", " PADDED "] {
            assert!(ae_title_valid(ok), "{ok:?}");
        }
        for bad in [
            "EV\nFAKE ERROR",
            "CT\r",
            "A\u{1b}[31m",
            "BACK\\SLASH",
            "é",
            "",
            "    ",
            "0123456789ABCDEFG",
        ] {
            assert!(!ae_title_valid(bad), "{bad:?}");
        }
        let g = Gate {
            ae_title: "US".into(),
            allowed: vec![],
            peer: "127.0.0.1".parse().unwrap(),
            tls: None,
            allowed_subjects: vec![],
        };
        assert!(g.check_access("US", "CT1", "US", None).is_ok());
        assert_eq!(
            g.check_access("US", "EV\nFAKE", "US", None),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
        assert_eq!(
            g.check_access("US", "CT1", "US\u{7}", None),
            Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
        );
    }
}
