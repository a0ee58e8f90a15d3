//! Sending a folder of instances: C-STORE SCU (one association per job, TCP_NODELAY on) or a copy
//! into a destination folder (temporary name, preamble zeroed, fsync, rename).
//!
//! Progress is per instance: instances the destination already acknowledged (in an earlier attempt)
//! are skipped, each acknowledgement is reported to the caller as it comes (its heartbeat and the
//! job's durable progress), and a failure status for one instance does not stop the others: the
//! attempt goes on and fails at the end naming every refused SOP Instance UID. Only statuses that
//! say the destination as a whole cannot take more (Refused: out of resources 0xA7xx, SOP class not
//! supported 0x0122) end the association at once.
//!
//! A destination with `tls = true` is reached over DICOM TLS ([`crate::tls`]): its certificate must
//! chain to its `ca` and carry `server_name` (default: `host`); a failed handshake fails the attempt
//! with the reason (e.g. "certificate not valid for name ..."), retried with the usual back-off.

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use dicom_ul::association::client::AsyncClientAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{ClientAssociationOptions, Pdu};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

use super::{AssociationFailure, ForwardError, ProtocolFailure};
use crate::config::{Destination, DestinationKind, ForwardSettings};
use crate::dicom::dimse;
use crate::util::fs::sync_dir;

/// The largest PDU we accept from a destination (what the A-ASSOCIATE-RQ announces).
pub const MAX_PDU: u32 = 65536;

/// One file to send: where it is, what it is, and where its dataset starts.
#[derive(Debug, Clone)]
struct Outgoing {
    path: PathBuf,
    sop_class: String,
    sop_instance: String,
    transfer_syntax: String,
    dataset_offset: usize,
}

fn dcm_files(dir: &Path) -> Result<Vec<PathBuf>, ForwardError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| ForwardError::File {
            path: dir.to_owned(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    v.sort();
    Ok(v)
}

fn describe(path: &Path) -> Result<Outgoing, ForwardError> {
    let obj = OpenFileOptions::new()
        .read_until(tags::SPECIFIC_CHARACTER_SET)
        .open_file(path)
        .map_err(|source| ForwardError::Dicom {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
    let meta = obj.meta();
    let clean = |s: &str| s.trim_end_matches(['\0', ' ']).to_string();
    Ok(Outgoing {
        path: path.to_owned(),
        sop_class: clean(meta.media_storage_sop_class_uid()),
        sop_instance: clean(meta.media_storage_sop_instance_uid()),
        transfer_syntax: clean(meta.transfer_syntax()),
        // Preamble and magic (132), the group length element (12), then the group itself.
        dataset_offset: 132 + 12 + meta.information_group_length as usize,
    })
}

/// A refused instance: its SOP Instance UID, the status and the destination's comment.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub sop_instance: String,
    pub status: u16,
    pub comment: String,
}

/// Sends every `.dcm` file of `dir` to `dest`, except the SOP instances in `skip` (acknowledged
/// before). `on_ack` is called with each SOP Instance UID the destination acknowledges. Returns how
/// many were delivered in this attempt.
pub async fn send_folder(
    dest: &Destination,
    settings: &ForwardSettings,
    dir: &Path,
    skip: &HashSet<String>,
    on_ack: &mut (dyn FnMut(&str) + Send),
) -> Result<usize, ForwardError> {
    match dest.kind {
        DestinationKind::Folder => {
            // Blocking file I/O, off the async runtime.
            let (d, from) = (dest.clone(), dir.to_owned());
            tokio::task::spawn_blocking(move || copy_folder(&d, &from))
                .await
                .map_err(|source| ForwardError::CopyTask {
                    path: dir.to_owned(),
                    source,
                })?
        }
        DestinationKind::Scp => {
            let seconds = settings.timeout_seconds.max(1);
            // A whole association gets a generous bound; each instance has the configured timeout.
            let files = dcm_files(dir)?;
            let budget = Duration::from_secs(seconds * (2 + files.len() as u64));
            match tokio::time::timeout(budget, store_scu(dest, settings, files, skip, on_ack)).await
            {
                Ok(r) => r,
                Err(_) => Err(ForwardError::Timeout {
                    destination: dest.name.clone(),
                    seconds: budget.as_secs(),
                }),
            }
        }
    }
}

fn copy_folder(dest: &Destination, dir: &Path) -> Result<usize, ForwardError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "series".into());
    let target = PathBuf::from(&dest.path).join(name);
    let ferr = |path: &Path, source: std::io::Error| ForwardError::File {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(&target).map_err(|e| ferr(&target, e))?;
    let files = dcm_files(dir)?;
    for f in &files {
        let Some(fname) = f.file_name() else { continue };
        let tmp = target.join(format!(".{}.tmp", fname.to_string_lossy()));
        std::fs::copy(f, &tmp).map_err(|e| ferr(&tmp, e))?;
        zero_preamble_and_sync(&tmp).map_err(|e| ferr(&tmp, e))?;
        std::fs::rename(&tmp, target.join(fname)).map_err(|e| ferr(&target, e))?;
    }
    sync_dir(&target).map_err(|e| ferr(&target, e))?;
    Ok(files.len())
}

/// True for a failure status that concerns the destination as a whole, not this one instance.
fn stops_association(status: u16) -> bool {
    status & 0xFF00 == 0xA700 || status == dimse::SOP_CLASS_NOT_SUPPORTED
}

/// Zeroes the 128-byte preamble of a Part 10 file (a received file's preamble may hold anything,
/// e.g. a polyglot executable header, PS3.10 7.5), then fsyncs the file.
fn zero_preamble_and_sync(path: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut head = [0u8; 132];
    if f.read_exact(&mut head).is_ok()
        && &head[128..] == b"DICM"
        && head[..128].iter().any(|&b| b != 0)
    {
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&[0u8; 128])?;
    }
    f.sync_all()
}

