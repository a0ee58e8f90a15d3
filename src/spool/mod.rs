//! Spool stage: the durable store of every acknowledged instance, from its C-STORE success until
//! every destination has acknowledged what was made of it. UIDs are validated before they become
//! path names, so a crafted UID cannot escape the spool.
//!
//! Layering rule (checked by `scripts/layers.sh`): a module imports only from layers below it.
//! The spool sits just above the harmonize core and beside the outbox; it uses `util`, `config` and
//! `dicom::write` (file meta). One file because it is one cohesive thing: the on-disk layout, its
//! durability protocol and the recovery that reads it back (split, the fsync ordering argument would
//! be spread over files).
//!
//! # Layout
//!
//! ```text
//! <state>/spool/.tmp/                              writes in progress, and empty files made
//!                                                  ahead for them (emptied at start-up and at
//!                                                  a graceful stop)
//! <state>/spool/<study>/<series>/<sop>.dcm         incoming: acknowledged, not yet handed over
//! <state>/spool/<study>/<series>/.v<N>.tmp/        a hand-over in progress (undone at start-up)
//! <state>/spool/<study>/<series>/v<N>/             version N of the series, handed to processing:
//!     .version       what it is (VersionInfo, TOML)
//!     .processing    crash counter: processing started N times without finishing
//!     .processed     its outbound jobs are durably in the outbox
//!     <series>/<sop>.dcm   its instances (the payload of its "original" jobs)
//! <state>/kept/<study>/<series>/v<N>-<ms>/         the last delivered version, kept for
//!                                                  `series.keep_delivered_seconds` (late instances)
//! ```
//!
//! A series is handed to processing by [`Spool::freeze`]: its incoming instances move into a new
//! version folder; instances arriving later go to the incoming folder again and become a later
//! version. Jobs name their version folder, so the clean-up after a delivery removes exactly what
//! that delivery covered.
//!
//! # Durability argument: why a Success status means the instance survives
//!
//! 1. The C-STORE success is sent only after [`Spool::commit`] (or [`Spool::store`]) returned for
//!    that instance, which does, in this order:
//!    - (a) the file in `.tmp/` holds every byte of the instance (the P-DATA fragments are
//!      appended as they arrive; the SCP checks the complete file before committing);
//!    - (b) `fdatasync` of the file: its data and the size that reaches it are on disk (what
//!      `fdatasync` omits, timestamps, is not needed to read the file back);
//!    - (c) rename into the incoming folder `<study>/<series>/`, under a lock held by every commit
//!      around its rename: a commit that finds the folder missing creates it and fsyncs the
//!      study folder and the spool root before renaming, so the folder's own entry is durable
//!      before any instance is renamed into it (a hand-over keeps the folder; a clean-up that
//!      removes it makes the next commit create it again, under the lock);
//!    - (d) an fsync of the incoming folder that *started after* the rename returned
//!      ([`DirSync`]): an fsync of a folder makes every entry change made in it before the call
//!      durable, so one fsync covers every instance renamed into the folder before it began,
//!      whichever association renamed it. A caller whose rename happened while an fsync was
//!      already running waits for the next one (it never counts on the running one). If an
//!      fsync fails, every caller it was to cover gets an error (no Success), including those a
//!      later fsync might appear to cover, since Linux reports a write-back error only once.
//!
//!    From then on the instance survives a power loss: its bytes are durable by (b), its name by
//!    (d), and (c) after (b) means a name never points at bytes that are not durable. A crash
//!    before (d) completes loses at most instances not yet acknowledged (the peer re-sends them;
//!    a copy that did reach the incoming folder is a valid file, by (a) and (b), and is
//!    recognised as a re-send by its SOP Instance UID).
//! 2. An instance leaves the incoming folder only (a) by a rename into `.v<N>.tmp/` during a
//!    hand-over (same file system: at every instant the file is in exactly one of the two folders;
//!    both folders are fsynced before `.v<N>.tmp` is renamed to `v<N>`, and start-up recovery moves
//!    the content of any `.v<N>.tmp` back to the incoming folder), or (b) when the series stage
//!    deletes a re-sent copy of an instance whose SOP Instance UID is already in a version (or was
//!    delivered): the instance itself stays where it was.
//! 3. A version folder receives no new instance after its hand-over (only markers). A version
//!    folder leaves the spool only (a) through [`Spool::remove_series`], called once no queued or
//!    dead-lettered job names it (`Outbox::needs`), i.e. after every destination acknowledged every
//!    job of that version; jobs are written and fsynced before `.processed`, and a version without
//!    `.processed` is processed again at start-up; (b) through [`Spool::quarantine`], a rename (or,
//!    across file systems, a copy fsynced before the source is removed); when that fails the folder
//!    stays in the spool and the series is tried again later; (c) through [`Spool::discard`], for a
//!    rule whose plan is "drop" or that names no destination (nothing is to be delivered, by
//!    configuration).
//! 4. Derived files are never needed for durability: they are made again from the version folder,
//!    with the same UIDs.
//!
//! Hence between the Success status and the last destination's acknowledgement, at every instant
//! and across any crash or power loss, each acknowledged instance is in the incoming folder, a
//! hand-over folder, a version folder or the quarantine.
//!
//! # Why a Success does not wait on an arrival journal instead (issue 13, measured, not built)
//!
//! With one association each instance waits for two commits of the file system's journal: the
//! file's data with its block allocation, (b), then its folder entry, (d). An append-only arrival
//! journal (each instance appended with its name and a checksum to one preallocated file, one
//! `fdatasync` per instance or per group of associations; the spool files and their folder entries
//! synced later in batches, the journal trimmed after; replayed at start-up) makes that one sync.
//! Its limit, measured by `scripts/bench_daemon.py` (row "journal limit": the same 300 files
//! appended to a file written with zeros beforehand, `fdatasync` each, one writer), 2026-11-29 on
//! this 2-core VM under load: 109 and 135 images/s, against 60 and 75 for (b)+(d) and 114 and 116
//! for (b) alone (other runs: 124-163, 65-91 and 106-145). So the journal's whole gain is the folder commit it avoids
//! (1.5-1.9x on one association), and one sync per instance, 110-165/s here, still leaves one
//! association under `storescp` (220-860/s on the same runs: it syncs nothing, and `storescu`
//! waits for each response, so one association never overlaps two instances' syncs). It was not
//! built, for that bounded gain against its costs:
//! - every instance written twice (journal, then spool file: twice the disk bandwidth, and a
//!   second copy through the page cache, which makes ingest slower where syncs are free, tmpfs);
//! - a replay must never bring back an instance already handed over or delivered: the journal
//!   would have to be checkpointed (the files and folders it covers synced, then trimmed) before
//!   every hand-over ([`Spool::freeze`]) of a series it holds, or a crash after a delivery would
//!   re-create the instance in the incoming folder and send it again (a duplicate);
//! - a second on-disk format and its recovery (torn tail, bad checksum, a full journal pushing
//!   back on the SCP), each a new way to lose or duplicate an instance.
//!
//! Re-measured on a quiet machine (2026-11-30, load 0.2, `BENCH_ONLY=ingest bash
//! scripts/bench_daemon.sh`, medians of 3): the durable limit (b)+(d) 1141 images/s, (b) alone
//! 1304, the journal 1425, against `storescp` 919 and one association of ours 579 (four: 910
//! against 899). So the figures above are the load's; without it the sync path is not what bounds
//! one association, the receive and the flush running one after the other is (`storescu` waits
//! for each response). Overlapping them (writeback started per chunk as it is written, so the final
//! `fdatasync` waits for the tail only) is the next step; not built.
//!
//! Measured again (2026-11-30, this VM, whose ext4 has no journal): `perf record` of `serve`
//! during the ingest benchmark put 46 % of its CPU in creating each instance's temporary file,
//! before its first write (without a journal, ext4's inode allocator skips inodes deleted in the
//! last minutes, `recently_deleted`, and a spool deletes files all day). Those files are now made
//! ahead by one thread ([`TmpPool`]): side by side in one run (training paused, 15 repetitions),
//! one association 447 → 499 images/s against `storescp`'s 734, four 647 → 679 against 610.
//! Tried and not kept, no gain in the same kind of run: write-back started per chunk as it is
//! written (`sync_file_range`, 457 → 459), and writing from the association's task instead of its
//! writer thread (412 → 420). What no overlap with the receive can hide is the commit after the
//! last byte: `fdatasync` + rename + folder fsync with every data block already on disk costs
//! 0.30-0.38 ms per instance here (`scripts/bench_daemon.sh` row "serial commit"), so even
//! `storescp` made durable would lose 20-25 % with one association (row "storescp + commit").
//!
//! Measured and not kept (2026-11-30, A/B in one run against the build before, `BENCH_BIN_B`,
//! 5 repetitions, other work paused): writing the instance with direct I/O (`O_DIRECT` on the
//! temporary file, block-aligned buffers written as they fill, so that the final `fdatasync` has
//! only the last blocks and the size to write; alone, 525 KB this way then `fdatasync` costs
//! 0.15-0.23 ms against 0.42-0.46 through the page cache): one association 0.74x (128 KiB writes)
//! and 0.69x (256 KiB) of the build without it, four 0.84x and 0.89x. Each direct write waits for
//! the disk on the writer, which then falls behind the receive, and the checks read the header
//! back from the disk. Smaller chunks for the writer (64 KiB, 32 KiB against 256 KiB): 1.03x and
//! 0.78x. Where the time goes instead: `perf record -a` over the ingest rows found the two vCPUs
//! 72 % idle (one association is bound by latency, not CPU); `strace -c -f` of `serve` counted
//! per instance 12 `futex` and 15 `epoll_wait` (hand-overs between the association's task, its
//! writer and the sync), 1 `fdatasync`, 1 `fsync`, 1 `rename`; a thread woken on the other vCPU
//! costs 19 µs here (a C condition-variable ping-pong). The most any rework of the folder commit
//! could give (a Success before the rename, the instance found again at start-up by a checksum
//! in `.tmp/`) is bounded by a build that skips the folder fsync altogether (not durable; measured
//! only): one association 1.09x of the build with it (546 against 494 images/s; 0.65 of
//! `storescp`), so it was not built either.
//!
//! The floor, measured (2026-11-30 08:44, `BENCH_ONLY=ingest BENCH_REPS=11 bash
//! scripts/bench_daemon.sh`, row "durable floor"): `storescp --ignore` (receives every instance and
//! stores nothing: `storescu`'s and the loopback's pace alone) accepts 1210 images/s, 0.83 ms per
//! instance; with the serial commit (0.40 ms) after it, no durable SCP can exceed 817 images/s
//! with one association, 1.13x `storescp` (723). Ours: 504 (0.68x `storescp`, 0.62x the floor).
//! So "durable and at `storescp`'s pace" leaves 0.11-0.16 ms per instance for everything an SCP
//! does besides receiving and committing (parse, write into the page cache, checks, hand-overs);
//! `storescp` itself spends 0.55 ms there (without a commit), and our path on tmpfs (no commit)
//! 0.24 ms (936 against `storescp`'s 784 images/s on tmpfs, same day). On this disk the data's
//! write-back inside the final `fdatasync` is 0.29 ms of the 0.40 (a Python microbenchmark of 525
//! KB: 0.40 ms with dirty data, 0.11 once written back), and starting write-back per 64 KiB
//! chunk as it arrives costs ~25 us per `sync_file_range` call in the writer: A/B in one run
//! (`BENCH_BIN_B`, 5-15 repetitions, three runs) 64 KiB chunks with `sync_file_range` gave 1.09x,
//! 1.02x, 0.97x with one association and 0.88x, 0.91x, 0.92x with four; 64 KiB chunks alone
//! 0.98x, 0.90x / 1.03x, 0.97x. Not kept. Reaching the goal would take all of: write-back fully
//! overlapped with the receive without a system call per chunk (io_uring), the Success before the
//! rename (recovery from `.tmp/` verified by a checksum stored with the data), and no hand-over
//! left after the last byte; each bounded above, none enough alone.
//!
//! All three of those built together as a throw-away build (2026-11-30 11:15, A/B in one run
//! against this code, `BENCH_BIN_B`, 5-7 repetitions, load under 1): the Success sent once the data
//! is synced and checked, the rename and folder fsync after it on the writer: one association
//! 0.97x, four 1.02x; with write-back started per 64 KiB chunk (`sync_file_range`): 0.96x /
//! 1.01x; with the files made ahead also written with 1 MiB of zeros and synced, so that an
//! instance overwrites blocks already allocated (its checks told the length, the zeros cut before
//! the rename): 0.89x / 0.73x (the pool's own writes and syncs compete); 64 KiB chunks alone
//! 1.04x / 0.97x. In isolation each does what it should (a Python microbenchmark of 525 KB,
//! written at the network's pace in 64 KiB pieces: after the last byte, `fdatasync` takes 0.52 ms
//! plain, 0.21 ms with `sync_file_range` per piece, 0.12 ms into blocks written before; rename +
//! folder fsync 0.15 ms; the disk writes 1.2-1.5 GB/s sequentially, so 525 KB are ~0.4 ms of its
//! time), but with one association none moves the rate: what bounds it here is the receive and
//! the CPU of two vCPUs shared with `storescu` and the kernel's I/O, and `storescp`'s own rate
//! varied from 521 to 812 images/s between these runs. None was kept.
//!
//! What one instance's cycle looks like (2026-11-30 17:00, a quiet machine, `perf record` of the
//! system calls of `serve` while `storescu` sends 200 instances on one association): our
//! response; 0.2 ms later `storescu`'s next command; the whole 525 KB data set within the next
//! 0.2-0.3 ms, one burst of 64 KiB PDUs during which both vCPUs are busy (`storescu` sending, the
//! association's task receiving: the spool writer gets a CPU only when the burst is over); then
//! 0.78 ms to our response: the writes into the page cache 0.18 ms, `fdatasync` 0.36 ms, rename
//! and folder fsync 0.13 ms, the hand-overs the rest; median cycle 1.35 ms under `perf`. So the
//! data's write-back cannot start before the last byte, and the bench's row "durable bound" adds
//! the cheapest durable write of a whole instance measured on this disk (one `O_DIRECT` write
//! from an aligned buffer, truncate, `fdatasync`, rename, folder fsync: 0.66-0.74 ms; through the
//! page cache 1.0-1.5 ms) to `storescu`'s own pace (`storescp --ignore`, the faster of its
//! default 16 KiB PDUs and `--max-pdu 131072`: 1372 and 2104 images/s). That bound is 1.26x
//! `storescp` (884 against 701 images/s, `BENCH_ONLY=ingest BENCH_REPS=9`), ours 0.62 of it:
//! 1.0x is not excluded, but what separates us from the bound is the write after the last byte
//! done as the bound does it, and that, built, lost. A/B in one run (throw-away builds, not
//! kept; 7-9 repetitions, alternating order): the instance gathered in memory by the writer
//! and written with one `O_DIRECT` write (checks on the gathered bytes while it syncs) 0.95x of
//! this code, 0.92x with 256 KiB PDUs; write-back started after each chunk
//! (`sync_file_range`) 1.03x with 256 KiB chunks, 0.99x with 64 KiB chunks (its timeline: the
//! writer, woken after the burst, spends 0.54 ms on writes and `sync_file_range` calls; the final
//! `fdatasync` drops to 0.2 ms); 64 KiB chunks alone 0.96x; `server.max_pdu_length` 256 KiB or
//! 1 MiB against 64 KiB 1.04x and 1.04x in one run, 0.94x in another (`storescu` itself sends
//! 1.3-1.5x faster to a `storescp` offering 128 KiB PDUs; we already offer 64 KiB). None kept:
//! on these machines every variant is within the spread between runs (`storescp`'s own rate
//! varied from 654 to 1040 images/s between runs today on a machine with nothing else running).
//!
//! Also measured and rejected: renaming before the file's `fdatasync` (so that one commit could
//! carry both): not consistently faster here (85, 157, 73, 80 against 97, 91, 68, 73 images/s),
//! and it breaks "a name never points at bytes that are not durable" (step 1 above). With four
//! associations the folder fsync is already shared ([`DirSync`]) and ingest runs above `storescp`;
//! with one, what was cut is the SCP's CPU path (its module documentation), which bounds ingest
//! wherever syncs are cheap.

