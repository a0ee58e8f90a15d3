//! Watched folder. Only regular files are taken; they are moved into the spool (never copied and
//! left behind); anything else goes to `<state>/quarantine/` with a `.reason.txt`.
//!
//! **When a file counts as arrived** (the writer's side of the contract, also in the README):
//! - *Atomic rename (recommended)*: write the file elsewhere on the same file system, or under a hidden
//!   name (starting with `.`, which we never look at), then `rename(2)` it to its final name. A file
//!   renamed into the folder is taken at once; if it does not parse to its end it is quarantined at once.
//! - *Written in place*: the file is taken once its size and modification time have not changed for
//!   `watch.stable_seconds` **and** it parses as DICOM to its end (an image's pixel data complete). A
//!   writer pausing longer than `stable_seconds` therefore does not get its half file adopted: a file
//!   that does not parse is left where it is and tried again every `stable_seconds`; only when it has
//!   stayed unchanged and unparseable for 10 × `stable_seconds` is it quarantined.
//!
//! **Hostile entries**: every entry is examined without following links (`lstat`, then `open` with
//! `O_NOFOLLOW | O_NONBLOCK` and `fstat` on the opened descriptor, so a swap between the two is caught).
//! Symbolic links (to files or folders, inside or outside the watched folder), FIFOs, sockets and
//! devices are quarantined themselves (renamed; a link is moved, never followed, its target never read
//! or touched). A FIFO is never opened for a blocking read, so nobody writing to it freezes nothing.
//! Files with more than one hard link (their content lives elsewhere too) and files larger than
//! `watch.max_file_mib` are quarantined without being parsed. All file-system work of a scan runs on
//! the blocking pool (`spawn_blocking`), never on the async runtime's workers.
//!
//! One file above ~600 lines because it is one cohesive thing: the watched folder's arrival rule
//! and its adoption into the spool (its tests are an eighth of it).

use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::dicom::header::header_from_object;
use crate::dicom::SliceHeader;
use crate::metrics::{Beat, Metrics};
use crate::series::Arrival;
use crate::spool::{InstanceKey, Spool};

/// A file that stays unparseable for this many times `stable_seconds` is quarantined.
pub const UNPARSEABLE_FACTOR: u32 = 10;
/// Sub-folders deeper than this under the watched folder are not scanned.
pub const MAX_DEPTH: usize = 16;

/// The watched-folder stage.
pub struct Watch {
    pub dir: PathBuf,
    pub stable: Duration,
    /// Largest file taken, in bytes (`watch.max_file_mib`).
    pub max_file_bytes: u64,
    pub quarantine: PathBuf,
    pub spool: Spool,
    pub called_ae: String,
    pub tx: mpsc::Sender<Arrival>,
    pub metrics: Arc<Metrics>,
    pub beat: Beat,
}

/// What a scan found, without following any link.
#[derive(Debug)]
enum Entry {
    /// A regular file (as `lstat` saw it): size and modification time.
    File {
        path: PathBuf,
        size: u64,
        mtime: (i64, i64),
    },
    /// Anything that is neither a regular file nor a folder: quarantined as it is.
    Special { path: PathBuf, kind: &'static str },
}

fn kind_of(ft: &fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_dir() {
        "folder"
    } else if ft.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

/// Lists the folder recursively; `DirEntry::file_type` does not follow links, so a link to a folder
/// is reported as a link and never entered.
fn scan(dir: &Path, depth: usize, out: &mut Vec<Entry>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if depth < MAX_DEPTH {
                scan(&p, depth + 1, out);
            }
        } else if ft.is_file() {
            // lstat: the entry itself.
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            out.push(Entry::File {
                path: p,
                size: m.len(),
                mtime: (m.mtime(), m.mtime_nsec()),
            });
        } else {
            out.push(Entry::Special {
                path: p,
                kind: kind_of(&ft),
            });
        }
    }
}

