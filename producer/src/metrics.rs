//! Prometheus metrics and the `/metrics` + `/health` endpoint (`--metrics-addr`, off by
//! default). Names are stable and documented in the README:
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `clickstream_producer_sent_total` | counter | messages handed to the producer (refused ones included) |
//! | `clickstream_producer_delivered_total{partition}` | counter | messages acknowledged by the broker |
//! | `clickstream_producer_failed_total` | counter | messages refused at once or failed after librdkafka's retries |
//!
//! `sent - delivered - failed` is what is still in flight. `/health` answers 200 once the topic's
//! metadata is known and messages flow, 503 before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

use crate::Error;

type Labels = Vec<(String, String)>;

/// The producer's counters; cheap to update from the delivery callback's thread.
pub struct Metrics {
    registry: Registry,
    /// Messages handed to the producer, refused ones included.
    pub sent: Counter,
    /// Messages acknowledged by the broker, by partition.
    pub delivered: Family<Labels, Counter>,
    /// Messages refused at once or failed after the producer's retries.
    pub failed: Counter,
    producing: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("clickstream_producer");
        let sent = Counter::default();
        let delivered = Family::<Labels, Counter>::default();
        let failed = Counter::default();
        registry.register(
            "sent",
            "Messages handed to the producer (refused ones included)",
            sent.clone(),
        );
        registry.register(
            "delivered",
            "Messages acknowledged by the broker, by partition",
            delivered.clone(),
        );
        registry.register(
            "failed",
            "Messages refused at once or failed after the producer's retries",
            failed.clone(),
        );
        Metrics {
            registry,
            sent,
            delivered,
            failed,
            producing: AtomicBool::new(false),
        }
    }

    /// Counts one acknowledged message of `partition`.
    pub fn delivered_to(&self, partition: i32) {
        self.delivered
            .get_or_create(&vec![("partition".to_owned(), partition.to_string())])
            .inc();
    }

    /// Whether `/health` reports healthy: set once messages flow.
    pub fn set_producing(&self, producing: bool) {
        self.producing.store(producing, Ordering::SeqCst);
    }

    pub fn is_producing(&self) -> bool {
        self.producing.load(Ordering::SeqCst)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The running endpoint; dropping it stops the server.
pub struct Endpoint {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Endpoint {
    /// The bound address (port 0 in `--metrics-addr` picks a free one).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds `addr` and serves `/metrics` and `/health` until the returned [`Endpoint`] is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<Endpoint, Error> {
    let rendered = metrics.clone();
    let app = clickstream_status::metrics(move || rendered.render())
        .route(
            "/health",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.is_producing() {
                    (StatusCode::OK, "ok\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                }
            }),
        )
        .with_state(metrics);
    let (stop, stopped) = oneshot::channel::<()>();
    // A dropped sender completes the receiver with an error: that is the stop signal.
    let stopped = async move {
        let _ = stopped.await;
    };
    let bound = clickstream_status::serve(addr, app, stopped)
        .await
        .map_err(|source| Error::MetricsEndpoint { addr, source })?;
    Ok(Endpoint {
        addr: bound,
        _stop: stop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_their_documented_names() {
        let metrics = Metrics::new();
        metrics.sent.inc_by(5);
        metrics.delivered_to(0);
        metrics.delivered_to(0);
        metrics.delivered_to(2);
        metrics.failed.inc();
        let text = metrics.render();
        for line in [
            "# TYPE clickstream_producer_sent counter",
            "clickstream_producer_sent_total 5",
            "clickstream_producer_delivered_total{partition=\"0\"} 2",
            "clickstream_producer_delivered_total{partition=\"2\"} 1",
            "clickstream_producer_failed_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn endpoint_serves_metrics_and_health_until_dropped() {
        let metrics = Arc::new(Metrics::new());
        let endpoint = serve("127.0.0.1:0".parse().unwrap(), metrics.clone())
            .await
            .unwrap();
        let addr = endpoint.addr();
        assert_ne!(addr.port(), 0);

        assert_eq!(get(addr, "/health").await, (503, "starting\n".into()));
        metrics.set_producing(true);
        assert_eq!(get(addr, "/health").await, (200, "ok\n".into()));
        metrics.sent.inc_by(3);
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("clickstream_producer_sent_total 3"), "{body}");
        assert_eq!(get(addr, "/nothing").await.0, 404);

        drop(endpoint);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "still listening after drop"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_busy_address_fails_naming_the_flag() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error = serve(addr, Arc::new(Metrics::new()))
            .await
            .err()
            .expect("port in use");
        assert!(error.to_string().contains("--metrics-addr"), "{error}");
    }
}
