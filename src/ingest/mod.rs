//! Ingest stage. Today: files and folders given to `process`; the C-STORE SCP and the watched folder
//! of the daemon will live beside it.

pub mod scp;
pub mod watch;