/// Moves `file` into quarantine with its reason, without following it: a link is moved (or, across
/// file systems, re-created) as a link; a FIFO, socket or device that cannot be renamed is removed
/// (there is nothing in it to keep); a regular file that cannot be renamed is copied through an
/// `O_NOFOLLOW` descriptor, then removed.
pub fn quarantine_file(quarantine: &Path, file: &Path, reason: &str) -> std::io::Result<PathBuf> {
    fs::create_dir_all(quarantine)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "file".into());
    let stamp = crate::util::clock::now_ms();
    let target = quarantine.join(format!("{stamp}-{name}"));
    let mut note = String::new();
    if fs::rename(file, &target).is_err() {
        let ft = fs::symlink_metadata(file)?.file_type();
        if ft.is_symlink() {
            let to = fs::read_link(file)?;
            std::os::unix::fs::symlink(&to, &target)?;
        } else if ft.is_file() {
            let mut src = open_nofollow(file)?;
            let mut dst = fs::File::create(&target)?;
            std::io::copy(&mut src, &mut dst)?;
            dst.sync_all()?;
        } else {
            note = format!(" ({} removed, not kept)", kind_of(&ft));
        }
        fs::remove_file(file)?;
    }
    fs::write(
        quarantine.join(format!("{stamp}-{name}.reason.txt")),
        format!("{}: {reason}{note}\n", file.display()),
    )?;
    Ok(target)
}

/// Opens without following a final symbolic link and without blocking on a FIFO.
fn open_nofollow(path: &Path) -> std::io::Result<fs::File> {
    use rustix::fs::OFlags;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC).bits() as i32)
        .open(path)
}

/// Why a file was not taken.
#[derive(Debug)]
enum Refusal {
    /// Never acceptable (quarantined at once).
    Bad(String),
    /// Not (yet) a complete DICOM file: tried again later.
    Incomplete(String),
    /// Gone or unreadable for now: nothing to do this time.
    Skip,
}

/// A parsed file, ready to be adopted.
struct Parsed {
    header: SliceHeader,
    calling: String,
    dev: u64,
    ino: u64,
    size: u64,
}

/// Opens `path` safely and parses it to its end.
fn examine(path: &Path, max_bytes: u64) -> Result<Parsed, Refusal> {
    let file = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Refusal::Skip),
        // ELOOP: the entry became a symbolic link after the scan.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(Refusal::Bad("not a regular file (symbolic link)".into()))
        }
        Err(e) => return Err(Refusal::Incomplete(format!("cannot open: {e}"))),
    };
    let meta = file
        .metadata()
        .map_err(|e| Refusal::Incomplete(format!("cannot stat: {e}")))?;
    if !meta.file_type().is_file() {
        return Err(Refusal::Bad(format!(
            "not a regular file ({})",
            kind_of(&meta.file_type())
        )));
    }
    if meta.nlink() > 1 {
        return Err(Refusal::Bad(format!(
            "has {} hard links (its content also lives elsewhere)",
            meta.nlink()
        )));
    }
    if meta.len() > max_bytes {
        return Err(Refusal::Bad(format!(
            "{} bytes exceed watch.max_file_mib = {} MiB",
            meta.len(),
            max_bytes / (1024 * 1024)
        )));
    }
    // The bounded pre-parser (nesting depth, declared lengths) before dicom-rs reads anything.
    let dup = file
        .try_clone()
        .map_err(|e| Refusal::Incomplete(format!("cannot read: {e}")))?;
    crate::dicom::guard::check_part10_open(dup, path, &crate::dicom::guard::current())
        .map_err(|e| Refusal::Incomplete(e.to_string()))?;
    // The duplicate shares the descriptor's offset: back to the start for the full parse.
    let mut file = file;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))
        .map_err(|e| Refusal::Incomplete(format!("cannot read: {e}")))?;
    // Never read more than the size we checked, whatever the file grows to meanwhile.
    let mut r = std::io::BufReader::new(file.take(max_bytes));
    let mut preamble = [0u8; 128];
    r.read_exact(&mut preamble)
        .map_err(|_| Refusal::Incomplete("shorter than a DICOM preamble".into()))?;
    let obj = dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Never)
        .from_reader(r)
        .map_err(|e| Refusal::Incomplete(format!("does not parse as DICOM to its end: {e}")))?;
    let header = header_from_object(&obj, path)
        .map_err(|e| Refusal::Incomplete(format!("incomplete DICOM header: {e}")))?;
    check_pixels(&obj, &header)?;
    let calling = obj
        .meta()
        .source_application_entity_title
        .clone()
        .unwrap_or_default()
        .trim_end_matches(['\0', ' '])
        .to_string();
    Ok(Parsed {
        header,
        calling,
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.len(),
    })
}

