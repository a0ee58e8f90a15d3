//! `ct-training`: trains, exports and evaluates the ct-harmonizer translator networks (DESIGN §5).
//!
//! The library half of the `ct-train` binary: [`onnx`] is a small hand-declared ONNX writer shared
//! by every exporter, and [`export`] writes models in the contract format the daemon reads
//! (`model.onnx` + `model.toml`, DESIGN §3).

pub mod data;
pub mod eval;
pub mod export;
pub mod export_model;
pub mod lsq;
pub mod model;
pub mod nifti;
pub mod onnx;
pub mod phantom;
pub mod plots;
pub mod revgan;
pub mod synth;
pub mod train;
