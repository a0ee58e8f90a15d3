//! Audit trail (issue 14): one structured record per association, per series processed and per
//! delivery attempt, in the spirit of IHE ATNA (who sent what to whom, when). Records are `tracing`
//! events of target `audit` at INFO with a stable `event` name and stable fields (the schema is in
//! the README, "Audit trail"); journald stores them as fields (`EVENT=audit_association`...), and
//! `CT_HARMONIZER_LOG_FORMAT=json` writes them as JSON lines on stderr. They name AE titles,
//! addresses, certificate subjects, UIDs, models, rules and destinations, never patient names or IDs.
//!
//! Association records are gathered per connection: [`association`] runs a connection's future with
//! a task-local record that the SCP fills in ([`request`], [`tls_subject`], [`rejected`],
//! [`instance_stored`]) and that is written once when the connection ends, on every path (released,
//! aborted, rejected, timed out, or the task dropped at shutdown).

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;
use tracing::info;

/// Version of the audit schema (a field of every record). Fields are only ever added; a renamed or
/// removed field or event bumps it.
pub const SCHEMA: u32 = 1;

/// What the SCP learns about one connection.
#[derive(Debug)]
struct AssociationRecord {
    peer: SocketAddr,
    tls: bool,
    tls_subject: String,
    calling_ae: String,
    called_ae: String,
    reason: Option<String>,
    instances: u64,
    bytes: u64,
    started: Instant,
}

impl Drop for AssociationRecord {
    fn drop(&mut self) {
        let outcome = if self.reason.is_some() {
            "rejected"
        } else {
            "accepted"
        };
        info!(
            target: "audit",
            event = "audit_association",
            audit_schema = SCHEMA,
            calling_ae = %self.calling_ae,
            called_ae = %self.called_ae,
            peer = %self.peer,
            tls = self.tls,
            tls_subject = %self.tls_subject,
            outcome,
            reason = self.reason.as_deref().unwrap_or(""),
            instances = self.instances,
            bytes = self.bytes,
            seconds = self.started.elapsed().as_secs_f64(),
            "association {outcome}"
        );
    }
}

tokio::task_local! {
    static ASSOCIATION: RefCell<AssociationRecord>;
}

/// Runs one inbound connection from `peer` (`tls`: over DICOM TLS) with its audit record; the record
/// is written when the future ends or is dropped.
pub async fn association<F: Future>(peer: SocketAddr, tls: bool, f: F) -> F::Output {
    let record = AssociationRecord {
        peer,
        tls,
        tls_subject: String::new(),
        calling_ae: String::new(),
        called_ae: String::new(),
        reason: None,
        instances: 0,
        bytes: 0,
        started: Instant::now(),
    };
    ASSOCIATION.scope(RefCell::new(record), f).await
}

fn with_record(f: impl FnOnce(&mut AssociationRecord)) {
    let _ = ASSOCIATION.try_with(|r| {
        if let Ok(mut r) = r.try_borrow_mut() {
            f(&mut r);
        }
    });
}

/// The AE titles of the A-ASSOCIATE-RQ.
pub fn request(calling_ae: &str, called_ae: &str) {
    with_record(|r| {
        r.calling_ae = calling_ae.trim().to_string();
        r.called_ae = called_ae.trim().to_string();
    });
}

/// The client certificate's subject (RFC 4514), when the peer presented one.
pub fn tls_subject(subject: Option<&str>) {
    with_record(|r| r.tls_subject = subject.unwrap_or_default().to_string());
}

/// The connection was refused (the first reason is kept).
pub fn rejected(reason: &str) {
    with_record(|r| {
        if r.reason.is_none() {
            r.reason = Some(reason.to_string());
        }
    });
}

/// One instance was acknowledged with success, `bytes` its data set's size as received.
pub fn instance_stored(bytes: usize) {
    with_record(|r| {
        r.instances += 1;
        r.bytes += bytes as u64;
    });
}

