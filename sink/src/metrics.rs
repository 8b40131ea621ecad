//! Prometheus metrics. Names are stable and documented in the README.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::freshness::Freshness;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

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
    /// Offset commits that failed (retried; a range not committed is replayed and skipped).
    pub commit_failures: Counter,
    pub batch_rows: Histogram,
    pub insert_duration_seconds: Histogram,
    /// Event time to insert time.
    pub event_to_insert_seconds: Histogram,
    pub consumer_lag: Family<Labels, Gauge>,
    pub buffered_rows: Gauge,
    /// Memory of the rows waiting to be inserted (their encoding and index).
    pub buffered_bytes: Gauge,
    /// INSERTs running now (one per partition at most).
    pub inserts_in_flight: Gauge,
    /// Memory of the rows being inserted.
    pub in_flight_bytes: Gauge,
    pub paused_partitions: Gauge,
    /// 1 while the sink has work but made no progress for `stall_timeout_ms`.
    pub stalled: Gauge,
    /// INSERTs split because ClickHouse refused them as too big, by reason.
    pub insert_splits: Family<Labels, Counter>,
    /// Times the table's structure changed under the sink and was followed.
    pub schema_changes: Counter,
    /// Partitions whose commit the group coordinator refused (the assignment was lost).
    pub commits_fenced: Counter,
    /// Dead letters whose payload was cut to fit the dead-letter topic.
    pub dead_letters_truncated: Counter,
    /// Dead letters written again on a replay (the topic holds an earlier copy: key them by
    /// source topic, partition and offset).
    pub dead_letters_repeated: Counter,
    /// Rows whose event id was seen at another offset of the partition shortly before.
    pub duplicate_event_ids: Counter,
    /// Rows a refused insert left in the table (and in the views fed before the failing
    /// one), deleted before inserting them again.
    pub partial_rows_removed: Counter,
    /// Rows read again that ClickHouse dropped as duplicates of an insert whose rows are gone
    /// (its token remembered), inserted again under a new token.
    pub rows_dropped_as_duplicates: Counter,
    /// Rollup keys (windows, sessions, days, ...) rebuilt from the table after such a delete.
    pub rollup_keys_rebuilt: Counter,
    /// Newest event time among the rows written, by partition (unix seconds).
    pub newest_event_time_seconds: Family<Labels, FloatGauge>,
    /// Seconds since the partition's last insert while it has lag (0 when caught up).
    pub seconds_since_insert: Family<Labels, FloatGauge>,
    /// What the freshness gauges are computed from ([`crate::freshness`]).
    pub freshness: Mutex<Freshness>,
    /// Inserts a replay could reach back over ([`crate::dedup_guard`]).
    pub dedup_window_reach: Gauge,
    /// The smallest deduplication window of the tables written (-1: not known).
    pub dedup_window: Gauge,
    /// 1 while the reach is above half the window.
    pub dedup_window_at_risk: Gauge,
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
            buffered_bytes: Gauge::default(),
            inserts_in_flight: Gauge::default(),
            in_flight_bytes: Gauge::default(),
            paused_partitions: Gauge::default(),
            stalled: Gauge::default(),
            insert_splits: Family::default(),
            schema_changes: Counter::default(),
            commits_fenced: Counter::default(),
            dead_letters_truncated: Counter::default(),
            dead_letters_repeated: Counter::default(),
            duplicate_event_ids: Counter::default(),
            partial_rows_removed: Counter::default(),
            rows_dropped_as_duplicates: Counter::default(),
            rollup_keys_rebuilt: Counter::default(),
            newest_event_time_seconds: Family::default(),
            seconds_since_insert: Family::default(),
            freshness: Mutex::default(),
            dedup_window_reach: Gauge::default(),
            dedup_window: Gauge::default(),
            dedup_window_at_risk: Gauge::default(),
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
            "buffered_bytes",
            "Memory of the rows waiting to be inserted",
            metrics.buffered_bytes.clone(),
        );
        registry.register(
            "inserts_in_flight",
            "INSERTs running now (at most one per partition)",
            metrics.inserts_in_flight.clone(),
        );
        registry.register(
            "in_flight_bytes",
            "Memory of the rows being inserted",
            metrics.in_flight_bytes.clone(),
        );
        registry.register(
            "paused_partitions",
            "Partitions paused because the buffer has been full for a second",
            metrics.paused_partitions.clone(),
        );
        registry.register(
            "stalled",
            "1 while there is work but no progress for stall_timeout_ms",
            metrics.stalled.clone(),
        );
        registry.register(
            "insert_splits",
            "INSERTs split because they were too big, by reason",
            metrics.insert_splits.clone(),
        );
        registry.register(
            "schema_changes",
            "Changes of the table structure the sink followed",
            metrics.schema_changes.clone(),
        );
        registry.register(
            "commits_fenced",
            "Commits refused by the group coordinator (assignment lost)",
            metrics.commits_fenced.clone(),
        );
        registry.register(
            "dead_letters_truncated",
            "Dead letters whose payload was cut to fit the topic",
            metrics.dead_letters_truncated.clone(),
        );
        registry.register(
            "dead_letters_repeated",
            "Dead letters written again on a re-read below the newest offset ClickHouse holds (a crash, a rebalance, a group reset; not a replay, which deletes its range first)",
            metrics.dead_letters_repeated.clone(),
        );
        registry.register(
            "duplicate_event_ids",
            "Rows whose event id was seen at another offset shortly before (both stored)",
            metrics.duplicate_event_ids.clone(),
        );
        registry.register(
            "partial_rows_removed",
            "Rows a refused insert left in the table, deleted before inserting again",
            metrics.partial_rows_removed.clone(),
        );
        registry.register(
            "rows_dropped_as_duplicates",
            "Rows read again that ClickHouse dropped as duplicates of an insert whose rows are \
             gone (then inserted again under a new token)",
            metrics.rows_dropped_as_duplicates.clone(),
        );
        registry.register(
            "rollup_keys_rebuilt",
            "Rollup keys rebuilt from the table after a refused insert's rows were deleted, or \
             after rows deleted by hand were read again",
            metrics.rollup_keys_rebuilt.clone(),
        );
        registry.register(
            "newest_event_time_seconds",
            "Newest event time among the rows written, by partition (unix seconds)",
            metrics.newest_event_time_seconds.clone(),
        );
        registry.register(
            "seconds_since_insert",
            "Seconds since the partition's last insert while it has lag (0 when caught up)",
            metrics.seconds_since_insert.clone(),
        );
        registry.register(
            "dedup_window_reach",
            "Inserts since the oldest uncommitted one (how far back a replay could reach)",
            metrics.dedup_window_reach.clone(),
        );
        registry.register(
            "dedup_window",
            "Smallest deduplication window of the tables written, in inserts (-1: unknown)",
            metrics.dedup_window.clone(),
        );
        registry.register(
            "dedup_window_at_risk",
            "1 while a replay could reach back over more than half the deduplication window",
            metrics.dedup_window_at_risk.clone(),
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
