//! ct-harmonizer: standardises the reconstruction kernel and resolution of CT series with ONNX
//! translator networks and writes the result as a new, derived DICOM series.
//!
//! # Pipeline map
//!
//! Data flows one way; each stage is one module that owns its state and hands owned, typed messages
//! to the next over a bounded channel (see `../shared/DESIGN.md` §2).
//!
//! ```text
//! ingest      files and folders (ingest::files)        -> SliceHeader (one per instance)
//!   -> series     group by (StudyUID, SeriesUID)       -> Series
//!   -> volume     sort along the slice normal, check geometry (volume::geometry),
//!                 decode to HU slab by slab (volume::slab, volume::decode) -> Slab
//!   -> translate  ONNX Runtime session, tiles with valid-core stitching (translate) -> OutSlab
//!   -> derive     derived DICOM instances, deterministic UIDs, atomic publish (derive)
//! ```
//!
//! `process` drives these stages for the one-shot command; `config` holds the settings, `events` the
//! named log events, `preview` the input/output/difference PNG, and `samples` the sample series
//! (the real head CT of Debian's `invesalius-examples`, synthetic phantoms) used by the demo and tests.
//! The daemon's stages (C-STORE SCP, spool, routing, outbox and forwarding) come next.

pub mod config;
pub mod daemon;
pub mod derive;
pub mod events;
pub mod forward;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod preview;
pub mod process;
pub mod route;
pub mod samples;
pub mod series;
pub mod spool;
pub mod systemd;
pub mod translate;
pub mod volume;