/// An image must carry its whole pixel data (a file cut at an element boundary parses, but is short).
fn check_pixels(obj: &dicom_object::DefaultDicomObject, h: &SliceHeader) -> Result<(), Refusal> {
    use dicom_dictionary_std::tags;
    let (Some(rows), Some(cols)) = (h.rows, h.columns) else {
        return Ok(());
    };
    let Ok(Some(px)) = obj.element_opt(tags::PIXEL_DATA) else {
        return Err(Refusal::Incomplete("image without pixel data".into()));
    };
    if let dicom_core::DicomValue::Primitive(v) = px.value() {
        let bits = obj
            .element_opt(tags::BITS_ALLOCATED)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u64>().ok())
            .unwrap_or(16);
        let need = u64::from(rows)
            * u64::from(cols)
            * u64::from(h.samples_per_pixel)
            * u64::from(h.number_of_frames.max(1))
            * bits
            / 8;
        let have = v.calculate_byte_len() as u64;
        if have < need {
            return Err(Refusal::Incomplete(format!(
                "pixel data has {have} of {need} bytes"
            )));
        }
    }
    Ok(())
}

/// What the scanner remembers of a regular file between scans.
#[derive(Debug, Clone, Copy)]
struct Seen {
    size: u64,
    mtime: (i64, i64),
    /// First scan with this size and time.
    since: Instant,
    /// First failed parse since the file last changed.
    unparseable_since: Option<Instant>,
    last_try: Option<Instant>,
}

/// The blocking half of the stage: owns its memory of the folder, moves between scans.
struct Scanner {
    dir: PathBuf,
    stable: Duration,
    max_file_bytes: u64,
    quarantine: PathBuf,
    spool: Spool,
    called_ae: String,
    metrics: Arc<Metrics>,
    beat: Beat,
    seen: HashMap<PathBuf, Seen>,
    renamed: HashSet<PathBuf>,
    /// Entries whose quarantine failed: left alone (and logged once) while they stay.
    stuck: HashSet<PathBuf>,
}

impl Scanner {
    /// Counts a rejected entry and moves it into quarantine with its reason.
    fn reject(&mut self, path: &Path, reason: &str) {
        match quarantine_file(&self.quarantine, path, reason) {
            Ok(q) => crate::events::FileQuarantined {
                path,
                quarantined: &q,
                reason,
            }
            .emit(&self.metrics),
            Err(qe) => {
                if self.stuck.insert(path.to_owned()) {
                    crate::events::FileQuarantineFailed { path, reason: &qe }.emit(&self.metrics);
                }
            }
        }
    }

    /// One pass over the folder; returns the arrivals to announce.
    fn tick(&mut self, now: Instant) -> Vec<Arrival> {
        let mut entries = Vec::new();
        scan(&self.dir, 0, &mut entries);
        let present: HashSet<PathBuf> = entries
            .iter()
            .map(|e| match e {
                Entry::File { path, .. } | Entry::Special { path, .. } => path.clone(),
            })
            .collect();
        self.seen.retain(|p, _| present.contains(p));
        self.renamed.retain(|p| present.contains(p));
        self.stuck.retain(|p| present.contains(p));
        let give_up = self.stable * UNPARSEABLE_FACTOR;
        let mut arrivals = Vec::new();
        for entry in entries {
            self.beat.beat();
            let (Entry::File { path, .. } | Entry::Special { path, .. }) = &entry;
            if self.stuck.contains(path) {
                continue;
            }
            let (path, size, mtime) = match entry {
                Entry::Special { path, kind } => {
                    self.reject(
                        &path,
                        &format!("not a regular file ({kind}); never followed"),
                    );
                    continue;
                }
                Entry::File { path, size, mtime } => (path, size, mtime),
            };
            let s = self.seen.entry(path.clone()).or_insert(Seen {
                size,
                mtime,
                since: now,
                unparseable_since: None,
                last_try: None,
            });
            if s.size != size || s.mtime != mtime {
                *s = Seen {
                    size,
                    mtime,
                    since: now,
                    unparseable_since: None,
                    last_try: None,
                };
            }
            let renamed = self.renamed.contains(&path);
            let stable = now.duration_since(s.since) >= self.stable;
            if !renamed && !stable {
                continue;
            }
            if !renamed
                && s.last_try
                    .is_some_and(|t| now.duration_since(t) < self.stable)
            {
                continue;
            }
            s.last_try = Some(now);
            match examine(&path, self.max_file_bytes) {
                Ok(parsed) => {
                    self.seen.remove(&path);
                    self.renamed.remove(&path);
                    if let Some(a) = self.take(&path, parsed) {
                        arrivals.push(a);
                    }
                }
                Err(Refusal::Skip) => {}
                Err(Refusal::Bad(reason)) => {
                    self.seen.remove(&path);
                    self.renamed.remove(&path);
                    self.reject(&path, &reason);
                }
                Err(Refusal::Incomplete(reason)) => {
                    let since = *s.unparseable_since.get_or_insert(now);
                    if renamed || now.duration_since(since) >= give_up {
                        self.seen.remove(&path);
                        self.renamed.remove(&path);
                        let why = if renamed {
                            format!("renamed in but {reason}")
                        } else {
                            format!(
                                "{reason} (unchanged for {} s)",
                                now.duration_since(since).as_secs() + self.stable.as_secs()
                            )
                        };
                        self.reject(&path, &why);
                    } else if s.unparseable_since == Some(now) {
                        crate::events::FileIncomplete {
                            path: &path,
                            reason: &reason,
                        }
                        .emit();
                    }
                }
            }
        }
        arrivals
    }

