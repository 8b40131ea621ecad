//! Writing one batch: for each partition segment, confirm its dead letters, insert its rows
//! (isolating rows ClickHouse rejects), and only then commit `last offset + 1`.
//!
//! Transient failures are retried here with capped exponential backoff and jitter, the same
//! rows and the same deduplication token each time, until they succeed, the partition is
//! revoked, or the sink is stopped. Nothing is committed for a segment that was not written.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::SinkError;
use crate::batch::{Batch, Segment};
use crate::dead_letter::{DeadLetter, DeadLetterSink};
use crate::metrics::Metrics;
use crate::ownership::Ownership;
use crate::row::EventRow;
use crate::settings::{Delivery, Settings};
use crate::writer::{Failure, Writer};

/// A row waiting for its insert, with what the dead-letter topic needs if ClickHouse rejects it.
#[derive(Debug, Clone)]
pub struct Buffered {
    pub row: EventRow,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Commits consumer offsets (the next offset to read, per partition).
pub trait Committer: Send + Sync + 'static {
    fn commit(&self, offsets: &[(i32, i64)]) -> impl Future<Output = Result<(), String>> + Send;
}

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Delay before retry number `attempt` (0-based): initial * 2^attempt, capped, ±25 %.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1 << attempt.min(20))
            .min(self.max);
        base.mul_f64(0.75 + rand::random::<f64>() * 0.5)
    }
}

/// What a flush did, for the log line and the metrics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FlushReport {
    pub rows: usize,
    pub inserted: usize,
    pub inserts: usize,
    pub dead_lettered: usize,
    pub rejected: usize,
    pub already_stored: usize,
    pub dropped_revoked: usize,
    pub partitions: usize,
    pub bytes: usize,
    pub committed: Vec<(i32, i64)>,
}

/// Fault injection for tests of crash recovery (environment `CLICKSTREAM_FAILPOINT`):
/// `abort-after-insert:N` aborts the process right after the N-th successful insert, before
/// its offsets are committed: the worst moment to crash.
#[derive(Debug, Default)]
pub struct Failpoint {
    abort_after_insert: Option<u64>,
    inserts: AtomicU64,
}

impl Failpoint {
    pub fn from_env() -> Failpoint {
        let abort_after_insert = std::env::var("CLICKSTREAM_FAILPOINT").ok().and_then(|v| {
            v.strip_prefix("abort-after-insert:")
                .and_then(|n| n.parse().ok())
        });
        Failpoint {
            abort_after_insert,
            inserts: AtomicU64::new(0),
        }
    }

    fn after_insert(&self) {
        let n = self.inserts.fetch_add(1, Ordering::SeqCst) + 1;
        if self.abort_after_insert == Some(n) {
            eprintln!("failpoint: aborting after insert {n}, before its commit");
            std::process::abort();
        }
    }
}

/// Everything a flush needs; shared by the consume loop and the flush tasks.
pub struct Flusher<W, D, C> {
    pub writer: W,
    pub dead_letters: D,
    pub committer: C,
    pub ownership: Arc<Ownership>,
    pub metrics: Arc<Metrics>,
    pub backoff: Backoff,
    pub topic: String,
    pub delivery: Delivery,
    /// Cancelled when the sink must stop retrying (shutdown deadline).
    pub cancel: CancellationToken,
    pub failpoint: Failpoint,
}

enum Stop {
    BadData(String),
    Fatal(String),
    Cancelled,
    Revoked,
}

