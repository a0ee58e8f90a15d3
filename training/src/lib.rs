//! `ct-training`: trains, exports and evaluates the ct-harmonizer translator networks (DESIGN §5).
//!
//! The library half of the `ct-train` binary: [`onnx`] is a small hand-declared ONNX writer shared
//! by every exporter, and [`export`] writes models in the contract format the daemon reads
//! (`model.onnx` + `model.toml`, DESIGN §3).

pub mod export;
pub mod onnx;
