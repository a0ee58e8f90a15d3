//! Ingest stage of the daemon: the C-STORE SCP ([`scp`]) and the watched folder ([`watch`]). Both
//! store into the spool and hand an [`crate::series::Arrival`] to the series stage. (Files and folders
//! given to `process` are read by [`crate::dicom::files`].)
//!
//! Layering rule (checked by `scripts/layers.sh`): a module imports only from layers below it.
//! Ingest uses the series stage's types (`Arrival`, `Recent`), the spool, metrics, tls, audit and the
//! DICOM layer; nothing above (pipeline, daemon) and not the forward stage.

#[cfg(feature = "daemon")]
pub mod accept;
#[cfg(feature = "daemon")]
pub mod scp;
#[cfg(feature = "daemon")]
pub mod watch;
/// Also built alone (feature `wire`) for its fuzz target.
pub mod wire;
