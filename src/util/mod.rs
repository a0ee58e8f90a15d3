//! Layer 0, the floor: small helpers every layer may use (the wall clock, folder fsync).
//!
//! Layering rule (see `scripts/layers.sh`): a module imports only from layers below it. This folder
//! imports nothing from the crate.

pub mod clock;
pub mod dn;
pub mod fs;
pub mod heartbeat;
pub mod log;

/// The message a caught panic carried (`&str` or `String` payloads; anything else says so).
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
