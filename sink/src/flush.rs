//! Writing one partition's segment: confirm its dead letters, insert its rows, and only then
//! commit `last offset + 1`. The pipeline runs one such write per partition at a time, for
//! several partitions at once.
//!
//! - Transient failures are retried by the [`crate::retry`] policy with the same rows and the
//!   same deduplication token, until they succeed, the partition is revoked, or the sink stops.
//! - Rows too many for one INSERT (partitions per block, memory) are split; rows ClickHouse
//!   rejects are isolated by bisection and dead-lettered (their messages read back from
//!   Kafka); a changed table is followed (the rows encoded again from their messages). Every
//!   part has a deterministic token, so a retry after a crash still deduplicates.
//! - Before each segment's insert, ClickHouse is asked what it holds of that range: an insert
//!   of a previous owner that landed late is skipped, not repeated.
//! - Nothing is committed for a segment that was not written; a commit the group
//!   coordinator refuses ends this sink's claim on the partition until it is reassigned.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use clickstream_event::Limits;
use tokio::time::Instant;

use crate::SinkError;
use crate::batch::{Batcher, Segment};
use crate::dead_letter::{DeadLetter, DeadLetterSink};
use crate::intake::REUSED_OFFSETS;
use crate::metrics::Metrics;
use crate::ownership::Ownership;
use crate::refetch::Refetch;
use crate::retry::{Operation, RetryPolicy};
use crate::rollups::TouchedKeys;
use crate::row::RowRef;
use crate::rows::{Rows, Sealed};
use crate::settings::{Delivery, Settings};
use crate::writer::{Failure, Split, Writer};

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

/// The dead-letter reason of rows ClickHouse refused (isolated one by one).
pub const REJECTED_BY_CLICKHOUSE: &str = "rejected_by_clickhouse";

/// What writing one segment did, for the log line and the metrics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FlushReport {
    pub partition: i32,
    pub rows: usize,
    pub inserted: usize,
    pub inserts: usize,
    pub dead_lettered: usize,
    pub rejected: usize,
    pub already_stored: usize,
    pub dropped_revoked: usize,
    pub bytes: usize,
    pub committed: Option<i64>,
    /// Partitions whose rows went in the same INSERT (0: this one's alone).
    pub together: usize,
    /// Time spent checking what ClickHouse already holds, inserting, and committing.
    pub check_ms: u64,
    pub insert_ms: u64,
    pub commit_ms: u64,
}

/// Fault injection for tests of crash recovery (environment `CLICKSTREAM_FAILPOINT`):
/// `abort-after-insert:N` aborts the process right after the N-th successful insert, before
/// its offsets are committed: the worst moment to crash. `abort-before-rebuild:N` aborts it
/// before the N-th rebuild of rollup keys a refused insert touched (its rows written again,
/// the views fed before the failing one counting them twice).
#[derive(Debug, Default)]
pub struct Failpoint {
    abort_after_insert: Option<u64>,
    inserts: AtomicU64,
    abort_before_rebuild: Option<u64>,
    rebuilds: AtomicU64,
}

impl Failpoint {
    pub fn from_env() -> Failpoint {
        let value = std::env::var("CLICKSTREAM_FAILPOINT").unwrap_or_default();
        let nth = |prefix: &str| value.strip_prefix(prefix).and_then(|n| n.parse().ok());
        Failpoint {
            abort_after_insert: nth("abort-after-insert:"),
            inserts: AtomicU64::new(0),
            abort_before_rebuild: nth("abort-before-rebuild:"),
            rebuilds: AtomicU64::new(0),
        }
    }

