//! Named events, one struct per event (vector's style): its fields are the log line's structured
//! fields, and its `emit()` writes the line and counts the metric that reports the same thing (an
//! event that counts takes the [`Metrics`](crate::metrics::Metrics) as `emit`'s argument). Nothing
//! outside this folder writes `event = "..."`: a new log line that matters is a new struct here.
//!
//! Conventions: structured fields first, then a short lower-case message; the event name, level
//! and field names are a contract (tests, the README's audit schema and operators' queries read
//! them). Logs name UIDs, file paths and AE titles, never patient names or IDs. ERROR is kept for
//! what an operator must act on; WARN for what went wrong and was handled; INFO for progress.
//!
//! Grouped by the stage that emits them: [`model`] (the harmonize core: runtime, models, input
//! files, one series), [`ingest`] (the SCP and the watched folder), [`series`] (the series and
//! processing stages), [`forward`] (outbox and forwarding) and [`daemon`] (life cycle, reload,
//! recovery, watchdog).

// The daemon's events (its stages' count their metrics) exist with the `daemon` feature.
#[cfg(feature = "daemon")]
mod daemon;
#[cfg(feature = "daemon")]
mod forward;
#[cfg(feature = "daemon")]
mod ingest;
mod model;
#[cfg(feature = "daemon")]
mod series;

#[cfg(feature = "daemon")]
pub use daemon::*;
#[cfg(feature = "daemon")]
pub use forward::*;
#[cfg(feature = "daemon")]
pub use ingest::*;
pub use model::*;
#[cfg(feature = "daemon")]
pub use series::*;