impl<W: Writer, D: DeadLetterSink, C: Committer> Flusher<W, D, C> {
    pub fn new(
        settings: &Settings,
        writer: W,
        dead_letters: D,
        committer: C,
        ownership: Arc<Ownership>,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> Self {
        Flusher {
            writer,
            dead_letters,
            committer,
            ownership,
            metrics,
            backoff: Backoff {
                initial: Duration::from_millis(settings.retry_initial_ms),
                max: Duration::from_millis(settings.retry_max_ms),
            },
            topic: settings.topic.clone(),
            delivery: settings.delivery,
            cancel,
            failpoint: Failpoint::from_env(),
        }
    }

    /// Writes `batch` and commits what was written. Errors are fatal (or shutdown).
    pub async fn write_batch(
        &self,
        batch: Batch<Buffered, D::Ack>,
    ) -> Result<FlushReport, SinkError> {
        let started = Instant::now();
        let keys: Vec<(i32, u64)> = batch
            .segments
            .iter()
            .map(|s| (s.partition, s.epoch))
            .collect();
        let owned = self.ownership.begin_flush(&keys);
        let _in_flight = InFlight {
            ownership: &self.ownership,
            partitions: owned.clone(),
        };
        let mut report = FlushReport {
            rows: batch.rows,
            bytes: batch.bytes,
            ..FlushReport::default()
        };
        let oldest_event = batch
            .segments
            .iter()
            .flat_map(|s| s.rows.iter().map(|(_, b)| b.row.event_time))
            .min();
        for segment in batch.segments {
            if !owned.contains(&segment.partition) {
                report.dropped_revoked += segment.rows.len();
                continue;
            }
            report.partitions += 1;
            report.already_stored += segment.already_stored;
            match self.write_segment(segment, &mut report).await {
                Ok(commit) => report.committed.push(commit),
                Err(Stop::Revoked) => {}
                Err(Stop::Cancelled) => return Err(SinkError::Stopped),
                Err(Stop::Fatal(message)) => return Err(SinkError::ClickHouse(message)),
                Err(Stop::BadData(message)) => return Err(SinkError::ClickHouse(message)),
            }
        }
        // Commit only partitions still owned under the epoch their rows were read in.
        report.committed.retain(|&(partition, _)| {
            keys.iter()
                .any(|&(p, e)| p == partition && self.ownership.owns(p, e))
        });
        if !report.committed.is_empty()
            && let Err(error) = self.committer.commit(&report.committed).await
        {
            // Not fatal: the rows are in ClickHouse and a replay skips them.
            self.metrics.commit_failures.inc();
            tracing::warn!(error = %error, "offset commit failed; the range will be replayed and skipped");
        }
        let elapsed = started.elapsed();
        let oldest_age_ms = oldest_event.map(|t| (Utc::now() - t).num_milliseconds());
        tracing::info!(
            rows = report.rows,
            inserted = report.inserted,
            dead_lettered = report.dead_lettered,
            rejected = report.rejected,
            already_stored = report.already_stored,
            bytes = report.bytes,
            partitions = report.partitions,
            inserts = report.inserts,
            insert_ms = elapsed.as_millis() as u64,
            oldest_event_age_ms = oldest_age_ms,
            "flushed"
        );
        self.metrics.batch_rows.observe(report.rows as f64);
        Ok(report)
    }

    /// Dead letters, rows, in that order; returns the commit for the segment.
    async fn write_segment(
        &self,
        segment: Segment<Buffered, D::Ack>,
        report: &mut FlushReport,
    ) -> Result<(i32, i64), Stop> {
        let Segment {
            partition,
            epoch,
            rows,
            dead_letters,
            ..
        } = segment;
        let commit = (partition, segment.last_offset + 1);
        for ack in dead_letters {
            self.dead_letters
                .confirm(ack)
                .await
                .map_err(|_| Stop::Cancelled)?;
            report.dead_lettered += 1;
        }
        // Bisect on rejected data: halves are inserted (each with its own token), a single
        // rejected row is dead-lettered. Depth-first so rows go in offset order.
        let mut pending = vec![(0, rows.len())];
        while let Some((lo, hi)) = pending.pop() {
            if lo == hi {
                continue;
            }
            let part = &rows[lo..hi];
            match self.insert_with_retry(partition, epoch, part).await {
                Ok(()) => {
                    report.inserted += part.len();
                    report.inserts += 1;
                }
                Err(Stop::BadData(message)) if part.len() > 1 => {
                    tracing::warn!(partition, rows = part.len(), error = %message, "ClickHouse rejected a batch; isolating the bad rows");
                    let mid = lo + part.len() / 2;
                    pending.push((mid, hi));
                    pending.push((lo, mid));
                }
                Err(Stop::BadData(message)) => {
                    let (offset, buffered) = &part[0];
                    let ack = self.dead_letters.send(DeadLetter {
                        key: buffered.key.clone(),
                        payload: Some(buffered.payload.clone()),
                        headers: buffered.headers.clone(),
                        reason: "rejected_by_clickhouse".into(),
                        error: message,
                        source_topic: self.topic.clone(),
                        source_partition: partition,
                        source_offset: *offset,
                    });
                    self.dead_letters
                        .confirm(ack)
                        .await
                        .map_err(|_| Stop::Cancelled)?;
                    self.metrics
                        .dead_lettered
                        .get_or_create(&Metrics::label("reason", "rejected_by_clickhouse"))
                        .inc();
                    report.rejected += 1;
                }
                Err(stop) => return Err(stop),
            }
        }
        Ok(commit)
    }

    /// One INSERT of `part`, retried while the failure is transient.
    async fn insert_with_retry(
        &self,
        partition: i32,
        epoch: u64,
        part: &[(i64, Buffered)],
    ) -> Result<(), Stop> {
        let (first, last) = (part[0].0, part[part.len() - 1].0);
        let token = (self.delivery == Delivery::ExactlyOnce)
            .then(|| format!("{}:{partition}:{first}-{last}", self.topic));
        let rows: Vec<EventRow> = part.iter().map(|(_, b)| b.row.clone()).collect();
        let mut attempt = 0;
        loop {
            if !self.ownership.owns(partition, epoch) {
                return Err(Stop::Revoked);
            }
            let started = Instant::now();
            match self.writer.insert(&rows, token.as_deref()).await {
                Ok(()) => {
                    self.metrics
                        .insert_duration_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.inserts.inc();
                    self.metrics.inserted_rows.inc_by(rows.len() as u64);
                    let now = Utc::now();
                    for row in &rows {
                        let age = (now - row.event_time).num_milliseconds().max(0) as f64 / 1000.0;
                        self.metrics.event_to_insert_seconds.observe(age);
                    }
                    self.failpoint.after_insert();
                    return Ok(());
                }
                Err(Failure::Transient(message)) => {
                    self.metrics
                        .retries
                        .get_or_create(&vec![
                            ("operation".to_owned(), "insert".to_owned()),
                            ("error".to_owned(), "transient".to_owned()),
                        ])
                        .inc();
                    let delay = self.backoff.delay(attempt);
                    tracing::warn!(partition, first, last, attempt, retry_in_ms = delay.as_millis() as u64, error = %message, "insert failed; retrying the same rows");
                    attempt += 1;
                    tokio::select! {
                        _ = self.cancel.cancelled() => return Err(Stop::Cancelled),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(Failure::BadData(message)) => return Err(Stop::BadData(message)),
                Err(Failure::Fatal(message)) => return Err(Stop::Fatal(message)),
            }
        }
    }
}

/// Clears the in-flight mark of a flush's partitions however the flush ends.
struct InFlight<'a> {
    ownership: &'a Ownership,
    partitions: Vec<i32>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.ownership.end_flush(&self.partitions);
    }
}
