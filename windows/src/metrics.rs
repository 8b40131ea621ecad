//! Prometheus metrics (`clickstream_windows_*`) and the `/metrics`, `/health` endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::Error;

pub struct Metrics {
    registry: Registry,
    /// Messages acknowledged by Kafka, by `kind`: `first` (revision 1) or `correction`.
    pub published: Family<Vec<(String, String)>, Counter>,
    /// Checks (closed windows computed and compared with the topic) that completed.
    pub checks: Counter,
    /// Checks that failed on ClickHouse (retried at the next interval).
    pub check_failures: Counter,
    /// Messages read back from the topic at start.
    pub read_back: Counter,
    /// The start of the newest window published, Unix seconds.
    pub last_window_start: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("clickstream_windows");
        let metrics = Metrics {
            registry: Registry::default(),
            published: Family::default(),
            checks: Counter::default(),
            check_failures: Counter::default(),
            read_back: Counter::default(),
            last_window_start: Gauge::default(),
        };
        registry.register(
            "published",
            "Window messages acknowledged by Kafka, by kind (first, correction)",
            metrics.published.clone(),
        );
        registry.register(
            "checks",
            "Completed checks of closed windows",
            metrics.checks.clone(),
        );
        registry.register(
            "check_failures",
            "Checks that failed on ClickHouse (retried)",
            metrics.check_failures.clone(),
        );
        registry.register(
            "read_back",
            "Messages read back from the topic at start",
            metrics.read_back.clone(),
        );
        registry.register(
            "last_window_start_seconds",
            "Start of the newest window published (Unix seconds)",
            metrics.last_window_start.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    pub fn published(&self, kind: &str) -> Counter {
        self.published
            .get_or_create(&vec![("kind".to_owned(), kind.to_owned())])
            .clone()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("encode metrics");
        out
    }
}

/// Binds `addr` and serves `/metrics` and `/health` until `shutdown`.
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, Error> {
    let app = clickstream_status::metrics(move || metrics.render())
        .route("/health", get(|| async { "ok\n" }));
    clickstream_status::serve(addr, app, async move { shutdown.cancelled().await })
        .await
        .map_err(|e| {
            Error::Settings(format!(
                "invalid value for `http_addr`: cannot listen on {addr}: {e}"
            ))
        })
}
