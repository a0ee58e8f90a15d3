//! Spool stage: every received instance is durably on disk before its C-STORE success is sent
//! (write to a temporary file, fsync, rename, fsync the folder). Layout under `<state>/spool/`:
//! `<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`, plus `.processed` in a series folder
//! once its outbound jobs are durably written. UIDs are validated before they become path names, so a
//! crafted UID cannot escape the spool. At start-up [`Spool::recover`] lists every series still there.

use dicom_object::FileMetaTableBuilder;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::derive::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};

/// Errors storing or scanning instances.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("invalid {what} {uid:?}: a UID is 1 to 64 digits and dots")]
    InvalidUid { what: &'static str, uid: String },
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write file meta for {uid}: {reason}")]
    Meta { uid: String, reason: String },
    #[error("spool {path} has {free_mib} MiB free, under the configured {min_mib} MiB")]
    DiskFull {
        path: PathBuf,
        free_mib: u64,
        min_mib: u64,
    },
}

/// True for a syntactically valid UID (PS3.5 9.1): 1 to 64 characters, digits and dots, no empty
/// component. Such a string can never be `..`, absolute, or contain a path separator.
pub fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && uid.split('.').all(|c| !c.is_empty())
}

fn check_uid(what: &'static str, uid: &str) -> Result<(), SpoolError> {
    if is_valid_uid(uid) {
        Ok(())
    } else {
        Err(SpoolError::InvalidUid {
            what,
            uid: uid.chars().take(80).collect(),
        })
    }
}

/// Identifies one received instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceKey {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax: String,
}

/// A series folder found in the spool at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledSeries {
    pub study_uid: String,
    pub series_uid: String,
    pub dir: PathBuf,
    pub instances: usize,
    /// Its outbound jobs were written before the stop.
    pub processed: bool,
}

/// Makes temporary file names unique within the process (two associations may store the same
/// instance at the same moment).
static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn tmp_name(sop_instance_uid: &str) -> String {
    let n = TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{sop_instance_uid}.{}.{n}", std::process::id())
}

/// Name of the marker written once a series' outbound jobs are durable.
pub const PROCESSED_MARKER: &str = ".processed";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// fsyncs a folder so that a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// The durable instance store.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    tmp: PathBuf,
    min_free_mib: u64,
}

impl Spool {
    /// Opens (creating) `<state>/spool`, removing temporary files of an interrupted write.
    pub fn open(state_dir: &Path, min_free_mib: u64) -> Result<Self, SpoolError> {
        let root = state_dir.join("spool");
        let tmp = root.join(".tmp");
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        for e in fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        Ok(Self {
            root,
            tmp,
            min_free_mib,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Free space of the spool's file system in MiB.
    pub fn free_mib(&self) -> Result<u64, SpoolError> {
        fs4::available_space(&self.root)
            .map(|b| b / (1024 * 1024))
            .map_err(io(&self.root))
    }

    /// Fails with [`SpoolError::DiskFull`] when free space is under the watermark.
    pub fn check_space(&self) -> Result<(), SpoolError> {
        let free_mib = self.free_mib()?;
        if free_mib < self.min_free_mib {
            return Err(SpoolError::DiskFull {
                path: self.root.clone(),
                free_mib,
                min_mib: self.min_free_mib,
            });
        }
        Ok(())
    }

    /// Folder of one series (UIDs validated).
    pub fn series_dir(&self, study_uid: &str, series_uid: &str) -> Result<PathBuf, SpoolError> {
        check_uid("StudyInstanceUID", study_uid)?;
        check_uid("SeriesInstanceUID", series_uid)?;
        Ok(self.root.join(study_uid).join(series_uid))
    }

    /// Stores one instance received over the network: a Part 10 file made of our file meta and the
    /// dataset bytes exactly as received (in `key.transfer_syntax`). Returns the final path once the
    /// file and its folder entry are on disk.
    pub fn store(
        &self,
        key: &InstanceKey,
        calling_ae: &str,
        dataset: &[u8],
    ) -> Result<PathBuf, SpoolError> {
        check_uid("SOPInstanceUID", &key.sop_instance_uid)?;
        check_uid("SOPClassUID", &key.sop_class_uid)?;
        check_uid("TransferSyntaxUID", &key.transfer_syntax)?;
        let dir = self.series_dir(&key.study_uid, &key.series_uid)?;
        self.check_space()?;
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(key.sop_class_uid.as_str())
            .media_storage_sop_instance_uid(key.sop_instance_uid.as_str())
            .transfer_syntax(key.transfer_syntax.as_str())
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
            .source_application_entity_title(calling_ae.trim())
            .build()
            .map_err(|e| SpoolError::Meta {
                uid: key.sop_instance_uid.clone(),
                reason: e.to_string(),
            })?;
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(&[0u8; 128]);
        head.extend_from_slice(b"DICM");
        meta.write(&mut head).map_err(|e| SpoolError::Meta {
            uid: key.sop_instance_uid.clone(),
            reason: e.to_string(),
        })?;
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = self.tmp.join(tmp_name(&key.sop_instance_uid));
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&head).map_err(io(&tmp))?;
        f.write_all(dataset).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        let path = dir.join(format!("{}.dcm", key.sop_instance_uid));
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&dir).map_err(io(&dir))?;
        Ok(path)
    }

    /// Moves a file into the spool (watched folder): same file system rename, else copy + fsync + remove.
    pub fn adopt(&self, key: &InstanceKey, from: &Path) -> Result<PathBuf, SpoolError> {
        check_uid("SOPInstanceUID", &key.sop_instance_uid)?;
        let dir = self.series_dir(&key.study_uid, &key.series_uid)?;
        self.check_space()?;
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{}.dcm", key.sop_instance_uid));
        if fs::rename(from, &path).is_err() {
            let tmp = self.tmp.join(tmp_name(&key.sop_instance_uid));
            fs::copy(from, &tmp).map_err(io(&tmp))?;
            fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io(&tmp))?;
            fs::rename(&tmp, &path).map_err(io(&path))?;
            sync_dir(&dir).map_err(io(&dir))?;
            fs::remove_file(from).map_err(io(from))?;
        } else {
            sync_dir(&dir).map_err(io(&dir))?;
        }
        Ok(path)
    }