use dicom_object::FileMetaTableBuilder;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::dicom::write::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::util::clock::now_ms;
use crate::util::fs::sync_dir;

mod incoming;
mod versions;
pub use incoming::{DirSync, Incoming, TmpPool};
pub use versions::{crash_count, source_ae_title};

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
    #[error("cannot write file meta for {uid}: {source}")]
    Meta {
        uid: String,
        #[source]
        source: Box<dicom_object::meta::Error>,
    },
    #[error("spool {path} has {free_mib} MiB free, under the configured {min_mib} MiB")]
    DiskFull {
        path: PathBuf,
        free_mib: u64,
        min_mib: u64,
    },
    #[error("spool {path}: {reason}")]
    Version { path: PathBuf, reason: String },
    #[error("spool {path}: {source}")]
    VersionEncode {
        path: PathBuf,
        #[source]
        source: toml::ser::Error,
    },
}

impl SpoolError {
    /// The I/O error underneath, if any.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            SpoolError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// True for an I/O error that may go away by itself (full or over-quota file system, too many open
/// files, out of memory, interrupted, busy, I/O error, read-only remount): the work is retried
/// later, never quarantined.
pub fn transient_io(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::StorageFull
            | K::QuotaExceeded
            | K::OutOfMemory
            | K::Interrupted
            | K::WouldBlock
            | K::TimedOut
            | K::ResourceBusy
            | K::ReadOnlyFilesystem
    ) || matches!(
        e.raw_os_error(),
        // ENOSPC, EDQUOT, EIO, ENOMEM, ENFILE, EMFILE, EAGAIN, EINTR, EBUSY, ETIMEDOUT, EROFS
        Some(28 | 122 | 5 | 12 | 23 | 24 | 11 | 4 | 16 | 110 | 30)
    )
}

