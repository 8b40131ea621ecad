//! clickstream-sink: Kafka → ClickHouse, micro-batched, exactly once, nothing lost, never
//! stuck silently.
//!
//! ```text
//!  Kafka ─recv─▶ intake ──────────────▶ Batcher ──▶ write tasks, one per INSERT ───────▶ commit
//!               (decode, encode once   (per partition  (the partitions of a flush    last+1
//!                into the partition's   segments,       in one INSERT; apart when     per
//!                RowBinary buffer,      pure policy)    refused: split, bisect,       partition
//!                                                       follow an ALTER)
//!                already-stored check)                     │ rejected rows: read back
//!                  │ invalid                               ▼ from Kafka
//!                  ▼                                    dead-letter topic
//!           dead-letter topic
//! ```
//!
//! Guarantees:
//! - **Offsets travel with the rows**: a partition's offsets are committed only after every
//!   offset up to it was inserted or dead-lettered (acknowledged); one insert per partition
//!   is in flight at a time, so each partition commits in offset order. The partitions of
//!   one flush go in one INSERT (`partitions_per_insert`), each committed after it; a big
//!   flush goes in as many INSERTs at once as the rate limit's saved credit pays for, and
//!   the next flush waits for them all to end (until its oldest row has waited the flush
//!   interval), so the partitions stay together.
//! - **Exactly once** per Kafka record (default): each INSERT (and each part of a split one)
//!   carries a deterministic `insert_deduplication_token`, and the sink skips what ClickHouse
//!   already holds when a partition is assigned (looked up in windows as it reads) and again
//!   before each insert. Crashes, replays with other batch boundaries, rebalances and group
//!   resets add no duplicate.
//! - **Kafka is the buffer**: of a message the sink keeps only its row, encoded once for the
//!   table and held compressed as its INSERT sends it ([`rows`], [`packed`]); the rare message
//!   needed again (a rejected row, rows to encode for a changed table) is read back from the
//!   topic ([`refetch`]).
//! - **Nothing lost, nothing stuck silently**: every failure is classified in one place
//!   ([`writer::class_of`]) and retried by one policy ([`retry`]), split, followed (a changed
//!   table) or isolated (rejected rows); what cannot resolve itself stops the sink with an
//!   error that says what to do; no progress for `stall_timeout_ms` makes it report itself
//!   stalled ([`stall`]).
//! - **Freshness is a number**: each row carries its Kafka message time (`kafka_timestamp`,
//!   where the table has the column), so pipeline latency and event lateness are apart;
//!   per-partition gauges say how new the newest written event is and how long a partition
//!   with lag has gone without an insert ([`freshness`]); [`dedup_guard`] warns before a replay
//!   could reach past the tables' deduplication windows.
//!
//! Intake decodes each message on the consume loop, in order, straight into its partition's
//! buffer (a second decoding thread cost more CPU than it saved: see [`intake`]).
//!
//! Layout, in the order data meets it: [`settings`] · [`consumer`] (group consumer,
//! rebalances, pause/resume, commit) · [`pipeline`] (the loop, the write tasks and the drain) · [`intake`] (decode, replay check, dead-letter routing) · [`rows`]
//! (rows encoded once, held packed: [`packed`]) · [`batch`] (pure policy) · [`flush`] (write + commit of one segment)
//! · [`schema`] (row encoding for the live table) · [`writer`] (ClickHouse, failure classes;
//! its client: [`clickhouse_client`]) · [`rollups`] (the views' keys rebuilt after a refused
//! insert, and by `replay`) · [`refetch`] (messages read back) · [`dead_letter`] ·
//! [`ownership`] (rebalances, fencing) · [`retry`] · [`stall`] · [`freshness`] ·
//! [`dedup_guard`] · [`metrics`] · [`http`] ·
//! [`kafka_auth`] (refused logins stop the sink).
//!
//! Beside the pipeline, [`ops`]: the operations commands `verify`, `replay` and `dlq` that
//! check and repair what landed (the binary's `commands.rs` gives them their arguments).

pub mod batch;
pub mod clickhouse_client;
pub mod consumer;
pub mod dead_letter;
pub mod dedup_guard;
pub mod flush;
pub mod freshness;
pub mod http;
pub mod intake;
pub mod kafka_auth;
pub mod metrics;
pub mod ops;
pub mod ownership;
pub mod packed;
pub mod pipeline;
pub mod refetch;
pub mod retry;
pub mod rollups;
pub mod row;
pub mod rows;
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
    /// The broker refused the sink's login, TLS handshake or access (with what to check).
    #[error("kafka authentication: {0}")]
    KafkaAuth(String),
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
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    let health = Arc::new(http::Health::default());
    if settings.http_addr != "off" {
        let bound = http::serve(&settings.http_addr, health.clone(), shutdown.clone()).await?;
        tracing::info!(addr = %bound, "serving /metrics, /health, /ready");
    }
    pipeline::run(settings, shutdown, health).await
}
