//! C-STORE SCP: one task per association (bounded by a semaphore), C-ECHO, the storage SOP classes of
//! CT plus a configurable pass-through list. Access control at association time: the called AE title
//! must be ours, and when an allow-list is configured the calling AE title and source address must be
//! on it. The success status goes out only after the instance is durably in the spool; when free disk
//! is under the watermark the answer is "out of resources". TCP_NODELAY is set on every socket.

use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{AssociationRJServiceUserReason, PDataValue, PDataValueType, UserIdentity};
use dicom_ul::{Pdu, ServerAssociationOptions};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::config::Settings;
use crate::events;
use crate::forward::dimse;
use crate::metrics::{Beat, Metrics};
use crate::spool::{InstanceKey, Spool, SpoolError};
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
];

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

/// Checks the called AE title and the allow-list (calling AE title @ source address).
struct Gate {
    ae_title: String,
    allowed: Vec<String>,
    peer: IpAddr,
}

impl Gate {
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
        if !self.caller_allowed(calling) {
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
}

impl Scp {
    /// Accepts associations on `listener` until shutdown. Associations in progress end when their
    /// peer releases them or the shutdown signal arrives (instances not yet acknowledged are not kept).
    pub async fn run(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let limit = self.settings.borrow().server.max_associations;
        let slots = Arc::new(Semaphore::new(limit));
        let this = Arc::new(self);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => this.beat.beat(),
                accepted = listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(event = "accept_failed", reason = %e);
                            continue;
                        }
                    };
                    let _ = socket.set_nodelay(true);
                    let slots = slots.clone();
                    let this = this.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        let Ok(_permit) = slots.acquire_owned().await else { return };
                        this.association(socket, peer, shutdown).await;
                    });
                }
            }
        }
    }

    async fn association(
        &self,
        socket: TcpStream,
        peer: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let settings = self.settings.borrow().clone();
        let s = &settings.server;
        let gate = Gate {
            ae_title: s.ae_title.clone(),
            allowed: s.allowed_callers.clone(),
            peer: peer.ip(),
        };
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
        let mut assoc = match opts.establish_async(socket).await {
            Ok(a) => a,
            Err(e) => {
                self.metrics.associations_rejected.inc();
                events::association_rejected("", "", &peer.to_string(), &e.to_string());
                return;
            }
        };
        let _ = assoc.inner_stream().set_nodelay(true);
        let calling = dicom_ul::association::Association::peer_ae_title(&assoc)
            .trim()
            .to_string();
        let called = assoc.called_ae_title().trim().to_string();
        tracing::debug!(event = "association_accepted", calling_ae = %calling, peer = %peer);
        let contexts: Vec<(u8, String, String)> = assoc
            .presentation_contexts()
            .iter()
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
        let mut data: Vec<u8> = Vec::new();
        loop {
            let pdu = tokio::select! {
                _ = shutdown.changed() => {
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
                match value_type {
                    PDataValueType::Command => {
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
                            pending = Some((cmd, pc));
                            data.clear();
                        } else {
                            tracing::warn!(event = "unsupported_command", calling_ae = %calling, field = cmd.field);
                            let _ = assoc.abort().await;
                            return;
                        }
                    }
                    PDataValueType::Data => {
                        data.extend_from_slice(&bytes);
                        if !is_last {
                            continue;
                        }
                        let Some((cmd, cmd_pc)) = pending.take() else {
                            let _ = assoc.abort().await;
                            return;
                        };
                        let ctx = contexts.iter().find(|(id, _, _)| *id == cmd_pc).cloned();
                        let dataset = std::mem::take(&mut data);
                        let (status, comment) = self
                            .store(&settings, ctx, &cmd, &calling, &called, dataset)
                            .await;
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

    /// Parses, checks and spools one instance. Returns the DIMSE status and an error comment.
    async fn store(
        &self,
        settings: &Settings,
        ctx: Option<(u8, String, String)>,
        cmd: &dimse::Command,
        calling: &str,
        called: &str,
        dataset: Vec<u8>,
    ) -> (u16, String) {
        let Some((_, abstract_syntax, ts_uid)) = ctx else {
            return (
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
            return (
                dimse::SOP_CLASS_NOT_SUPPORTED,
                format!("SOP class {} not accepted", cmd.sop_class),
            );
        }
        let Some(ts) = TransferSyntaxRegistry.get(&ts_uid) else {
            return (
                dimse::CANNOT_UNDERSTAND,
                format!("transfer syntax {ts_uid} unknown"),
            );
        };
        let obj = match InMemDicomObject::read_dataset_with_ts(&dataset[..], ts) {
            Ok(o) => o,
            Err(e) => return (dimse::CANNOT_UNDERSTAND, format!("malformed dataset: {e}")),
        };
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
        let key = InstanceKey {
            study_uid: text(tags::STUDY_INSTANCE_UID),
            series_uid: text(tags::SERIES_INSTANCE_UID),
            sop_instance_uid: sop_instance,
            sop_class_uid: cmd.sop_class.clone(),
            transfer_syntax: ts_uid,
        };
        if self
            .recent
            .contains(&key.study_uid, &key.series_uid, &key.sop_instance_uid)
            && self
                .spool
                .series_dir(&key.study_uid, &key.series_uid)
                .is_ok_and(|d| !d.exists())
        {
            // Received, acknowledged and delivered before: acknowledged again, nothing to keep.
            tracing::info!(event = "retransmission", calling_ae = %calling, series_uid = %key.series_uid, sop_instance_uid = %key.sop_instance_uid, "instance of a delivered series received again; acknowledged, not reprocessed");
            return (dimse::SUCCESS, String::new());
        }
        let spool = self.spool.clone();
        let calling_owned = calling.to_string();
        let key2 = key.clone();
        let stored =
            tokio::task::spawn_blocking(move || spool.store(&key2, &calling_owned, &dataset)).await;
        match stored {
            Ok(Ok(_)) => {}
            Ok(Err(e @ SpoolError::InvalidUid { .. })) => {
                return (dimse::CANNOT_UNDERSTAND, e.to_string())
            }
            Ok(Err(e @ SpoolError::DiskFull { .. })) => {
                tracing::error!(event = "disk_watermark", reason = %e);
                return (dimse::OUT_OF_RESOURCES, "spool disk full".into());
            }
            Ok(Err(e)) => {
                tracing::error!(event = "spool_write_failed", reason = %e);
                return (dimse::OUT_OF_RESOURCES, "cannot write spool".into());
            }
            Err(e) => return (dimse::OUT_OF_RESOURCES, format!("spool task failed: {e}")),
        }
        self.metrics.instances_received.inc();
        self.metrics
            .last_instance_received_timestamp_seconds
            .set(crate::metrics::now_seconds());
        let arrival = Arrival {
            study_uid: key.study_uid,
            series_uid: key.series_uid,
            sop_instance_uid: key.sop_instance_uid,
            calling_ae: calling.to_string(),
            called_ae: called.to_string(),
            expected,
        };
        // Durable already: the series stage learns of it (waiting when it is busy: back-pressure).
        let _ = self.tx.send(arrival).await;
        (dimse::SUCCESS, String::new())
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
