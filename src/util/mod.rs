//! Layer 0, the floor: small helpers every layer may use (the wall clock, folder fsync).
//!
//! Layering rule (see `scripts/layers.sh`): a module imports only from layers below it. This folder
//! imports nothing from the crate.

pub mod clock;
pub mod dn;
pub mod fs;
pub mod heartbeat;
