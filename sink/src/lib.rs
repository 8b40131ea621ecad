//! clickstream-sink: Kafka → ClickHouse, micro-batched, exactly once, nothing lost.
//!
//! ```text
//!  Kafka ──recv──▶ decode (clickstream-event) ──▶ Batcher ──flush task──▶ ClickHouse INSERT
//!                     │ invalid                    (per partition         │ then
//!                     ▼                             segments)             ▼
//!              dead-letter topic ◀── rows ClickHouse rejects        commit last+1
//! ```
//!
//! Guarantees:
//! - **Offsets travel with the rows**: a partition's offsets are committed only after every
//!   offset up to it was inserted or dead-lettered (acknowledged).
//! - **Exactly once** (default): each INSERT carries `insert_deduplication_token =
//!   topic:partition:first-last` (a retried insert is dropped by ClickHouse), and when a
//!   partition is assigned the sink asks ClickHouse which offsets from there on it already
//!   holds (`kafka_progress` view, then the offsets) and skips them. A crash between insert
//!   and commit, or a replay with other batch boundaries, adds no duplicate. A revoke waits
//!   for the in-flight insert of its partitions, so two owners never race.
//! - **Nothing lost**: transient failures are retried (same rows, capped backoff with
//!   jitter); data ClickHouse rejects is isolated by bisection and dead-lettered; a fatal
//!   failure stops the sink without committing.
//!
//! Layout: [`settings`] · [`row`] · [`batch`] (pure policy) · [`ownership`] (rebalances) ·
//! [`writer`] (ClickHouse + failure classification) · [`dead_letter`] · [`flush`] (write +
//! commit) · [`pipeline`] (the loop) · [`metrics`] · [`http`].

pub mod batch;
pub mod dead_letter;
pub mod flush;
pub mod http;
pub mod intake;
pub mod metrics;
pub mod ownership;
pub mod pipeline;
pub mod retry;
pub mod row;
pub mod schema;
pub mod settings;
pub mod stall;
pub mod writer;

use std::sync::Arc;

pub use settings::{Delivery, Settings};
use tokio_util::sync::CancellationToken;

/// The sink's errors, named after what failed; every one stops it (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("settings: {0}")]
    Settings(String),
    #[error("kafka {operation}: {source}")]
    Kafka {
        operation: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("clickhouse {operation}: {source}")]
    ClickHouse {
        operation: &'static str,
        #[source]
        source: writer::Failure,
    },
    #[error("dead-letter topic: {0}")]
    DeadLetter(String),
    #[error("inconsistent: {0}")]
    Inconsistent(String),
    #[error("stopped before the work was done")]
    Stopped,
    #[error("internal: {0}")]
    Internal(String),
}

impl SinkError {
    fn settings(error: config::ConfigError) -> SinkError {
        SinkError::Settings(error.to_string())
    }

    pub(crate) fn kafka(
        operation: &'static str,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> SinkError {
        move |source| SinkError::Kafka { operation, source }
    }

    pub(crate) fn clickhouse(operation: &'static str) -> impl FnOnce(writer::Failure) -> SinkError {
        move |source| SinkError::ClickHouse { operation, source }
    }
}

/// Runs the sink (and its HTTP endpoint unless `http_addr = "off"`) until `shutdown`.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), SinkError> {
    let health = Arc::new(http::Health::default());
    if settings.http_addr != "off" {
        let bound = http::serve(&settings.http_addr, health.clone(), shutdown.clone()).await?;
        tracing::info!(addr = %bound, "serving /metrics, /health, /ready");
    }
    pipeline::run(settings, shutdown, health).await
}