async fn store_scu(
    dest: &Destination,
    settings: &ForwardSettings,
    files: Vec<PathBuf>,
    skip: &HashSet<String>,
    on_ack: &mut (dyn FnMut(&str) + Send),
) -> Result<usize, ForwardError> {
    let name = dest.name.clone();
    let proto = |source: ProtocolFailure| ForwardError::Protocol {
        destination: name.clone(),
        source: Box::new(source),
    };
    // Reading every file's meta group is blocking I/O: off the async runtime.
    let described = tokio::task::spawn_blocking(move || {
        files
            .iter()
            .map(|p| describe(p))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| proto(ProtocolFailure::Task(e)))??;
    let outgoing: Vec<Outgoing> = described
        .into_iter()
        .filter(|o| !skip.contains(&o.sop_instance))
        .collect();
    if outgoing.is_empty() {
        return Ok(0);
    }
    let mut contexts: Vec<(String, String)> = outgoing
        .iter()
        .map(|o| (o.sop_class.clone(), o.transfer_syntax.clone()))
        .collect();
    contexts.sort();
    contexts.dedup();
    let timeout = Duration::from_secs(settings.timeout_seconds.max(1));
    // Every wait is bounded by our own timers (the association below, each instance in
    // `transfer`), which name what was waited for; dicom-ul's read timeout is only a backstop, at
    // twice ours (it reports a time-out while waiting for the A-ASSOCIATE-AC as "TLS not enabled,
    // but peer seems to be sending TLS data").
    let mut opts = ClientAssociationOptions::new()
        .calling_ae_title(settings.calling_ae_title.clone())
        .called_ae_title(dest.ae_title.clone())
        .max_pdu_length(MAX_PDU)
        .read_timeout(timeout * 2)
        .connection_timeout(timeout);
    for (sop, ts) in &contexts {
        opts = opts.with_presentation_context(sop.clone(), vec![ts.clone()]);
    }
    let addr = format!("{}:{}", dest.host, dest.port);
    let assoc_err = |source: AssociationFailure| ForwardError::Association {
        destination: name.clone(),
        source: Box::new(source),
    };
    let no_answer = |_| ForwardError::Timeout {
        destination: name.clone(),
        seconds: timeout.as_secs(),
    };
    if dest.tls {
        let cfg = crate::tls::client_config(dest).map_err(|e| assoc_err(e.into()))?;
        let server_name = crate::tls::server_name(dest);
        let establish = opts
            .tls_config(cfg)
            .server_name(&server_name)
            .establish_tls_async(addr.as_str());
        let mut assoc = tokio::time::timeout(timeout, establish)
            .await
            .map_err(no_answer)?
            .map_err(|source| {
                assoc_err(AssociationFailure::TlsHandshake {
                    addr: addr.clone(),
                    server_name: server_name.clone(),
                    source: Box::new(source),
                })
            })?;
        let _ = assoc.inner_stream().get_ref().0.set_nodelay(true);
        transfer(assoc, name.clone(), timeout, &outgoing, on_ack, &proto).await
    } else {
        let mut assoc = tokio::time::timeout(timeout, opts.establish_async(addr.as_str()))
            .await
            .map_err(no_answer)?
            .map_err(|e| assoc_err(AssociationFailure::plain(e)))?;
        assoc
            .inner_stream()
            .set_nodelay(true)
            .map_err(|e| proto(e.into()))?;
        transfer(assoc, name.clone(), timeout, &outgoing, on_ack, &proto).await
    }
}

/// Sends `outgoing` on an established association (TCP or TLS), then releases it.
async fn transfer<S>(
    mut assoc: AsyncClientAssociation<S>,
    name: String,
    timeout: Duration,
    outgoing: &[Outgoing],
    on_ack: &mut (dyn FnMut(&str) + Send),
    proto: &impl Fn(ProtocolFailure) -> ForwardError,
) -> Result<usize, ForwardError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let accepted: Vec<(u8, String, String)> = assoc
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
    let mut sent = 0;
    let mut refused: Vec<Refusal> = Vec::new();
    for (i, o) in outgoing.iter().enumerate() {
        let Some((pc_id, _, _)) = accepted
            .iter()
            .find(|(_, a, t)| a == &o.sop_class && t == &o.transfer_syntax)
        else {
            let _ = assoc.abort().await;
            return Err(ForwardError::Refused {
                destination: name,
                sop_class: o.sop_class.clone(),
                transfer_syntax: o.transfer_syntax.clone(),
            });
        };
        let message_id = (i % 0xFFFF) as u16 + 1;
        let one = store_one(&mut assoc, *pc_id, message_id, o, proto);
        let rsp = match tokio::time::timeout(timeout, one).await {
            Ok(Ok(rsp)) => rsp,
            Ok(Err(e)) => {
                let _ = assoc.abort().await;
                return Err(e);
            }
            Err(_) => {
                let _ = assoc.abort().await;
                return Err(ForwardError::Timeout {
                    destination: name,
                    seconds: timeout.as_secs(),
                });
            }
        };
        match rsp.status {
            dimse::SUCCESS | 0xB000 | 0xB006 | 0xB007 => {
                sent += 1;
                on_ack(&o.sop_instance);
            }
            status => {
                let comment = if rsp.error_comment.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", rsp.error_comment)
                };
                if stops_association(status) {
                    let _ = assoc.abort().await;
                    return Err(ForwardError::Status {
                        destination: name,
                        status,
                        sop_instance: o.sop_instance.clone(),
                        comment,
                    });
                }
                crate::events::InstanceRefused {
                    destination: &name,
                    sop_instance: &o.sop_instance,
                    status,
                    comment: &rsp.error_comment,
                }
                .emit();
                refused.push(Refusal {
                    sop_instance: o.sop_instance.clone(),
                    status,
                    comment,
                });
            }
        }
    }
    let _ = assoc.release().await;
    if refused.is_empty() {
        Ok(sent)
    } else {
        Err(ForwardError::Instances {
            destination: name,
            total: outgoing.len(),
            list: describe_refusals(&refused),
            refused,
        })
    }
}

