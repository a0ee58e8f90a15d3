//! Before an association: accept back-off and rate-limited logging, the bounded A-ASSOCIATE-RQ
//! peek under the ARTIM timer, the transient rejection when no slot is free, the socket pair that
//! relays a TLS stream, and the access gate (called AE title, allow-list, certificate subject). Used
//! by the SCP ([`super::scp`]).

use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, AssociationRQ, UserIdentity,
};
use dicom_ul::Pdu;
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Largest A-ASSOCIATE-RQ accepted (a request proposing 128 contexts is under 40 KiB).
pub const MAX_ASSOCIATE_RQ_BYTES: u32 = 64 * 1024;

/// One log line per `every` for a repeated condition, with the count of lines left out.
pub(super) struct RateLimited {
    pub(super) every: Duration,
    pub(super) last: Option<Instant>,
    pub(super) suppressed: u64,
}

impl RateLimited {
    pub(super) fn new(every: Duration) -> Self {
        RateLimited {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(lines suppressed since the last one)` when a line may be written now.
    pub(super) fn allow(&mut self) -> Option<u64> {
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
pub(super) fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
        .iter()
        .any(|x| e.raw_os_error() == Some(x.raw_os_error()))
}

/// Waits until `socket` holds a complete PDU (peeked: nothing is consumed) and parses it as an
/// A-ASSOCIATE-RQ. Returns the request and its size on the wire.
pub(super) async fn peek_associate_rq(
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
pub(super) async fn reject_transient(mut socket: TcpStream, rq_len: usize) {
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

/// A connected pair of local stream sockets: ours as a `TcpStream` (what dicom-ul's association
/// takes; only read, write and peek are used on it) and the relay's end.
pub(super) fn socket_pair() -> std::io::Result<(TcpStream, tokio::net::UnixStream)> {
    let (ours, relay) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    relay.set_nonblocking(true)?;
    let ours = std::net::TcpStream::from(std::os::fd::OwnedFd::from(ours));
    Ok((
        TcpStream::from_std(ours)?,
        tokio::net::UnixStream::from_std(relay)?,
    ))
}

/// Checks the called AE title and the allow-list (calling AE title @ source address), and over TLS
/// the client certificate's subject.
pub(super) struct Gate {
    pub(super) ae_title: String,
    pub(super) allowed: Vec<String>,
    pub(super) peer: IpAddr,
    /// Over TLS: the client certificate's subject (None: no certificate).
    pub(super) tls: Option<Option<String>>,
    pub(super) allowed_subjects: Vec<String>,
}

impl Gate {
    pub(super) fn subject_allowed(&self) -> bool {
        match &self.tls {
            None => true,
            Some(_) if self.allowed_subjects.is_empty() => true,
            Some(None) => false,
            Some(Some(subject)) => crate::tls::subject_allowed(subject, &self.allowed_subjects),
        }
    }

    pub(super) fn caller_allowed(&self, calling: &str) -> bool {
        self.allowed.is_empty()
            || self.allowed.iter().any(|entry| {
                let (ae, host) = entry.split_once('@').unwrap_or((entry.as_str(), "*"));
                ae.trim() == calling.trim()
                    && (host == "*" || host.parse::<IpAddr>().is_ok_and(|h| h == self.peer))
            })
    }
}

/// An AE title as PS3.5 Table 6.2-1 has it: the default character repertoire without backslash
/// and control characters (so no value a peer sends can break a log line or a file meta group), at
/// most 16 characters, not only spaces.
pub(super) fn ae_title_valid(ae: &str) -> bool {
    ae.len() <= 16
        && ae.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\')
        && !ae.trim().is_empty()
}

impl AccessControl for Gate {
    fn check_access(
        &self,
        _this: &str,
        calling: &str,
        called: &str,
        _user: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if !ae_title_valid(called) || called.trim() != self.ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if !ae_title_valid(calling) || !self.caller_allowed(calling) || !self.subject_allowed() {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}
