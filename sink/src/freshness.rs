//! Per-partition freshness: "is the table fresh right now" as two numbers.
//!
//! - `clickstream_sink_newest_event_time_seconds{partition}`: the newest event time among the
//!   rows of the partition written so far (unix seconds), so "the table holds events up to
//!   12:03:07" is read, not guessed;
//! - `clickstream_sink_seconds_since_insert{partition}`: seconds since the partition's last
//!   successful insert *while it has consumer lag*; 0 when it has caught up (nothing to write is
//!   not stale). A partition that has lag and was never written counts from when its lag was
//!   first seen.
//!
//! Lag comes from librdkafka's statistics (every 5 s), inserts from the write stage; the gauges
//! are set once a second (the pipeline's tick). Times are passed in (ms since the epoch), so
//! the rules are tested without a clock.

use std::collections::BTreeMap;

use crate::metrics::Metrics;

#[derive(Debug, Default, Clone, Copy)]
struct Partition {
    lag: i64,
    /// When the lag was first seen (the start of "stale" for a partition never written).
    seen_ms: i64,
    last_insert_ms: Option<i64>,
    newest_event_ms: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Freshness {
    partitions: BTreeMap<i32, Partition>,
}

impl Freshness {
    fn entry(&mut self, partition: i32, now_ms: i64) -> &mut Partition {
        self.partitions.entry(partition).or_insert(Partition {
            seen_ms: now_ms,
            ..Partition::default()
        })
    }

    /// The partition's consumer lag (messages behind the high watermark).
    pub fn lag(&mut self, partition: i32, lag: i64, now_ms: i64) {
        self.entry(partition, now_ms).lag = lag;
    }

    /// An insert of the partition succeeded; `newest_event_ms` is the newest event time of its
    /// rows.
    pub fn inserted(&mut self, partition: i32, newest_event_ms: Option<i64>, now_ms: i64) {
        let p = self.entry(partition, now_ms);
        p.last_insert_ms = Some(now_ms);
        p.newest_event_ms = p.newest_event_ms.max(newest_event_ms);
    }

    /// The partition was revoked: its freshness is its next owner's to report.
    pub fn forget(&mut self, partition: i32, metrics: &Metrics) {
        self.partitions.remove(&partition);
        let label = Metrics::label("partition", partition);
        metrics.newest_event_time_seconds.remove(&label);
        metrics.seconds_since_insert.remove(&label);
    }

    /// Seconds since the last insert while there is lag, else 0.
    pub fn seconds_since_insert(&self, partition: i32, now_ms: i64) -> Option<f64> {
        let p = self.partitions.get(&partition)?;
        Some(if p.lag > 0 {
            (now_ms - p.last_insert_ms.unwrap_or(p.seen_ms)).max(0) as f64 / 1000.0
        } else {
            0.0
        })
    }

    /// Sets the gauges.
    pub fn report(&self, now_ms: i64, metrics: &Metrics) {
        for (&partition, p) in &self.partitions {
            let label = Metrics::label("partition", partition);
            if let Some(newest) = p.newest_event_ms {
                metrics
                    .newest_event_time_seconds
                    .get_or_create(&label)
                    .set(newest as f64 / 1000.0);
            }
            if let Some(seconds) = self.seconds_since_insert(partition, now_ms) {
                metrics
                    .seconds_since_insert
                    .get_or_create(&label)
                    .set(seconds);
            }
        }
    }
}

/// The freshness state (a panic elsewhere while it was held leaves it usable: gauges only).
pub fn locked(metrics: &Metrics) -> std::sync::MutexGuard<'_, Freshness> {
    metrics
        .freshness
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_means_lag_and_no_insert_for_a_while() {
        let metrics = Metrics::new();
        let mut f = Freshness::default();
        f.lag(0, 500, 10_000);
        assert_eq!(
            f.seconds_since_insert(0, 25_000),
            Some(15.0),
            "never written"
        );
        f.inserted(0, Some(9_000), 26_000);
        f.inserted(0, Some(8_000), 27_000);
        assert_eq!(f.seconds_since_insert(0, 30_500), Some(3.5));
        f.lag(0, 0, 31_000);
        assert_eq!(
            f.seconds_since_insert(0, 90_000),
            Some(0.0),
            "caught up: fresh"
        );
        f.lag(1, 0, 31_000);
        f.report(90_000, &metrics);
        let text = metrics.render();
        assert!(
            text.contains("clickstream_sink_newest_event_time_seconds{partition=\"0\"} 9.0"),
            "the newest, not the last: {text}"
        );
        assert!(text.contains("clickstream_sink_seconds_since_insert{partition=\"1\"} 0.0"));
        assert!(!text.contains("newest_event_time_seconds{partition=\"1\"}"));
        f.forget(0, &metrics);
        assert!(!metrics.render().contains("partition=\"0\""));
        assert_eq!(f.seconds_since_insert(0, 90_000), None);
    }
}
