//! Receiving one instance into the spool's `.tmp/` ([`Incoming`]), the empty files made ahead for
//! it ([`TmpPool`]) and the group-committed folder fsync that makes its rename durable
//! ([`DirSync`]). See the durability argument in `super`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::*;

/// One instance being received into the spool's `.tmp/` (see [`Spool::begin`]).
#[derive(Debug)]
pub struct Incoming {
    pub(super) file: fs::File,
    pub(super) tmp: PathBuf,
    pub(super) sop_instance_uid: String,
    /// A UID of the command that cannot be stored (reported by the commit).
    pub(super) invalid: Option<SpoolError>,
    /// Its data was fdatasynced after the last write.
    pub(super) synced: bool,
    /// Renamed into the spool (nothing to remove on drop).
    pub(super) done: bool,
    /// Bytes written after the preamble and file meta group: the data set as received.
    pub(super) dataset_bytes: u64,
}

impl Incoming {
    /// Appends data set bytes as they arrive.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        self.synced = false;
        self.file.write_all(bytes).map_err(io(&self.tmp))?;
        self.dataset_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Size of the data set received so far (the file without its preamble and file meta group).
    pub fn dataset_bytes(&self) -> u64 {
        self.dataset_bytes
    }

    /// The temporary file (for checks that read it back before the commit).
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// A second descriptor of the temporary file (to check it while it syncs).
    pub fn reopen(&self) -> Result<fs::File, SpoolError> {
        fs::File::open(&self.tmp).map_err(io(&self.tmp))
    }

