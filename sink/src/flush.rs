//! Writing one batch: for each partition segment, confirm its dead letters, insert its rows,
//! and only then commit `last offset + 1`.
//!
//! - Transient failures are retried by the [`crate::retry`] policy with the same rows and the
//!   same deduplication token, until they succeed, the partition is revoked, or the sink stops.
//! - Rows too many for one INSERT (partitions per block, memory) are split; rows ClickHouse
//!   rejects are isolated by bisection and dead-lettered; a changed table is followed. Every
//!   part has a deterministic token, so a retry after a crash still deduplicates.
//! - The first insert of each new assignment first asks ClickHouse again what it holds of
//!   that range: an insert of the previous owner that landed late is skipped, not repeated.
//! - Nothing is committed for a segment that was not written; a commit the group
//!   coordinator refuses ends this sink's claim on those partitions until it is reassigned.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use tokio::time::Instant;

use crate::SinkError;
use crate::batch::{Batch, Segment};
use crate::dead_letter::{DeadLetter, DeadLetterSink};
use crate::metrics::Metrics;
use crate::ownership::Ownership;
use crate::retry::{Operation, RetryPolicy};
use crate::row::EventRow;
use crate::settings::{Delivery, Settings};
use crate::writer::{Failure, Split, Writer};

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
    fn commit(
        &self,
        offsets: &[(i32, i64)],
    ) -> impl Future<Output = Result<(), CommitError>> + Send;
}

/// Why a commit failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitError {
    /// The group coordinator refused it: this member no longer owns the partitions (a
    /// rebalance is under way or the session was lost).
    Fenced(String),
    /// Anything else (broker away, timeout): retried.
    Failed(String),
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
    /// The retry policy; its cancel token ends the flush (shutdown deadline).
    pub retry: RetryPolicy,
    pub topic: String,
    pub delivery: Delivery,
    pub failpoint: Failpoint,
}

enum Stop {
    BadData(String),
    TooBig(Split, String),
    Fatal(SinkError),
    Cancelled,
    Revoked,
}

/// Some of a segment's rows (indices into it), inserted as one INSERT.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Part {
    rows: Vec<usize>,
    /// A run of consecutive rows of the segment (its token is its offset range); otherwise a
    /// set (its token names its content).
    run: bool,
}

impl Part {
    fn halves(mut self) -> (Part, Part) {
        let second = self.rows.split_off(self.rows.len() / 2);
        (
            self.clone(),
            Part {
                rows: second,
                run: self.run,
            },
        )
    }

    /// Halves in event-time order (each half in offset order again).
    fn time_halves(mut self, rows: &[(i64, Buffered)]) -> (Part, Part) {
        self.rows
            .sort_by_key(|&i| (rows[i].1.row.event_time, rows[i].0));
        let mut second = self.rows.split_off(self.rows.len() / 2);
        self.rows.sort_unstable();
        second.sort_unstable();
        (
            Part {
                rows: self.rows,
                run: false,
            },
            Part {
                rows: second,
                run: false,
            },
        )
    }
}

impl<W: Writer, D: DeadLetterSink, C: Committer> Flusher<W, D, C> {
    pub fn new(
        settings: &Settings,
        writer: W,
        dead_letters: D,
        committer: C,
        ownership: Arc<Ownership>,
        retry: RetryPolicy,
    ) -> Self {
        Flusher {
            writer,
            dead_letters,
            committer,
            ownership,
            metrics: retry.metrics.clone(),
            retry,
            topic: settings.topic.clone(),
            delivery: settings.delivery,
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
                Err(Stop::Fatal(error)) => return Err(error),
                Err(Stop::BadData(message) | Stop::TooBig(_, message)) => {
                    return Err(SinkError::Internal(format!(
                        "unhandled rejection escaped the segment: {message}"
                    )));
                }
            }
        }
        self.commit(&keys, &mut report.committed).await;
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