/// The errno of an I/O error by name ("ENOSPC (28)"), or its kind when it has none.
pub fn errno_label(e: &std::io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(28) => "ENOSPC",
        Some(122) => "EDQUOT",
        Some(5) => "EIO",
        Some(12) => "ENOMEM",
        Some(23) => "ENFILE",
        Some(24) => "EMFILE",
        Some(11) => "EAGAIN",
        Some(4) => "EINTR",
        Some(16) => "EBUSY",
        Some(110) => "ETIMEDOUT",
        Some(30) => "EROFS",
        Some(13) => "EACCES",
        Some(2) => "ENOENT",
        Some(18) => "EXDEV",
        Some(_) => "errno",
        None => return format!("{:?}", e.kind()),
    };
    match e.raw_os_error() {
        Some(n) => format!("{name} ({n})"),
        None => name.to_string(),
    }
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

/// What a version folder holds (its `.version` file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionInfo {
    pub study_uid: String,
    pub series_uid: String,
    /// 1 for the first hand-over of the series; higher for late instances.
    pub version: u32,
    pub calling_ae: String,
    pub called_ae: String,
    /// The earlier version whose instances were carried over into this one (late instances).
    #[serde(default)]
    pub previous: Option<u32>,
}

/// One version folder (in the spool, or kept after delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledVersion {
    pub info: VersionInfo,
    /// The version folder (markers; the jobs' `spool_dir`).
    pub dir: PathBuf,
    /// SOP Instance UIDs of its instances.
    pub sops: BTreeSet<String>,
    /// Its outbound jobs were written.
    pub processed: bool,
    /// Times its processing started and never finished (the daemon died meanwhile).
    pub crashes: u32,
}

