//! Prometheus metrics. Names are stable and documented in the README.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    /// Messages read from Kafka.
    pub consumed: Counter,
    /// Rows inserted into ClickHouse (deduplicated replays included).
    pub inserted_rows: Counter,
    /// INSERT statements that succeeded.
    pub inserts: Counter,
    /// Messages sent to the dead-letter topic, by reason.
    pub dead_lettered: Family<Labels, Counter>,
    /// Retried failures, by kind (`transient`) and operation.
    pub retries: Family<Labels, Counter>,
    /// Offsets skipped on replay because ClickHouse already held their rows.
    pub replay_skipped: Counter,
    /// Offset commits that failed (the range is replayed and skipped later).
    pub commit_failures: Counter,
    pub batch_rows: Histogram,
    pub insert_duration_seconds: Histogram,
    /// Event time to insert time.
    pub event_to_insert_seconds: Histogram,
    pub consumer_lag: Family<Labels, Gauge>,
    pub buffered_rows: Gauge,
    pub paused_partitions: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("clickstream_sink");
        let metrics = Metrics {
            consumed: Counter::default(),
            inserted_rows: Counter::default(),
            inserts: Counter::default(),
            dead_lettered: Family::default(),
            retries: Family::default(),
            replay_skipped: Counter::default(),
            commit_failures: Counter::default(),
            batch_rows: Histogram::new(exponential_buckets(10.0, 4.0, 9)),
            insert_duration_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            event_to_insert_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 20)),
            consumer_lag: Family::default(),
            buffered_rows: Gauge::default(),
            paused_partitions: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "consumed",
            "Messages read from Kafka",
            metrics.consumed.clone(),
        );
        registry.register(
            "inserted_rows",
            "Rows inserted into ClickHouse",
            metrics.inserted_rows.clone(),
        );
        registry.register(
            "inserts",
            "Successful INSERT statements",
            metrics.inserts.clone(),
        );
        registry.register(
            "dead_lettered",
            "Messages sent to the dead-letter topic, by reason",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "retries",
            "Retried failures, by operation and kind",
            metrics.retries.clone(),
        );
        registry.register(
            "replay_skipped",
            "Offsets skipped on replay: already in ClickHouse",
            metrics.replay_skipped.clone(),
        );
        registry.register(
            "commit_failures",
            "Failed offset commits",
            metrics.commit_failures.clone(),
        );
        registry.register(
            "batch_rows",
            "Rows per flushed batch",
            metrics.batch_rows.clone(),
        );
        registry.register(
            "insert_duration_seconds",
            "Duration of one INSERT",
            metrics.insert_duration_seconds.clone(),
        );
        registry.register(
            "event_to_insert_seconds",
            "Event time to the end of its INSERT",
            metrics.event_to_insert_seconds.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages behind the high watermark, by partition",
            metrics.consumer_lag.clone(),
        );
        registry.register(
            "buffered_rows",
            "Rows waiting to be inserted",
            metrics.buffered_rows.clone(),
        );
        registry.register(
            "paused_partitions",
            "Partitions paused because the buffer is full",
            metrics.paused_partitions.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn label(key: &str, value: impl ToString) -> Labels {
        vec![(key.to_owned(), value.to_string())]
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
