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
//! is streamed to its spool temporary file as its fragments arrive (256 KiB writes off the async
//! workers, overlapping the receipt), up to `max_dataset_mib`, then the association is aborted.
//! After its last fragment the file goes through the bounded pre-parser ([`super::guard`], read back
//! from the page cache while the file's `fdatasync` runs) and is checked against its presentation
//! context (accepted, same as the command's, pixel encoding matching the transfer syntax) before
//! dicom-rs parses its header (up to the pixel data), off the async workers; only then is it
//! committed to the spool (see the durability argument in [`crate::spool`]). Accept errors
//! (EMFILE...) back off from 100 ms to 1 s with one log line per 10 s.
//!
//! DICOM TLS (`server.tls`, see [`crate::tls`]): the TLS handshake comes first, under the ARTIM timer
//! and the handshake permit; a failed handshake (no client certificate, untrusted certificate, a
//! plain-TCP caller) is logged with the peer address and holds no slot. The decrypted stream is then
//! relayed through a local socket pair, so that the same ARTIM peek, slot and association code
//! serves TLS and plain TCP. A client certificate whose subject is not on `allowed_subjects` gets
//! A-ASSOCIATE-RJ (calling AE title not recognized), logged naming the subject.

use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, AssociationRQ, PDataValue, PDataValueType,
    PresentationContextResultReason, UserIdentity,
};
use dicom_ul::{Pdu, ServerAssociationOptions};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::Settings;
use crate::events;
use crate::forward::dimse;
use crate::ingest::guard::{self, Limits};
use crate::metrics::{Beat, Metrics};
use crate::spool::{Incoming, Spool, SpoolError};
use crate::volume::header::{CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE};

/// Verification SOP class.
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// Transfer syntaxes we accept (stored as received; decoded later).
pub const ACCEPTED_TRANSFER_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2.1",    // Explicit VR Little Endian
    "1.2.840.10008.1.2",      // Implicit VR Little Endian
    "1.2.840.10008.1.2.5",    // RLE Lossless
    "1.2.840.10008.1.2.4.70", // JPEG Lossless SV1
    "1.2.840.10008.1.2.4.57", // JPEG Lossless
    "1.2.840.10008.1.2.4.50", // JPEG Baseline
    "1.2.840.10008.1.2.4.51", // JPEG Extended
    "1.2.840.10008.1.2.4.90", // JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91", // JPEG 2000
    "1.2.840.10008.1.2.4.80", // JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81", // JPEG-LS Near-Lossless
];

/// Largest command set buffered (a real one is under 200 bytes).
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Largest A-ASSOCIATE-RQ accepted (a request proposing 128 contexts is under 40 KiB).
pub const MAX_ASSOCIATE_RQ_BYTES: u32 = 64 * 1024;