impl SpooledVersion {
    /// Folder of the version's instances.
    pub fn instances_dir(&self) -> PathBuf {
        self.dir.join(&self.info.series_uid)
    }
}

/// A series folder found in the spool at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledSeries {
    pub study_uid: String,
    pub series_uid: String,
    /// The incoming folder.
    pub dir: PathBuf,
    /// Instances in the incoming folder (not yet handed over).
    pub instances: usize,
    /// Versions handed over, by version number.
    pub versions: Vec<SpooledVersion>,
}

/// Makes temporary file names unique within the process (two associations may store the same
/// instance at the same moment).
static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn tmp_name(sop_instance_uid: &str) -> String {
    let n = TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{sop_instance_uid}.{}.{n}", std::process::id())
}

/// Name of the marker written once a version's outbound jobs are durable.
pub const PROCESSED_MARKER: &str = ".processed";
/// Name of the crash marker: present while a version is being processed, holding how many times
/// its processing started without finishing.
pub const PROCESSING_MARKER: &str = ".processing";
/// Name of a version's description.
pub const VERSION_FILE: &str = ".version";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `.dcm` files directly in `dir` (none when it does not exist).
fn dcm_files(dir: &Path) -> Result<Vec<PathBuf>, SpoolError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    v.sort();
    Ok(v)
}

fn sop_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// `v<N>` → N.
fn version_of(name: &str) -> Option<u32> {
    name.strip_prefix('v')?.parse().ok()
}

/// `v<N>-<ms>` → (N, ms).
fn kept_name(name: &str) -> Option<(u32, u64)> {
    let (v, ms) = name.split_once('-')?;
    Some((version_of(v)?, ms.parse().ok()?))
}

/// Writes `text` to `path` durably (temporary file, fsync, rename, fsync of the folder).
fn write_durably(path: &Path, text: &str) -> Result<(), SpoolError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(dir).map_err(io(dir))
}

/// Hard link, or copy + fsync where links are not possible.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), SpoolError> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to).map_err(io(to))?;
    fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(io(to))
}

/// Copies a folder tree, every file and folder fsynced.
fn copy_tree(from: &Path, to: &Path) -> Result<(), SpoolError> {
    fs::create_dir_all(to).map_err(io(to))?;
    for e in fs::read_dir(from).map_err(io(from))?.flatten() {
        let p = e.path();
        let t = to.join(e.file_name());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            copy_tree(&p, &t)?;
        } else {
            fs::copy(&p, &t).map_err(io(&t))?;
            fs::File::open(&t)
                .and_then(|f| f.sync_all())
                .map_err(io(&t))?;
        }
    }
    sync_dir(to).map_err(io(to))
}

