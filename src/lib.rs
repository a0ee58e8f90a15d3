//! ct-harmonizer: standardises the reconstruction kernel and resolution of CT series with ONNX
//! translator networks and writes the result as a new, derived DICOM series.
//!
//! # Layers
//!
//! Modules are stacked in layers; a module imports only from layers below it (the rule is written
//! at the top of each folder's `mod.rs`, the table is in `scripts/layers.sh`, which `scripts/test.sh`
//! runs). Lowest first:
//!
//! ```text
//! util preview audit      clock, folder fsync, DN parsing, heartbeat cell; preview PNG; audit records
//! config                  settings
//! metrics                 counters, gauges, stage heartbeats (feature "daemon"; reads the job queue
//!                         through metrics::JobQueue, which the outbox implements)
//! events                  one struct per log event; emit() logs and counts (the stages' events
//!                         with feature "daemon")
//! dicom/                  headers, pre-parser (guard), files -> headers -> series, geometry, slabs
//!                         of HU, writer toolkit (UIDs, Part 10), DIMSE codec
//! model/  samples         manifest, ONNX Runtime, tiling, Translator (translate_slabs, the one
//!                         driver over a volume; translate_volume); test/demo fixtures (testkit)
//! harmonize/              THE core: a complete series + a model -> a derived series (derive, template)
//! ---- feature "daemon" from here on ----
//! spool/  outbox          durable instance store; durable job queue (parsed once, indexed in memory)
//! tls                     DICOM TLS
//! series  route           completion on quiet time (Arrival, ReadySeries); routing rules -> plan
//! ingest/ forward/        C-STORE SCP and watched folder; C-STORE SCU / folder delivery
//! pipeline jobs supervisor  processing stage; operator's `jobs` command; the tasks and threads of
//!                         `serve` (stages, association tasks, the processing thread) and their stop
//! status http systemd     operator's `status`; /healthz, /metrics; notify and watchdog
//! daemon process          `serve`; `process` (the one-shot command, no daemon needed)
//! ```
//!
//! # What one instance goes through in the daemon
//!
//! ```text
//! ingest::scp / ingest::watch   every untrusted data set or file passes dicom::guard before
//!                               dicom-rs reads it; the instance is written to the spool and
//!                               fsynced before the C-STORE success (plain calls)
//!   --Arrival, tokio mpsc (256)-->      series::Tracker (async task): completes a series on quiet
//!                                       time or expected count, hands its files over to a version
//!                                       folder of the spool
//!   --ReadySeries, tokio mpsc (16)-->   pipeline::Processor (its own thread: it owns the ONNX
//!                                       sessions): reads the version's headers once
//!                                       (dicom::files::scan_keeping: each SliceHeader keeps its
//!                                       routing tags and header data set), route::route picks the
//!                                       rule and plan from them (plain calls), then
//!                                       per model harmonize::process_series (plain call; inside, a
//!                                       reader, the inference and a writer thread over bounded
//!                                       std channels of `translate.slabs_in_flight` slabs); chained
//!                                       models read the previous model's output back from disk
//!   --one job file per (series, destination) in the outbox (durable), then a wake (mpsc, 16)-->
//!                                       forward::worker::Forwarder: one lane per destination,
//!                                       C-STORE SCU or folder copy, back-off, dead letter
//!   --> the spool version is deleted once every destination acknowledged
//! ```
//!
//! `daemon::serve` starts every stage under a `supervisor::Supervisor`: one task per stage (series,
//! forward, SCP, watch, HTTP, systemd), the SCP's association tasks in a tracker, the processing
//! thread; a stage that ends while the daemon runs is logged (`stage_ended`); at shutdown the signal
//! goes to every stage, and stages, associations (a C-STORE in flight is answered) and the thread are
//! awaited within their deadlines.
//!
//! `process` reads files and folders (dicom::files), groups them (dicom::series) and calls the same
//! harmonize::process_series per series. Around the stages: `config` (settings), `events` (named
//! log events), `audit` (one record per association, series and delivery), `metrics` (Prometheus
//! counters and stage heartbeats), `http` (`/healthz`, `/metrics`), `systemd` (notify and
//! watchdog), `status` and `jobs` (the operator's commands, reading the running daemon and its state
//! folder), `preview` (input/output/difference PNG) and `samples` (feature "testkit": the real head
//! CT of Debian's `invesalius-examples` and synthetic phantoms, for the demo, tests, benchmarks and
//! training).

#[cfg(feature = "daemon")]
pub mod audit;
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod dicom;
pub mod events;
#[cfg(feature = "daemon")]
pub mod forward;
pub mod harmonize;
#[cfg(feature = "daemon")]
pub mod http;
#[cfg(any(feature = "daemon", feature = "wire"))]
pub mod ingest;
#[cfg(feature = "daemon")]
pub mod jobs;
#[cfg(feature = "daemon")]
pub mod metrics;
pub mod model;
#[cfg(feature = "daemon")]
pub mod outbox;
#[cfg(feature = "daemon")]
pub mod pipeline;
pub mod preview;
pub mod process;
#[cfg(feature = "daemon")]
pub mod route;
#[cfg(feature = "testkit")]
pub mod samples;
#[cfg(feature = "daemon")]
pub mod series;
#[cfg(feature = "daemon")]
pub mod spool;
#[cfg(feature = "daemon")]
pub mod status;
#[cfg(feature = "daemon")]
pub mod supervisor;
#[cfg(feature = "daemon")]
pub mod systemd;
#[cfg(feature = "daemon")]
pub mod tls;
pub mod util;