/// One log line per `every` for a repeated condition, with the count of lines left out.
struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    fn new(every: Duration) -> Self {
        RateLimited {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(lines suppressed since the last one)` when a line may be written now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Accept errors that mean "out of descriptors or memory": wait before accepting again.
fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
        .iter()
        .any(|x| e.raw_os_error() == Some(x.raw_os_error()))
}

/// Waits until `socket` holds a complete PDU (peeked: nothing is consumed) and parses it as an
/// A-ASSOCIATE-RQ. Returns the request and its size on the wire.
async fn peek_associate_rq(
    socket: &TcpStream,
    max_pdu_length: u32,
) -> Result<(AssociationRQ, usize), String> {
    let pause = Duration::from_millis(20);
    let mut head = [0u8; 6];
    loop {
        let n = socket
            .peek(&mut head)
            .await
            .map_err(|e| format!("cannot read: {e}"))?;
        if n == 0 {
            return Err("connection closed before an A-ASSOCIATE-RQ".into());
        }
        if n == head.len() {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    if head[0] != 0x01 {
        return Err(format!(
            "first PDU is of type 0x{:02X}, not A-ASSOCIATE-RQ",
            head[0]
        ));
    }
    let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]);
    if len > MAX_ASSOCIATE_RQ_BYTES {
        return Err(format!(
            "A-ASSOCIATE-RQ of {len} bytes exceeds {MAX_ASSOCIATE_RQ_BYTES}"
        ));
    }
    let total = 6 + len as usize;
    let mut buf = vec![0u8; total];
    loop {
        let n = socket
            .peek(&mut buf)
            .await
            .map_err(|e| format!("cannot read: {e}"))?;
        if n == 0 {
            return Err("connection closed inside the A-ASSOCIATE-RQ".into());
        }
        if n == total {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    match dicom_ul::pdu::read_pdu(&buf[..], max_pdu_length.max(MAX_ASSOCIATE_RQ_BYTES), true) {
        Ok(Some(Pdu::AssociationRQ(rq))) => Ok((rq, total)),
        Ok(_) => Err("malformed A-ASSOCIATE-RQ".into()),
        Err(e) => Err(format!("malformed A-ASSOCIATE-RQ: {e}")),
    }
}

/// Consumes the peeked request and answers A-ASSOCIATE-RJ rejected-transient, local-limit-exceeded.
async fn reject_transient(mut socket: TcpStream, rq_len: usize) {
    let pdu = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    let mut out = Vec::new();
    if dicom_ul::pdu::write_pdu(&mut out, &pdu).is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut rq = vec![0u8; rq_len];
        socket.read_exact(&mut rq).await?;
        socket.write_all(&out).await?;
        socket.shutdown().await
    })
    .await;
}

/// The ARTIM time of the current settings, in seconds.
fn server_artim(scp: &Scp) -> u64 {
    scp.settings.borrow().server.artim_seconds
}

/// A connected pair of local stream sockets: ours as a `TcpStream` (what dicom-ul's association
/// takes; only read, write and peek are used on it) and the relay's end.
fn socket_pair() -> std::io::Result<(TcpStream, tokio::net::UnixStream)> {
    let (ours, relay) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    relay.set_nonblocking(true)?;
    let ours = std::net::TcpStream::from(std::os::fd::OwnedFd::from(ours));
    Ok((
        TcpStream::from_std(ours)?,
        tokio::net::UnixStream::from_std(relay)?,
    ))
}

/// An instance durably spooled, handed to the series stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub calling_ae: String,
    pub called_ae: String,
    /// Instances the headers say the series will have, when they say it.
    pub expected: Option<usize>,
}

/// Checks the called AE title and the allow-list (calling AE title @ source address), and over TLS
/// the client certificate's subject.
struct Gate {
    ae_title: String,
    allowed: Vec<String>,
    peer: IpAddr,
    /// Over TLS: the client certificate's subject (None: no certificate).
    tls: Option<Option<String>>,
    allowed_subjects: Vec<String>,
}

impl Gate {
    fn subject_allowed(&self) -> bool {
        match &self.tls {
            None => true,
            Some(_) if self.allowed_subjects.is_empty() => true,
            Some(None) => false,
            Some(Some(subject)) => crate::tls::subject_allowed(subject, &self.allowed_subjects),
        }
    }

    fn caller_allowed(&self, calling: &str) -> bool {
        self.allowed.is_empty()
            || self.allowed.iter().any(|entry| {
                let (ae, host) = entry.split_once('@').unwrap_or((entry.as_str(), "*"));
                ae.trim() == calling.trim()
                    && (host == "*" || host.parse::<IpAddr>().is_ok_and(|h| h == self.peer))
            })
    }
}

impl AccessControl for Gate {
    fn check_access(
        &self,
        _this: &str,
        calling: &str,
        called: &str,
        _user: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called.trim() != self.ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if !self.caller_allowed(calling) || !self.subject_allowed() {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
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
                    tracing::error!(event = "tls_config_failed", reason = %e, "cannot load the SCP's TLS configuration; not accepting associations");
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
                                tracing::warn!(event = "accept_failed", reason = %e, suppressed, retry_ms = if exhausted { backoff.as_millis() } else { 0 }, "cannot accept a connection");
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
                        if let Some(suppressed) = busy_log.allow() {
                            tracing::warn!(event = "handshake_limit", peer = %peer, limit = server.max_handshakes, suppressed, "too many connections in the association handshake; closed");
                        }
                        this.metrics.associations_rejected.inc();
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
            self.metrics.associations_rejected.inc();
            tracing::warn!(event = "tls_handshake_failed", peer = %peer, reason = %reason, "TLS handshake failed; connection closed");
            crate::audit::rejected(&format!("TLS handshake failed: {reason}"));
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
        tracing::debug!(event = "tls_established", peer = %peer, subject = ?subject);
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
            self.metrics.associations_rejected.inc();
            events::association_rejected(calling, called, &peer.to_string(), reason);
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
        let (calling, called) = (
            rq.calling_ae_title.trim().to_string(),
            rq.called_ae_title.trim().to_string(),
        );
        crate::audit::request(&calling, &called);
        if !gate.subject_allowed() {
            let subject = gate.tls.clone().flatten().unwrap_or_default();
            tracing::warn!(event = "tls_subject_rejected", peer = %peer, calling_ae = %calling, subject = %subject, "client certificate subject not in server.tls.allowed_subjects; association rejected");
            crate::audit::rejected("client certificate subject not in server.tls.allowed_subjects");
        }
        // Only a request that passes access control waits for a slot; the others are answered by
        // the negotiation below (a permanent rejection) without one.
        let slot = if gate
            .check_access(&s.ae_title, &calling, &called, None)
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
                    tracing::warn!(event = "association_slots_full", calling_ae = %calling, peer = %peer, limit = s.max_associations, waited_seconds = s.slot_wait_seconds, "no free association slot; rejected (transient)");
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
                self.metrics.associations_rejected.inc();
                events::association_rejected("", "", &peer.to_string(), &e.to_string());
                return;
            }
            Err(_) => {
                self.metrics.associations_rejected.inc();
                events::association_rejected("", "", &peer.to_string(), "negotiation timed out");
                return;
            }
        };
        let _ = assoc.inner_stream().set_nodelay(true);
        let calling = dicom_ul::association::Association::peer_ae_title(&assoc)
            .trim()
            .to_string();
        let called = assoc.called_ae_title().trim().to_string();
        tracing::debug!(event = "association_accepted", calling_ae = %calling, peer = %peer);
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
        let mut sink = Sink::Discard(dimse::SUCCESS, String::new());
        let mut received: usize = 0;
        let mut idle_until = Instant::now() + idle;
        loop {
            let pdu = tokio::select! {
                _ = shutdown.changed() => {
                    let _ = assoc.abort().await;
                    return;
                }
                _ = tokio::time::sleep_until(idle_until) => {
                    tracing::warn!(event = "association_idle", calling_ae = %calling, peer = %peer, seconds = idle.as_secs(), "no C-STORE completed for too long; association aborted to free its slot");
                    let _ = assoc.abort().await;
                    return;
                }
                pdu = assoc.receive() => pdu,
            };
            let values = match pdu {
                Ok(Pdu::PData { data: values }) => values,
                Ok(Pdu::ReleaseRQ) => {
                    let _ = assoc.send(&Pdu::ReleaseRP).await;
                    return;
                }
                Ok(Pdu::AbortRQ { .. }) => {
                    tracing::info!(event = "association_aborted", calling_ae = %calling, "peer aborted; acknowledged instances are kept");
                    return;
                }
                Ok(other) => {
                    tracing::warn!(event = "unexpected_pdu", calling_ae = %calling, pdu = ?other);
                    let _ = assoc.abort().await;
                    return;
                }
                Err(e) => {
                    tracing::info!(event = "association_ended", calling_ae = %calling, reason = %e);
                    return;
                }
            };
            for v in values {
                let PDataValue {
                    presentation_context_id: pc,
                    value_type,
                    is_last,
                    data: bytes,
                } = v;
                if !contexts.iter().any(|(id, _, _)| *id == pc) {
                    tracing::warn!(event = "pdata_on_unaccepted_context", calling_ae = %calling, peer = %peer, context_id = pc, "P-DATA on a presentation context that was not accepted; association aborted");
                    let _ = assoc.abort().await;
                    return;
                }
                match value_type {
                    PDataValueType::Command => {
                        if command.len() + bytes.len() > MAX_COMMAND_BYTES {
                            tracing::warn!(event = "command_too_large", calling_ae = %calling, peer = %peer, limit = MAX_COMMAND_BYTES, "command set exceeds the limit; association aborted");
                            let _ = assoc.abort().await;
                            return;
                        }
                        command.extend_from_slice(&bytes);
                        if !is_last {
                            continue;
                        }
                        let cmd = match dimse::decode(&command) {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!(event = "bad_command", calling_ae = %calling, reason = %e);
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
                            if self.send_command(&mut assoc, pc, rsp).await.is_err() {
                                return;
                            }
                        } else if cmd.field == dimse::C_STORE_RQ && cmd.has_dataset {
                            let ctx = contexts.iter().find(|(id, _, _)| *id == pc).cloned();
                            sink = self.admit(&settings, ctx, &cmd, &calling);
                            received = 0;
                            pending = Some((cmd, pc));
                        } else {
                            tracing::warn!(event = "unsupported_command", calling_ae = %calling, field = cmd.field);
                            let _ = assoc.abort().await;
                            return;
                        }
                    }
                    PDataValueType::Data => {
                        let Some(cmd_pc) = pending.as_ref().map(|(_, p)| *p) else {
                            tracing::warn!(event = "unexpected_data", calling_ae = %calling, peer = %peer, "data set without a C-STORE command; association aborted");
                            let _ = assoc.abort().await;
                            return;
                        };
                        if cmd_pc != pc {
                            tracing::warn!(event = "context_mismatch", calling_ae = %calling, peer = %peer, command_context = cmd_pc, data_context = pc, "data set on another presentation context than its command; association aborted");
                            let _ = assoc.abort().await;
                            return;
                        }
                        if received.saturating_add(bytes.len()) > max_dataset {
                            tracing::warn!(event = "dataset_too_large", calling_ae = %calling, peer = %peer, limit_bytes = max_dataset, "data set exceeds server.max_dataset_mib; association aborted");
                            let _ = assoc.abort().await;
                            return;
                        }
                        received += bytes.len();
                        sink.push(bytes).await;
                        idle_until = Instant::now() + idle;
                        if !is_last {
                            continue;
                        }
                        let Some((cmd, cmd_pc)) = pending.take() else {
                            let _ = assoc.abort().await;
                            return;
                        };
                        let ctx = contexts.iter().find(|(id, _, _)| *id == cmd_pc).cloned();
                        let taken = std::mem::replace(
                            &mut sink,
                            Sink::Discard(dimse::SUCCESS, String::new()),
                        );
                        let (status, comment) = self
                            .store(&limits, ctx, &cmd, &calling, &called, taken)
                            .await;
                        idle_until = Instant::now() + idle;
                        if status != dimse::SUCCESS {
                            self.metrics.instances_rejected.inc();
                            events::instance_rejected(
                                &calling,
                                &cmd.sop_instance,
                                status,
                                &comment,
                            );
                        }
                        let rsp = dimse::response(
                            dimse::C_STORE_RSP,
                            cmd.message_id,
                            &cmd.sop_class,
                            &cmd.sop_instance,
                            status,
                            &comment,
                        );
                        if self.send_command(&mut assoc, cmd_pc, rsp).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    async fn send_command(
        &self,
        assoc: &mut dicom_ul::association::server::AsyncServerAssociation<TcpStream>,
        pc: u8,
        bytes: Result<Vec<u8>, dimse::DimseError>,
    ) -> Result<(), ()> {
        let bytes = bytes.map_err(|_| ())?;
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
            .map_err(|_| ())
    }

    /// At a C-STORE-RQ: checks the presentation context and SOP class, and opens the instance's
    /// spool file. A refusal is answered once the data set has been received (and discarded).
    fn admit(
        &self,
        settings: &Settings,
        ctx: Option<(u8, String, String)>,
        cmd: &dimse::Command,
        calling: &str,
    ) -> Sink {
        let Some((_, abstract_syntax, ts_uid)) = ctx else {
            return Sink::Discard(
                dimse::CANNOT_UNDERSTAND,
                "unknown presentation context".into(),
            );
        };
        let allowed = abstract_syntax == CT_IMAGE_STORAGE
            || abstract_syntax == ENHANCED_CT_IMAGE_STORAGE
            || settings
                .server
                .passthrough_sop_classes
                .contains(&abstract_syntax);
        if !allowed || cmd.sop_class != abstract_syntax {
            return Sink::Discard(
                dimse::SOP_CLASS_NOT_SUPPORTED,
                format!("SOP class {} not accepted", cmd.sop_class),
            );
        }
        let spool = self.spool.clone();
        let (class, instance, calling) = (
            cmd.sop_class.clone(),
            cmd.sop_instance.clone(),
            calling.to_string(),
        );
        let ts = ts_uid.clone();
        // Opened off the async workers with the first chunk, while the next fragments arrive.
        Sink::File {
            writer: Writer::Unopened(Box::new(move || {
                spool.begin(&class, &instance, &ts, &calling)
            })),
            chunk: Vec::new(),
            spare: Vec::new(),
            ts_uid,
        }
    }

    /// Checks and commits one received instance (its data set in its spool file). Returns the DIMSE
    /// status and an error comment.
    async fn store(
        &self,
        limits: &Limits,
        ctx: Option<(u8, String, String)>,
        cmd: &dimse::Command,
        calling: &str,
        called: &str,
        sink: Sink,
    ) -> (u16, String) {
        let (mut writer, chunk, ts_uid) = match sink {
            Sink::Discard(status, comment) => return (status, comment),
            Sink::File {
                writer,
                chunk,
                ts_uid,
                ..
            } => (writer, chunk, ts_uid),
        };
        let mut incoming = match writer.ready().await {
            Ok((incoming, _)) => incoming,
            Err(answer) => return answer,
        };
        if ctx.is_none() {
            return (
                dimse::CANNOT_UNDERSTAND,
                "unknown presentation context".into(),
            );
        }
        // The last bytes written, then (in parallel) the data synced to disk and the file checked:
        // the bounded pre-parser (depth, declared lengths, size, pixel encoding against the
        // context's transfer syntax), then dicom-rs up to the pixel data, both off the async
        // workers; the file is read back from the page cache.
        let written = tokio::task::spawn_blocking(move || {
            let r = incoming.write(&chunk).and_then(|()| incoming.reopen());
            (incoming, r)
        })
        .await;
        let (mut incoming, file) = match written {
            Ok((incoming, Ok(file))) => (incoming, file),
            Ok((_, Err(e))) => return spool_status(&e),
            Err(e) => return (dimse::OUT_OF_RESOURCES, format!("spool task failed: {e}")),
        };
        let (path, limits) = (incoming.path().to_path_buf(), *limits);
        let (synced, checked) = tokio::join!(
            tokio::task::spawn_blocking(move || {
                let r = incoming.sync_data();
                (incoming, r)
            }),
            tokio::task::spawn_blocking(move || check_file(file, &path, &ts_uid, &limits)),
        );
        let (incoming, synced) = match synced {
            Ok(x) => x,
            Err(e) => return (dimse::OUT_OF_RESOURCES, format!("spool task failed: {e}")),
        };
        // A refused data set is answered as such even when its sync failed too.
        let obj = match checked {
            Ok(Ok(obj)) => obj,
            Ok(Err(reason)) => return (dimse::CANNOT_UNDERSTAND, reason),
            Err(e) => return (dimse::CANNOT_UNDERSTAND, format!("parser failed: {e}")),
        };
        if let Err(e) = synced {
            return spool_status(&e);
        }
        let text = |tag| {
            obj.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
                .unwrap_or_default()
        };
        let sop_instance = text(tags::SOP_INSTANCE_UID);
        if sop_instance != cmd.sop_instance || text(tags::SOP_CLASS_UID) != cmd.sop_class {
            return (
                dimse::DATASET_MISMATCH,
                "SOP class or instance differs from the command".into(),
            );
        }
        let expected = [tags::NUMBER_OF_SERIES_RELATED_INSTANCES]
            .into_iter()
            .find_map(|t| text(t).parse::<usize>().ok())
            .filter(|&n| n > 0);
        let (study_uid, series_uid) = (
            text(tags::STUDY_INSTANCE_UID),
            text(tags::SERIES_INSTANCE_UID),
        );
        drop(obj);
        if self.recent.contains(&study_uid, &series_uid, &sop_instance)
            && self
                .spool
                .series_dir(&study_uid, &series_uid)
                .is_ok_and(|d| !d.exists())
        {
            // Received, acknowledged and delivered before: acknowledged again, nothing to keep.
            tracing::info!(event = "retransmission", calling_ae = %calling, series_uid = %series_uid, sop_instance_uid = %sop_instance, "instance of a delivered series received again; acknowledged, not reprocessed");
            return (dimse::SUCCESS, String::new());
        }
        let spool = self.spool.clone();
        let (study2, series2) = (study_uid.clone(), series_uid.clone());
        let bytes = usize::try_from(incoming.dataset_bytes()).unwrap_or(usize::MAX);
        let stored =
            tokio::task::spawn_blocking(move || spool.commit(incoming, &study2, &series2)).await;
        match stored {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return spool_status(&e),
            Err(e) => return (dimse::OUT_OF_RESOURCES, format!("spool task failed: {e}")),
        }
        self.metrics.instances_received.inc();
        crate::audit::instance_stored(bytes);
        self.metrics
            .last_instance_received_timestamp_seconds
            .set(crate::metrics::now_seconds());
        let arrival = Arrival {
            study_uid,
            series_uid,
            sop_instance_uid: sop_instance,
            calling_ae: calling.to_string(),
            called_ae: called.to_string(),
            expected,
        };
        // Durable already: the series stage learns of it (waiting when it is busy: back-pressure).
        let _ = self.tx.send(arrival).await;
        (dimse::SUCCESS, String::new())
    }
}

/// The DIMSE status and comment of a spool error.
fn spool_status(e: &SpoolError) -> (u16, String) {
    match e {
        SpoolError::InvalidUid { .. } => (dimse::CANNOT_UNDERSTAND, e.to_string()),
        SpoolError::DiskFull { .. } => {
            tracing::error!(event = "disk_watermark", reason = %e);
            (dimse::OUT_OF_RESOURCES, "spool disk full".into())
        }
        _ => {
            tracing::error!(event = "spool_write_failed", reason = %e);
            (dimse::OUT_OF_RESOURCES, "cannot write spool".into())
        }
    }
}

/// Checks a received instance's spool file (guard, then dicom-rs up to the pixel data); the
/// comment of a refusal names the reason, not our temporary path.
fn check_file(
    file: std::fs::File,
    path: &std::path::Path,
    ts_uid: &str,
    limits: &Limits,
) -> Result<dicom_object::DefaultDicomObject, String> {
    guard::check_part10_open(file, path, limits).map_err(|e| match e {
        guard::GuardError::File { reason, .. } => reason.to_string(),
        other => other.to_string(),
    })?;
    if TransferSyntaxRegistry.get(ts_uid).is_none() {
        return Err(format!("transfer syntax {ts_uid} unknown"));
    }
    dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| format!("malformed dataset: {e}"))
}

/// Where the data set of the pending C-STORE goes.
enum Sink {
    /// Refused at the command (status, comment): the bytes are counted and dropped.
    Discard(u16, String),
    /// Streamed to the instance's spool file, in chunks written off the async workers while the
    /// next fragments arrive.
    File {
        writer: Writer,
        chunk: Vec<u8>,
        /// The buffer of the previous write, reused.
        spare: Vec<u8>,
        ts_uid: String,
    },
}

type Begin = Box<dyn FnOnce() -> Result<Incoming, SpoolError> + Send>;
type Written = Result<(Incoming, Vec<u8>), SpoolError>;

/// The spool file of the pending C-STORE.
enum Writer {
    /// Not opened yet (opened with the first write).
    Unopened(Begin),
    /// Being written (one write at a time, in order); gives back the buffer.
    Busy(tokio::task::JoinHandle<Written>),
    /// Opening or writing failed (the temporary file is gone): the rest of the data set is
    /// dropped and the C-STORE answered with this status and comment.
    Failed(u16, String),
}

impl Writer {
    /// Waits for the write in progress; the file and the buffer written, or the answer to give.
    async fn ready(&mut self) -> Result<(Incoming, Vec<u8>), (u16, String)> {
        let state = std::mem::replace(self, Writer::Failed(dimse::OUT_OF_RESOURCES, String::new()));
        let done = match state {
            Writer::Unopened(begin) => {
                tokio::task::spawn_blocking(move || Ok((begin()?, Vec::new()))).await
            }
            Writer::Busy(handle) => handle.await,
            Writer::Failed(status, comment) => return Err((status, comment)),
        };
        match done {
            Ok(Ok(x)) => Ok(x),
            Ok(Err(e)) => Err(spool_status(&e)),
            Err(e) => Err((dimse::OUT_OF_RESOURCES, format!("spool task failed: {e}"))),
        }
    }

    /// Starts writing `buf` (opening the file first when needed); returns at once.
    async fn start(&mut self, mut buf: Vec<u8>) -> Option<Vec<u8>> {
        let state = std::mem::replace(self, Writer::Failed(dimse::OUT_OF_RESOURCES, String::new()));
        let (mut spare, open): (Option<Vec<u8>>, Result<Option<Incoming>, Begin>) = match state {
            Writer::Unopened(begin) => (None, Err(begin)),
            busy @ Writer::Busy(_) => {
                *self = busy;
                match self.ready().await {
                    Ok((incoming, spare)) => (Some(spare), Ok(Some(incoming))),
                    Err((status, comment)) => {
                        *self = Writer::Failed(status, comment);
                        return None;
                    }
                }
            }
            failed @ Writer::Failed(..) => {
                *self = failed;
                return None;
            }
        };
        *self = Writer::Busy(tokio::task::spawn_blocking(move || {
            let mut incoming = match open {
                Ok(Some(incoming)) => incoming,
                Ok(None) => {
                    return Err(SpoolError::Version {
                        path: std::path::PathBuf::new(),
                        reason: "no spool file".into(),
                    })
                }
                Err(begin) => begin()?,
            };
            incoming.write(&buf)?;
            buf.clear();
            Ok((incoming, buf))
        }));
        spare.take()
    }
}

/// Bytes gathered before a write (a few P-DATA fragments; never the whole data set of a CT image).
const WRITE_CHUNK: usize = 256 * 1024;

impl Sink {
    async fn push(&mut self, bytes: Vec<u8>) {
        let Sink::File {
            writer,
            chunk,
            spare,
            ..
        } = self
        else {
            return;
        };
        if matches!(writer, Writer::Failed(..)) {
            return;
        }
        if chunk.is_empty() && bytes.len() >= WRITE_CHUNK {
            *chunk = bytes;
        } else {
            if chunk.capacity() == 0 {
                chunk.reserve(WRITE_CHUNK + bytes.len());
            }
            chunk.extend_from_slice(&bytes);
        }
        if chunk.len() < WRITE_CHUNK {
            return;
        }
        let buf = std::mem::replace(chunk, std::mem::take(spare));
        if let Some(back) = writer.start(buf).await {
            *spare = back;
        }
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
}