/// "1.2.3 (status 0xC000 (comment)), ..." for at most five refusals.
fn describe_refusals(refused: &[Refusal]) -> String {
    let mut parts: Vec<String> = refused
        .iter()
        .take(5)
        .map(|r| {
            format!(
                "SOP instance {} (status 0x{:04X}{})",
                r.sop_instance, r.status, r.comment
            )
        })
        .collect();
    if refused.len() > 5 {
        parts.push(format!("and {} more", refused.len() - 5));
    }
    parts.join(", ")
}

/// Sends one instance (command and dataset) and waits for its response.
async fn store_one<S>(
    assoc: &mut AsyncClientAssociation<S>,
    pc_id: u8,
    message_id: u16,
    o: &Outgoing,
    proto: &impl Fn(ProtocolFailure) -> ForwardError,
) -> Result<dimse::Command, ForwardError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let bytes = tokio::fs::read(&o.path)
        .await
        .map_err(|source| ForwardError::File {
            path: o.path.clone(),
            source,
        })?;
    let dataset = bytes
        .get(o.dataset_offset..)
        .ok_or_else(|| ForwardError::Truncated {
            path: o.path.clone(),
        })?;
    let cmd =
        dimse::store_rq(message_id, &o.sop_class, &o.sop_instance).map_err(|e| proto(e.into()))?;
    assoc
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: cmd,
            }],
        })
        .await
        .map_err(|e| proto(e.into()))?;
    {
        let mut w = assoc.send_pdata(pc_id);
        w.write_all(dataset).await.map_err(|e| proto(e.into()))?;
        w.finish().await.map_err(|e| proto(e.into()))?;
    }
    let rsp = receive_command(assoc).await.map_err(proto)?;
    // PS3.7 9.3.1.2: the response names the request's message ID, and its Affected SOP Instance
    // UID, when present, is the request's.
    if rsp.field != dimse::C_STORE_RSP
        || rsp.responded_id != message_id
        || !(rsp.sop_instance.is_empty() || rsp.sop_instance == o.sop_instance)
    {
        return Err(proto(ProtocolFailure::WrongResponse {
            field: rsp.field,
            responded: rsp.responded_id,
            sop_instance: rsp.sop_instance,
            message_id,
            expected: o.sop_instance.clone(),
        }));
    }
    Ok(rsp)
}