    /// Marks a series whose jobs are durably in the outbox.
    pub fn mark_processed(&self, dir: &Path, jobs: &[String]) -> Result<(), SpoolError> {
        let p = dir.join(PROCESSED_MARKER);
        let tmp = dir.join(".processed.tmp");
        fs::write(&tmp, jobs.join("\n")).map_err(io(&tmp))?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(&tmp))?;
        fs::rename(&tmp, &p).map_err(io(&p))?;
        sync_dir(dir).map_err(io(dir))
    }

    /// Deletes a delivered series and prunes its study folder when empty.
    pub fn remove_series(&self, dir: &Path) -> Result<(), SpoolError> {
        if !dir.starts_with(&self.root) {
            return Ok(());
        }
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(io(dir))?;
        }
        if let Some(study) = dir.parent() {
            let _ = fs::remove_dir(study); // only succeeds when empty
        }
        Ok(())
    }

    /// Every series folder in the spool.
    pub fn recover(&self) -> Result<Vec<SpooledSeries>, SpoolError> {
        let mut out = Vec::new();
        for study in fs::read_dir(&self.root).map_err(io(&self.root))?.flatten() {
            let study_uid = study.file_name().to_string_lossy().to_string();
            if !is_valid_uid(&study_uid) || !study.path().is_dir() {
                continue;
            }
            for series in fs::read_dir(study.path())
                .map_err(io(&study.path()))?
                .flatten()
            {
                let series_uid = series.file_name().to_string_lossy().to_string();
                let dir = series.path();
                if !is_valid_uid(&series_uid) || !dir.is_dir() {
                    continue;
                }
                let instances = fs::read_dir(&dir)
                    .map_err(io(&dir))?
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "dcm"))
                    .count();
                out.push(SpooledSeries {
                    study_uid: study_uid.clone(),
                    series_uid,
                    processed: dir.join(PROCESSED_MARKER).exists(),
                    dir,
                    instances,
                });
            }
        }
        out.sort_by(|a, b| a.dir.cmp(&b.dir));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_uids_cannot_escape() {
        for bad in [
            "",
            "..",
            "../../etc",
            "/etc/passwd",
            "1..2",
            ".1",
            "1.",
            "1/2",
            &"1".repeat(65),
            "1.2\0",
        ] {
            assert!(!is_valid_uid(bad), "{bad:?}");
        }
        assert!(is_valid_uid("1.2.840.10008.5.1.4.1.1.2"));
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 0).unwrap();
        assert!(s.series_dir("1.2", "../x").is_err());
        let key = InstanceKey {
            study_uid: "1.2".into(),
            series_uid: "1.2.3".into(),
            sop_instance_uid: "/abs".into(),
            sop_class_uid: "1.2".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
        };
        assert!(matches!(
            s.store(&key, "X", b""),
            Err(SpoolError::InvalidUid { .. })
        ));
    }

    #[test]
    fn store_then_recover() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 0).unwrap();
        let key = InstanceKey {
            study_uid: "1.2".into(),
            series_uid: "1.2.3".into(),
            sop_instance_uid: "1.2.3.4".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
        };
        let p = s.store(&key, "MOD", b"").unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[128..132], b"DICM");
        let r = s.recover().unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].instances, 1);
        assert!(!r[0].processed);
        s.mark_processed(&r[0].dir, &["a".into()]).unwrap();
        assert!(s.recover().unwrap()[0].processed);
        s.remove_series(&r[0].dir).unwrap();
        assert!(s.recover().unwrap().is_empty());
    }

    #[test]
    fn watermark_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), u64::MAX).unwrap();
        assert!(matches!(s.check_space(), Err(SpoolError::DiskFull { .. })));
    }
}
