//! `/metrics` (Prometheus text), `/health` (the process runs) and `/ready` (checked ClickHouse,
//! consuming, and not stalled) on `http_addr`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::SinkError;
use crate::metrics::Metrics;
use crate::stall::Stall;

/// What the endpoint reports.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
    pub metrics: Arc<Metrics>,
    pub stall: Arc<Stall>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Consuming and not stalled.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.stall.is_stalled()
    }
}

/// Binds `addr` and serves until `shutdown`; returns the bound address (port 0 picks one).
pub async fn serve(
    addr: &str,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, SinkError> {
    let metrics = health.metrics.clone();
    let app = clickstream_status::metrics(move || metrics.render())
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(|State(h): State<Arc<Health>>| async move {
                if h.is_ready() {
                    (StatusCode::OK, "ready\n".to_owned())
                } else if h.stall.is_stalled() {
                    let cause = h.stall.cause().unwrap_or_default();
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("stalled: {cause}\n"),
                    )
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned())
                }
            }),
        )
        .with_state(health);
    clickstream_status::serve(addr, app, async move { shutdown.cancelled().await })
        .await
        .map_err(|e| {
            SinkError::Settings(format!(
                "invalid value for `http_addr`: cannot listen on {addr}: {e}"
            ))
        })
}