async fn receive_command<S>(
    assoc: &mut AsyncClientAssociation<S>,
) -> Result<dimse::Command, ProtocolFailure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let mut buf = Vec::new();
    loop {
        match assoc.receive().await? {
            Pdu::PData { data } => {
                for v in data {
                    if v.value_type == PDataValueType::Command {
                        // A peer that never ends its command set is refused before it fills
                        // memory (the per-instance timeout alone would let it send for seconds).
                        if buf.len().saturating_add(v.data.len()) > dimse::MAX_COMMAND_BYTES {
                            return Err(ProtocolFailure::CommandTooLarge {
                                limit: dimse::MAX_COMMAND_BYTES,
                            });
                        }
                        buf.extend_from_slice(&v.data);
                        if v.is_last {
                            return Ok(dimse::decode(&buf)?);
                        }
                    }
                }
            }
            Pdu::AbortRQ { source } => return Err(ProtocolFailure::Aborted(source)),
            Pdu::ReleaseRQ => return Err(ProtocolFailure::Released),
            other => return Err(ProtocolFailure::UnexpectedPdu(Box::new(other))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_wide_statuses_stop_the_association() {
        assert!(stops_association(dimse::OUT_OF_RESOURCES));
        assert!(stops_association(0xA701));
        assert!(stops_association(dimse::SOP_CLASS_NOT_SUPPORTED));
        assert!(!stops_association(dimse::CANNOT_UNDERSTAND));
        assert!(!stops_association(dimse::DATASET_MISMATCH));
    }

    #[test]
    fn refusals_name_their_instances() {
        let r: Vec<Refusal> = (0..7)
            .map(|i| Refusal {
                sop_instance: format!("1.2.{i}"),
                status: 0xC000,
                comment: " (bad)".into(),
            })
            .collect();
        let text = describe_refusals(&r);
        assert!(
            text.starts_with("SOP instance 1.2.0 (status 0xC000 (bad))"),
            "{text}"
        );
        assert!(text.ends_with("and 2 more"), "{text}");
        let e = ForwardError::Instances {
            destination: "pacs".into(),
            total: 9,
            list: describe_refusals(&r[..1]),
            refused: r[..1].to_vec(),
        };
        assert_eq!(
            e.to_string(),
            "destination pacs refused 1 of 9 instance(s): SOP instance 1.2.0 (status 0xC000 (bad))"
        );
    }
}
