//! ct-harmonizer: standardises the reconstruction kernel and resolution of CT series with ONNX
//! translator networks and writes the result as a new, derived DICOM series.
//!
//! # Pipeline map
//!
//! Data flows one way; each stage is one module that owns its state and hands owned, typed messages
//! to the next over a bounded channel (see `../shared/DESIGN.md` §2).
//!
//! ```text
//! ingest      C-STORE SCP (ingest::scp, DICOM TLS in tls), watched folder (ingest::watch),
//!             files and folders for `process` (ingest::files); every untrusted data set or file
//!             passes the bounded pre-parser (ingest::guard) before dicom-rs reads it
//!                                                                        -> Arrival / SliceHeader
//!   -> spool      durable instance store, fsync before the C-STORE success (spool)
//!   -> series     group by (StudyUID, SeriesUID); complete on quiet time (series) -> ReadySeries
//!   -> route      rules on tags and AE titles -> a plan (route)
//!   -> volume     sort along the slice normal, check geometry (volume::geometry),
//!                 decode to HU slab by slab (volume::slab, volume::decode)  -> Slab
//!   -> translate  ONNX Runtime session, tiles with valid-core stitching (translate) -> OutSlab
//!   -> derive     derived DICOM instances, deterministic UIDs, atomic publish (derive)
//!   -> outbox     one durable job per (series, destination) (forward::outbox)  -> Job
//!   -> forward    C-STORE SCU or folder, back-off, dead letter (forward::scu, forward::worker)
//!   -> done       spool cleaned once every destination acknowledged
//! ```
//!
//! `process` drives volume → translate → derive for the one-shot command; `pipeline` drives route →
//! derive → outbox for the daemon on its own thread (it owns the ONNX sessions); `daemon` wires the
//! stages, recovers unfinished work at start-up and handles signals. Around them: `config` (settings),
//! `events` (named log events), `audit` (the audit trail: one record per association, series and
//! delivery), `metrics` (Prometheus counters and stage heartbeats), `http`
//! (`/healthz`, `/metrics`), `systemd` (notify and watchdog), `status` and `jobs` (the operator's
//! `status` and `jobs` commands, reading the running daemon and its state folder), `preview`
//! (input/output/difference PNG) and `samples` (the real head CT of Debian's `invesalius-examples` and synthetic phantoms, for the
//! demo, tests and benchmarks).

pub mod audit;
pub mod config;
pub mod daemon;
pub mod derive;
pub mod events;
pub mod forward;
pub mod http;
pub mod ingest;
pub mod jobs;
pub mod metrics;
pub mod pipeline;
pub mod preview;
pub mod process;
pub mod route;
pub mod samples;
pub mod series;
pub mod spool;
pub mod status;
pub mod supervisor;
pub mod systemd;
pub mod tls;
pub mod translate;
pub mod volume;