/// The durable instance store.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    tmp: PathBuf,
    kept: PathBuf,
    min_free_mib: u64,
    keep: Duration,
    /// Serialises hand-overs, retirements and quarantines (they move version folders).
    lock: Arc<Mutex<()>>,
    /// Group commit of the incoming folders' fsyncs.
    dir_sync: Arc<DirSync>,
    /// Empty files made ahead in `.tmp/` (started by [`Spool::with_tmp_pool`]).
    pool: Arc<TmpPool>,
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
            kept: state_dir.join("kept"),
            min_free_mib,
            keep: Duration::ZERO,
            lock: Arc::default(),
            dir_sync: Arc::default(),
            pool: Arc::default(),
        })
    }

    /// Stops keeping files ready in `.tmp/` and removes those not taken (a graceful stop).
    pub fn close_tmp_pool(&self) {
        self.pool.close();
    }

    /// Keeps empty files ready in `.tmp/` for the instances to come ([`TmpPool`]): for the spool
    /// of `serve`, the one spool of the process that receives (another [`Spool::open`] of the
    /// same state folder empties `.tmp/`).
    pub fn with_tmp_pool(self) -> Result<Self, SpoolError> {
        TmpPool::start(&self.pool, self.tmp.clone(), incoming::TMP_POOL, || {
            tmp_name("ready")
        })
        .map_err(io(&self.tmp))?;
        Ok(self)
    }

    /// Keeps each series' last delivered version for `keep` (late instances are added to it).
    pub fn with_keep(mut self, keep: Duration) -> Self {
        self.keep = keep;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Free space of the spool's file system in MiB.
    pub fn free_mib(&self) -> Result<u64, SpoolError> {
        fs4::available_space(&self.root)
            .map(|b| b / (1024 * 1024))
            .map_err(io(&self.root))
    }

    /// Fails with [`SpoolError::DiskFull`] when free space is under `min_mib`, after releasing the
    /// delivered versions kept for late instances.
    pub fn check_space_for(&self, min_mib: u64) -> Result<(), SpoolError> {
        if min_mib == 0 {
            return Ok(());
        }
        let mut free_mib = self.free_mib()?;
        if free_mib < min_mib && self.prune_kept(true) > 0 {
            free_mib = self.free_mib()?;
        }
        if free_mib < min_mib {
            return Err(SpoolError::DiskFull {
                path: self.root.clone(),
                free_mib,
                min_mib,
            });
        }
        Ok(())
    }

    /// Fails with [`SpoolError::DiskFull`] when free space is under the watermark.
    pub fn check_space(&self) -> Result<(), SpoolError> {
        self.check_space_for(self.min_free_mib)
    }

    /// The incoming folder of one series (UIDs validated).
    pub fn series_dir(&self, study_uid: &str, series_uid: &str) -> Result<PathBuf, SpoolError> {
        check_uid("StudyInstanceUID", study_uid)?;
        check_uid("SeriesInstanceUID", series_uid)?;
        Ok(self.root.join(study_uid).join(series_uid))
    }

    /// Renames `from` into `dir/name`, creating `dir` again when a clean-up removed it meanwhile.
    fn rename_into(&self, from: &Path, dir: &Path, path: &Path) -> Result<(), SpoolError> {
        for _ in 0..3 {
            fs::create_dir_all(dir).map_err(io(dir))?;
            match fs::rename(from, path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && from.exists() => continue,
                Err(e) => return Err(io(path)(e)),
            }
        }
        fs::rename(from, path).map_err(io(path))
    }

    /// Stores one instance received over the network: a Part 10 file made of our file meta and the
    /// dataset bytes exactly as received (in `key.transfer_syntax`). Returns the final path once the
    /// file and its folder entry are on disk. ([`Spool::begin`], [`Incoming::write`] and
    /// [`Spool::commit`] in one call; the SCP streams with those.)
    pub fn store(
        &self,
        key: &InstanceKey,
        calling_ae: &str,
        dataset: &[u8],
    ) -> Result<PathBuf, SpoolError> {
        let mut incoming = self.begin(
            &key.sop_class_uid,
            &key.sop_instance_uid,
            &key.transfer_syntax,
            calling_ae,
        )?;
        incoming.write(dataset)?;
        incoming.sync_data()?;
        self.commit(incoming, &key.study_uid, &key.series_uid)
    }

    /// Starts receiving one instance: a temporary file in `.tmp/` holding the preamble and our file
    /// meta group (SOP class and instance from the C-STORE command; the caller checks the data set
    /// names the same before committing). The data set bytes follow with [`Incoming::write`]; the
    /// file is removed when the [`Incoming`] is dropped without [`Spool::commit`].
    pub fn begin(
        &self,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        transfer_syntax: &str,
        calling_ae: &str,
    ) -> Result<Incoming, SpoolError> {
        // A bad UID is reported at the commit (after the data set's own checks), never used in
        // a path.
        let invalid = check_uid("SOPInstanceUID", sop_instance_uid)
            .and_then(|()| check_uid("SOPClassUID", sop_class_uid))
            .and_then(|()| check_uid("TransferSyntaxUID", transfer_syntax))
            .err();
        self.check_space()?;
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(sop_class_uid)
            .media_storage_sop_instance_uid(sop_instance_uid)
            .transfer_syntax(transfer_syntax)
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
            .source_application_entity_title(calling_ae.trim())
            .build()
            .map_err(|e| SpoolError::Meta {
                uid: sop_instance_uid.to_string(),
                source: Box::new(e),
            })?;
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(&[0u8; 128]);
        head.extend_from_slice(b"DICM");
        meta.write(&mut head).map_err(|e| SpoolError::Meta {
            uid: sop_instance_uid.to_string(),
            source: Box::new(e),
        })?;
        let name = if invalid.is_none() {
            sop_instance_uid
        } else {
            "invalid"
        };
        let (file, tmp) = match self.pool.take() {
            Some(ready) => ready,
            None => {
                let tmp = self.tmp.join(tmp_name(name));
                (fs::File::create(&tmp).map_err(io(&tmp))?, tmp)
            }
        };
        let mut incoming = Incoming {
            file,
            tmp,
            sop_instance_uid: sop_instance_uid.to_string(),
            invalid,
            synced: false,
            done: false,
            dataset_bytes: 0,
        };
        incoming.write(&head)?;
        incoming.dataset_bytes = 0;
        Ok(incoming)
    }

    /// Makes a received instance durable in the incoming folder of its series: its data synced
    /// (unless [`Incoming::sync_data`] did it already), renamed into the folder, the folder synced
    /// (one folder sync shared by every instance renamed into it meanwhile, see [`DirSync`]).
    /// Returns the final path; from then on the instance survives a power loss.
    pub fn commit(
        &self,
        mut incoming: Incoming,
        study_uid: &str,
        series_uid: &str,
    ) -> Result<PathBuf, SpoolError> {
        if let Some(e) = incoming.invalid.take() {
            return Err(e);
        }
        let dir = self.series_dir(study_uid, series_uid)?;
        incoming.sync_data()?;
        let path = dir.join(format!("{}.dcm", incoming.sop_instance_uid));
        {
            // Under the lock, a folder seen to exist was created (and its entry made durable) by
            // an earlier call, or by a hand-over; one this call creates is durable in its parent
            // before any other call can rename into it.
            let _created = self.dir_sync.create_lock();
            let mut tries = 0;
            loop {
                self.create_series_dir(&dir)?;
                match fs::rename(&incoming.tmp, &path) {
                    Ok(()) => break,
                    // A clean-up removed the folder meanwhile: made again.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => tries += 1,
                    Err(e) => return Err(io(&path)(e)),
                }
            }
        }
        incoming.done = true;
        self.dir_sync.sync(&dir).map_err(io(&dir))?;
        Ok(path)
    }

    /// Creates a series folder that does not exist yet and makes its entry durable in the study
    /// folder and the spool root, before anything is renamed into it. The caller holds
    /// `dir_sync.create_lock()`: a folder seen to exist was made durable by an earlier call.
    fn create_series_dir(&self, dir: &Path) -> Result<(), SpoolError> {
        if dir.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(dir).map_err(io(dir))?;
        let study = dir.parent().unwrap_or(&self.root);
        let synced = sync_dir(study)
            .map_err(io(study))
            .and_then(|()| sync_dir(&self.root).map_err(io(&self.root)));
        if let Err(e) = synced {
            // Never left for a later call to take as durable.
            let _ = fs::remove_dir(dir);
            return Err(e);
        }
        Ok(())
    }

    /// Moves a file into the spool (watched folder): same file system rename, else copy + fsync + remove.
    pub fn adopt(&self, key: &InstanceKey, from: &Path) -> Result<PathBuf, SpoolError> {
        check_uid("SOPInstanceUID", &key.sop_instance_uid)?;
        let dir = self.series_dir(&key.study_uid, &key.series_uid)?;
        self.check_space()?;
        {
            let _created = self.dir_sync.create_lock();
            self.create_series_dir(&dir)?;
        }
        let path = dir.join(format!("{}.dcm", key.sop_instance_uid));
        if fs::rename(from, &path).is_err() {
            let tmp = self.tmp.join(tmp_name(&key.sop_instance_uid));
            fs::copy(from, &tmp).map_err(io(&tmp))?;
            fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io(&tmp))?;
            if let Err(e) = self.rename_into(&tmp, &dir, &path) {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            sync_dir(&dir).map_err(io(&dir))?;
            fs::remove_file(from).map_err(io(from))?;
        } else {
            sync_dir(&dir).map_err(io(&dir))?;
        }
        Ok(path)
    }

    /// Removes the incoming copy of an instance the series stage recognised as re-sent (its SOP
    /// Instance UID is already in a version, or was delivered).
    pub fn drop_copy(&self, study_uid: &str, series_uid: &str, sop_instance_uid: &str) {
        if !is_valid_uid(sop_instance_uid) {
            return;
        }
        if let Ok(dir) = self.series_dir(study_uid, series_uid) {
            let _ = fs::remove_file(dir.join(format!("{sop_instance_uid}.dcm")));
        }
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

    fn key(series: &str, sop: &str) -> InstanceKey {
        InstanceKey {
            study_uid: "1.2".into(),
            series_uid: series.into(),
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
        }
    }

    #[test]
    fn store_then_recover() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 0).unwrap();
        let p = s.store(&key("1.2.3", "1.2.3.4"), "MOD", b"").unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[128..132], b"DICM");
        assert_eq!(source_ae_title(&p).as_deref(), Some("MOD"));
        let r = s.recover().unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].instances, 1);
        assert!(r[0].versions.is_empty());
        let v = s
            .freeze("1.2", "1.2.3", 1, "MOD", "US", true)
            .unwrap()
            .unwrap();
        assert_eq!(v.info.version, 1);
        let r = s.recover().unwrap();
        assert_eq!(r[0].instances, 0);
        assert_eq!(r[0].versions, vec![v.clone()]);
        s.mark_processed(&v.dir, &["a".into()]).unwrap();
        assert!(s.recover().unwrap()[0].versions[0].processed);
        s.remove_series(&v.dir).unwrap();
        assert!(s.recover().unwrap().is_empty());
        assert!(!dir.path().join("spool/1.2").exists());
    }

    /// Item 1 of issue 9: a late instance arriving while version 1 is being forwarded goes to a
    /// new version; version 1's clean-up removes only version 1's folder.
    #[test]
    fn a_late_instance_survives_the_clean_up_of_the_version_before() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 0)
            .unwrap()
            .with_keep(Duration::from_secs(600));
        for i in 1..=3 {
            s.store(&key("1.2.3", &format!("1.2.3.{i}")), "MOD", b"")
                .unwrap();
        }
        let v1 = s
            .freeze("1.2", "1.2.3", 1, "MOD", "US", true)
            .unwrap()
            .unwrap();
        assert_eq!(v1.sops.len(), 3);
        // Acknowledged after version 1 was handed over.
        s.store(&key("1.2.3", "1.2.3.4"), "MOD", b"").unwrap();
        // Version 1 delivered: its clean-up.
        s.remove_series(&v1.dir).unwrap();
        let r = s.recover().unwrap();
        assert_eq!(r[0].instances, 1, "the late instance is still in the spool");
        let v2 = s
            .freeze("1.2", "1.2.3", 1, "MOD", "US", true)
            .unwrap()
            .unwrap();
        assert_eq!(v2.info.version, 2);
        assert_eq!(v2.info.previous, Some(1));
        // Version 2 is the whole series: version 1's instances (kept) and the late one.
        assert_eq!(v2.sops.len(), 4);
        assert!(v2.instances_dir().join("1.2.3.4.dcm").exists());
        // Without carry-over, only the late instances.
        s.store(&key("1.2.3", "1.2.3.5"), "MOD", b"").unwrap();
        let v3 = s
            .freeze("1.2", "1.2.3", 1, "MOD", "US", false)
            .unwrap()
            .unwrap();
        assert_eq!(v3.info.version, 3);
        assert_eq!(v3.sops.len(), 1);
        assert_eq!(v3.info.previous, None);
        // Nothing to hand over: no version.
        assert!(s
            .freeze("1.2", "1.2.3", 1, "MOD", "US", true)
            .unwrap()
            .is_none());
        // Kept versions go when the disk needs the room.
        s.remove_series(&v2.dir).unwrap();
        assert_eq!(s.kept().len(), 1);
        assert_eq!(s.prune_kept(true), 1);
        assert!(s.kept().is_empty());
    }

    /// A hand-over interrupted by a crash is undone at start-up: its instances are incoming again.
    #[test]
    fn interrupted_hand_over_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 0).unwrap();
        s.store(&key("1.2.3", "1.2.3.1"), "MOD", b"").unwrap();
        s.store(&key("1.2.3", "1.2.3.2"), "MOD", b"").unwrap();
        let incoming = s.series_dir("1.2", "1.2.3").unwrap();
        let tmp = incoming.join(".v1.tmp").join("1.2.3");
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::rename(incoming.join("1.2.3.1.dcm"), tmp.join("1.2.3.1.dcm")).unwrap();
        let r = s.recover().unwrap();
        assert_eq!(r[0].instances, 2);
        assert!(r[0].versions.is_empty());
        assert!(!incoming.join(".v1.tmp").exists());
    }

    #[test]
    fn crash_marker_counts_and_quarantine_moves() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 0).unwrap();
        s.store(&key("1.2.3", "1.2.3.1"), "MOD", b"").unwrap();
        let v = s
            .freeze("1.2", "1.2.3", 1, "MOD", "US", true)
            .unwrap()
            .unwrap();
        assert_eq!(s.mark_processing(&v.dir).unwrap(), 1);
        assert_eq!(s.mark_processing(&v.dir).unwrap(), 2);
        assert_eq!(s.recover().unwrap()[0].versions[0].crashes, 2);
        s.clear_processing(&v.dir);
        assert_eq!(crash_count(&v.dir), 0);
        // A quarantine folder that cannot be created: the version stays in the spool.
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        assert!(s.quarantine(&v.dir, &file.join("q"), "x", "why").is_err());
        assert!(v.instances_dir().join("1.2.3.1.dcm").exists());
        // Across file systems when /dev/shm is one (a copy, then the source removed).
        let other = if std::path::Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm").unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let q = s.quarantine(&v.dir, other.path(), "x", "why").unwrap();
        assert!(q.join("1.2.3").join("1.2.3.1.dcm").exists());
        assert_eq!(
            std::fs::read_to_string(q.join("reason.txt")).unwrap(),
            "why\n"
        );
        assert!(!v.dir.exists());
    }

    #[test]
    fn transient_errors_are_recognised() {
        let e = std::io::Error::from_raw_os_error(28);
        assert!(transient_io(&e));
        assert_eq!(errno_label(&e), "ENOSPC (28)");
        assert!(transient_io(&std::io::Error::from(
            std::io::ErrorKind::StorageFull
        )));
        assert!(transient_io(&std::io::Error::from_raw_os_error(24)));
        assert!(!transient_io(&std::io::Error::from_raw_os_error(2)));
        assert!(!transient_io(&std::io::Error::from(
            std::io::ErrorKind::InvalidData
        )));
        // A real ENOSPC: /dev/full refuses every write.
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
            let e = f
                .write_all(&[0u8; 4096])
                .and_then(|_| f.flush())
                .unwrap_err();
            assert!(transient_io(&e), "{e:?}");
        }
    }

    #[test]
    fn watermark_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), u64::MAX).unwrap();
        assert!(matches!(s.check_space(), Err(SpoolError::DiskFull { .. })));
    }

    /// Starts receiving a CT image instance `sop` (explicit VR little endian, from "MOD").
    fn begin_ct(s: &Spool, sop: &str) -> Incoming {
        s.begin(
            "1.2.840.10008.5.1.4.1.1.2",
            sop,
            "1.2.840.10008.1.2.1",
            "MOD",
        )
        .unwrap()
    }

    /// Waits (up to 20 s) until `.tmp/` holds `n` files.
    fn wait_tmp_files(dir: &Path, n: usize) -> Vec<PathBuf> {
        let tmp = dir.join("spool/.tmp");
        for _ in 0..2000 {
            let files: Vec<PathBuf> = std::fs::read_dir(&tmp)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            if files.len() == n {
                return files;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{} never held {n} files", tmp.display());
    }

    #[test]
    fn files_made_ahead_are_used_and_survive_a_second_open_of_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 0).unwrap().with_tmp_pool().unwrap();
        let ready = wait_tmp_files(dir.path(), incoming::TMP_POOL);
        // An instance is received into a file made ahead, and one is made in its place.
        let mut inc = begin_ct(&s, "1.2.7.1");
        assert!(ready.contains(&inc.path().to_path_buf()));
        inc.write(&[7u8; 1000]).unwrap();
        let p = s.commit(inc, "1.2", "1.2.7").unwrap();
        assert_eq!(std::fs::read(&p).unwrap()[..128], [0u8; 128]);
        wait_tmp_files(dir.path(), incoming::TMP_POOL);
        // Another opening of the same spool (the start-up checks of `serve`) empties `.tmp/`:
        // the files removed under the pool are skipped, and every instance still commits.
        let _other = Spool::open(dir.path(), 0).unwrap();
        for k in 0..(2 * incoming::TMP_POOL) {
            let sop = format!("1.2.7.2.{k}");
            let mut inc = begin_ct(&s, &sop);
            inc.write(&[k as u8; 1000]).unwrap();
            let p = s.commit(inc, "1.2", "1.2.7").unwrap();
            let bytes = std::fs::read(p).unwrap();
            assert_eq!(bytes[bytes.len() - 1000..], [k as u8; 1000]);
        }
        assert_eq!(
            s.recover().unwrap()[0].instances,
            1 + 2 * incoming::TMP_POOL
        );
        // Closed (a graceful stop): nothing ready is left, and nothing is made again.
        s.close_tmp_pool();
        assert!(wait_tmp_files(dir.path(), 0).is_empty());
        std::thread::sleep(Duration::from_millis(1200));
        assert!(wait_tmp_files(dir.path(), 0).is_empty());
        let inc = begin_ct(&s, "1.2.7.3");
        assert!(inc.path().to_string_lossy().contains("1.2.7.3"));
        drop(inc);
        // The last clone of a spool gone, the files still ready go with it.
        let s2 = Spool::open(dir.path(), 0).unwrap().with_tmp_pool().unwrap();
        wait_tmp_files(dir.path(), incoming::TMP_POOL);
        drop(s2);
        wait_tmp_files(dir.path(), 0);
    }

    /// The folder of the files made ahead gone (an operator's clean-up, a remount): an instance
    /// is refused with an error naming the folder, the pool retries each second (logging the
    /// streak once, `spool_tmp_pool_failed`) and refills once the folder is back.
    #[test]
    fn files_made_ahead_come_back_after_their_folder_does() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 0).unwrap().with_tmp_pool().unwrap();
        wait_tmp_files(dir.path(), incoming::TMP_POOL);
        let tmp = dir.path().join("spool/.tmp");
        std::fs::remove_dir_all(&tmp).unwrap();
        let e = s
            .begin(
                "1.2.840.10008.5.1.4.1.1.2",
                "1.2.9.1",
                "1.2.840.10008.1.2.1",
                "MOD",
            )
            .unwrap_err();
        assert!(e.to_string().contains(".tmp"), "{e}");
        std::thread::sleep(Duration::from_millis(1200));
        std::fs::create_dir(&tmp).unwrap();
        wait_tmp_files(dir.path(), incoming::TMP_POOL);
        let mut inc = begin_ct(&s, "1.2.9.2");
        inc.write(&[9u8; 100]).unwrap();
        s.commit(inc, "1.2", "1.2.9").unwrap();
    }

    #[test]
    fn streamed_instances_commit_durably_from_many_threads() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 0).unwrap();
        // Abandoned (association aborted mid data set): nothing left in .tmp.
        let mut gone = begin_ct(&s, "1.2.9");
        gone.write(b"partial").unwrap();
        let tmp = gone.path().to_path_buf();
        assert!(tmp.exists());
        drop(gone);
        assert!(!tmp.exists());
        // A crafted SOP Instance UID never names a file; it is refused at the commit.
        let bad = begin_ct(&s, "../x");
        assert!(bad.path().starts_with(dir.path().join("spool/.tmp")));
        assert!(matches!(
            s.commit(bad, "1.2", "1.2.3"),
            Err(SpoolError::InvalidUid { .. })
        ));
        // 8 threads x 25 instances into the same new series folder (group commit of its fsync).
        std::thread::scope(|sc| {
            for t in 0..8 {
                let s = &s;
                sc.spawn(move || {
                    for k in 0..25 {
                        let sop = format!("1.2.3.{t}.{k}");
                        let mut inc = begin_ct(s, &sop);
                        inc.write(&[t as u8; 1000]).unwrap();
                        inc.write(&[k as u8; 1000]).unwrap();
                        let p = s.commit(inc, "1.2", "1.2.3").unwrap();
                        let bytes = std::fs::read(p).unwrap();
                        assert_eq!(bytes[bytes.len() - 1000..], [k as u8; 1000]);
                    }
                });
            }
        });
        let r = s.recover().unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].instances, 200);
        assert_eq!(
            std::fs::read_dir(dir.path().join("spool/.tmp"))
                .unwrap()
                .count(),
            0
        );
        assert!(s.dir_sync.lock_state().is_empty());
    }
}