    /// Commits the partitions still owned under the epoch their rows were read in; keeps in
    /// `committed` only what was committed.
    async fn commit(&self, keys: &[(i32, u64)], committed: &mut Vec<(i32, i64)>) {
        let owned = |committed: &mut Vec<(i32, i64)>| {
            committed.retain(|&(partition, _)| {
                keys.iter()
                    .any(|&(p, e)| p == partition && self.ownership.owns(p, e))
            });
        };
        let mut retry = self.retry.start(Operation::Commit);
        loop {
            owned(committed);
            if committed.is_empty() {
                return;
            }
            match self.committer.commit(committed).await {
                Ok(()) => {
                    self.retry.stall.progress();
                    return;
                }
                Err(CommitError::Fenced(error)) => {
                    // Not ours any more: insert and commit nothing more of these partitions
                    // until the group assigns them again (then they are replayed from the
                    // committed offset and the rows written here are skipped).
                    let partitions: Vec<i32> = committed.iter().map(|&(p, _)| p).collect();
                    self.ownership.lose(&partitions);
                    self.metrics.commits_fenced.inc_by(partitions.len() as u64);
                    tracing::warn!(?partitions, error = %error, "the group coordinator refused the commit: these partitions are no longer ours; their rows are in ClickHouse and their next owner skips them");
                    committed.clear();
                    return;
                }
                Err(CommitError::Failed(error)) => {
                    self.metrics.commit_failures.inc();
                    if retry.wait(None, "transient", &error).await.is_err() {
                        // Stopping: the rows are in ClickHouse; the replay skips them.
                        committed.clear();
                        return;
                    }
                }
            }
        }
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
            self.confirm(ack).await?;
            report.dead_lettered += 1;
        }
        // Wait out a freeze first: what ClickHouse holds is checked right before writing.
        self.wait_writable(partition, epoch).await?;
        let rows = self.fence(partition, epoch, rows, report).await?;
        // Depth-first, so rows go in offset order (in time order after a split by time).
        let mut pending = vec![Part {
            rows: (0..rows.len()).collect(),
            run: true,
        }];
        while let Some(part) = pending.pop() {
            if part.rows.is_empty() {
                continue;
            }
            match self.insert_with_retry(partition, epoch, &rows, &part).await {
                Ok(()) => {
                    report.inserted += part.rows.len();
                    report.inserts += 1;
                }
                Err(Stop::TooBig(split, message)) => {
                    tracing::warn!(partition, rows = part.rows.len(), ?split, error = %message, "ClickHouse refused an insert as too big; splitting it");
                    self.undo_partial(partition, &rows, &part).await?;
                    self.metrics
                        .insert_splits
                        .get_or_create(&Metrics::label(
                            "reason",
                            match split {
                                Split::ByTime => "partitions",
                                Split::InHalves => "memory",
                            },
                        ))
                        .inc();
                    let (first, second) = match split {
                        Split::ByTime => part.time_halves(&rows),
                        Split::InHalves => part.halves(),
                    };
                    pending.push(second);
                    pending.push(first);
                }
                Err(Stop::BadData(message)) if part.rows.len() > 1 => {
                    tracing::warn!(partition, rows = part.rows.len(), error = %message, "ClickHouse rejected a batch; isolating the bad rows");
                    self.undo_partial(partition, &rows, &part).await?;
                    let (first, second) = part.halves();
                    pending.push(second);
                    pending.push(first);
                }
                Err(Stop::BadData(message)) => {
                    self.undo_partial(partition, &rows, &part).await?;
                    let (offset, buffered) = &rows[part.rows[0]];
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
                    self.confirm(ack).await?;
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

    async fn confirm(&self, ack: D::Ack) -> Result<(), Stop> {
        match self.dead_letters.confirm(ack).await {
            Ok(()) => {
                self.retry.stall.progress();
                Ok(())
            }
            Err(Failure::Fatal(message)) => Err(Stop::Fatal(SinkError::DeadLetter(message))),
            Err(_) => Err(Stop::Cancelled),
        }
    }

    /// Returns once this sink may write `partition` (after a freeze, once a lost assignment
    /// would have been revoked), or `Revoked` if it lost it meanwhile.
    async fn wait_writable(&self, partition: i32, epoch: u64) -> Result<(), Stop> {
        while !self.ownership.may_write() && self.ownership.owns(partition, epoch) {
            tokio::select! {
                _ = self.retry.cancel.cancelled() => return Err(Stop::Cancelled),
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            }
        }
        if self.ownership.owns(partition, epoch) {
            Ok(())
        } else {
            Err(Stop::Revoked)
        }
    }

    /// The stored offsets of `from..=to`, retried while the lookup fails transiently.
    async fn stored(
        &self,
        partition: i32,
        from: i64,
        to: i64,
    ) -> Result<std::collections::BTreeMap<i64, uuid::Uuid>, Stop> {
        let mut retry = self.retry.start(Operation::StoredOffsetsLookup);
        loop {
            match self
                .writer
                .stored_offsets(&self.topic, partition, from, to)
                .await
            {
                Ok(stored) => return Ok(stored),
                Err(Failure::Fatal(message)) => {
                    return Err(Stop::Fatal(SinkError::clickhouse("stored offsets lookup")(
                        Failure::Fatal(message),
                    )));
                }
                Err(failure) => retry
                    .wait(Some(partition), failure.kind(), failure.message())
                    .await
                    .map_err(|_| Stop::Cancelled)?,
            }
        }
    }

    /// A refused INSERT may have written its rows to the events table before a materialized
    /// view failed (ClickHouse does not roll that back: raw rows without their rollups).
    /// Before the rows go in again as parts (new tokens) or to the dead-letter topic, those
    /// leftovers are deleted, so that the table and the rollups hold each row once.
    async fn undo_partial(
        &self,
        partition: i32,
        rows: &[(i64, Buffered)],
        part: &Part,
    ) -> Result<(), Stop> {
        let from = rows[part.rows[0]].0;
        let to = rows[part.rows[part.rows.len() - 1]].0;
        let stored = self.stored(partition, from, to).await?;
        let left: Vec<i64> = part
            .rows
            .iter()
            .map(|&i| rows[i].0)
            .filter(|offset| stored.contains_key(offset))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            partition,
            rows = left.len(),
            "the refused insert left rows in the table without their rollups; deleting them before inserting again"
        );
        let mut retry = self.retry.start(Operation::Insert);
        loop {
            match self
                .writer
                .delete_offsets(&self.topic, partition, &left)
                .await
            {
                Ok(()) => break,
                Err(Failure::Fatal(message)) => {
                    return Err(Stop::Fatal(SinkError::clickhouse(
                        "removing a partly written insert (the sink user needs ALTER DELETE on the events table)",
                    )(Failure::Fatal(message))));
                }
                Err(failure) => retry
                    .wait(Some(partition), failure.kind(), failure.message())
                    .await
                    .map_err(|_| Stop::Cancelled)?,
            }
        }
        self.metrics.partial_rows_removed.inc_by(left.len() as u64);
        Ok(())
    }

    /// Before a segment's insert: drops the rows ClickHouse already holds. Another member's
    /// insert of these offsets may have landed: a previous owner's that finished late, or one
    /// of a member that lost the partition without knowing yet. One small query per segment.
    async fn fence(
        &self,
        partition: i32,
        epoch: u64,
        rows: Vec<(i64, Buffered)>,
        report: &mut FlushReport,
    ) -> Result<Vec<(i64, Buffered)>, Stop> {
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Ok(rows);
        };
        if self.delivery != Delivery::ExactlyOnce {
            return Ok(rows);
        }
        let (from, to) = (first.0, last.0);
        let stored = self.stored(partition, from, to).await?;
        if stored.is_empty() {
            return Ok(rows);
        }
        let before = rows.len();
        let mut kept = Vec::with_capacity(before);
        for (offset, buffered) in rows {
            match stored.get(&offset) {
                None => kept.push((offset, buffered)),
                Some(id) if *id == buffered.row.event_id => {}
                Some(id) => {
                    return Err(Stop::Fatal(SinkError::Inconsistent(format!(
                        "{}[{partition}] offset {offset}: ClickHouse holds event {id} there, \
                         but the message is event {}: the topic's offsets were reused (deleted \
                         and recreated?); nothing was written or committed",
                        self.topic, buffered.row.event_id
                    ))));
                }
            }
        }
        let skipped = before - kept.len();
        if skipped > 0 {
            tracing::info!(
                partition,
                epoch,
                skipped,
                "rows written meanwhile by the previous owner are skipped"
            );
        }
        self.metrics.replay_skipped.inc_by(skipped as u64);
        report.already_stored += skipped;
        Ok(kept)
    }

    /// The deduplication token of `part`: the same rows always get the same token.
    fn token(&self, partition: i32, rows: &[(i64, Buffered)], part: &Part) -> Option<String> {
        if self.delivery != Delivery::ExactlyOnce {
            return None;
        }
        let first = rows[part.rows[0]].0;
        let last = rows[part.rows[part.rows.len() - 1]].0;
        let mut token = format!("{}:{partition}:{first}-{last}", self.topic);
        if !part.run {
            // FNV-1a over the offsets: a set of offsets, named by its content.
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for &i in &part.rows {
                for byte in rows[i].0.to_le_bytes() {
                    hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
                }
            }
            let _ = write!(token, ":{}x{hash:016x}", part.rows.len());
        }
        Some(token)
    }

    /// One INSERT of `part`, retried while the failure is transient.
    async fn insert_with_retry(
        &self,
        partition: i32,
        epoch: u64,
        rows: &[(i64, Buffered)],
        part: &Part,
    ) -> Result<(), Stop> {
        let token = self.token(partition, rows, part);
        let refs: Vec<&EventRow> = part.rows.iter().map(|&i| &rows[i].1.row).collect();
        let mut retry = self.retry.start(Operation::Insert);
        let mut schema_changes = 0;
        loop {
            self.wait_writable(partition, epoch).await?;
            let started = Instant::now();
            let failure = match self.writer.insert(&refs, token.as_deref()).await {
                Ok(()) => {
                    self.metrics
                        .insert_duration_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.inserts.inc();
                    self.metrics.inserted_rows.inc_by(refs.len() as u64);
                    let now = Utc::now();
                    for row in &refs {
                        let age = (now - row.event_time).num_milliseconds().max(0) as f64 / 1000.0;
                        self.metrics.event_to_insert_seconds.observe(age);
                    }
                    self.retry.stall.progress();
                    self.failpoint.after_insert();
                    return Ok(());
                }
                Err(failure) => failure,
            };
            match failure {
                // Follow the new structure at once (a table altered again and again is retried
                // like any transient failure).
                Failure::SchemaChanged(_) if schema_changes < 3 => {
                    schema_changes += 1;
                    self.metrics.schema_changes.inc();
                    continue;
                }
                Failure::TooBig { split, message } if refs.len() > 1 => {
                    return Err(Stop::TooBig(split, message));
                }
                Failure::BadData(message) => return Err(Stop::BadData(message)),
                Failure::Fatal(message) => {
                    return Err(Stop::Fatal(SinkError::clickhouse("insert")(
                        Failure::Fatal(message),
                    )));
                }
                failure => retry
                    .wait(Some(partition), failure.kind(), failure.message())
                    .await
                    .map_err(|_| Stop::Cancelled)?,
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

#[cfg(test)]
mod tests {
    //! The flush stage against fakes of its three seams.

    use std::collections::{BTreeMap, HashSet};
    use std::sync::Mutex;
    use std::time::Duration;

    use chrono::{DateTime, TimeZone};
    use uuid::Uuid;

    use super::*;
    use crate::batch::{Batcher, Entry, Policy};

    type Rule = Box<dyn Fn(&[&EventRow]) -> Result<(), Failure> + Send + Sync>;
    /// The offsets of one INSERT attempt, its token, and whether it succeeded.
    type Attempt = (Vec<i64>, Option<String>, bool);

    /// Inserts are judged by a rule; every attempt is recorded (offsets, token, success).
    /// `stored` is the table: a successful insert adds its rows, and so does a failed one
    /// when `partial` says a view failed after the table was written.
    struct FakeWriter {
        rule: Rule,
        partial: bool,
        attempts: Mutex<Vec<Attempt>>,
        stored: Mutex<BTreeMap<i64, Uuid>>,
        deleted: Mutex<Vec<i64>>,
    }

    impl FakeWriter {
        fn new(rule: impl Fn(&[&EventRow]) -> Result<(), Failure> + Send + Sync + 'static) -> Self {
            FakeWriter {
                rule: Box::new(rule),
                partial: false,
                attempts: Mutex::default(),
                stored: Mutex::default(),
                deleted: Mutex::default(),
            }
        }

        fn inserted(&self) -> Vec<Vec<i64>> {
            let attempts = self.attempts.lock().unwrap();
            attempts
                .iter()
                .filter(|a| a.2)
                .map(|a| a.0.clone())
                .collect()
        }

        fn tokens(&self) -> Vec<String> {
            let attempts = self.attempts.lock().unwrap();
            attempts
                .iter()
                .filter(|a| a.2)
                .filter_map(|a| a.1.clone())
                .collect()
        }
    }

    impl Writer for FakeWriter {
        async fn insert(&self, rows: &[&EventRow], token: Option<&str>) -> Result<(), Failure> {
            let result = (self.rule)(rows);
            if result.is_ok() || self.partial {
                let mut stored = self.stored.lock().unwrap();
                for row in rows {
                    stored.insert(row.kafka_offset, row.event_id);
                }
            }
            self.attempts.lock().unwrap().push((
                rows.iter().map(|r| r.kafka_offset).collect(),
                token.map(str::to_owned),
                result.is_ok(),
            ));
            result
        }

        async fn max_stored_offset(&self, _: &str, _: i32) -> Result<Option<i64>, Failure> {
            Ok(self.stored.lock().unwrap().keys().last().copied())
        }

        async fn delete_offsets(&self, _: &str, _: i32, offsets: &[i64]) -> Result<(), Failure> {
            let mut stored = self.stored.lock().unwrap();
            for offset in offsets {
                stored.remove(offset);
            }
            self.deleted.lock().unwrap().extend_from_slice(offsets);
            Ok(())
        }

        async fn stored_offsets(
            &self,
            _: &str,
            _: i32,
            from: i64,
            to: i64,
        ) -> Result<BTreeMap<i64, Uuid>, Failure> {
            let stored = self.stored.lock().unwrap();
            Ok(stored.range(from..=to).map(|(o, id)| (*o, *id)).collect())
        }
    }

    /// Dead letters are acknowledged at once and remembered.
    #[derive(Default)]
    struct FakeDeadLetters {
        confirmed: Mutex<Vec<DeadLetter>>,
    }

    impl DeadLetterSink for FakeDeadLetters {
        type Ack = DeadLetter;
        fn send(&self, letter: DeadLetter) -> DeadLetter {
            letter
        }
        async fn confirm(&self, ack: DeadLetter) -> Result<(), Failure> {
            self.confirmed.lock().unwrap().push(ack);
            Ok(())
        }
    }

    /// Commits are remembered; the answer is scripted.
    #[derive(Default)]
    struct FakeCommitter {
        refuse: Option<CommitError>,
        commits: Mutex<Vec<Vec<(i32, i64)>>>,
    }

    impl Committer for FakeCommitter {
        async fn commit(&self, offsets: &[(i32, i64)]) -> Result<(), CommitError> {
            if let Some(error) = &self.refuse {
                return Err(error.clone());
            }
            self.commits.lock().unwrap().push(offsets.to_vec());
            Ok(())
        }
    }

    fn row(offset: i64, day: i64) -> EventRow {
        EventRow {
            event_id: Uuid::from_u128(offset as u128 + 1),
            event_time: Utc.timestamp_opt(1_700_000_000 + day * 86_400, 0).unwrap(),
            user_id: "u".into(),
            session_id: Uuid::nil(),
            event_type: "page_view".into(),
            page_url: "/".into(),
            page_category: "home".into(),
            referrer: "direct".into(),
            device_type: "desktop".into(),
            browser: "firefox".into(),
            country: "DE".into(),
            duration_ms: 1,
            product_id: None,
            price: None,
            quantity: None,
            kafka_topic: "t".into(),
            kafka_partition: 0,
            kafka_offset: offset,
        }
    }

    fn new_flusher(
        writer: FakeWriter,
        committer: FakeCommitter,
    ) -> (Flusher<FakeWriter, FakeDeadLetters, FakeCommitter>, u64) {
        let ownership = Arc::new(Ownership::default());
        ownership.assign(&[0]);
        let epoch = ownership.epoch(0).unwrap();
        let settings = Settings {
            topic: "t".into(),
            ..Settings::default()
        };
        let retry = RetryPolicy::immediate();
        let flusher = Flusher::new(
            &settings,
            writer,
            FakeDeadLetters::default(),
            committer,
            ownership,
            retry,
        );
        (flusher, epoch)
    }

    /// One partition-0 batch of `rows` (offset, day of event time).
    fn batch(epoch: u64, rows: &[(i64, i64)]) -> Batch<Buffered, DeadLetter> {
        let mut batcher = Batcher::new(Policy {
            max_rows: 1_000_000,
            flush_interval: Duration::from_secs(1),
            max_batch_bytes: usize::MAX,
            min_flush_gap: Duration::ZERO,
        });
        let now = Instant::now();
        for &(offset, day) in rows {
            let buffered = Buffered {
                row: row(offset, day),
                key: None,
                payload: format!("payload {offset}").into_bytes(),
                headers: Vec::new(),
            };
            batcher.push(0, epoch, offset, Entry::Row(buffered), 100, now);
        }
        batcher.take(now).expect("a batch")
    }

    fn days(rows: &[&EventRow]) -> usize {
        let days: HashSet<DateTime<Utc>> = rows
            .iter()
            .map(|r| {
                r.event_time
                    .date_naive()
                    .and_hms_opt(0, 0, 0)
                    .unwrap()
                    .and_utc()
            })
            .collect();
        days.len()
    }

    #[tokio::test]
    async fn nothing_is_committed_without_a_write() {
        let (flusher, epoch) = new_flusher(
            FakeWriter::new(|_| Err(Failure::Fatal("Code: 60. no table".into()))),
            FakeCommitter::default(),
        );
        let error = flusher
            .write_batch(batch(epoch, &[(0, 0), (1, 0)]))
            .await
            .expect_err("fatal");
        assert!(matches!(error, SinkError::ClickHouse { .. }), "{error}");
        assert!(flusher.committer.commits.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn bisection_dead_letters_only_the_bad_row() {
        let (flusher, epoch) = new_flusher(
            FakeWriter::new(|rows| {
                if rows.iter().any(|r| r.kafka_offset == 5) {
                    Err(Failure::BadData("Code: 469. constraint".into()))
                } else {
                    Ok(())
                }
            }),
            FakeCommitter::default(),
        );
        let rows: Vec<(i64, i64)> = (0..10).map(|o| (o, 0)).collect();
        let report = flusher.write_batch(batch(epoch, &rows)).await.unwrap();
        assert_eq!((report.inserted, report.rejected), (9, 1));
        let mut inserted: Vec<i64> = flusher.writer.inserted().concat();
        inserted.sort_unstable();
        assert_eq!(inserted, vec![0, 1, 2, 3, 4, 6, 7, 8, 9]);
        let letters = flusher.dead_letters.confirmed.lock().unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(
            (letters[0].source_offset, letters[0].reason.as_str()),
            (5, "rejected_by_clickhouse")
        );
        assert_eq!(
            *flusher.committer.commits.lock().unwrap(),
            vec![vec![(0, 10)]]
        );
    }

    #[tokio::test]
    async fn a_backfill_over_too_many_partitions_is_split_by_time_and_nothing_is_dead_lettered() {
        let max_days = 3;
        let rule = move |rows: &[&EventRow]| {
            if days(rows) > max_days {
                Err(Failure::TooBig {
                    split: Split::ByTime,
                    message: "Code: 252. Too many partitions for single INSERT block".into(),
                })
            } else {
                Ok(())
            }
        };
        // 40 offsets whose event times hop over 20 days (out of order, as a backfill does).
        let rows: Vec<(i64, i64)> = (0..40).map(|o| (o, (o * 7) % 20)).collect();
        let (flusher, epoch) = new_flusher(FakeWriter::new(rule), FakeCommitter::default());
        let report = flusher.write_batch(batch(epoch, &rows)).await.unwrap();
        assert_eq!((report.inserted, report.rejected), (40, 0));
        let mut inserted: Vec<i64> = flusher.writer.inserted().concat();
        inserted.sort_unstable();
        assert_eq!(inserted, (0..40).collect::<Vec<_>>(), "every row once");
        assert!(flusher.dead_letters.confirmed.lock().unwrap().is_empty());
        let tokens = flusher.writer.tokens();
        assert_eq!(
            tokens.iter().collect::<HashSet<_>>().len(),
            tokens.len(),
            "each part has its own token: {tokens:?}"
        );
        assert_eq!(
            *flusher.committer.commits.lock().unwrap(),
            vec![vec![(0, 40)]]
        );

        // The same rows again (a retry after a crash) split the same way, with the same tokens.
        let (again, epoch) = new_flusher(FakeWriter::new(rule), FakeCommitter::default());
        again.write_batch(batch(epoch, &rows)).await.unwrap();
        assert_eq!(again.writer.tokens(), tokens);
    }

    /// ClickHouse's memory limit, hit by inserts of more than `rows` rows.
    fn memory_limit_above(rows: usize) -> impl Fn(&[&EventRow]) -> Result<(), Failure> {
        move |batch| {
            if batch.len() > rows {
                Err(Failure::TooBig {
                    split: Split::InHalves,
                    message: "Code: 241. Memory limit exceeded: while pushing to view events_1m_mv"
                        .into(),
                })
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn a_memory_limit_splits_the_insert_in_halves() {
        let (flusher, epoch) = new_flusher(
            FakeWriter::new(memory_limit_above(4)),
            FakeCommitter::default(),
        );
        let rows: Vec<(i64, i64)> = (0..16).map(|o| (o, 0)).collect();
        let report = flusher.write_batch(batch(epoch, &rows)).await.unwrap();
        assert_eq!(
            (report.inserted, report.inserts, report.rejected),
            (16, 4, 0)
        );
        assert_eq!(
            flusher.writer.tokens(),
            vec!["t:0:0-3", "t:0:4-7", "t:0:8-11", "t:0:12-15"],
            "halves of a run keep offset-range tokens"
        );
    }

    #[tokio::test]
    async fn rows_a_refused_insert_left_behind_are_removed_before_the_parts_go_in() {
        // The table is written, then a view runs out of memory: the rows stay without rollups.
        let mut writer = FakeWriter::new(memory_limit_above(4));
        writer.partial = true;
        let (flusher, epoch) = new_flusher(writer, FakeCommitter::default());
        let rows: Vec<(i64, i64)> = (0..8).map(|o| (o, 0)).collect();
        let report = flusher.write_batch(batch(epoch, &rows)).await.unwrap();
        assert_eq!(report.inserted, 8);
        let mut deleted = flusher.writer.deleted.lock().unwrap().clone();
        deleted.sort_unstable();
        assert_eq!(
            deleted,
            (0..8).collect::<Vec<_>>(),
            "the leftovers, each once"
        );
        assert_eq!(flusher.writer.stored.lock().unwrap().len(), 8);
    }

    #[tokio::test]
    async fn a_changed_table_is_followed_at_once_without_dead_letters() {
        let calls = Arc::new(Mutex::new(0));
        let seen = calls.clone();
        let (flusher, epoch) = new_flusher(
            FakeWriter::new(move |_| {
                let mut calls = seen.lock().unwrap();
                *calls += 1;
                if *calls == 1 {
                    Err(Failure::SchemaChanged(
                        "Code: 117. Type of 'duration_ms' must be UInt64".into(),
                    ))
                } else {
                    Ok(())
                }
            }),
            FakeCommitter::default(),
        );
        let report = flusher
            .write_batch(batch(epoch, &[(0, 0), (1, 0)]))
            .await
            .unwrap();
        assert_eq!((report.inserted, report.rejected), (2, 0));
        assert_eq!(*calls.lock().unwrap(), 2);
        assert!(
            flusher
                .metrics
                .render()
                .contains("clickstream_sink_schema_changes_total 1")
        );
    }

    #[tokio::test]
    async fn an_unknown_error_is_retried_and_reported_as_the_stall_cause() {
        let calls = Arc::new(Mutex::new(0));
        let seen = calls.clone();
        let (flusher, epoch) = new_flusher(
            FakeWriter::new(move |_| {
                let mut calls = seen.lock().unwrap();
                *calls += 1;
                if *calls < 4 {
                    Err(Failure::Transient("Code: 4242. something new".into()))
                } else {
                    Ok(())
                }
            }),
            FakeCommitter::default(),
        );
        flusher.retry.stall.failing(None, "stale".into());
        let report = flusher.write_batch(batch(epoch, &[(0, 0)])).await.unwrap();
        assert_eq!(report.inserted, 1);
        assert!(flusher.metrics.render().contains(
            "clickstream_sink_retries_total{operation=\"insert\",error=\"transient\"} 3"
        ));
        assert_eq!(
            flusher.retry.stall.cause(),
            None,
            "progress clears the cause"
        );
    }

    #[tokio::test]
    async fn a_revoked_partition_is_neither_written_nor_committed() {
        let (flusher, epoch) = new_flusher(FakeWriter::new(|_| Ok(())), FakeCommitter::default());
        let batch = batch(epoch, &[(0, 0), (1, 0)]);
        flusher.ownership.revoke(&[0], Duration::ZERO);
        let report = flusher.write_batch(batch).await.unwrap();
        assert_eq!((report.inserted, report.dropped_revoked), (0, 2));
        assert!(flusher.writer.inserted().is_empty());
        assert!(flusher.committer.commits.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_commit_the_coordinator_refuses_gives_up_the_partition() {
        let (flusher, epoch) = new_flusher(
            FakeWriter::new(|_| Ok(())),
            FakeCommitter {
                refuse: Some(CommitError::Fenced(
                    "Broker: Specified group generation id is not valid".into(),
                )),
                ..FakeCommitter::default()
            },
        );
        let report = flusher.write_batch(batch(epoch, &[(0, 0)])).await.unwrap();
        assert!(report.committed.is_empty());
        assert!(!flusher.ownership.owns(0, epoch), "no more inserts for it");
        assert!(
            flusher
                .metrics
                .render()
                .contains("clickstream_sink_commits_fenced_total 1")
        );
    }

    #[tokio::test]
    async fn the_first_insert_of_an_assignment_skips_what_a_previous_owner_wrote_meanwhile() {
        let writer = FakeWriter::new(|_| Ok(()));
        // A zombie's insert of offsets 0..=2 landed after this sink looked at assignment.
        for offset in 0..3 {
            writer
                .stored
                .lock()
                .unwrap()
                .insert(offset, Uuid::from_u128(offset as u128 + 1));
        }
        let (flusher, epoch) = new_flusher(writer, FakeCommitter::default());
        let rows: Vec<(i64, i64)> = (0..5).map(|o| (o, 0)).collect();
        let report = flusher.write_batch(batch(epoch, &rows)).await.unwrap();
        assert_eq!((report.inserted, report.already_stored), (2, 3));
        assert_eq!(flusher.writer.inserted(), vec![vec![3, 4]]);
        assert_eq!(
            *flusher.committer.commits.lock().unwrap(),
            vec![vec![(0, 5)]]
        );
    }
}