    /// Moves a parsed file into the spool and makes sure what landed there is the file we parsed.
    fn take(&mut self, path: &Path, p: Parsed) -> Option<Arrival> {
        let h = p.header;
        let key = InstanceKey {
            study_uid: h.study_uid.clone(),
            series_uid: h.series_uid.clone(),
            sop_instance_uid: h.sop_instance_uid.clone(),
            sop_class_uid: h.sop_class_uid.clone(),
            transfer_syntax: h.transfer_syntax.clone(),
        };
        match self.spool.adopt(&key, path) {
            Ok(spooled) => {
                // The entry could have been swapped between our open and the rename.
                let same = fs::symlink_metadata(&spooled).is_ok_and(|m| {
                    m.file_type().is_file()
                        && if m.dev() == p.dev {
                            m.ino() == p.ino
                        } else {
                            m.len() == p.size
                        }
                });
                if !same {
                    self.reject(&spooled, "replaced while it was being taken");
                    return None;
                }
                self.metrics.instances_received.inc();
                self.metrics
                    .last_instance_received_timestamp_seconds
                    .set(crate::util::clock::now_seconds());
                Some(Arrival {
                    study_uid: key.study_uid,
                    series_uid: key.series_uid,
                    sop_instance_uid: key.sop_instance_uid,
                    calling_ae: p.calling,
                    called_ae: self.called_ae.clone(),
                    expected: None,
                })
            }
            Err(e @ crate::spool::SpoolError::DiskFull { .. }) => {
                // Left where it is; taken again once there is room.
                crate::events::DiskWatermark {
                    path: Some(path),
                    reason: &e,
                }
                .emit();
                None
            }
            Err(e) => {
                self.reject(path, &e.to_string());
                None
            }
        }
    }
}

