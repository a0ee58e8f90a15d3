//! `/healthz` and `/metrics` on a loopback port (axum; Prometheus text format from
//! `prometheus-client`).

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use tokio::sync::watch;

use crate::metrics::{Heartbeats, Metrics};

/// Serves until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    beats: Arc<Heartbeats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let m = metrics.clone();
    let app = Router::new()
        .route(
            "/healthz",
            get(move || {
                let beats = beats.clone();
                async move {
                    // The same rule as the systemd watchdog (`Heartbeats::health`).
                    match beats.health() {
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                        Err(stale) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("stalled: {}\n", stale.join(", ")),
                        ),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                        .into_response()
                }
            }),
        );
    let mut stop = shutdown.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = shutdown.changed().await;
    });
    // A graceful stop waits for requests in flight, and a client that never finishes its request
    // head would hold the daemon's stop until its deadline (20 s): requests get STOP_GRACE after
    // the signal, then the server and its connections are dropped.
    tokio::select! {
        _ = server => {}
        _ = async {
            let _ = stop.changed().await;
            tokio::time::sleep(STOP_GRACE).await;
        } => {}
    }
}

/// How long requests in flight may still run after the stop signal.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
