//! `/healthz` and `/metrics` on a loopback port (axum; Prometheus text format from
//! `prometheus-client`).

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::metrics::{Heartbeats, Metrics};

/// Serves until shutdown.
pub async fn serve(
    listener: TcpListener,
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
    let listener = Bounded {
        inner: listener,
        slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    };
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

/// Connections served at once; one more waits in the kernel's backlog until one closes.
const MAX_CONNECTIONS: usize = 32;
/// A connection whose client sends nothing for this long is closed: a request head that never
/// ends, or a kept-alive connection nobody uses (a scraper opens a new one).
const IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// The HTTP listener: at most [`MAX_CONNECTIONS`] connections, each closed after [`IDLE`] of
/// silence from its client, so that no local process can hold the daemon's descriptors (or its
/// `/healthz`) with connections that say nothing.
struct Bounded {
    inner: TcpListener,
    slots: Arc<Semaphore>,
}

impl axum::serve::Listener for Bounded {
    type Io = Guarded;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed; were it, connections would go unbounded, not stop.
        let permit = self.slots.clone().acquire_owned().await.ok();
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let guarded = Guarded {
            inner: stream,
            _permit: permit,
            idle: Box::pin(tokio::time::sleep(IDLE)),
        };
        (guarded, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// One HTTP connection: its slot, and the deadline its client's next bytes must meet.
struct Guarded {
    inner: TcpStream,
    _permit: Option<OwnedSemaphorePermit>,
    idle: Pin<Box<Sleep>>,
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.idle.as_mut().reset(Instant::now() + IDLE);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "HTTP client silent",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