impl Watch {
    fn scanner(&self) -> Scanner {
        Scanner {
            dir: self.dir.clone(),
            stable: self.stable,
            max_file_bytes: self.max_file_bytes,
            quarantine: self.quarantine.clone(),
            spool: self.spool.clone(),
            called_ae: self.called_ae.clone(),
            metrics: self.metrics.clone(),
            beat: self.beat.clone(),
            seen: HashMap::new(),
            renamed: HashSet::new(),
            stuck: HashSet::new(),
        }
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<PathBuf>();
        // notify follows symbolic links into sub-folders by default: a link to `/` in the folder
        // would make it walk (and watch) the whole file system.
        let config = notify::Config::default().with_follow_symlinks(false);
        let watcher = notify::RecommendedWatcher::new(
            move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    if matches!(
                        ev.kind,
                        EventKind::Modify(notify::event::ModifyKind::Name(_))
                    ) {
                        for p in ev.paths {
                            let _ = ev_tx.send(p);
                        }
                    }
                }
            },
            config,
        );
        // Adding a recursive watch walks the folder: blocking work, off the async workers.
        let dir = self.dir.clone();
        let _watcher = tokio::task::spawn_blocking(move || match watcher {
            Ok(mut w) => match w.watch(&dir, RecursiveMode::Recursive) {
                Ok(()) => Some(w),
                Err(e) => {
                    crate::events::WatchUnavailable {
                        dir: &dir,
                        reason: &e,
                    }
                    .emit();
                    None
                }
            },
            Err(e) => {
                crate::events::WatchUnavailable {
                    dir: &dir,
                    reason: &e,
                }
                .emit();
                None
            }
        })
        .await
        .ok()
        .flatten();
        let mut renamed: HashSet<PathBuf> = HashSet::new();
        let mut scanner = Some(self.scanner());
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(p) = ev_rx.recv() => { renamed.insert(p); }
                _ = tick.tick() => {
                    self.beat.beat();
                    let mut sc = scanner.take().unwrap_or_else(|| self.scanner());
                    sc.renamed.extend(renamed.drain());
                    let now = Instant::now();
                    let done = tokio::task::spawn_blocking(move || {
                        let arrivals = sc.tick(now);
                        (sc, arrivals)
                    })
                    .await;
                    match done {
                        Ok((sc, arrivals)) => {
                            scanner = Some(sc);
                            for a in arrivals {
                                let _ = self.tx.send(a).await;
                            }
                        }
                        Err(e) => {
                            crate::events::WatchScanFailed {
                                dir: &self.dir,
                                reason: &e,
                            }
                            .emit();
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::{write_phantom_series, SeriesSpec};

    fn one_file(dir: &Path) -> PathBuf {
        let spec = SeriesSpec::axial("watch-unit", 32, 32, 1, [1.0, 0.5, 0.5]);
        write_phantom_series(&spec, &dir.join("src"), 10.0).unwrap()[0].clone()
    }

    #[test]
    fn only_complete_regular_files_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let f = one_file(tmp.path());
        let parsed = examine(&f, 1 << 20).unwrap();
        assert_eq!(parsed.header.rows, Some(32));
        // Too large for the limit.
        assert!(
            matches!(examine(&f, 100), Err(Refusal::Bad(r)) if r.contains("watch.max_file_mib"))
        );
        // Truncated in the pixel data, and cut at the start.
        let bytes = std::fs::read(&f).unwrap();
        for cut in [bytes.len() - 10, bytes.len() / 2, 100] {
            let half = tmp.path().join(format!("half{cut}"));
            std::fs::write(&half, &bytes[..cut]).unwrap();
            assert!(
                matches!(examine(&half, 1 << 20), Err(Refusal::Incomplete(_))),
                "cut at {cut}"
            );
        }
        // A symbolic link is refused, never followed.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(
            matches!(examine(&link, 1 << 20), Err(Refusal::Bad(r)) if r.contains("symbolic link"))
        );
        // A second hard link.
        let hard = tmp.path().join("hard");
        std::fs::hard_link(&f, &hard).unwrap();
        assert!(
            matches!(examine(&hard, 1 << 20), Err(Refusal::Bad(r)) if r.contains("hard links"))
        );
        // A FIFO is opened without blocking and refused.
        let fifo = tmp.path().join("fifo");
        let o = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .output()
            .unwrap();
        assert!(o.status.success());
        assert!(matches!(examine(&fifo, 1 << 20), Err(Refusal::Bad(r)) if r.contains("FIFO")));
        assert!(matches!(
            examine(&tmp.path().join("gone"), 1 << 20),
            Err(Refusal::Skip)
        ));
    }

    #[test]
    fn scan_reports_links_and_specials_without_entering_them() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        let watch = tmp.path().join("watch");
        std::fs::create_dir_all(outside.join("deep")).unwrap();
        std::fs::write(outside.join("deep/x.dcm"), b"x").unwrap();
        std::fs::create_dir_all(watch.join("sub")).unwrap();
        std::fs::write(watch.join("sub/a.dcm"), b"a").unwrap();
        std::fs::write(watch.join(".hidden"), b"h").unwrap();
        std::os::unix::fs::symlink(&outside, watch.join("sub/link")).unwrap();
        let mut out = Vec::new();
        scan(&watch, 0, &mut out);
        let mut files = Vec::new();
        let mut specials = Vec::new();
        for e in out {
            match e {
                Entry::File { path, .. } => files.push(path),
                Entry::Special { path, kind } => specials.push((path, kind)),
            }
        }
        assert_eq!(files, [watch.join("sub/a.dcm")]);
        assert_eq!(specials, [(watch.join("sub/link"), "symbolic link")]);
        // Quarantining the link moves the link; the target folder is untouched.
        let q = tmp.path().join("q");
        let moved = quarantine_file(&q, &watch.join("sub/link"), "test").unwrap();
        assert!(std::fs::symlink_metadata(&moved)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(outside.join("deep/x.dcm").exists());
    }
}
