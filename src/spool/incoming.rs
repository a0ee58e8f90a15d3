//! Receiving one instance into the spool's `.tmp/` ([`Incoming`]) and the group-committed folder
//! fsync that makes its rename durable ([`DirSync`]). See the durability argument in `super`.

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
