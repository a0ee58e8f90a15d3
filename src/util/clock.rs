//! The wall clock as Unix time: job and marker timestamps, `*_timestamp_seconds` gauges, heartbeats.
//! (Waiting and timeouts in async code use `tokio::time`, not this.)

/// Now in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Now as Unix seconds (for the `*_timestamp_seconds` gauges).
pub fn now_seconds() -> f64 {
    now_ms() as f64 / 1000.0
}