    /// `fdatasync`: the bytes written so far (and the size that reaches them) are on disk.
    pub fn sync_data(&mut self) -> Result<(), SpoolError> {
        if !self.synced {
            self.file.sync_data().map_err(io(&self.tmp))?;
            self.synced = true;
        }
        Ok(())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Empty files created ahead of need in the spool's `.tmp/`, so that creating a file is not on
/// the path of a C-STORE. Measured (issue 13): on ext4 without a journal, as on these machines,
/// creating a file where many were deleted in the last minutes scans the inode table for
/// recently deleted inodes (`find_inode_bit` / `recently_deleted`): `perf` put 46 % of the
/// daemon's CPU there during the ingest benchmark, each before the instance's first write. A
/// file made ahead is an empty temporary file like any other in `.tmp/` (removed at start-up,
/// never renamed into the spool before it holds a whole, synced instance), so the durability
/// argument does not change. One thread keeps [`TMP_POOL`] files ready; when none is ready the
/// caller creates its own, as without the pool.
#[derive(Debug, Default)]
pub struct TmpPool {
    ready: Mutex<Vec<(fs::File, PathBuf)>>,
    /// Signalled when a file is taken, and at the close.
    taken: std::sync::Condvar,
    /// No file is made or handed out any more ([`TmpPool::close`]).
    closed: std::sync::atomic::AtomicBool,
}

/// Files kept ready (one per association storing at once is enough; more are created inline).
pub(super) const TMP_POOL: usize = 8;

impl TmpPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(fs::File, PathBuf)>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A file made ahead, if one is ready and still in `.tmp/` (one removed meanwhile, by a
    /// start-up clean-up of the same folder, has no link left: dropped, the next one is taken).
    pub(super) fn take(&self) -> Option<(fs::File, PathBuf)> {
        use std::os::unix::fs::MetadataExt;
        if self.is_closed() {
            return None;
        }
        let mut ready = self.lock();
        let got = loop {
            match ready.pop() {
                Some((file, path)) if file.metadata().is_ok_and(|m| m.nlink() > 0) => {
                    break Some((file, path))
                }
                Some(_) => continue,
                None => break None,
            }
        };
        drop(ready);
        self.taken.notify_one();
        got
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stops making files and removes those still ready (at a graceful stop, so that a stopped
    /// daemon leaves no file in `.tmp/`).
    pub(super) fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        for (_, path) in self.lock().drain(..) {
            let _ = fs::remove_file(path);
        }
        self.taken.notify_all();
    }

    /// Starts the thread that keeps `size` empty files ready in `dir`, named `name(n)`; it ends
    /// once the pool is dropped (with the last clone of its spool), which removes the files still
    /// ready. A failed creation (disk full, permissions) is retried after a second; meanwhile
    /// callers create their own files and report the error themselves.
    pub(super) fn start(
        pool: &std::sync::Arc<TmpPool>,
        dir: PathBuf,
        size: usize,
        name: fn() -> String,
    ) -> std::io::Result<()> {
        let weak = std::sync::Arc::downgrade(pool);
        std::thread::Builder::new()
            .name("spool-tmp-pool".into())
            .spawn(move || {
                // A failure streak is logged once, and its end once.
                let mut failing = false;
                loop {
                    let Some(pool) = weak.upgrade() else {
                        return;
                    };
                    if pool.is_closed() {
                        return;
                    }
                    let mut failed = false;
                    while pool.lock().len() < size {
                        let path = dir.join(name());
                        match fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&path)
                        {
                            Ok(file) => {
                                let mut ready = pool.lock();
                                if pool.is_closed() {
                                    drop(ready);
                                    let _ = fs::remove_file(&path);
                                    return;
                                }
                                ready.push((file, path));
                            }
                            Err(e) => {
                                if !failing {
                                    crate::events::SpoolTmpPoolFailed {
                                        dir: &dir,
                                        reason: &e,
                                    }
                                    .emit();
                                }
                                failing = true;
                                failed = true;
                                break;
                            }
                        }
                    }
                    if failing && !failed {
                        crate::events::SpoolTmpPoolRecovered { dir: &dir }.emit();
                        failing = false;
                    }
                    // Waits for a file to be taken (or a second: the pool is dropped meanwhile, or a
                    // failed creation is tried again), holding no reference to the pool after.
                    let ready = pool.lock();
                    if failed || ready.len() >= size {
                        let _ = pool
                            .taken
                            .wait_timeout(ready, std::time::Duration::from_secs(1));
                    }
                }
            })
            .map(|_| ())
    }
}

impl Drop for TmpPool {
    fn drop(&mut self) {
        for (_, path) in self.lock().drain(..) {
            let _ = fs::remove_file(path);
        }
    }
}

/// Group commit of folder fsyncs: an fsync of a folder makes durable every rename into it done
/// before the fsync started. A caller that renamed a file into `dir` takes a ticket; when no fsync
/// of `dir` is running it runs one covering every ticket taken so far, otherwise it waits for the
/// running one to end and then, unless a later one already covered it, runs the next. With N
/// associations storing into the same folder, one fsync answers up to N instances.
#[derive(Debug, Default)]
pub struct DirSync {
    state: Mutex<std::collections::HashMap<PathBuf, DirSlot>>,
    done: std::sync::Condvar,
    /// Held while a received instance is renamed into its incoming folder (creating it).
    create: Mutex<()>,
}

#[derive(Debug, Default)]
pub(super) struct DirSlot {
    /// Tickets handed out (renames done).
    taken: u64,
    /// Every ticket up to this one is covered by a completed fsync.
    synced: u64,
    /// Tickets up to this one were covered by an fsync that failed: they fail too (an fsync error
    /// is reported once; a later fsync of the folder may succeed without the lost entries).
    failed: u64,
    running: bool,
    waiters: usize,
}

impl DirSync {
    pub(super) fn create_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.create.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn lock_state(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<PathBuf, DirSlot>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once a folder fsync that started after this call has completed.
    pub fn sync(&self, dir: &Path) -> std::io::Result<()> {
        let mut map = self.lock_state();
        let ticket = {
            let slot = map.entry(dir.to_path_buf()).or_default();
            slot.taken += 1;
            slot.waiters += 1;
            slot.taken
        };
        let result = loop {
            let Some(slot) = map.get_mut(dir) else {
                break Err(std::io::Error::other("folder sync state lost"));
            };
            if ticket <= slot.failed {
                break Err(std::io::Error::other(format!(
                    "an fsync of {} failed",
                    dir.display()
                )));
            }
            if ticket <= slot.synced {
                break Ok(());
            }
            if slot.running {
                map = self.done.wait(map).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            slot.running = true;
            let target = slot.taken;
            drop(map);
            let r = sync_dir(dir);
            map = self.lock_state();
            if let Some(slot) = map.get_mut(dir) {
                slot.running = false;
                match &r {
                    Ok(()) => slot.synced = slot.synced.max(target),
                    Err(_) => slot.failed = slot.failed.max(target),
                }
            }
            self.done.notify_all();
            if let Err(e) = r {
                break Err(e);
            }
        };
        if let Some(slot) = map.get_mut(dir) {
            slot.waiters -= 1;
            if slot.waiters == 0 && !slot.running {
                map.remove(dir);
            }
        }
        result
    }
}