/// What processing made of a series.
#[derive(Debug, Default, Clone)]
pub struct SeriesRecord {
    pub study_uid: String,
    pub series_uid: String,
    pub version: u32,
    pub calling_ae: String,
    pub called_ae: String,
    pub instances: usize,
    pub rule: String,
    pub plan: String,
    /// The derived series' UID (empty when none was written).
    pub derived_series_uid: String,
    /// Model names in the order they ran, comma-separated.
    pub model: String,
    /// Their versions, in the same order.
    pub model_version: String,
    /// Outbound jobs written.
    pub jobs: usize,
    /// `harmonized`, `passed`, `dropped`, `originals_forwarded` (not harmonized, its originals
    /// forwarded) or `failed` (quarantined).
    pub outcome: &'static str,
    /// Why it failed or was not harmonized; empty otherwise.
    pub reason: String,
}

impl SeriesRecord {
    /// Adds one model run (name and version) that produced `derived_series_uid`.
    pub fn model_run(&mut self, name: &str, version: &str, derived_series_uid: &str) {
        for (list, v) in [(&mut self.model, name), (&mut self.model_version, version)] {
            if !list.is_empty() {
                list.push(',');
            }
            list.push_str(v);
        }
        self.derived_series_uid = derived_series_uid.to_string();
    }

    /// Writes the record.
    pub fn emit(&self) {
        let (outcome, reason) = (self.outcome, self.reason.as_str());
        info!(
            target: "audit",
            event = "audit_series",
            audit_schema = SCHEMA,
            study_uid = %self.study_uid,
            series_uid = %self.series_uid,
            version = self.version,
            calling_ae = %self.calling_ae,
            called_ae = %self.called_ae,
            instances = self.instances,
            rule = %self.rule,
            plan = %self.plan,
            derived_series_uid = %self.derived_series_uid,
            model = %self.model,
            model_version = %self.model_version,
            jobs = self.jobs,
            outcome,
            reason,
            "series {outcome}"
        );
    }
}

/// One delivery attempt.
#[derive(Debug, Clone)]
pub struct ForwardRecord<'a> {
    pub job: &'a str,
    pub destination: &'a str,
    /// The destination's AE title (empty for a folder).
    pub destination_ae: &'a str,
    /// `host:port`, or the folder of a folder destination.
    pub destination_address: String,
    /// `derived` or `original`.
    pub kind: &'a str,
    pub study_uid: &'a str,
    pub source_series_uid: &'a str,
    /// The series sent (the derived series' UID for a derived payload).
    pub series_uid: String,
    /// Instances acknowledged by the destination (all of them when delivered).
    pub instances: usize,
    pub attempt: u32,
    pub seconds: f64,
}

impl ForwardRecord<'_> {
    /// Writes the record. `status`: `delivered`, `retry` or `dead`.
    pub fn emit(&self, status: &str, reason: &str) {
        info!(
            target: "audit",
            event = "audit_forward",
            audit_schema = SCHEMA,
            job = %self.job,
            destination = %self.destination,
            destination_ae = %self.destination_ae,
            destination_address = %self.destination_address,
            kind = %self.kind,
            study_uid = %self.study_uid,
            source_series_uid = %self.source_series_uid,
            series_uid = %self.series_uid,
            instances = self.instances,
            attempt = self.attempt,
            seconds = self.seconds,
            status,
            reason,
            "forward {status}"
        );
    }
}

/// The UID of the series a payload folder holds: derived series and spooled originals are both
/// written to a folder named after their Series Instance UID.
pub fn payload_series_uid(dir: &std::path::Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn association_record_collects_within_its_scope() {
        let peer: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        association(peer, false, async {
            request("CT1 ", "US");
            instance_stored(10);
            instance_stored(5);
            ASSOCIATION.with(|r| {
                let r = r.borrow();
                assert_eq!((r.calling_ae.as_str(), r.called_ae.as_str()), ("CT1", "US"));
                assert_eq!((r.instances, r.bytes), (2, 15));
                assert!(r.reason.is_none());
            });
            rejected("first");
            rejected("second");
            ASSOCIATION.with(|r| assert_eq!(r.borrow().reason.as_deref(), Some("first")));
        })
        .await;
        // Outside a connection: no record, no panic.
        instance_stored(1);
        rejected("none");
    }

    #[test]
    fn series_record_lists_models_in_order() {
        let mut r = SeriesRecord::default();
        r.model_run("a", "1.0.0", "1.2.3");
        r.model_run("b", "2.0.0", "1.2.4");
        assert_eq!(r.model, "a,b");
        assert_eq!(r.model_version, "1.0.0,2.0.0");
        assert_eq!(r.derived_series_uid, "1.2.4");
    }
}