    fn before_rebuild(&self) {
        let n = self.rebuilds.fetch_add(1, Ordering::SeqCst) + 1;
        if self.abort_before_rebuild == Some(n) {
            eprintln!("failpoint: aborting before rollup rebuild {n}");
            std::process::abort();
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

/// The materialized view a refused INSERT failed in, from ClickHouse's message (`... while
/// pushing to view db.name. (CODE)`): `db.name` (without quotes), or `name` where the
/// message gives no database.
pub(crate) fn failed_view(error: &str) -> Option<String> {
    let rest = error.split("while pushing to view ").nth(1)?;
    let name = rest
        .split_whitespace()
        .next()?
        .trim_end_matches(['.', ':', ','])
        .replace('`', "");
    (!name.is_empty() && !name.ends_with('.')).then_some(name)
}

/// The rollup keys one flush rebuilds before its commits: those refused inserts left in the
/// views fed before the failing one, and those of rows read again (see
/// [`Sealed::reread_through`]); `captured`: the offsets whose keys were read. They are
/// recorded in ClickHouse under `id` (the keys before the rows are deleted, the offsets of
/// rows read again before their INSERT); `recovered` are the records a sink stopped before
/// its rebuild left for this flush's partitions.
#[derive(Default)]
struct Repair {
    keys: TouchedKeys,
    captured: std::collections::HashMap<i32, std::collections::HashSet<i64>>,
    /// This flush's record (0: none yet).
    id: u64,
    recovered: Vec<u64>,
    /// Ranges of rows read again recorded under `id` whose keys are not read yet (a flush
    /// stopped between their INSERT and the look-up): read from the table before the rebuild.
    unresolved: Vec<RereadRange>,
}

/// Offsets `first..=last` of `partition` read again, through `ceiling` (see [`Reread`]).
#[derive(Debug, Clone, Copy, PartialEq)]
struct RereadRange {
    partition: i32,
    first: i64,
    last: i64,
    ceiling: i64,
}

/// The rows of a part read again (indices, at offsets through `ceiling`, ClickHouse's
/// maximum when the partition was assigned) and the part's deduplication token.
struct Reread {
    token: String,
    ceiling: i64,
    indices: Vec<usize>,
}

impl Repair {
    /// The records to delete once the keys are rebuilt.
    fn records(&self) -> Vec<u64> {
        let mut ids = self.recovered.clone();
        if self.id != 0 {
            ids.push(self.id);
        }
        ids
    }
}

/// Everything a write needs; shared by the consume loop and the write tasks.
pub struct Flusher<W, D, C, F> {
    pub writer: Arc<W>,
    pub dead_letters: D,
    pub committer: C,
    pub refetch: F,
    pub ownership: Arc<Ownership>,
    pub metrics: Arc<Metrics>,
    /// The retry policy; its cancel token ends the write (shutdown deadline).
    pub retry: RetryPolicy,
    pub topic: String,
    pub delivery: Delivery,
    pub limits: Limits,
    pub failpoint: Failpoint,
    /// Held (shared) by every INSERT; a rollup repair holds it alone, so that no insert of
    /// this sink feeds a rollup between the repair's DELETE and its SELECT of the raw rows.
    pub repairing: tokio::sync::RwLock<()>,
    /// Per partition, the assignment (epoch) whose recorded rebuilds were taken over.
    pending_checked: std::sync::Mutex<std::collections::HashMap<i32, u64>>,
    /// How long the SELECTs finding the rows a view refuses may take (half an insert
    /// timeout: well within what a revoke waits for a flush).
    probe_budget: std::time::Duration,
    /// How long a rollup's query may go on refusing rows before the rebuild stops the sink
    /// (`stall_timeout_ms` + `insert_timeout_ms`: longer than another write's isolation of
    /// refused rows, which leaves them in the table meanwhile).
    refusal_limit: std::time::Duration,
}

enum Stop {
    BadData(String),
    TooBig(Split, String),
    Fatal(SinkError),
    Cancelled,
    Revoked,
}

/// One segment of a flush on its way: its rows until they are inserted.
struct Write {
    partition: i32,
    epoch: u64,
    commit: i64,
    rows: Option<Sealed>,
    /// Lost meanwhile: nothing more is written or committed.
    revoked: bool,
    report: FlushReport,
}

/// A segment's write ended by the partition's loss (`Ok(true)`), or the flush by an error.
fn revoked(stop: Stop) -> Result<bool, SinkError> {
    match stop {
        Stop::Revoked => Ok(true),
        stop => Err(fatal(stop)),
    }
}

/// What a write that cannot go on means for the sink.
fn fatal(stop: Stop) -> SinkError {
    match stop {
        Stop::Cancelled | Stop::Revoked => SinkError::Stopped,
        Stop::Fatal(error) => error,
        Stop::BadData(message) | Stop::TooBig(_, message) => SinkError::Internal(format!(
            "unhandled rejection escaped the segment: {message}"
        )),
    }
}

/// Offsets read back from Kafka at a time when rows are encoded again.
const REFETCH_CHUNK: usize = 10_000;

/// FNV-1a (64 bits) of `bytes`, continuing from `hash` ([`FNV_START`] to begin): a short,
/// deterministic name for what a deduplication token covers.
pub(crate) fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(crate) const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// What a token says of its rows' content besides their offsets: the event ids of its first
/// and last row. ClickHouse remembers tokens after their rows are gone (an `ALTER TABLE ...
/// DELETE`), so a topic deleted and recreated, whose old rows were deleted by hand, would
/// otherwise find the old inserts' tokens at its own offsets, and ClickHouse would drop its
/// inserts as duplicates without a word (measured: 35 of 40 events). The same rows always
/// give the same mark, so a retry still deduplicates.
fn ids_mark(rows: &Sealed, first: usize, last: usize) -> u64 {
    let ids = rows.ids(&[first, last]);
    fnv(fnv(FNV_START, ids[0].as_bytes()), ids[1].as_bytes())
}

/// The indices of `all` not in `gone` (both increasing).
fn without(all: &[usize], gone: &[usize]) -> Vec<usize> {
    let mut gone = gone.iter().peekable();
    all.iter()
        .copied()
        .filter(|&i| {
            while gone.next_if(|&&g| g < i).is_some() {}
            gone.next_if_eq(&&i).is_none()
        })
        .collect()
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
    fn time_halves(mut self, rows: &Sealed) -> (Part, Part) {
        self.rows.sort_by_key(|&i| (rows.time(i), rows.offset(i)));
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

impl<W: Writer, D: DeadLetterSink, C: Committer, F: Refetch> Flusher<W, D, C, F> {
    pub fn new(
        settings: &Settings,
        writer: Arc<W>,
        dead_letters: D,
        committer: C,
        refetch: F,
        ownership: Arc<Ownership>,
        retry: RetryPolicy,
    ) -> Self {
        Flusher {
            writer,
            dead_letters,
            committer,
            refetch,
            ownership,
            metrics: retry.metrics.clone(),
            retry,
            topic: settings.topic.clone(),
            delivery: settings.delivery,
            limits: settings.limits(),
            failpoint: Failpoint::from_env(),
            repairing: tokio::sync::RwLock::new(()),
            pending_checked: Default::default(),
            probe_budget: std::time::Duration::from_millis(settings.insert_timeout_ms / 2),
            refusal_limit: std::time::Duration::from_millis(
                settings.stall_timeout_ms + settings.insert_timeout_ms,
            ),
        }
    }

    /// Writes the `segments` of one flush (of different partitions) and commits each: their
    /// rows go in one INSERT (several partitions together), or one INSERT per segment when
    /// there is one, or when the INSERT together is refused (then each segment is written on
    /// its own: split, bisected, encoded again). Errors are fatal (or shutdown).
    pub async fn write(
        &self,
        segments: Vec<Segment<Rows, D::Ack>>,
    ) -> Result<Vec<FlushReport>, SinkError> {
        let started = Instant::now();
        let claims: Vec<(i32, u64)> = segments.iter().map(|s| (s.partition, s.epoch)).collect();
        let owned = self.ownership.begin_flush(&claims);
        let _in_flight = InFlight {
            ownership: &self.ownership,
            partitions: owned.clone(),
        };
        let mut writes: Vec<Write> = Vec::with_capacity(segments.len());
        for segment in segments {
            let mut write = Write {
                partition: segment.partition,
                epoch: segment.epoch,
                commit: segment.commit_offset(),
                rows: None,
                revoked: false,
                report: FlushReport {
                    partition: segment.partition,
                    rows: segment.rows.len(),
                    bytes: segment.bytes,
                    ..FlushReport::default()
                },
            };
            if !owned.contains(&segment.partition) {
                write.report.dropped_revoked = write.report.rows;
                write.revoked = true;
            } else {
                write.report.already_stored = segment.already_stored;
                match self.prepare(segment, &mut write.report).await {
                    Ok(rows) => write.rows = rows,
                    Err(stop) => write.revoked = revoked(stop)?,
                }
            }
            writes.push(write);
        }
        let mut repair = Repair::default();
        self.take_over_rebuilds(&writes, &mut repair)
            .await
            .map_err(fatal)?;
        let inserted = self.insert_all(&mut writes, &mut repair).await;
        // Rows a refused insert left in the views fed before the failing one: the rollups'
        // keys they touched are rebuilt from the table (now holding each row once) before
        // anything is committed; also when the flush stops early (a fatal error, shutdown),
        // since a restart finds those rows stored and skips them. The keys (or the offsets of
        // rows read again) are recorded in ClickHouse: a sink killed, or failing to rebuild,
        // leaves them to the partition's next owner.
        if let Err(stop) = self.finish_repair(&repair).await {
            let partitions: Vec<String> = repair.captured.keys().map(i32::to_string).collect();
            tracing::error!(
                keys = repair.keys.keys(),
                partitions = %partitions.join(","),
                "the rollup keys a refused insert (or rows read again) touched are not rebuilt yet: the rollups count those rows twice until the next sink that owns these partitions rebuilds them at its first write (they are recorded in {})",
                crate::writer::PENDING_REBUILDS_TABLE
            );
            inserted?;
            return Err(fatal(stop));
        }
        inserted?;
        let mut reports = Vec::with_capacity(writes.len());
        for Write {
            partition,
            epoch,
            commit,
            revoked,
            mut report,
            ..
        } in writes
        {
            if !revoked {
                let committing = Instant::now();
                if self.commit(partition, epoch, commit).await {
                    report.committed = Some(commit);
                }
                report.commit_ms = committing.elapsed().as_millis() as u64;
            }
            tracing::info!(
                partition,
                rows = report.rows,
                inserted = report.inserted,
                dead_lettered = report.dead_lettered,
                rejected = report.rejected,
                already_stored = report.already_stored,
                bytes = report.bytes,
                inserts = report.inserts,
                partitions_together = report.together,
                committed = report.committed,
                check_ms = report.check_ms,
                insert_ms = report.insert_ms,
                commit_ms = report.commit_ms,
                write_ms = started.elapsed().as_millis() as u64,
                "flushed"
            );
            self.metrics.batch_rows.observe(report.rows as f64);
            reports.push(report);
        }
        Ok(reports)
    }

    /// Commits `offset` for `partition` if it is still owned under `epoch`; whether it was.
    async fn commit(&self, partition: i32, epoch: u64, offset: i64) -> bool {
        let mut retry = self.retry.start(Operation::Commit);
        loop {
            if !self.ownership.owns(partition, epoch) {
                return false;
            }
            match self.committer.commit(&[(partition, offset)]).await {
                Ok(()) => {
                    self.retry.stall.progress();
                    return true;
                }
                Err(CommitError::Fenced(error)) => {
                    // Not ours any more: insert and commit nothing more of this partition
                    // until the group assigns it again (then it is replayed from the
                    // committed offset and the rows written here are skipped).
                    self.ownership.lose(partition, epoch);
                    self.metrics.commits_fenced.inc();
                    tracing::warn!(partition, error = %error, "the group coordinator refused the commit: this partition is no longer ours; its rows are in ClickHouse and its next owner skips them");
                    return false;
                }
                Err(CommitError::Failed(error)) => {
                    self.metrics.commit_failures.inc();
                    if retry
                        .wait(Some(partition), "transient", &error)
                        .await
                        .is_err()
                    {
                        // Stopping: the rows are in ClickHouse; the replay skips them.
                        return false;
                    }
                }
            }
        }
    }

    /// Confirms the segment's dead letters (they precede its rows) and seals its rows; `None`
    /// when it has none to insert. Waits out a freeze first (`Revoked` if the partition was
    /// lost meanwhile).
    async fn prepare(
        &self,
        segment: Segment<Rows, D::Ack>,
        report: &mut FlushReport,
    ) -> Result<Option<Sealed>, Stop> {
        let Segment {
            partition,
            epoch,
            rows,
            dead_letters,
            ..
        } = segment;
        for ack in dead_letters {
            self.confirm(ack).await?;
            report.dead_lettered += 1;
        }
        let Some(rows) = rows.seal() else {
            return Ok(None);
        };
        self.wait_writable(partition, epoch).await?;
        Ok(Some(rows))
    }

    /// The flush's segments: together in one INSERT if there are several, then each one left
    /// on its own (a revoked partition is dropped, any other stop ends the flush).
    async fn insert_all(&self, writes: &mut [Write], repair: &mut Repair) -> Result<(), SinkError> {
        if writes.iter().filter(|w| w.rows.is_some()).count() > 1 {
            self.insert_together(writes, repair).await.map_err(fatal)?;
        }
        for write in writes.iter_mut() {
            let Some(rows) = write.rows.take() else {
                continue;
            };
            if let Err(stop) = self
                .insert_segment(
                    write.partition,
                    write.epoch,
                    rows,
                    &mut write.report,
                    repair,
                )
                .await
            {
                write.revoked = revoked(stop)?;
            }
        }
        Ok(())
    }

    /// One INSERT with the rows of several partitions' segments. Those it writes lose their
    /// rows (`rows` taken); when ClickHouse refuses it (too big, a rejected row, a changed
    /// table) or a partition is lost meanwhile, every segment keeps its rows and is written
    /// on its own after this (what a refused insert left in the table removed first).
    async fn insert_together(&self, writes: &mut [Write], repair: &mut Repair) -> Result<(), Stop> {
        // What ClickHouse holds of each partition's range, asked for all at once.
        let checking = Instant::now();
        let fences = writes.iter_mut().map(|write| async move {
            if let Some(rows) = write.rows.take() {
                let rows = self.fence(write.partition, rows, &mut write.report).await?;
                write.rows = (!rows.is_empty()).then_some(rows);
            }
            Ok::<(), Stop>(())
        });
        for fenced in futures_util::future::join_all(fences).await {
            fenced?;
        }
        let check_ms = checking.elapsed().as_millis() as u64;
        // Rows read again go in on their own, where the write stage checks they landed.
        let together: Vec<usize> = (0..writes.len())
            .filter(|&i| {
                writes[i]
                    .rows
                    .as_ref()
                    .is_some_and(|r| r.reread_through().is_none())
            })
            .collect();
        let parts: Vec<&Sealed> = together
            .iter()
            .filter_map(|&i| writes[i].rows.as_ref())
            .collect();
        if parts.len() < 2 {
            return Ok(());
        }
        // Segments encoded for different table structures go in one by one.
        let Some(rows) = Sealed::concat(&parts) else {
            return Ok(());
        };
        let all: Vec<usize> = (0..rows.len()).collect();
        let token = (self.delivery == Delivery::ExactlyOnce).then(|| {
            let mut token = self.topic.clone();
            for &i in &together {
                let (partition, rows) =
                    (writes[i].partition, writes[i].rows.as_ref().expect("kept"));
                let last = rows.len() - 1;
                let _ = write!(
                    token,
                    ":{partition}:{}-{}@{:016x}",
                    rows.offset(0),
                    rows.offset(last),
                    ids_mark(rows, 0, last)
                );
            }
            token
        });
        let inserting = Instant::now();
        let mut retry = self.retry.start(Operation::Insert);
        loop {
            for &i in &together {
                match self
                    .wait_writable(writes[i].partition, writes[i].epoch)
                    .await
                {
                    Ok(()) => {}
                    // Lost meanwhile: each segment on its own (checked again for what landed).
                    Err(Stop::Revoked) => return Ok(()),
                    Err(stop) => return Err(stop),
                }
            }
            let started = Instant::now();
            let inserted = {
                let _shared = self.repairing.read().await;
                self.writer.insert(&rows, &all, token.as_deref()).await
            };
            let failure = match inserted {
                Ok(()) => {
                    self.inserted(&rows, &all, started);
                    let insert_ms = inserting.elapsed().as_millis() as u64;
                    for &i in &together {
                        let write = &mut writes[i];
                        let written = write.rows.take().map_or(0, |r| r.len());
                        write.report.inserted += written;
                        write.report.inserts += 1;
                        write.report.together = together.len();
                        write.report.check_ms = check_ms;
                        write.report.insert_ms = insert_ms;
                    }
                    return Ok(());
                }
                Err(failure) => failure,
            };
            match failure {
                Failure::Fatal(message) => {
                    return Err(Stop::Fatal(SinkError::clickhouse("insert")(
                        Failure::Fatal(message),
                    )));
                }
                Failure::TooBig { message, .. }
                | Failure::BadData(message)
                | Failure::SchemaChanged(message) => {
                    tracing::warn!(
                        partitions = together.len(),
                        rows = rows.len(),
                        error = %message,
                        "ClickHouse refused the insert of several partitions; writing each partition on its own"
                    );
                    self.metrics
                        .insert_splits
                        .get_or_create(&Metrics::label("reason", "partitions_apart"))
                        .inc();
                    for &i in &together {
                        let write = &writes[i];
                        let rows = write.rows.as_ref().expect("kept");
                        let part = Part {
                            rows: (0..rows.len()).collect(),
                            run: true,
                        };
                        self.undo_partial(
                            write.partition,
                            write.epoch,
                            rows,
                            &part,
                            &message,
                            repair,
                        )
                        .await?;
                    }
                    return Ok(());
                }
                failure => retry
                    .wait(None, failure.kind(), failure.message())
                    .await
                    .map_err(|_| Stop::Cancelled)?,
            }
        }
    }

    /// One segment's rows, on their own: checked for what ClickHouse holds already, then
    /// inserted, split or bisected as ClickHouse answers.
    async fn insert_segment(
        &self,
        partition: i32,
        epoch: u64,
        rows: Sealed,
        report: &mut FlushReport,
        repair: &mut Repair,
    ) -> Result<(), Stop> {
        // What ClickHouse holds is checked right before writing.
        let checking = Instant::now();
        let mut rows = self.fence(partition, rows, report).await?;
        report.check_ms += checking.elapsed().as_millis() as u64;
        let inserting = Instant::now();
        // Depth-first, so rows go in offset order (in time order after a split by time).
        let mut pending = vec![Part {
            rows: (0..rows.len()).collect(),
            run: true,
        }];
        while let Some(part) = pending.pop() {
            if part.rows.is_empty() {
                continue;
            }
            // Past the shutdown deadline: no new insert (what was left is recorded).
            if self.retry.cancel.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            match self
                .insert_with_retry(partition, epoch, &mut rows, &part, repair)
                .await
            {
                Ok(()) => {
                    report.inserted += part.rows.len();
                    report.inserts += 1;
                }
                Err(Stop::TooBig(split, message)) => {
                    tracing::warn!(partition, rows = part.rows.len(), ?split, error = %message, "ClickHouse refused an insert as too big; splitting it");
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
                    self.undo_partial(partition, epoch, &rows, &part, &message, repair)
                        .await?;
                    let (first, second) = match split {
                        Split::ByTime => part.time_halves(&rows),
                        Split::InHalves => part.halves(),
                    };
                    pending.push(second);
                    pending.push(first);
                }
                Err(Stop::BadData(message)) if part.rows.len() > 1 => {
                    tracing::warn!(partition, rows = part.rows.len(), error = %message, "ClickHouse rejected a batch; isolating the bad rows");
                    // The rollup keys of what the refused insert left are recorded first; the
                    // refused rows are then found by SELECTs over those rows, when that can tell.
                    let left = self
                        .capture(partition, &rows, &part, &message, repair)
                        .await?;
                    let refused = self
                        .pinpoint(partition, epoch, &rows, &part, &left, &message)
                        .await;
                    self.remove(partition, epoch, &left).await?;
                    match refused {
                        Some(refused) => {
                            let kept: Vec<usize> = part
                                .rows
                                .iter()
                                .copied()
                                .filter(|i| refused.binary_search(i).is_err())
                                .collect();
                            for &i in &refused {
                                self.reject(partition, rows.offset(i), message.clone())
                                    .await?;
                                report.rejected += 1;
                            }
                            pending.push(Part {
                                rows: kept,
                                run: false,
                            });
                        }
                        None => {
                            let (first, second) = part.halves();
                            pending.push(second);
                            pending.push(first);
                        }
                    }
                }
                Err(Stop::BadData(message)) => {
                    self.undo_partial(partition, epoch, &rows, &part, &message, repair)
                        .await?;
                    let offset = rows.offset(part.rows[0]);
                    self.reject(partition, offset, message).await?;
                    report.rejected += 1;
                }
                Err(stop) => return Err(stop),
            }
        }
        report.insert_ms += inserting.elapsed().as_millis() as u64;
        Ok(())
    }

    /// The rows of `part` (indices, increasing) that the view named in `error` refuses, found
    /// by running the view's SELECT over what the refused insert left in the table, halving
    /// the rows that fail until each is one row: SELECTs that write nothing, instead of
    /// inserts that each leave rows to delete and rollup keys to rebuild. `None` when that
    /// cannot tell: not every row was left, the view is not named or does not read the table
    /// plainly, no row fails alone (a refusal of several rows together), too many probes.
    async fn pinpoint(
        &self,
        partition: i32,
        epoch: u64,
        rows: &Sealed,
        part: &Part,
        left: &[i64],
        error: &str,
    ) -> Option<Vec<usize>> {
        /// SELECTs at most per refused part (two per halving of a refused set).
        const PROBES: usize = 1_000;
        let view = failed_view(error)?;
        let view = view.as_str();
        let code = crate::writer::error_code(error)?;
        // Stopping (the shutdown deadline): no more work than needed.
        if self.retry.cancel.is_cancelled() || left.len() != part.rows.len() {
            return None;
        }
        // The partition lost, or the search long: a new owner would take the rows left in the
        // table for stored ones (a revoke waits about one insert timeout for a flush).
        let budget = Instant::now() + self.probe_budget;
        let offsets = |set: &[usize]| -> Vec<i64> { set.iter().map(|&i| rows.offset(i)).collect() };
        let all = offsets(&part.rows);
        let refuses = |set: Vec<i64>| async move {
            self.writer
                .view_refuses(&self.topic, partition, view, code, &set)
                .await
                .map_err(|failure| {
                    tracing::info!(partition, view, error = %failure, "cannot find the refused rows with the view's SELECT; bisecting with inserts");
                })
        };
        if !refuses(all).await.ok()? {
            return None;
        }
        let mut refused = Vec::new();
        let mut todo = vec![part.rows.clone()];
        let mut probes = 1;
        while let Some(mut set) = todo.pop() {
            if self.retry.cancel.is_cancelled()
                || Instant::now() > budget
                || !self.ownership.owns(partition, epoch)
            {
                return None;
            }
            if set.len() == 1 {
                refused.push(set[0]);
                continue;
            }
            let second = set.split_off(set.len() / 2);
            let (first_refuses, second_refuses) = (
                refuses(offsets(&set)).await.ok()?,
                refuses(offsets(&second)).await.ok()?,
            );
            probes += 2;
            if !(first_refuses || second_refuses) || probes > PROBES {
                return None;
            }
            if second_refuses {
                todo.push(second);
            }
            if first_refuses {
                todo.push(set);
            }
        }
        refused.sort_unstable();
        tracing::info!(
            partition,
            rows = part.rows.len(),
            refused = refused.len(),
            probes,
            view,
            "found the rows the view refuses with its SELECT over the rows the refused insert left"
        );
        Some(refused)
    }

    /// Dead-letters the message at `offset`, which ClickHouse rejected, as Kafka holds it.
    async fn reject(&self, partition: i32, offset: i64, error: String) -> Result<(), Stop> {
        let message = self
            .read_back(partition, &[offset])
            .await?
            .into_iter()
            .next();
        let letter = match message {
            Some(message) => DeadLetter {
                key: message.key,
                payload: message.payload,
                headers: message.headers,
                reason: REJECTED_BY_CLICKHOUSE.into(),
                error,
                source_topic: self.topic.clone(),
                source_partition: partition,
                source_offset: offset,
                source_timestamp_ms: message.timestamp_ms,
            },
            None => DeadLetter {
                key: None,
                payload: None,
                headers: Vec::new(),
                reason: REJECTED_BY_CLICKHOUSE.into(),
                error: format!(
                    "{error} (the message itself was already deleted from the topic by its retention)"
                ),
                source_topic: self.topic.clone(),
                source_partition: partition,
                source_offset: offset,
                source_timestamp_ms: None,
            },
        };
        let ack = self.dead_letters.send(letter);
        self.confirm(ack).await?;
        self.metrics
            .dead_lettered
            .get_or_create(&Metrics::label("reason", REJECTED_BY_CLICKHOUSE))
            .inc();
        Ok(())
    }

    /// Messages of `partition` read back from Kafka, retried while that fails transiently.
    async fn read_back(
        &self,
        partition: i32,
        offsets: &[i64],
    ) -> Result<Vec<crate::refetch::Fetched>, Stop> {
        let mut retry = self.retry.start(Operation::ReadBack);
        loop {
            match self.refetch.fetch(partition, offsets).await {
                Ok(messages) => return Ok(messages),
                Err(Failure::Fatal(message)) => {
                    return Err(Stop::Fatal(SinkError::Inconsistent(message)));
                }
                Err(failure) => retry
                    .wait(Some(partition), failure.kind(), failure.message())
                    .await
                    .map_err(|_| Stop::Cancelled)?,
            }
        }
    }

    /// The rows encoded again for the table's new structure, from their messages.
    async fn reencode(&self, partition: i32, rows: &Sealed) -> Result<Sealed, Stop> {
        let Some(layout) = self.writer.layout() else {
            return Err(Stop::Fatal(SinkError::Internal(
                "no table structure after a reload".into(),
            )));
        };
        let offsets: Vec<i64> = rows.offsets().collect();
        let mut again = Rows::default();
        for chunk in offsets.chunks(REFETCH_CHUNK) {
            let messages = self.read_back(partition, chunk).await?;
            if messages.len() != chunk.len() {
                let missing: Vec<i64> = chunk
                    .iter()
                    .filter(|o| !messages.iter().any(|m| m.offset == **o))
                    .take(5)
                    .copied()
                    .collect();
                return Err(Stop::Fatal(SinkError::Inconsistent(format!(
                    "{}[{partition}]: the table's structure changed and the buffered rows must \
                     be encoded again, but offsets {missing:?}... are no longer in the topic \
                     (deleted by retention before they were written). Nothing was committed \
                     for them; raise the topic's retention above the sink's worst outage",
                    self.topic
                ))));
            }
            for message in &messages {
                let at = message
                    .timestamp_ms
                    .and_then(DateTime::from_timestamp_millis)
                    .unwrap_or_else(Utc::now);
                let event = clickstream_event::decode_ref(message.payload.as_deref(), &self.limits, at)
                    .map_err(|rejection| {
                        Stop::Fatal(SinkError::Inconsistent(format!(
                            "{}[{partition}] offset {}: the event was valid when read and is not now ({rejection})",
                            self.topic, message.offset
                        )))
                    })?;
                again.push(
                    || layout.clone(),
                    &RowRef::of_event(&event, &self.topic, partition, message.offset)
                        .with_kafka_timestamp(message.timestamp_ms),
                );
            }
        }
        Ok(again
            .seal()
            .unwrap_or_else(|| Sealed::encode(layout, &[]))
            .with_reread_through(rows.reread_through()))
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

    /// A refused INSERT may have written its rows to the events table, and to the views fed
    /// before the failing one, before a materialized view failed (ClickHouse does not roll
    /// that back). Before the rows go in again as parts (new tokens) or to the dead-letter
    /// topic, the leftovers are deleted from the table; the rollup keys they touch are noted
    /// in `repair` first (rebuilt once the flush's rows are in, before its commits).
    async fn undo_partial(
        &self,
        partition: i32,
        epoch: u64,
        rows: &Sealed,
        part: &Part,
        error: &str,
        repair: &mut Repair,
    ) -> Result<(), Stop> {
        let left = self.capture(partition, rows, part, error, repair).await?;
        self.remove(partition, epoch, &left).await
    }

    /// The first half of [`Self::undo_partial`]: which rows of `part` the refused insert left
    /// in the table (offsets), with the rollup keys they touch read and recorded.
    async fn capture(
        &self,
        partition: i32,
        rows: &Sealed,
        part: &Part,
        error: &str,
        repair: &mut Repair,
    ) -> Result<Vec<i64>, Stop> {
        let from = rows.offset(part.rows[0]);
        let to = rows.offset(part.rows[part.rows.len() - 1]);
        let stored = self.stored(partition, from, to).await?;
        let left: Vec<i64> = part
            .rows
            .iter()
            .map(|&i| rows.offset(i))
            .filter(|offset| stored.contains_key(offset))
            .collect();
        if left.is_empty() {
            return Ok(left);
        }
        tracing::warn!(
            partition,
            rows = left.len(),
            "the refused insert left rows in the table (and maybe in the views fed before the failing one); deleting them, and rebuilding the rollup keys they touch once the rows are in"
        );
        let captured = repair.captured.entry(partition).or_default();
        let new: Vec<i64> = left
            .iter()
            .copied()
            .filter(|offset| !captured.contains(offset))
            .collect();
        if !new.is_empty() {
            let touched = self
                .repair_step(
                    Some(partition),
                    "reading the rollup keys of a partly written insert",
                    || self.writer.touched_keys(&self.topic, partition, &new),
                )
                .await?;
            // The failing view wrote nothing: only the others can count the rows twice.
            let failing = failed_view(error);
            let not_rebuilt: Vec<String> = touched
                .not_rebuilt
                .iter()
                .filter(|r| failing.as_deref().is_none_or(|f| !r.is(f)))
                .map(crate::rollups::Rollup::not_rebuilt)
                .collect();
            if !not_rebuilt.is_empty() {
                tracing::error!(
                    partition,
                    from = new[0],
                    to = new[new.len() - 1],
                    views = %not_rebuilt.join(", "),
                    "these materialized views cannot be rebuilt, and `clickstream-sink verify` does not check them: those fed before the failing view count these offsets of partition {partition} twice once the rows go in again; rebuild what they hold of these rows from the raw table by hand"
                );
            }
            if !touched.is_empty() {
                if repair.id == 0 {
                    repair.id = rand::random::<u64>() >> 1 | 1;
                }
                let id = repair.id;
                self.repair_step(
                    Some(partition),
                    "recording the rollup keys to rebuild (the sink user needs INSERT on kafka_pending_rebuilds)",
                    || self.writer.note_rebuild(&self.topic, partition, id, &touched),
                )
                .await?;
            }
            repair.keys.merge(touched);
            captured.extend(new);
        }
        Ok(left)
    }

    /// The second half of [`Self::undo_partial`]: deletes the rows a refused insert left,
    /// unless the partition was lost meanwhile: its new owner may have found them stored and
    /// skipped them, so they stay (stored once; their rollup keys are recorded and rebuilt).
    async fn remove(&self, partition: i32, epoch: u64, left: &[i64]) -> Result<(), Stop> {
        if left.is_empty() {
            return Ok(());
        }
        if !self.ownership.owns(partition, epoch) {
            tracing::warn!(
                partition,
                rows = left.len(),
                "the partition was lost while its refused insert was repaired: the rows it left stay stored (their rollup keys are rebuilt)"
            );
            return Ok(());
        }
        self.repair_step(
            Some(partition),
            "removing a partly written insert (the sink user needs ALTER DELETE on the events table)",
            || self.writer.delete_offsets(&self.topic, partition, left),
        )
        .await?;
        self.metrics.partial_rows_removed.inc_by(left.len() as u64);
        Ok(())
    }

    /// At the first write of a partition's assignment: the rebuilds a sink stopped before
    /// doing left for it (recorded in ClickHouse), added to this flush's repair.
    async fn take_over_rebuilds(&self, writes: &[Write], repair: &mut Repair) -> Result<(), Stop> {
        let unchecked: Vec<(i32, u64)> = {
            let checked = self
                .pending_checked
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            writes
                .iter()
                .filter(|w| !w.revoked && checked.get(&w.partition) != Some(&w.epoch))
                .map(|w| (w.partition, w.epoch))
                .collect()
        };
        if unchecked.is_empty() {
            return Ok(());
        }
        let partitions: Vec<i32> = unchecked.iter().map(|(p, _)| *p).collect();
        let (ids, keys) = self
            .repair_step(
                None,
                "reading the rollup rebuilds a stopped sink left (the sink user needs SELECT on kafka_pending_rebuilds)",
                || self.writer.pending_rebuilds(&self.topic, &partitions),
            )
            .await?;
        if !ids.is_empty() {
            tracing::warn!(
                partitions = ?partitions,
                records = ids.len(),
                keys = keys.keys(),
                "a sink stopped before rebuilding the rollup keys a refused insert (or rows read again) touched: rebuilding them once this flush's rows are in"
            );
            repair.keys.merge(keys);
            repair.recovered.extend(ids);
        }
        let mut checked = self
            .pending_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        checked.extend(unchecked);
        Ok(())
    }

    /// Rebuilds the keys of `repair` (if any), then deletes their records.
    async fn finish_repair(&self, repair: &Repair) -> Result<(), Stop> {
        let mut resolved;
        let mut keys = &repair.keys;
        if !repair.unresolved.is_empty() {
            // Forgotten below with the record: read their keys now.
            resolved = repair.keys.clone();
            for range in &repair.unresolved {
                let offsets: Vec<i64> = (range.first..=range.last).collect();
                let mut touched = self
                    .repair_step(
                        Some(range.partition),
                        "reading the rollup keys of rows read again",
                        || {
                            self.writer
                                .touched_keys(&self.topic, range.partition, &offsets)
                        },
                    )
                    .await?;
                touched
                    .progress_floor
                    .insert(range.partition, range.ceiling);
                resolved.merge(touched);
            }
            keys = &resolved;
        }
        if !keys.is_empty() {
            self.failpoint.before_rebuild();
            self.rebuild_rollups(keys).await?;
        }
        let records = repair.records();
        if !records.is_empty() {
            self.repair_step(
                None,
                "forgetting the rollup rebuilds done (the sink user needs ALTER DELETE on kafka_pending_rebuilds)",
                || self.writer.forget_rebuilds(&self.topic, &records),
            )
            .await?;
        }
        Ok(())
    }

    /// Brings the rollups' rows of `keys` back to what the table holds, with no insert of
    /// this sink running meanwhile (one fed between the rollup's DELETE and its SELECT of the
    /// table would count twice).
    ///
    /// A rollup's query refusing rows of `events` is retried for `refusal_limit`: another
    /// write may be isolating refused rows it has yet to delete. Refused longer, the sink stops:
    /// the view refuses rows that stay (changed after they were stored, or left by a refused
    /// insert whose partition moved meanwhile), which only an operator can settle.
    async fn rebuild_rollups(&self, keys: &TouchedKeys) -> Result<(), Stop> {
        let _alone = self.repairing.write().await;
        let what = "rebuilding the rollup keys of a partly written insert (the sink user needs INSERT and ALTER DELETE on the rollups)";
        let mut retry = self.retry.start(Operation::Insert);
        let mut refused_since = None;
        loop {
            match self.writer.rebuild_rollups(keys).await {
                Ok(()) => break,
                Err(Failure::Fatal(message)) => {
                    return Err(Stop::Fatal(SinkError::clickhouse(what)(Failure::Fatal(
                        message,
                    ))));
                }
                Err(Failure::BadData(message))
                    if refused_since.get_or_insert_with(Instant::now).elapsed()
                        >= self.refusal_limit =>
                {
                    return Err(Stop::Fatal(SinkError::clickhouse(what)(Failure::Fatal(
                        format!(
                            "{message}, still after {} s (stall_timeout_ms + insert_timeout_ms): \
                             a view changed to refuse rows already stored, or rows a refused \
                             insert left when its partition moved to another sink; fix the \
                             view or delete those rows, then start the sink again. The keys it \
                             owes stay recorded in kafka_pending_rebuilds and are rebuilt first \
                             (`clickstream-sink verify` lists them); meanwhile that rollup \
                             keeps its rows of those keys as they were, not rebuilt",
                            self.refusal_limit.as_secs()
                        ),
                    ))));
                }
                Err(failure) => retry
                    .wait(None, failure.kind(), failure.message())
                    .await
                    .map_err(|_| Stop::Cancelled)?,
            }
        }
        tracing::info!(
            keys = keys.keys(),
            rollups = keys.rollups.len(),
            "rebuilt the rollup keys a refused insert (or rows read again) touched from the table"
        );
        self.metrics.rollup_keys_rebuilt.inc_by(keys.keys() as u64);
        Ok(())
    }

    /// One step of [`Self::undo_partial`], retried by the policy; a fatal failure stops.
    async fn repair_step<T, Fut>(
        &self,
        partition: Option<i32>,
        what: &'static str,
        step: impl Fn() -> Fut,
    ) -> Result<T, Stop>
    where
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut retry = self.retry.start(Operation::Insert);
        loop {
            match step().await {
                Ok(done) => return Ok(done),
                Err(Failure::Fatal(message)) => {
                    return Err(Stop::Fatal(SinkError::clickhouse(what)(Failure::Fatal(
                        message,
                    ))));
                }
                Err(failure) => retry
                    .wait(partition, failure.kind(), failure.message())
                    .await
                    .map_err(|_| Stop::Cancelled)?,
            }
        }
    }

    /// Before a segment's insert: drops the rows ClickHouse already holds. Another member's
    /// insert of these offsets may have landed: a previous owner's that finished late, or one
    /// of a member that lost the partition without knowing yet. One small query per segment.
    async fn fence(
        &self,
        partition: i32,
        rows: Sealed,
        report: &mut FlushReport,
    ) -> Result<Sealed, Stop> {
        if self.delivery != Delivery::ExactlyOnce || rows.is_empty() {
            return Ok(rows);
        }
        let (from, to) = (rows.offset(0), rows.offset(rows.len() - 1));
        let stored = self.stored(partition, from, to).await?;
        if stored.is_empty() {
            return Ok(rows);
        }
        let all: Vec<usize> = (0..rows.len()).collect();
        for (i, id) in rows.ids(&all).into_iter().enumerate() {
            let offset = rows.offset(i);
            if let Some(held) = stored.get(&offset)
                && *held != id
            {
                return Err(Stop::Fatal(SinkError::Inconsistent(format!(
                    "{}[{partition}] offset {offset}: ClickHouse holds event {held} there, \
                     but the message is event {id}. {REUSED_OFFSETS}",
                    self.topic
                ))));
            }
        }
        let before = rows.len();
        let kept = {
            let offsets: Vec<i64> = rows.offsets().collect();
            rows.retain(|i| !stored.contains_key(&offsets[i]))
        };
        let skipped = before - kept.len();
        if skipped > 0 {
            tracing::info!(
                partition,
                skipped,
                "rows written meanwhile by the previous owner are skipped"
            );
        }
        self.metrics.replay_skipped.inc_by(skipped as u64);
        report.already_stored += skipped;
        Ok(kept)
    }

    /// The deduplication token of `part`: the same rows always get the same token.
    fn token(&self, partition: i32, rows: &Sealed, part: &Part) -> Option<String> {
        if self.delivery != Delivery::ExactlyOnce {
            return None;
        }
        let (first, last) = (part.rows[0], part.rows[part.rows.len() - 1]);
        let (from, to) = (rows.offset(first), rows.offset(last));
        let mut token = format!("{}:{partition}:{from}-{to}", self.topic);
        if !part.run {
            // A set of offsets, named by its content.
            let hash = part
                .rows
                .iter()
                .fold(FNV_START, |h, &i| fnv(h, &rows.offset(i).to_le_bytes()));
            let _ = write!(token, ":{}x{hash:016x}", part.rows.len());
        }
        let _ = write!(token, "@{:016x}", ids_mark(rows, first, last));
        Some(token)
    }

    /// Bookkeeping of a successful INSERT of the rows `part` of `rows`, started at `started`.
    fn inserted(&self, rows: &Sealed, part: &[usize], started: Instant) {
        self.metrics
            .insert_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.inserts.inc();
        self.metrics.inserted_rows.inc_by(part.len() as u64);
        let now = Utc::now().timestamp_millis();
        for &i in part {
            let age = (now - rows.time(i)).max(0) as f64 / 1000.0;
            self.metrics.event_to_insert_seconds.observe(age);
        }
        self.retry.stall.progress();
        self.failpoint.after_insert();
    }

    /// One INSERT of `part` (see [`Flusher::insert_retrying`]). For its rows read again at
    /// offsets ClickHouse once held (see [`Sealed::reread_through`]):
    /// - their offsets are recorded before the INSERT: a sink killed after it leaves their
    ///   rollup keys to be rebuilt by the partition's next owner, which finds the rows stored
    ///   and skips them (a flush that stops reads them in [`Flusher::finish_repair`]);
    /// - after it, the rollup keys of those that landed are rebuilt with the flush's `repair`:
    ///   the rollups may still count them from before (a delete by hand leaves them as they
    ///   were);
    /// - those that did not land were dropped as duplicates: their rows were deleted by hand,
    ///   but ClickHouse still remembers the original inserts' tokens. They go in again under
    ///   a new token (see [`Flusher::insert_dropped`]).
    async fn insert_with_retry(
        &self,
        partition: i32,
        epoch: u64,
        rows: &mut Sealed,
        part: &Part,
        repair: &mut Repair,
    ) -> Result<(), Stop> {
        let token = self.token(partition, rows, part);
        let reread = match (&token, rows.reread_through()) {
            (Some(token), Some(ceiling)) => {
                let indices: Vec<usize> = part
                    .rows
                    .iter()
                    .copied()
                    .filter(|&i| rows.offset(i) <= ceiling)
                    .collect();
                (!indices.is_empty()).then(|| Reread {
                    token: token.clone(),
                    ceiling,
                    indices,
                })
            }
            _ => None,
        };
        let range = match &reread {
            Some(reread) => Some(self.note_reread(partition, rows, reread, repair).await?),
            None => None,
        };
        self.insert_retrying(partition, epoch, rows, part, token.as_deref())
            .await?;
        let (Some(reread), Some(range)) = (reread, range) else {
            return Ok(());
        };
        let missing = self.not_stored(partition, rows, &reread.indices).await?;
        let landed = without(&reread.indices, &missing);
        self.rebuild_reread(partition, rows, &landed, reread.ceiling, repair)
            .await?;
        self.insert_dropped(partition, epoch, rows, missing, &reread, repair)
            .await?;
        // Every row of the range is stored and its keys read.
        repair.unresolved.retain(|r| *r != range);
        Ok(())
    }

    /// Records the offsets of the rows `reread` (with the progress table's floor) as owed a
    /// rebuild, before their INSERT (see [`TouchedKeys::reread`]).
    async fn note_reread(
        &self,
        partition: i32,
        rows: &Sealed,
        reread: &Reread,
        repair: &mut Repair,
    ) -> Result<RereadRange, Stop> {
        let range = RereadRange {
            partition,
            first: rows.offset(reread.indices[0]),
            last: rows.offset(reread.indices[reread.indices.len() - 1]),
            ceiling: reread.ceiling,
        };
        let mut owed = TouchedKeys::default();
        owed.reread
            .insert(partition, vec![(range.first, range.last)]);
        owed.progress_floor.insert(partition, range.ceiling);
        if repair.id == 0 {
            repair.id = rand::random::<u64>() >> 1 | 1;
        }
        let id = repair.id;
        self.repair_step(
            Some(partition),
            "recording the offsets of rows read again (the sink user needs INSERT on kafka_pending_rebuilds)",
            || self.writer.note_rebuild(&self.topic, partition, id, &owed),
        )
        .await?;
        repair.unresolved.push(range);
        Ok(range)
    }

    /// The rows `missing` (of `reread`, inserted under its token, not stored: ClickHouse
    /// dropped them as duplicates) go in again under a new token: first one derived from the
    /// first (the same for any sink that does this, so two of them still deduplicate), then,
    /// should that be remembered too (a second delete by hand), a unique one. Stored, their
    /// rollup keys are rebuilt. If even that does not store them, the sink stops rather than
    /// commit what it did not write.
    async fn insert_dropped(
        &self,
        partition: i32,
        epoch: u64,
        rows: &mut Sealed,
        mut missing: Vec<usize>,
        reread: &Reread,
        repair: &mut Repair,
    ) -> Result<(), Stop> {
        if missing.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            partition,
            rows = missing.len(),
            first_offset = rows.offset(missing[0]),
            "ClickHouse dropped rows read again as duplicates of an earlier insert whose rows are \
             gone (deleted by hand?); inserting them again under a new token"
        );
        self.metrics
            .rows_dropped_as_duplicates
            .inc_by(missing.len() as u64);
        let token = &reread.token;
        for round in 1..=2 {
            let fresh = if round == 1 {
                format!("{token}~again")
            } else {
                format!(
                    "{token}~{:x}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos()
                )
            };
            let again = Part {
                rows: missing,
                run: false,
            };
            self.insert_retrying(partition, epoch, rows, &again, Some(&fresh))
                .await?;
            missing = self.not_stored(partition, rows, &again.rows).await?;
            let landed = without(&again.rows, &missing);
            self.rebuild_reread(partition, rows, &landed, reread.ceiling, repair)
                .await?;
            if missing.is_empty() {
                return Ok(());
            }
        }
        Err(Stop::Fatal(SinkError::Inconsistent(format!(
            "{}[{partition}]: {} rows from offset {} are not in the events table after INSERTs \
             that ClickHouse reported as successful (the last under a new deduplication token). \
             Nothing was committed for them. Check the table for a row policy, a TTL or a \
             mutation that removes them, then start the sink again",
            self.topic,
            missing.len(),
            rows.offset(missing[0]),
        ))))
    }

    /// The rows `landed` (read again through `ceiling`, stored now): the rollup keys they touch
    /// are rebuilt once the flush's rows are in (as after a refused insert), so the rollups
    /// count them once; the progress table's maximum is kept at `ceiling` or more (see
    /// [`TouchedKeys::progress_floor`]). Their offsets were recorded before their INSERT (see
    /// [`Flusher::note_reread`]), so the keys are not: a sink killed before the rebuild
    /// leaves them to the next owner all the same.
    async fn rebuild_reread(
        &self,
        partition: i32,
        rows: &Sealed,
        landed: &[usize],
        ceiling: i64,
        repair: &mut Repair,
    ) -> Result<(), Stop> {
        if landed.is_empty() {
            return Ok(());
        }
        let offsets: Vec<i64> = landed.iter().map(|&i| rows.offset(i)).collect();
        let mut touched = self
            .repair_step(
                Some(partition),
                "reading the rollup keys of rows read again",
                || self.writer.touched_keys(&self.topic, partition, &offsets),
            )
            .await?;
        touched.progress_floor.insert(partition, ceiling);
        if !touched.not_rebuilt.is_empty() {
            tracing::error!(
                partition,
                from = offsets[0],
                to = offsets[offsets.len() - 1],
                views = %crate::rollups::not_rebuilt(&touched),
                "these materialized views cannot be rebuilt, and `clickstream-sink verify` does \
                 not check them: they may count these offsets of partition {partition}, read \
                 again, twice; rebuild what they hold of these rows from the raw table by hand"
            );
        }
        repair.keys.merge(touched);
        Ok(())
    }

    /// Of the rows `part` of `rows` (indices), those ClickHouse does not hold; another event
    /// at one of their offsets is an inconsistency, as in [`Flusher::fence`].
    async fn not_stored(
        &self,
        partition: i32,
        rows: &Sealed,
        part: &[usize],
    ) -> Result<Vec<usize>, Stop> {
        let (from, to) = (rows.offset(part[0]), rows.offset(part[part.len() - 1]));
        let stored = self.stored(partition, from, to).await?;
        let mut missing = Vec::new();
        for (&i, id) in part.iter().zip(rows.ids(part)) {
            let offset = rows.offset(i);
            match stored.get(&offset) {
                Some(held) if *held == id => {}
                Some(held) => {
                    return Err(Stop::Fatal(SinkError::Inconsistent(format!(
                        "{}[{partition}] offset {offset}: ClickHouse holds event {held} there, \
                         but the message is event {id}. {REUSED_OFFSETS}",
                        self.topic
                    ))));
                }
                None => missing.push(i),
            }
        }
        Ok(missing)
    }

    /// One INSERT of `part` under `token`, retried while the failure is transient; after the
    /// table changed, the rows are encoded again (all of them: later parts need the new
    /// encoding too).
    async fn insert_retrying(
        &self,
        partition: i32,
        epoch: u64,
        rows: &mut Sealed,
        part: &Part,
        token: Option<&str>,
    ) -> Result<(), Stop> {
        let mut retry = self.retry.start(Operation::Insert);
        let mut schema_changes = 0;
        loop {
            self.wait_writable(partition, epoch).await?;
            let started = Instant::now();
            let inserted = {
                let _shared = self.repairing.read().await;
                self.writer.insert(rows, &part.rows, token).await
            };
            let failure = match inserted {
                Ok(()) => {
                    self.inserted(rows, &part.rows, started);
                    return Ok(());
                }
                Err(failure) => failure,
            };
            match failure {
                // Follow the new structure at once (a table altered again and again is retried
                // like any transient failure).
                Failure::SchemaChanged(message) => {
                    schema_changes += 1;
                    self.metrics.schema_changes.inc();
                    *rows = self.reencode(partition, rows).await?;
                    if schema_changes > 3 {
                        retry
                            .wait(Some(partition), "schema_changed", &message)
                            .await
                            .map_err(|_| Stop::Cancelled)?;
                    }
                }
                Failure::TooBig { split, message } if part.rows.len() > 1 => {
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

type Written = (Vec<i32>, usize, Result<Vec<FlushReport>, SinkError>);
/// Ties [`Writes`] to one flusher type without holding one.
type FlusherOf<W, D, C, F> = std::marker::PhantomData<fn() -> Flusher<W, D, C, F>>;

/// The write stage's tasks, each writing and committing the segments of one INSERT (several
/// partitions'), several at once; a partition is in at most one (so each partition commits
/// in offset order).
pub struct Writes<W, D, C, F> {
    pub tasks: tokio::task::JoinSet<Written>,
    partitions: std::collections::HashSet<i32>,
    _flusher: FlusherOf<W, D, C, F>,
}

impl<W, D, C, F> Default for Writes<W, D, C, F> {
    fn default() -> Self {
        Writes {
            tasks: tokio::task::JoinSet::new(),
            partitions: std::collections::HashSet::new(),
            _flusher: std::marker::PhantomData,
        }
    }
}

impl<W: Writer, D: DeadLetterSink, C: Committer, F: Refetch> Writes<W, D, C, F> {
    /// Writes running (INSERTs in flight, each of one or more partitions).
    pub fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Whether `partition` has a write running (its next segment waits).
    pub fn busy(&self, partition: i32) -> bool {
        self.partitions.contains(&partition)
    }

    /// Starts writing `segments` (of different partitions, none busy) as one write.
    pub fn start(
        &mut self,
        flusher: &Arc<Flusher<W, D, C, F>>,
        segments: Vec<Segment<Rows, D::Ack>>,
    ) {
        if segments.is_empty() {
            return;
        }
        let flusher = flusher.clone();
        let partitions: Vec<i32> = segments.iter().map(|s| s.partition).collect();
        let bytes = segments.iter().map(|s| s.bytes).sum();
        for &partition in &partitions {
            assert!(
                self.partitions.insert(partition),
                "one write per partition at a time"
            );
        }
        self.tasks
            .spawn(async move { (partitions, bytes, flusher.write(segments).await) });
    }

    /// Starts the segments of one flush, `per_insert` partitions to a write.
    pub fn start_flush(
        &mut self,
        flusher: &Arc<Flusher<W, D, C, F>>,
        segments: Vec<Segment<Rows, D::Ack>>,
        per_insert: usize,
    ) {
        let mut segments = segments.into_iter().peekable();
        while segments.peek().is_some() {
            let group: Vec<_> = segments.by_ref().take(per_insert.max(1)).collect();
            self.start(flusher, group);
        }
    }

    /// Takes a finished write: frees its partitions and their memory; its reports, or its
    /// error (a write stopped by shutdown reports nothing).
    pub fn finished(
        &mut self,
        joined: Result<Written, tokio::task::JoinError>,
        batcher: &mut Batcher<Rows, D::Ack>,
    ) -> Result<Vec<FlushReport>, SinkError> {
        let (partitions, bytes, result) =
            joined.map_err(|join| SinkError::Internal(format!("write task failed: {join}")))?;
        for partition in &partitions {
            self.partitions.remove(partition);
        }
        batcher.release(bytes);
        match result {
            Ok(reports) => Ok(reports),
            Err(SinkError::Stopped) => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }

    /// Waits for every write; the first error, if any.
    pub async fn wait_all(&mut self, batcher: &mut Batcher<Rows, D::Ack>) -> Result<(), SinkError> {
        let mut result = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            let finished = self.finished(joined, batcher);
            if result.is_ok() {
                result = finished.map(|_| ());
            }
        }
        result
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
pub(crate) mod tests {
    //! The flush stage against fakes of its three seams.

    use std::collections::{BTreeMap, HashSet};
    use std::sync::Mutex;
    use std::time::Duration;

    use chrono::TimeZone;
    use clickstream_event::{ClickEvent, EventType};
    use uuid::Uuid;

    use super::*;

    impl<W: Writer, D: DeadLetterSink, C: Committer, F: Refetch> Flusher<W, D, C, F> {
        /// One segment's write, on its own.
        async fn write_one(
            &self,
            segment: Segment<Rows, D::Ack>,
        ) -> Result<FlushReport, SinkError> {
            self.write(vec![segment])
                .await
                .map(|mut reports| reports.remove(0))
        }
    }
    use crate::batch::{Batcher, Policy};
    use crate::refetch::Fetched;
    use crate::refetch::tests::FakeTopic;
    use crate::rollups::{Rollup, TouchedKeys};
    use crate::schema::{Layout, test_columns};

    /// What a rule sees of each row of an INSERT: (offset, event time in ms).
    type Rule = Box<dyn Fn(&[(i64, i64)]) -> Result<(), Failure> + Send + Sync>;
    /// The offsets of one INSERT attempt, its token, and whether it succeeded.
    type Attempt = (Vec<i64>, Option<String>, bool);

    /// Inserts are judged by a rule; every attempt is recorded (offsets, token, success).
    /// `stored` is the table: a successful insert adds its rows, and so does a failed one
    /// when `partial` says a view failed after the table was written.
    pub(crate) struct FakeWriter {
        rule: Rule,
        partial: bool,
        /// How long each insert takes, and how many ran at once at most.
        delay: Duration,
        running: std::sync::atomic::AtomicUsize,
        most_running: std::sync::atomic::AtomicUsize,
        layout: Mutex<Arc<Layout>>,
        attempts: Mutex<Vec<Attempt>>,
        stored: Mutex<BTreeMap<i64, Uuid>>,
        deleted: Mutex<Vec<i64>>,
        /// A rollup fed by a view that runs before the failing one (with `partial`): how
        /// many times it counted each offset.
        rollup: Mutex<BTreeMap<i64, u32>>,
        /// Rebuilds recorded and not done: (partition, id, keys).
        pending: Mutex<Vec<(i32, u64, TouchedKeys)>>,
        /// The next rebuild fails (fatal), as a sink stopped before it.
        fail_rebuild: std::sync::atomic::AtomicBool,
        /// The next readings of rollup keys fail (fatal): how many.
        fail_touched: std::sync::atomic::AtomicU32,
        /// How many times the recorded rebuilds were read.
        pending_reads: std::sync::atomic::AtomicUsize,
        /// SELECTs of a view over some rows.
        probes: std::sync::atomic::AtomicUsize,
        /// Stored-offset lookups never answer (ClickHouse hangs) while set.
        pub(crate) hang_lookups: std::sync::atomic::AtomicBool,
        /// Lookups hanging now (a cancelled one is no longer counted).
        pub(crate) hanging: Arc<std::sync::atomic::AtomicUsize>,
        /// Deduplicates by token as ClickHouse does (`Some`: the tokens of inserts that
        /// succeeded, kept when their rows are deleted); an insert repeating one stores nothing.
        remembered: Option<Mutex<HashSet<String>>>,
    }

    /// The rollup of the fake writer: one key per offset.
    fn test_rollup() -> Rollup {
        Rollup {
            view: "rollup_mv".into(),
            qualified_view: "db.rollup_mv".into(),
            target: "rollup".into(),
            why_not: None,
            rebuild: None,
            select: String::new(),
        }
    }

    /// Counts a hanging lookup while it lives.
    struct Hanging(Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Hanging {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl FakeWriter {
        pub(crate) fn new(
            rule: impl Fn(&[(i64, i64)]) -> Result<(), Failure> + Send + Sync + 'static,
        ) -> Self {
            FakeWriter {
                rule: Box::new(rule),
                partial: false,
                delay: Duration::ZERO,
                running: Default::default(),
                most_running: Default::default(),
                layout: Mutex::new(Arc::new(
                    Layout::new("db", "events", &test_columns(&[])).unwrap(),
                )),
                attempts: Mutex::default(),
                stored: Mutex::default(),
                deleted: Mutex::default(),
                rollup: Mutex::default(),
                pending: Mutex::default(),
                fail_rebuild: Default::default(),
                fail_touched: Default::default(),
                pending_reads: Default::default(),
                probes: Default::default(),
                hang_lookups: Default::default(),
                hanging: Default::default(),
                remembered: None,
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
        fn layout(&self) -> Option<Arc<Layout>> {
            Some(self.layout.lock().unwrap().clone())
        }

        async fn insert(
            &self,
            rows: &Sealed,
            part: &[usize],
            token: Option<&str>,
        ) -> Result<(), Failure> {
            let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_running.fetch_max(running, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            let current = self.layout.lock().unwrap().clone();
            let result = if rows.layout.columns != current.columns {
                Err(Failure::SchemaChanged(
                    "encoded for another structure".into(),
                ))
            } else {
                let seen: Vec<(i64, i64)> = part
                    .iter()
                    .map(|&i| (rows.offset(i), rows.time(i)))
                    .collect();
                (self.rule)(&seen)
            };
            let repeated = match (&self.remembered, token) {
                (Some(remembered), Some(token)) if result.is_ok() => {
                    !remembered.lock().unwrap().insert(token.to_owned())
                }
                _ => false,
            };
            if (result.is_ok() || self.partial) && !repeated {
                let mut stored = self.stored.lock().unwrap();
                let mut rollup = self.rollup.lock().unwrap();
                for (&i, id) in part.iter().zip(rows.ids(part)) {
                    stored.insert(rows.offset(i), id);
                    *rollup.entry(rows.offset(i)).or_default() += 1;
                }
            }
            self.attempts.lock().unwrap().push((
                part.iter().map(|&i| rows.offset(i)).collect(),
                token.map(str::to_owned),
                result.is_ok(),
            ));
            result
        }

        async fn max_stored_offset(&self, _: &str, _: i32) -> Result<Option<i64>, Failure> {
            if self.hang_lookups.load(Ordering::SeqCst) {
                self.hanging.fetch_add(1, Ordering::SeqCst);
                let _hanging = Hanging(self.hanging.clone());
                std::future::pending::<()>().await;
            }
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

        async fn touched_keys(
            &self,
            _: &str,
            _: i32,
            offsets: &[i64],
        ) -> Result<TouchedKeys, Failure> {
            let rollup = test_rollup();
            let keys = offsets.iter().map(|o| o.to_string()).collect();
            if self
                .fail_touched
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(Failure::Fatal("Code: 497. no grant".into()));
            }
            Ok(TouchedKeys {
                rollups: vec![(rollup, keys)],
                ..TouchedKeys::default()
            })
        }

        async fn rebuild_rollups(&self, keys: &TouchedKeys) -> Result<(), Failure> {
            if self.fail_rebuild.swap(false, Ordering::SeqCst) {
                return Err(Failure::Fatal("Code: 497. the sink stopped".into()));
            }
            let stored = self.stored.lock().unwrap();
            let mut rollup = self.rollup.lock().unwrap();
            for key in keys.rollups.iter().flat_map(|(_, keys)| keys) {
                let offset: i64 = key.parse().unwrap();
                if stored.contains_key(&offset) {
                    rollup.insert(offset, 1);
                } else {
                    rollup.remove(&offset);
                }
            }
            Ok(())
        }

        async fn view_refuses(
            &self,
            _: &str,
            _: i32,
            _: &str,
            _: u32,
            offsets: &[i64],
        ) -> Result<bool, Failure> {
            self.probes.fetch_add(1, Ordering::SeqCst);
            let seen: Vec<(i64, i64)> = offsets.iter().map(|&o| (o, 0)).collect();
            Ok(matches!((self.rule)(&seen), Err(Failure::BadData(_))))
        }

        async fn note_rebuild(
            &self,
            _: &str,
            partition: i32,
            id: u64,
            keys: &TouchedKeys,
        ) -> Result<(), Failure> {
            self.pending
                .lock()
                .unwrap()
                .push((partition, id, keys.clone()));
            Ok(())
        }

        async fn pending_rebuilds(
            &self,
            _: &str,
            partitions: &[i32],
        ) -> Result<(Vec<u64>, TouchedKeys), Failure> {
            self.pending_reads.fetch_add(1, Ordering::SeqCst);
            // Records whole: every partition's keys of a record that names one of these.
            let pending = self.pending.lock().unwrap();
            let mut ids: Vec<u64> = pending
                .iter()
                .filter(|(partition, _, _)| partitions.contains(partition))
                .map(|(_, id, _)| *id)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            let mut keys = TouchedKeys::default();
            for (_, id, owed) in pending.iter() {
                if ids.contains(id) {
                    keys.merge(owed.clone());
                }
            }
            // The keys of the rows stored in recorded ranges of rows read again.
            let stored = self.stored.lock().unwrap();
            let mut in_ranges = Vec::new();
            for (first, last) in keys.reread.values().flatten() {
                in_ranges.extend(stored.range(first..=last).map(|(o, _)| o.to_string()));
            }
            if !in_ranges.is_empty() {
                keys.merge(TouchedKeys {
                    rollups: vec![(test_rollup(), in_ranges)],
                    ..TouchedKeys::default()
                });
            }
            Ok((ids, keys))
        }

        async fn forget_rebuilds(&self, _: &str, ids: &[u64]) -> Result<(), Failure> {
            self.pending
                .lock()
                .unwrap()
                .retain(|(_, id, _)| !ids.contains(id));
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
    pub(crate) struct FakeDeadLetters {
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

    type TestFlusher = Flusher<FakeWriter, FakeDeadLetters, FakeCommitter, FakeTopic>;

    /// The event at `offset`, `day` days after a fixed start.
    pub(crate) fn event(offset: i64, day: i64) -> ClickEvent {
        ClickEvent {
            event_id: Uuid::from_u128(offset as u128 + 1),
            timestamp: Utc.timestamp_opt(1_700_000_000 + day * 86_400, 0).unwrap(),
            user_id: "u".into(),
            session_id: Uuid::nil(),
            event_type: EventType::PageView,
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
        }
    }

    fn new_flusher(writer: FakeWriter, committer: FakeCommitter) -> (TestFlusher, u64) {
        flusher_owning(Arc::new(writer), committer, &[0, 1, 2])
    }

    /// A flusher on `writer` (shared with a stopped one, for a restart) that owns
    /// `partitions`, with partition 0's epoch.
    fn flusher_owning(
        writer: Arc<FakeWriter>,
        committer: FakeCommitter,
        partitions: &[i32],
    ) -> (TestFlusher, u64) {
        let ownership = Arc::new(Ownership::default());
        ownership.assign(partitions);
        let epoch = ownership.epoch(0).unwrap();
        let settings = Settings {
            topic: "t".into(),
            ..Settings::default()
        };
        let flusher = Flusher::new(
            &settings,
            writer,
            FakeDeadLetters::default(),
            committer,
            FakeTopic::default(),
            ownership,
            RetryPolicy::immediate(),
        );
        (flusher, epoch)
    }

    /// One partition-0 segment of `rows` (offset, day of event time), encoded as intake
    /// does; the fake topic holds their messages.
    fn batch(flusher: &TestFlusher, epoch: u64, rows: &[(i64, i64)]) -> Segment<Rows, DeadLetter> {
        segment_of(flusher, 0, epoch, rows)
    }

    /// A segment of `partition` (offsets must differ across partitions: the fakes key by
    /// offset).
    fn segment_of(
        flusher: &TestFlusher,
        partition: i32,
        epoch: u64,
        rows: &[(i64, i64)],
    ) -> Segment<Rows, DeadLetter> {
        let mut batcher: Batcher<Rows, DeadLetter> = Batcher::new(Policy {
            max_rows: 1_000_000,
            flush_interval: Duration::from_secs(1),
            max_batch_bytes: usize::MAX,
            min_flush_gap: Duration::ZERO,
            partitions_per_insert: 1,
            burst: 1,
            split_bytes: usize::MAX,
        });
        let now = Instant::now();
        let layout = flusher.writer.layout().unwrap();
        let mut topic = flusher.refetch.messages.lock().unwrap();
        for &(offset, day) in rows {
            let event = event(offset, day);
            topic.insert(
                offset,
                Fetched {
                    offset,
                    key: Some(b"u".to_vec()),
                    payload: Some(event.to_json()),
                    headers: Vec::new(),
                    timestamp_ms: Some(event.timestamp.timestamp_millis()),
                },
            );
            let view = event.as_ref();
            let row = RowRef::of_event(&view, "t", partition, offset);
            batcher.push_row(partition, epoch, offset, now, |r| {
                r.push(|| layout.clone(), &row)
            });
        }
        batcher.take_all(now).pop().expect("a segment")
    }

    /// Three partitions' segments of ten rows each (partition p at offsets p * 1,000,000 + n).
    fn three_partitions(flusher: &TestFlusher) -> Vec<Segment<Rows, DeadLetter>> {
        (0..3)
            .map(|p: i32| {
                let rows: Vec<(i64, i64)> =
                    (0..10).map(|n| (i64::from(p) * 1_000_000 + n, 0)).collect();
                let epoch = flusher.ownership.epoch(p).unwrap();
                segment_of(flusher, p, epoch, &rows)
            })
            .collect()
    }

    fn commits(flusher: &TestFlusher) -> Vec<(i32, i64)> {
        let mut commits = flusher.committer.commits.lock().unwrap().concat();
        commits.sort_unstable();
        commits
    }

    #[tokio::test]
    async fn the_partitions_of_a_flush_go_in_one_insert_and_each_commits_after_it() {
        let (flusher, _) = new_flusher(FakeWriter::new(|_| Ok(())), FakeCommitter::default());
        let reports = flusher.write(three_partitions(&flusher)).await.unwrap();
        let inserted = flusher.writer.inserted();
        assert_eq!(inserted.len(), 1, "one INSERT: {inserted:?}");
        assert_eq!(inserted[0].len(), 30);
        assert_eq!(
            flusher.writer.tokens(),
            vec![format!(
                "t:0:0-9{}:1:1000000-1000009{}:2:2000000-2000009{}",
                mark(0, 9),
                mark(1_000_000, 1_000_009),
                mark(2_000_000, 2_000_009)
            )],
            "the token names every partition's range and its first and last event"
        );
        assert_eq!(
            reports
                .iter()
                .map(|r| (r.partition, r.inserted, r.together, r.committed))
                .collect::<Vec<_>>(),
            vec![
                (0, 10, 3, Some(10)),
                (1, 10, 3, Some(1_000_010)),
                (2, 10, 3, Some(2_000_010))
            ]
        );
        assert_eq!(
            commits(&flusher),
            vec![(0, 10), (1, 1_000_010), (2, 2_000_010)]
        );
        assert_eq!(flusher.metrics.inserts.get(), 1);
    }

    #[tokio::test]
    async fn a_refused_insert_of_several_partitions_is_written_partition_by_partition() {
        // A view fails after the table took the rows (`partial`): the leftovers are removed,
        // then each partition goes in alone and only the bad row is dead-lettered.
        let mut writer = FakeWriter::new(|rows| {
            if rows.iter().any(|r| r.0 == 1_000_005) {
                Err(Failure::BadData("Code: 469. constraint".into()))
            } else {
                Ok(())
            }
        });
        writer.partial = true;
        let (flusher, _) = new_flusher(writer, FakeCommitter::default());
        let reports = flusher.write(three_partitions(&flusher)).await.unwrap();
        let summary: Vec<_> = reports
            .iter()
            .map(|r| (r.partition, r.inserted, r.rejected, r.committed))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, 10, 0, Some(10)),
                (1, 9, 1, Some(1_000_010)),
                (2, 10, 0, Some(2_000_010))
            ]
        );
        let stored: Vec<i64> = flusher
            .writer
            .stored
            .lock()
            .unwrap()
            .keys()
            .copied()
            .collect();
        let mut expected: Vec<i64> = (0..3)
            .flat_map(|p| (0..10).map(move |n| p * 1_000_000 + n))
            .filter(|&o| o != 1_000_005)
            .collect();
        expected.sort_unstable();
        assert_eq!(
            stored, expected,
            "every good row once, the bad one not at all"
        );
        let rollup = flusher.writer.rollup.lock().unwrap().clone();
        assert_eq!(
            rollup,
            expected.iter().map(|&o| (o, 1)).collect::<BTreeMap<_, _>>(),
            "the rollup fed before the failing view counts every good row once"
        );
        let letters = flusher.dead_letters.confirmed.lock().unwrap();
        assert_eq!(
            letters
                .iter()
                .map(|l| (l.source_partition, l.source_offset))
                .collect::<Vec<_>>(),
            vec![(1, 1_000_005)]
        );
        assert_eq!(
            commits(&flusher),
            vec![(0, 10), (1, 1_000_010), (2, 2_000_010)]
        );
    }

    #[tokio::test]
    async fn a_partition_revoked_before_the_insert_together_is_neither_written_nor_committed() {
        let (flusher, _) = new_flusher(FakeWriter::new(|_| Ok(())), FakeCommitter::default());
        let segments = three_partitions(&flusher);
        let epoch = flusher.ownership.epoch(1).unwrap();
        flusher.ownership.lose(1, epoch);
        let reports = flusher.write(segments).await.unwrap();
        let inserted = flusher.writer.inserted().concat();
        assert_eq!(inserted.len(), 20);
        assert!(inserted.iter().all(|o| !(1_000_000..2_000_000).contains(o)));
        assert_eq!(reports[1].dropped_revoked, 10);
        assert_eq!(commits(&flusher), vec![(0, 10), (2, 2_000_010)]);
    }

    fn days(rows: &[(i64, i64)]) -> usize {
        let days: HashSet<i64> = rows
            .iter()
            .map(|(_, ms)| ms.div_euclid(86_400_000))
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
            .write_one(batch(&flusher, epoch, &[(0, 0), (1, 0)]))
            .await
            .expect_err("fatal");
        assert!(matches!(error, SinkError::ClickHouse { .. }), "{error}");
        assert!(flusher.committer.commits.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn rows_a_view_refuses_are_found_with_its_select_over_what_the_insert_left() {
        // A view named in the error refuses offsets 3 and 11; the table took the rows first.
        let mut writer = FakeWriter::new(|rows| {
            if rows.iter().any(|r| r.0 == 3 || r.0 == 11) {
                Err(Failure::BadData(
                    "Code: 395. DB::Exception: Value passed to 'throwIf' function is non-zero: \
                     while pushing to view db.refuse_mv (5f6b). (FUNCTION_THROW_IF_VALUE_IS_NON_ZERO)"
                        .into(),
                ))
            } else {
                Ok(())
            }
        });
        writer.partial = true;
        let (flusher, epoch) = new_flusher(writer, FakeCommitter::default());
        let rows: Vec<(i64, i64)> = (0..16).map(|o| (o, 0)).collect();
        let report = flusher
            .write_one(batch(&flusher, epoch, &rows))
            .await
            .unwrap();
        assert_eq!((report.inserted, report.rejected), (14, 2));
        let failed = flusher
            .writer
            .attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| !a.2)
            .count();
        assert_eq!(failed, 1, "one refused insert: the rest found by SELECTs");
        assert!(flusher.writer.probes.load(Ordering::SeqCst) <= 1 + 2 * 2 * 4);
        let letters: Vec<i64> = flusher
            .dead_letters
            .confirmed
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.source_offset)
            .collect();
        assert_eq!(letters, vec![3, 11]);
        let stored: Vec<i64> = flusher
            .writer
            .stored
            .lock()
            .unwrap()
            .keys()
            .copied()
            .collect();
        let kept: Vec<i64> = (0..16).filter(|o| *o != 3 && *o != 11).collect();
        assert_eq!(stored, kept);
        assert_eq!(
            flusher.writer.rollup.lock().unwrap().clone(),
            kept.iter().map(|&o| (o, 1)).collect::<BTreeMap<_, _>>(),
            "the rollup fed before the failing view counts every kept row once"
        );
        assert_eq!(commits(&flusher), vec![(0, 16)]);
    }

    #[tokio::test]
    async fn bisection_dead_letters_only_the_bad_row() {
        let (flusher, epoch) = new_flusher(
            FakeWriter::new(|rows| {
                if rows.iter().any(|r| r.0 == 5) {
                    Err(Failure::BadData("Code: 469. constraint".into()))
                } else {
                    Ok(())
                }
            }),
            FakeCommitter::default(),
        );
        let rows: Vec<(i64, i64)> = (0..10).map(|o| (o, 0)).collect();
        let report = flusher
            .write_one(batch(&flusher, epoch, &rows))
            .await
            .unwrap();
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
            letters[0].payload,
            Some(event(5, 0).to_json()),
            "the original message, read back from Kafka"
        );
        assert_eq!(
            *flusher.committer.commits.lock().unwrap(),
            vec![vec![(0, 10)]]
        );
    }

    #[tokio::test]
    async fn a_backfill_over_too_many_partitions_is_split_by_time_and_nothing_is_dead_lettered() {
        let max_days = 3;
        let rule = move |rows: &[(i64, i64)]| {
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
        let report = flusher
            .write_one(batch(&flusher, epoch, &rows))
            .await
            .unwrap();
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
        again.write_one(batch(&again, epoch, &rows)).await.unwrap();
        assert_eq!(again.writer.tokens(), tokens);
    }

    /// ClickHouse's memory limit, hit by inserts of more than `rows` rows.
    fn memory_limit_above(rows: usize) -> impl Fn(&[(i64, i64)]) -> Result<(), Failure> {
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
        let report = flusher
            .write_one(batch(&flusher, epoch, &rows))
            .await
            .unwrap();
        assert_eq!(
            (report.inserted, report.inserts, report.rejected),
            (16, 4, 0)
        );
        assert_eq!(
            flusher.writer.tokens(),
            vec![
                format!("t:0:0-3{}", mark(0, 3)),
                format!("t:0:4-7{}", mark(4, 7)),
                format!("t:0:8-11{}", mark(8, 11)),
                format!("t:0:12-15{}", mark(12, 15)),
            ],
            "halves of a run keep offset-range tokens"
        );
    }

    /// The mark a token carries of the test rows from offset `first` to `last` (the fake
    /// events' ids are their offsets + 1).
    fn mark(first: i64, last: i64) -> String {
        let id = |offset: i64| Uuid::from_u128(offset as u128 + 1);
        let hash = fnv(fnv(FNV_START, id(first).as_bytes()), id(last).as_bytes());
        format!("@{hash:016x}")
    }

    /// A topic deleted and recreated puts other events at the same offsets: their tokens must
    /// differ from the old rows' (ClickHouse remembers those after the rows are deleted), while
    /// the same rows keep the same token.
    #[test]
    fn tokens_name_the_events_not_only_their_offsets() {
        let (flusher, _) = new_flusher(FakeWriter::new(|_| Ok(())), FakeCommitter::default());
        let layout = crate::rows::tests::layout();
        let sealed = |ids: u128| {
            let mut rows = Rows::default();
            for offset in 0..10 {
                let row = RowRef {
                    event_id: Uuid::from_u128(ids + offset as u128),
                    ..crate::rows::tests::row(offset, 0)
                };
                rows.push(|| layout.clone(), &row);
            }
            rows.seal().unwrap()
        };
        let run = Part {
            rows: (0..10).collect(),
            run: true,
        };
        let set = Part {
            rows: vec![1, 4, 8],
            run: false,
        };
        for part in [&run, &set] {
            let old = flusher.token(0, &sealed(1), part).unwrap();
            assert_eq!(
                flusher.token(0, &sealed(1), part).unwrap(),
                old,
                "the same rows"
            );
            let new = flusher.token(0, &sealed(500), part).unwrap();
            assert_ne!(new, old, "other events at the same offsets");
            let range = if part.run { "t:0:0-9" } else { "t:0:1-8:3x" };
            assert!(
                old.starts_with(range) && new.starts_with(range),
                "{old} {new}"
            );
        }
    }

    /// Rows deleted by hand and read again (a group reset) go into inserts with their original
    /// tokens, which ClickHouse still remembers: it drops them and reports success. Rows read
    /// again are looked for after their insert and, missing, written under a new token; then
    /// the rollup keys they touch are rebuilt (the delete left the rollups counting them).
    #[tokio::test]
    async fn rows_read_again_that_clickhouse_drops_as_duplicates_go_in_again() {
        let mut writer = FakeWriter::new(|_| Ok(()));
        writer.remembered = Some(Mutex::default());
        let (flusher, epoch) = new_flusher(writer, FakeCommitter::default());
        let rows: Vec<(i64, i64)> = (0..10).map(|o| (o, 0)).collect();
        flusher
            .write_one(batch(&flusher, epoch, &rows))
            .await
            .unwrap();
        // Deleted by hand, then the same messages read again.
        flusher.writer.stored.lock().unwrap().clear();
        let mut reread = batch(&flusher, epoch, &rows);
        reread.rows.mark_reread(9);
        let report = flusher.write_one(reread).await.unwrap();
        assert_eq!(report.inserted, 10);
        assert_eq!(
            flusher.writer.stored.lock().unwrap().len(),
            10,
            "every row stored again"
        );
        let tokens = flusher.writer.tokens();
        assert_eq!(tokens.len(), 3, "{tokens:?}");
        assert_eq!(tokens[0], tokens[1], "the re-read rows' own token first");
        assert!(
            tokens[2].starts_with(&format!("{}~", tokens[0])),
            "then a new one: {tokens:?}"
        );
        assert_eq!(commits(&flusher), vec![(0, 10), (0, 10)]);
        // The delete left the rollup counting the rows; stored again, they are counted once.
        let rollup = flusher.writer.rollup.lock().unwrap().clone();
        assert_eq!(rollup, (0..10).map(|o| (o, 1)).collect(), "counted once");
        assert!(
            flusher.writer.pending.lock().unwrap().is_empty(),
            "record gone"
        );

        // Rows not read again are not looked for (the normal path costs no query).
        flusher.writer.stored.lock().unwrap().clear();
        flusher
            .write_one(batch(&flusher, epoch, &rows))
            .await
            .unwrap();
        assert!(
            flusher.writer.stored.lock().unwrap().is_empty(),
            "dropped: nothing told the sink these rows were read again"
        );
    }

    #[tokio::test]
    async fn rows_read_again_have_their_keys_rebuilt_even_if_the_sink_stops_right_after_their_insert()
     {
        let (stopped, epoch) = new_flusher(FakeWriter::new(|_| Ok(())), FakeCommitter::default());
        let rows: Vec<(i64, i64)> = (0..10).map(|o| (o, 0)).collect();
        stopped
            .write_one(batch(&stopped, epoch, &rows))
            .await
            .unwrap();
        let reread = |flusher: &TestFlusher, epoch| {
            let mut segment = batch(flusher, epoch, &rows);
            segment.rows.mark_reread(9);
            segment
        };
        let rollup = |flusher: &TestFlusher| flusher.writer.rollup.lock().unwrap().clone();
        let once: BTreeMap<i64, u32> = (0..10).map(|o| (o, 1)).collect();

        // Deleted by hand, read again, inserted; the flush stops when it reads their keys.
        // It reads them again before its rebuild: counted once, the record forgotten.
        stopped.writer.stored.lock().unwrap().clear();
        stopped.writer.fail_touched.store(1, Ordering::SeqCst);
        assert!(stopped.write_one(reread(&stopped, epoch)).await.is_err());
        assert_eq!(stopped.writer.stored.lock().unwrap().len(), 10);
        assert_eq!(rollup(&stopped), once, "counted once");
        assert!(stopped.writer.pending.lock().unwrap().is_empty());

        // Once more, and the keys cannot be read at all (as for a sink killed right after
        // the INSERT): nothing committed, the rollup counts the rows twice, and their offsets
        // stay recorded, from before the INSERT.
        stopped.writer.stored.lock().unwrap().clear();
        stopped
            .writer
            .fail_touched
            .store(u32::MAX, Ordering::SeqCst);
        assert!(stopped.write_one(reread(&stopped, epoch)).await.is_err());
        assert_eq!(commits(&stopped), vec![(0, 10)], "only the first committed");
        assert_eq!(stopped.writer.stored.lock().unwrap().len(), 10);
        let twice: BTreeMap<i64, u32> = (0..10).map(|o| (o, 2)).collect();
        assert_eq!(rollup(&stopped), twice, "counted twice");
        assert_eq!(
            stopped.writer.pending.lock().unwrap().len(),
            1,
            "their offsets were recorded before the insert"
        );

        // The next owner finds the rows stored, skips them, and rebuilds their keys.
        stopped.writer.fail_touched.store(0, Ordering::SeqCst);
        let (next, epoch) = flusher_owning(stopped.writer.clone(), FakeCommitter::default(), &[0]);
        let report = next.write_one(reread(&next, epoch)).await.unwrap();
        assert_eq!((report.already_stored, report.inserted), (10, 0));
        assert_eq!(rollup(&next), once, "counted once");
        assert!(
            next.writer.pending.lock().unwrap().is_empty(),
            "record gone"
        );
        assert_eq!(commits(&next), vec![(0, 10)]);
    }

    #[test]
    fn without_leaves_out_the_indices_gone() {
        assert_eq!(without(&[1, 2, 3, 5, 8], &[2, 5, 6, 9]), vec![1, 3, 8]);
        assert_eq!(without(&[1, 2], &[]), vec![1, 2]);
        assert_eq!(without(&[], &[1]), Vec::<usize>::new());
    }

    #[test]
    fn the_failing_view_is_read_from_the_message() {
        let message = "Code: 395. DB::Exception: Value passed to 'throwIf' function is non-zero: \
                       while executing 'FUNCTION throwIf(...)': while pushing to view \
                       it_view_54a5.price_check_mv. (FUNCTION_THROW_IF_VALUE_IS_NON_ZERO)";
        assert_eq!(
            failed_view(message).as_deref(),
            Some("it_view_54a5.price_check_mv")
        );
        assert_eq!(
            failed_view("while pushing to view `db`.`events_1m_mv`: x").as_deref(),
            Some("db.events_1m_mv")
        );
        assert_eq!(failed_view("Code: 241. Memory limit exceeded"), None);
    }

    #[tokio::test]
    async fn a_rebuild_a_stopped_sink_left_is_done_by_the_partitions_next_owner() {
        // The refused insert's leftovers are deleted and the parts written, then the sink
        // stops before rebuilding the rollup: its keys are recorded, nothing is committed.
        let mut writer = FakeWriter::new(memory_limit_above(4));
        writer.partial = true;
        writer.fail_rebuild = true.into();
        let (stopped, epoch) = new_flusher(writer, FakeCommitter::default());
        let rows: Vec<(i64, i64)> = (0..8).map(|o| (o, 0)).collect();
        assert!(
            stopped
                .write_one(batch(&stopped, epoch, &rows))
                .await
                .is_err()
        );
        assert!(commits(&stopped).is_empty());
        assert_eq!(stopped.writer.stored.lock().unwrap().len(), 8);
        assert!(
            stopped
                .writer
                .rollup
                .lock()
                .unwrap()
                .values()
                .any(|&n| n > 1),
            "the rollup counts some rows twice until the rebuild"
        );
        assert_eq!(stopped.writer.pending.lock().unwrap().len(), 1);

        // The next owner (a restart) reads the same offsets: all stored, skipped; the
        // recorded keys are rebuilt before its commit, and their record deleted.
        let (next, epoch) = flusher_owning(stopped.writer.clone(), FakeCommitter::default(), &[0]);
        let report = next.write_one(batch(&next, epoch, &rows)).await.unwrap();
        assert_eq!((report.already_stored, report.inserted), (8, 0));
        assert_eq!(
            next.writer.rollup.lock().unwrap().clone(),
            (0..8).map(|o| (o, 1)).collect::<BTreeMap<_, _>>(),
            "the rollup counts each row once"
        );
        assert!(next.writer.pending.lock().unwrap().is_empty());
        assert_eq!(commits(&next), vec![(0, 8)]);
        // Read once per assignment, not at every flush.
        let reads = next.writer.pending_reads.load(Ordering::SeqCst);
        let more: Vec<(i64, i64)> = (8..10).map(|o| (o, 0)).collect();
        next.write_one(batch(&next, epoch, &more)).await.unwrap();
        assert_eq!(next.writer.pending_reads.load(Ordering::SeqCst), reads);
    }

    #[tokio::test]
    async fn a_record_of_several_partitions_is_rebuilt_whole_by_the_owner_of_one() {
        // A refused insert of three partitions, then the sink stops before the rebuild: one
        // record (one id) names keys of all three.
        let mut writer = FakeWriter::new(|rows| {
            if rows.iter().any(|r| r.0 == 1_000_005) {
                Err(Failure::BadData("Code: 469. constraint".into()))
            } else {
                Ok(())
            }
        });
        writer.partial = true;
        writer.fail_rebuild = true.into();
        let (stopped, _) = new_flusher(writer, FakeCommitter::default());
        assert!(stopped.write(three_partitions(&stopped)).await.is_err());
        let ids: HashSet<u64> = stopped
            .writer
            .pending
            .lock()
            .unwrap()
            .iter()
            .map(|(_, id, _)| *id)
            .collect();
        assert_eq!(ids.len(), 1);

        // The next owner writes partition 0 only: the whole record is rebuilt and forgotten.
        let (next, epoch) = flusher_owning(stopped.writer.clone(), FakeCommitter::default(), &[0]);
        let rows: Vec<(i64, i64)> = (0..10).map(|o| (o, 0)).collect();
        next.write_one(batch(&next, epoch, &rows)).await.unwrap();
        assert!(next.writer.pending.lock().unwrap().is_empty());
        let stored = next.writer.stored.lock().unwrap().clone();
        assert_eq!(
            next.writer.rollup.lock().unwrap().clone(),
            stored.keys().map(|&o| (o, 1)).collect::<BTreeMap<_, _>>(),
            "every partition's rows counted once"
        );
    }

    #[tokio::test]
    async fn rows_a_refused_insert_left_behind_are_removed_before_the_parts_go_in() {
        // The table is written, then a view runs out of memory: the rows stay without rollups.
        let mut writer = FakeWriter::new(memory_limit_above(4));
        writer.partial = true;
        let (flusher, epoch) = new_flusher(writer, FakeCommitter::default());
        let rows: Vec<(i64, i64)> = (0..8).map(|o| (o, 0)).collect();
        let report = flusher
            .write_one(batch(&flusher, epoch, &rows))
            .await
            .unwrap();
        assert_eq!(report.inserted, 8);
        let mut deleted = flusher.writer.deleted.lock().unwrap().clone();
        deleted.sort_unstable();
        assert_eq!(
            deleted,
            (0..8).collect::<Vec<_>>(),
            "the leftovers, each once"
        );
        assert_eq!(flusher.writer.stored.lock().unwrap().len(), 8);
        assert_eq!(
            flusher.writer.rollup.lock().unwrap().clone(),
            (0..8).map(|o| (o, 1)).collect::<BTreeMap<_, _>>(),
            "the rollup counts each row once"
        );
        assert_eq!(flusher.metrics.rollup_keys_rebuilt.get(), 8);
    }

    #[tokio::test]
    async fn a_changed_table_is_followed_at_once_by_encoding_the_rows_again_from_kafka() {
        let (flusher, epoch) = new_flusher(FakeWriter::new(|_| Ok(())), FakeCommitter::default());
        let segment = batch(&flusher, epoch, &[(0, 0), (1, 0), (2, 1)]);
        // ALTER TABLE ... MODIFY COLUMN duration_ms UInt64, after the rows were encoded.
        let wider =
            Layout::new("db", "events", &test_columns(&[("duration_ms", "UInt64")])).unwrap();
        *flusher.writer.layout.lock().unwrap() = Arc::new(wider);
        let report = flusher.write_one(segment).await.unwrap();
        assert_eq!((report.inserted, report.rejected), (3, 0));
        assert_eq!(flusher.writer.inserted(), vec![vec![0, 1, 2]]);
        assert_eq!(*flusher.refetch.reads.lock().unwrap(), 1, "read back once");
        assert!(flusher.dead_letters.confirmed.lock().unwrap().is_empty());
        assert!(
            flusher
                .metrics
                .render()
                .contains("clickstream_sink_schema_changes_total 1")
        );
    }

    #[tokio::test]
    async fn rows_that_cannot_be_read_back_stop_the_sink_instead_of_being_lost() {
        let (flusher, epoch) = new_flusher(FakeWriter::new(|_| Ok(())), FakeCommitter::default());
        let segment = batch(&flusher, epoch, &[(0, 0), (1, 0)]);
        flusher.refetch.messages.lock().unwrap().remove(&1);
        let wider =
            Layout::new("db", "events", &test_columns(&[("duration_ms", "UInt64")])).unwrap();
        *flusher.writer.layout.lock().unwrap() = Arc::new(wider);
        let error = flusher
            .write_one(segment)
            .await
            .expect_err("offset 1 is gone");
        assert!(error.to_string().contains("retention"), "{error}");
        assert!(flusher.committer.commits.lock().unwrap().is_empty());
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
        let report = flusher
            .write_one(batch(&flusher, epoch, &[(0, 0)]))
            .await
            .unwrap();
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
        let segment = batch(&flusher, epoch, &[(0, 0), (1, 0)]);
        flusher.ownership.revoke(&[0], Duration::ZERO);
        let report = flusher.write_one(segment).await.unwrap();
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
        let report = flusher
            .write_one(batch(&flusher, epoch, &[(0, 0)]))
            .await
            .unwrap();
        assert_eq!(report.committed, None);
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
        let report = flusher
            .write_one(batch(&flusher, epoch, &rows))
            .await
            .unwrap();
        assert_eq!((report.inserted, report.already_stored), (2, 3));
        assert_eq!(flusher.writer.inserted(), vec![vec![3, 4]]);
        assert_eq!(
            *flusher.committer.commits.lock().unwrap(),
            vec![vec![(0, 5)]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn parallel_writes_commit_each_partition_in_offset_order_and_write_every_row_once() {
        let mut writer = FakeWriter::new(|_| Ok(()));
        writer.delay = Duration::from_millis(300);
        let (flusher, _) = new_flusher(writer, FakeCommitter::default());
        let flusher = Arc::new(flusher);
        let layout = flusher.writer.layout().unwrap();
        let mut batcher: Batcher<Rows, DeadLetter> = Batcher::new(Policy {
            max_rows: 40,
            flush_interval: Duration::from_millis(200),
            max_batch_bytes: usize::MAX,
            min_flush_gap: Duration::ZERO,
            partitions_per_insert: 1,
            burst: 1,
            split_bytes: usize::MAX,
        });
        let mut writes: Writes<FakeWriter, FakeDeadLetters, FakeCommitter, FakeTopic> =
            Writes::default();
        // Partition p's offsets are p * 1,000,000 + n, so the fakes can tell them apart.
        let base = |p: i32| i64::from(p) * 1_000_000;
        for n in 0..400_i64 {
            for p in 0..3 {
                let epoch = flusher.ownership.epoch(p).unwrap();
                let event = event(base(p) + n, 0);
                let view = event.as_ref();
                let row = RowRef::of_event(&view, "t", p, base(p) + n);
                batcher.push_row(p, epoch, base(p) + n, Instant::now(), |r| {
                    r.push(|| layout.clone(), &row)
                });
            }
            while let Some(joined) = writes.tasks.try_join_next() {
                writes.finished(joined, &mut batcher).unwrap();
            }
            let room = 4 - writes.running();
            for segment in batcher.take(Instant::now(), |p| writes.busy(p), room) {
                writes.start(&flusher, vec![segment]);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        writes.wait_all(&mut batcher).await.unwrap();
        for segment in batcher.take_all(Instant::now()) {
            writes.start(&flusher, vec![segment]);
        }
        writes.wait_all(&mut batcher).await.unwrap();

        assert!(
            flusher.writer.most_running.load(Ordering::SeqCst) >= 2,
            "partitions are written in parallel"
        );
        let commits = flusher.committer.commits.lock().unwrap().concat();
        for p in 0..3 {
            let offsets: Vec<i64> = commits
                .iter()
                .filter(|(partition, _)| *partition == p)
                .map(|(_, offset)| *offset)
                .collect();
            assert!(offsets.len() > 3, "partition {p}: {offsets:?}");
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "partition {p} commits in offset order: {offsets:?}"
            );
            assert_eq!(offsets.last(), Some(&(base(p) + 400)));
        }
        let mut inserted = flusher.writer.inserted().concat();
        inserted.sort_unstable();
        let expected: Vec<i64> = (0..3)
            .flat_map(|p| (0..400).map(move |n| base(p) + n))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(inserted, expected, "every row once");
        assert_eq!(
            batcher.in_flight_bytes(),
            0,
            "every write released its memory"
        );
    }
}
