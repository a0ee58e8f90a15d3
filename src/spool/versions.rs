//! Version folders of the spool: the hand-over of a complete series ([`Spool::freeze`]), the
//! processing markers, retirement once delivered, keeping and pruning delivered versions, quarantine
//! and start-up recovery. See the durability argument in `super`.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;

impl Spool {
    /// Version folders of a series in the spool, by version.
    fn spool_versions(incoming: &Path) -> Vec<(u32, PathBuf)> {
        let mut v: Vec<(u32, PathBuf)> = fs::read_dir(incoming)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| Some((version_of(&e.file_name().to_string_lossy())?, e.path())))
            .collect();
        v.sort();
        v
    }

    /// Kept (delivered) version folders of a series, by version.
    fn kept_versions(&self, study_uid: &str, series_uid: &str) -> Vec<(u32, PathBuf)> {
        let dir = self.kept.join(study_uid).join(series_uid);
        let mut v: Vec<(u32, PathBuf)> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((kept_name(&e.file_name().to_string_lossy())?.0, e.path())))
            .collect();
        v.sort();
        v
    }

    /// Hands a series over to processing: its incoming instances move into a new version folder
    /// (numbered at least `min_version`, above every version of the series still on disk). With
    /// `carry_over`, the instances of the latest earlier version (still in the spool, or kept after
    /// delivery) are linked in too, so that a version made for late instances is the whole series.
    /// `None` when the incoming folder holds no instance.
    pub fn freeze(
        &self,
        study_uid: &str,
        series_uid: &str,
        min_version: u32,
        calling_ae: &str,
        called_ae: &str,
        carry_over: bool,
    ) -> Result<Option<SpooledVersion>, SpoolError> {
        let incoming = self.series_dir(study_uid, series_uid)?;
        let _g = self.guard();
        let files = dcm_files(&incoming)?;
        if files.is_empty() {
            return Ok(None);
        }
        let in_spool = Self::spool_versions(&incoming);
        let kept = self.kept_versions(study_uid, series_uid);
        let on_disk = in_spool
            .iter()
            .chain(kept.iter())
            .map(|(v, _)| v + 1)
            .max()
            .unwrap_or(1);
        let version = min_version.max(on_disk).max(1);
        let tmp = incoming.join(format!(".v{version}.tmp"));
        if tmp.exists() {
            self.undo_handover(&incoming, &tmp)?;
        }
        let inst = tmp.join(series_uid);
        fs::create_dir_all(&inst).map_err(io(&inst))?;
        for f in &files {
            let Some(name) = f.file_name() else { continue };
            let to = inst.join(name);
            match fs::rename(f, &to) {
                Ok(()) => {}
                // Removed meanwhile (a re-sent copy dropped by the series stage).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&to)(e)),
            }
        }
        let mut previous = None;
        if carry_over {
            let earlier = in_spool
                .iter()
                .chain(kept.iter())
                .filter(|(v, _)| *v < version)
                .max_by_key(|(v, _)| *v);
            if let Some((v, dir)) = earlier {
                for f in dcm_files(&dir.join(series_uid))? {
                    let Some(name) = f.file_name() else { continue };
                    let to = inst.join(name);
                    if !to.exists() {
                        link_or_copy(&f, &to)?;
                    }
                }
                previous = Some(*v);
            }
        }
        let info = VersionInfo {
            study_uid: study_uid.to_string(),
            series_uid: series_uid.to_string(),
            version,
            calling_ae: calling_ae.to_string(),
            called_ae: called_ae.to_string(),
            previous,
        };
        let text = toml::to_string(&info).map_err(|source| SpoolError::VersionEncode {
            path: tmp.clone(),
            source,
        })?;
        write_durably(&tmp.join(VERSION_FILE), &text)?;
        sync_dir(&inst).map_err(io(&inst))?;
        sync_dir(&incoming).map_err(io(&incoming))?;
        let dir = incoming.join(format!("v{version}"));
        fs::rename(&tmp, &dir).map_err(io(&dir))?;
        sync_dir(&incoming).map_err(io(&incoming))?;
        let sops = dcm_files(&dir.join(series_uid))?
            .iter()
            .map(|p| sop_of(p))
            .collect();
        Ok(Some(SpooledVersion {
            info,
            dir,
            sops,
            processed: false,
            crashes: 0,
        }))
    }

    /// Moves the instances of an interrupted hand-over back to the incoming folder.
    fn undo_handover(&self, incoming: &Path, tmp: &Path) -> Result<(), SpoolError> {
        for sub in fs::read_dir(tmp).map_err(io(tmp))?.flatten() {
            if !sub.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for f in dcm_files(&sub.path())? {
                let Some(name) = f.file_name() else { continue };
                let to = incoming.join(name);
                if to.exists() {
                    fs::remove_file(&f).map_err(io(&f))?;
                } else {
                    fs::rename(&f, &to).map_err(io(&to))?;
                }
            }
        }
        sync_dir(incoming).map_err(io(incoming))?;
        fs::remove_dir_all(tmp).map_err(io(tmp))
    }

    /// Reads a version folder (`.version`, instances, markers).
    fn read_version(dir: &Path, study_uid: &str, series_uid: &str, version: u32) -> SpooledVersion {
        let info = fs::read_to_string(dir.join(VERSION_FILE))
            .ok()
            .and_then(|t| toml::from_str::<VersionInfo>(&t).ok())
            .filter(|i| i.study_uid == study_uid && i.series_uid == series_uid)
            .unwrap_or_else(|| VersionInfo {
                study_uid: study_uid.to_string(),
                series_uid: series_uid.to_string(),
                version,
                calling_ae: String::new(),
                called_ae: String::new(),
                previous: None,
            });
        let sops = dcm_files(&dir.join(series_uid))
            .unwrap_or_default()
            .iter()
            .map(|p| sop_of(p))
            .collect();
        SpooledVersion {
            info,
            dir: dir.to_owned(),
            sops,
            processed: dir.join(PROCESSED_MARKER).exists(),
            crashes: crash_count(dir),
        }
    }

    /// Writes the crash marker before a version is processed: returns how many times its
    /// processing has now started without finishing (1 on a first attempt).
    pub fn mark_processing(&self, dir: &Path) -> Result<u32, SpoolError> {
        let n = crash_count(dir) + 1;
        write_durably(&dir.join(PROCESSING_MARKER), &format!("{n}\n"))?;
        Ok(n)
    }

    /// Removes the crash marker once processing finished (whatever its outcome).
    pub fn clear_processing(&self, dir: &Path) {
        if fs::remove_file(dir.join(PROCESSING_MARKER)).is_ok() {
            let _ = sync_dir(dir);
        }
    }

    /// Marks a version whose jobs are durably in the outbox.
    pub fn mark_processed(&self, dir: &Path, jobs: &[String]) -> Result<(), SpoolError> {
        write_durably(&dir.join(PROCESSED_MARKER), &jobs.join("\n"))
    }

    /// `dir` as (study, series, version) when it is a version folder of this spool.
    fn parse_version_dir(&self, dir: &Path) -> Option<(String, String, u32)> {
        let rel = dir.strip_prefix(&self.root).ok()?;
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().to_string())
            .collect();
        match parts.as_slice() {
            [study, series, v] if is_valid_uid(study) && is_valid_uid(series) => {
                Some((study.clone(), series.clone(), version_of(v)?))
            }
            _ => None,
        }
    }

    /// Removes the series and study folders of a version folder when they are empty.
    fn prune_parents(dir: &Path) {
        if let Some(series) = dir.parent() {
            if fs::remove_dir(series).is_ok() {
                if let Some(study) = series.parent() {
                    let _ = fs::remove_dir(study); // only succeeds when empty
                }
            }
        }
    }

    /// Retires a delivered version: it leaves the spool (kept for `series.keep_delivered_seconds`
    /// so that late instances can make a whole new version, then deleted). Only version folders are
    /// ever removed: an incoming folder never is.
    pub fn remove_series(&self, dir: &Path) -> Result<(), SpoolError> {
        self.retire(dir, !self.keep.is_zero())
    }

    /// Deletes a version nothing is to be delivered from (plan "drop", no destination).
    pub fn discard(&self, dir: &Path) -> Result<(), SpoolError> {
        self.retire(dir, false)
    }

    fn retire(&self, dir: &Path, keep: bool) -> Result<(), SpoolError> {
        let Some((study, series, version)) = self.parse_version_dir(dir) else {
            crate::events::SpoolCleanupSkipped { path: dir }.emit();
            return Ok(());
        };
        {
            let _g = self.guard();
            if dir.exists() {
                let mut kept = false;
                if keep {
                    let kdir = self.kept.join(&study).join(&series);
                    if fs::create_dir_all(&kdir).is_ok() {
                        for (_, old) in self.kept_versions(&study, &series) {
                            let _ = fs::remove_dir_all(old);
                        }
                        let _ = fs::remove_file(dir.join(PROCESSING_MARKER));
                        kept =
                            fs::rename(dir, kdir.join(format!("v{version}-{}", now_ms()))).is_ok();
                    }
                }
                if !kept {
                    fs::remove_dir_all(dir).map_err(io(dir))?;
                }
            }
            Self::prune_parents(dir);
        }
        self.prune_kept(false);
        Ok(())
    }

    /// Deletes kept versions older than the keep time (all of them with `all`); returns how many.
    pub fn prune_kept(&self, all: bool) -> usize {
        let _g = self.guard();
        let now = now_ms();
        let keep_ms = self.keep.as_millis() as u64;
        let mut n = 0;
        for study in fs::read_dir(&self.kept).into_iter().flatten().flatten() {
            for series in fs::read_dir(study.path()).into_iter().flatten().flatten() {
                for v in fs::read_dir(series.path()).into_iter().flatten().flatten() {
                    let old = kept_name(&v.file_name().to_string_lossy())
                        .is_none_or(|(_, ms)| now.saturating_sub(ms) >= keep_ms);
                    if (all || old) && fs::remove_dir_all(v.path()).is_ok() {
                        n += 1;
                    }
                }
                let _ = fs::remove_dir(series.path());
            }
            let _ = fs::remove_dir(study.path());
        }
        n
    }

    /// Moves a version folder into `quarantine_root/name` with its reason (`reason.txt`): a rename,
    /// or across file systems a copy, fsynced, before the source is removed. On failure the folder
    /// stays in the spool.
    pub fn quarantine(
        &self,
        dir: &Path,
        quarantine_root: &Path,
        name: &str,
        reason: &str,
    ) -> Result<PathBuf, SpoolError> {
        let _g = self.guard();
        write_durably(&dir.join("reason.txt"), &format!("{reason}\n"))?;
        fs::create_dir_all(quarantine_root).map_err(io(quarantine_root))?;
        let target = quarantine_root.join(name);
        match fs::rename(dir, &target) {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(18)
                    || e.kind() == std::io::ErrorKind::CrossesDevices =>
            {
                let part = quarantine_root.join(format!(".{name}.partial"));
                if part.exists() {
                    fs::remove_dir_all(&part).map_err(io(&part))?;
                }
                copy_tree(dir, &part)?;
                fs::rename(&part, &target).map_err(io(&target))?;
                sync_dir(quarantine_root).map_err(io(quarantine_root))?;
                fs::remove_dir_all(dir).map_err(io(dir))?;
            }
            Err(e) => return Err(io(&target)(e)),
        }
        let _ = sync_dir(quarantine_root);
        if let Some(parent) = dir.parent() {
            let _ = sync_dir(parent);
        }
        Self::prune_parents(dir);
        Ok(target)
    }

    /// Every series folder in the spool, with its versions; interrupted hand-overs are undone first.
    pub fn recover(&self) -> Result<Vec<SpooledSeries>, SpoolError> {
        let _g = self.guard();
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
                let mut versions = Vec::new();
                for e in fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    if !e.file_type().is_ok_and(|t| t.is_dir()) {
                        continue;
                    }
                    if name.starts_with(".v") && name.ends_with(".tmp") {
                        self.undo_handover(&dir, &e.path())?;
                    } else if let Some(v) = version_of(&name) {
                        versions.push(Self::read_version(&e.path(), &study_uid, &series_uid, v));
                    }
                }
                versions.sort_by_key(|v| v.info.version);
                // A marker of the layout before version folders: its instances are incoming again.
                let _ = fs::remove_file(dir.join(PROCESSED_MARKER));
                out.push(SpooledSeries {
                    study_uid: study_uid.clone(),
                    series_uid,
                    instances: dcm_files(&dir)?.len(),
                    dir,
                    versions,
                });
            }
        }
        out.sort_by(|a, b| a.dir.cmp(&b.dir));
        Ok(out)
    }

    /// The delivered versions still kept (the last one of each series).
    pub fn kept(&self) -> Vec<SpooledVersion> {
        let _g = self.guard();
        let mut out = Vec::new();
        for study in fs::read_dir(&self.kept).into_iter().flatten().flatten() {
            let study_uid = study.file_name().to_string_lossy().to_string();
            for series in fs::read_dir(study.path()).into_iter().flatten().flatten() {
                let series_uid = series.file_name().to_string_lossy().to_string();
                if !is_valid_uid(&study_uid) || !is_valid_uid(&series_uid) {
                    continue;
                }
                for v in fs::read_dir(series.path()).into_iter().flatten().flatten() {
                    if let Some((n, _)) = kept_name(&v.file_name().to_string_lossy()) {
                        out.push(Self::read_version(&v.path(), &study_uid, &series_uid, n));
                    }
                }
            }
        }
        out.sort_by_key(|v| v.info.version);
        out
    }
}

/// The crash counter of a version folder (0 without marker).
pub fn crash_count(dir: &Path) -> u32 {
    fs::read_to_string(dir.join(PROCESSING_MARKER))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// The calling AE title recorded in a spooled file's meta group, read without parsing the dataset
/// (recovery must not parse what may have crashed the daemon).
pub fn source_ae_title(path: &Path) -> Option<String> {
    let mut f = std::io::BufReader::new(fs::File::open(path).ok()?);
    let mut preamble = [0u8; 128];
    std::io::Read::read_exact(&mut f, &mut preamble).ok()?;
    let meta = dicom_object::meta::FileMetaTable::from_reader(f).ok()?;
    meta.source_application_entity_title
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
}
