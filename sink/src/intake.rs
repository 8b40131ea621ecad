//! Intake: what each consumed message becomes — a row, a dead letter, or "already stored" —
//! and the per-partition state that decides it.
//!
//! Exactly-once replays: when a partition is assigned, ClickHouse is asked what it already
//! holds from the first offset read on (the progress table's maximum, then the stored
//! offsets of one window of at most [`LOOKUP_WINDOW_OFFSETS`] offsets, with the event id at
//! each). Further windows are read as consumption reaches them, so memory does not grow
//! with the partition's history. Lookups run as tasks with a timeout and the retry policy:
//! meanwhile the partition is paused and its messages wait in order, while the consumer
//! keeps polling (the group never sees a stuck member).
//!
//! Each message is decoded on the consume loop as it is taken, in offset order, its row
//! encoded straight into its partition's buffer. Until 2026-12-03 a burst of 64 or more was
//! decoded ahead on two threads (this one half, a `decode` thread the other) into a burst
//! buffer, each row then copied into its partition's: on the 2-core machine the consume loop
//! slept 0.4 ms of every 1.2 ms burst waiting for the decode thread (woken late, sharing its
//! core with librdkafka's fetch thread and the endpoint), and taking chunks in turn did not
//! help (the loop then waited for the decode thread to wake). Decoding here instead, six
//! drains of the sink alone on 2M pre-loaded events alternating the binaries: 2.32-2.64 us of
//! CPU per event against 2.62-2.98 (lower in every pair), 306k-413k events/s steady (median
//! 365k) against 293k-368k (median 339k); draining into ClickHouse, one sink 103k-137k events/s
//! against 104k-112k.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clickstream_event::{Limits, Rejection};
use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Headers, OwnedMessage};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use uuid::Uuid;

use crate::SinkError;
use crate::batch::{Batcher, Entry};
use crate::dead_letter::{DeadLetter, DeadLetterSink};
use crate::metrics::Metrics;
use crate::ownership::Ownership;
use crate::retry::{Operation, RetryPolicy};
use crate::row::RowRef;
use crate::rows::Rows;
use crate::settings::{Delivery, Settings};
use crate::writer::{Failure, Writer};

/// Offsets per stored-offsets lookup: bounds the replay bookkeeping per partition (about
/// 4 MB at most) whatever the history to re-read.
pub const LOOKUP_WINDOW_OFFSETS: i64 = 100_000;

/// What to do when ClickHouse holds other events at the offsets being read, said wherever the
/// sink finds it. Not a hand-made `ALTER TABLE ... DELETE`: that leaves the rollups counting
/// the old rows (measured: `verify` found 5 rollups off).
pub(crate) const REUSED_OFFSETS: &str = "The topic was probably deleted and recreated, so its \
     offsets start again. Nothing was skipped or committed. Stop the group's sinks and run \
     `clickstream-sink replay --from 0:0 --from 1:0 ...` (one `--from P:0` per partition of the \
     topic) with their settings: it deletes the old rows at those offsets and rebuilds the \
     rollups they fed, and the sinks then store the new events exactly once. Or use a new \
     database or topic name.";

/// What the pipeline must do with the consumer after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// Pause this partition: a lookup runs; its messages wait in the intake.
    Pause(i32),
}

/// A message that can be kept while its partition waits for a lookup.
pub trait Keep: Message {
    fn keep(&self) -> OwnedMessage;
}

impl Keep for BorrowedMessage<'_> {
    fn keep(&self) -> OwnedMessage {
        self.detach()
    }
}

impl Keep for OwnedMessage {
    fn keep(&self) -> OwnedMessage {
        self.clone()
    }
}

/// The one field a replayed message is checked by.
#[derive(serde::Deserialize)]
struct EventIdOnly {
    event_id: Uuid,
}

/// Stored offsets of `from..=to` with the event id at each.
#[derive(Debug, Default)]
struct Window {
    to: i64,
    stored: BTreeMap<i64, Uuid>,
}

/// Event ids are remembered as 64-bit fingerprints keyed per process (one multiply per half),
/// so that crafted ids cannot collide on purpose; SipHash per message was 7 % of the sink's
/// CPU, a hash map with a queue for eviction another 6 %.
#[derive(Debug, Clone, Copy)]
struct Fingerprint {
    key: u64,
}

impl Default for Fingerprint {
    fn default() -> Fingerprint {
        Fingerprint {
            key: rand::random::<u64>() | 1,
        }
    }
}

impl Fingerprint {
    fn of(&self, id: Uuid) -> u64 {
        let (high, low) = id.as_u64_pair();
        let mix = |h: u64, word: u64| {
            (h ^ word ^ self.key)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(29)
        };
        mix(mix(0, high), low)
    }
}

/// A fingerprint is its own hash.
#[derive(Debug, Clone, Copy, Default)]
struct Identity(u64);

impl std::hash::Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8) | u64::from(byte);
        }
    }
    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }
}

type Seen = HashMap<u64, i64, std::hash::BuildHasherDefault<Identity>>;

/// The event ids of a partition's recent rows (the last `capacity` at least, `2 × capacity`
/// at most), to count ids seen again: two generations, the older dropped whole when the
/// newer is full (no per-row eviction).
#[derive(Debug, Default)]
struct RecentIds {
    capacity: usize,
    fingerprint: Fingerprint,
    current: Seen,
    previous: Seen,
}

impl RecentIds {
    fn new(capacity: usize) -> RecentIds {
        RecentIds {
            capacity,
            ..RecentIds::default()
        }
    }

    /// Remembers `id` at `offset`; returns the earlier offset if the id was seen at another.
    fn note(&mut self, id: Uuid, offset: i64) -> Option<i64> {
        if self.capacity == 0 {
            return None;
        }
        let id = self.fingerprint.of(id);
        let earlier = match self.current.insert(id, offset) {
            Some(earlier) => Some(earlier),
            None => self.previous.get(&id).copied(),
        }
        .filter(|&o| o != offset);
        if self.current.len() >= self.capacity {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        earlier
    }
}

struct PartitionState {
    epoch: u64,
    /// The highest offset ClickHouse held when the partition was assigned.
    max_stored: Option<i64>,
    window: Window,
    /// While a lookup runs: the messages that arrived meanwhile, in offset order.
    waiting: Option<VecDeque<OwnedMessage>>,
    recent: RecentIds,
    /// The lookup running for this state, if any: cancelled when the state is dropped (its
    /// partition assigned again, or forgotten by [`Intake::forget_stale`] at the next change
    /// of the owned partitions), instead of retrying until ClickHouse answers a question
    /// nobody asks any more.
    lookup: Option<AbortHandle>,
}

impl Drop for PartitionState {
    fn drop(&mut self) {
        if let Some(lookup) = &self.lookup {
            lookup.abort();
        }
    }
}

/// A finished lookup.
pub struct LookupDone {
    partition: i32,
    epoch: u64,
    result: Result<(Option<i64>, Window), SinkError>,
}

/// What every message is judged with (shared, read-only).
struct Context<W, D> {
    topic: String,
    database: String,
    table: String,
    delivery: Delivery,
    limits: Limits,
    dedup_window: usize,
    writer: Arc<W>,
    dead_letters: D,
    metrics: Arc<Metrics>,
    retry: RetryPolicy,
}

pub struct Intake<W, D> {
    context: Context<W, D>,
    partitions: HashMap<i32, PartitionState>,
    lookups: JoinSet<LookupDone>,
}

impl<W: Writer, D: DeadLetterSink> Intake<W, D> {
    pub fn new(settings: &Settings, writer: Arc<W>, dead_letters: D, retry: RetryPolicy) -> Self {
        Intake {
            context: Context {
                topic: settings.topic.clone(),
                database: settings.database.clone(),
                table: settings.table.clone(),
                delivery: settings.delivery,
                limits: settings.limits(),
                dedup_window: settings.dedup_window_events,
                writer,
                dead_letters,
                metrics: retry.metrics.clone(),
                retry,
            },
            partitions: HashMap::new(),
            lookups: JoinSet::new(),
        }
    }

    /// Lookups are running (there is work in flight).
    pub fn has_lookups(&self) -> bool {
        !self.lookups.is_empty()
    }

    /// Partitions paused for a lookup (not to be resumed by back-pressure).
    pub fn waiting(&self) -> HashSet<i32> {
        self.partitions
            .iter()
            .filter(|(_, s)| s.waiting.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Forgets the state of partitions no longer owned under the epoch it was made for
    /// (revoked, lost, or assigned again since): a partition assigned again starts anew at its
    /// next message, and no longer counts as waiting for a lookup of its old assignment.
    pub fn forget_stale(&mut self, ownership: &Ownership) {
        self.partitions
            .retain(|&partition, state| ownership.owns(partition, state.epoch));
    }

    /// The next finished lookup (pending forever while none runs: guard with
    /// [`Intake::has_lookups`]).
    pub async fn next_lookup(&mut self) -> LookupDone {
        loop {
            return match self.lookups.join_next().await {
                Some(Ok(done)) => done,
                // Cancelled with its partition's state (see [`PartitionState::lookup`]).
                Some(Err(join)) if join.is_cancelled() => continue,
                Some(Err(join)) => LookupDone {
                    partition: -1,
                    epoch: 0,
                    result: Err(SinkError::Internal(format!("lookup task failed: {join}"))),
                },
                None => std::future::pending().await,
            };
        }
    }

    /// Takes the messages of a burst in order; the partitions to pause. Each partition's epoch
    /// is read once per burst: a partition lost meanwhile has its rows buffered under the old
    /// epoch, which no flush writes or commits (as if lost just after the burst).
    pub fn handle_burst<M: Keep>(
        &mut self,
        messages: &[M],
        ownership: &Ownership,
        batcher: &mut Batcher<Rows, D::Ack>,
        now: Instant,
    ) -> Result<Vec<i32>, SinkError> {
        let mut pause = Vec::new();
        let mut epochs: Vec<(i32, Option<u64>)> = Vec::new();
        for message in messages {
            let partition = message.partition();
            let epoch = match epochs.iter().find(|(p, _)| *p == partition) {
                Some(&(_, epoch)) => epoch,
                None => {
                    let epoch = ownership.epoch(partition);
                    epochs.push((partition, epoch));
                    epoch
                }
            };
            if let Step::Pause(partition) = self.handle(message, epoch, batcher, now)? {
                pause.push(partition);
            }
        }
        Ok(pause)
    }

    /// Takes one message from the consumer, read at `now` (one clock reading per burst), of a
    /// partition owned under `epoch` (None: not owned).
    fn handle<M: Keep>(
        &mut self,
        message: &M,
        epoch: Option<u64>,
        batcher: &mut Batcher<Rows, D::Ack>,
        now: Instant,
    ) -> Result<Step, SinkError> {
        self.context.metrics.consumed.inc();
        let partition = message.partition();
        let offset = message.offset();
        let Some(epoch) = epoch else {
            return Ok(Step::Continue); // revoked meanwhile: its next owner reads it
        };
        if self.partitions.get(&partition).map(|s| s.epoch) != Some(epoch) {
            // (Re)assigned: anything buffered under the old epoch will be replayed.
            let dropped = batcher.drop_partition(partition);
            let lookup = self.context.delivery == Delivery::ExactlyOnce;
            tracing::info!(
                partition,
                epoch,
                from_offset = offset,
                dropped_buffered = dropped,
                "reading partition"
            );
            self.partitions.insert(
                partition,
                PartitionState {
                    epoch,
                    max_stored: None,
                    window: Window {
                        to: i64::MAX,
                        stored: BTreeMap::new(),
                    },
                    waiting: lookup.then(VecDeque::new),
                    recent: RecentIds::new(self.context.dedup_window),
                    lookup: None,
                },
            );
            if lookup {
                self.spawn_lookup(partition, epoch, offset, None);
            }
        }
        let state = self.partitions.get_mut(&partition).expect("inserted above");
        if let Some(queue) = &mut state.waiting {
            queue.push_back(message.keep());
            return Ok(if queue.len() == 1 {
                Step::Pause(partition)
            } else {
                Step::Continue
            });
        }
        if let Some(to) = next_window(state, offset) {
            state.waiting = Some(VecDeque::from([message.keep()]));
            self.spawn_lookup(partition, epoch, offset, Some(to));
            return Ok(Step::Pause(partition));
        }
        self.context
            .process(message, state, batcher, now)
            .map(|()| Step::Continue)
    }

    /// Applies a finished lookup and processes the messages that waited for it; returns the
    /// partition to resume, if it no longer waits.
    pub fn finish_lookup(
        &mut self,
        done: LookupDone,
        ownership: &Ownership,
        batcher: &mut Batcher<Rows, D::Ack>,
    ) -> Result<Option<i32>, SinkError> {
        let LookupDone {
            partition,
            epoch,
            result,
        } = done;
        let Some(state) = self
            .partitions
            .get_mut(&partition)
            .filter(|s| s.epoch == epoch && ownership.owns(partition, epoch))
        else {
            // Revoked or reassigned meanwhile: replayed under the new epoch, whatever this
            // lookup of the old one found (or failed with).
            return Ok(None);
        };
        let (max_stored, window) = result?;
        if max_stored.is_some() {
            state.max_stored = max_stored;
        }
        let stored = window.stored.len();
        state.window = window;
        let mut queue = state.waiting.take().unwrap_or_default();
        tracing::debug!(
            partition,
            stored,
            waiting = queue.len(),
            "stored offsets looked up"
        );
        while let Some(message) = queue.pop_front() {
            if let Some(to) = next_window(state, message.offset()) {
                let from = message.offset();
                queue.push_front(message);
                state.waiting = Some(queue);
                self.spawn_lookup(partition, epoch, from, Some(to));
                return Ok(None);
            }
            self.context
                .process(&message, state, batcher, Instant::now())?;
        }
        Ok(Some(partition))
    }

    /// Starts a lookup of `from..=to` (`to` None: first ask the progress table how far the
    /// stored offsets go).
    fn spawn_lookup(&mut self, partition: i32, epoch: u64, from: i64, to: Option<i64>) {
        let writer = self.context.writer.clone();
        let retry = self.context.retry.clone();
        let topic = self.context.topic.clone();
        let handle = self.lookups.spawn(async move {
            let result = lookup(&*writer, &retry, &topic, partition, from, to).await;
            LookupDone {
                partition,
                epoch,
                result,
            }
        });
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.lookup = Some(handle);
        }
    }
}

/// The end of the next window to look up, if `offset` needs one.
fn next_window(state: &PartitionState, offset: i64) -> Option<i64> {
    let max = state.max_stored?;
    (offset <= max && offset > state.window.to).then(|| max.min(offset + LOOKUP_WINDOW_OFFSETS - 1))
}

async fn lookup<W: Writer>(
    writer: &W,
    retry: &RetryPolicy,
    topic: &str,
    partition: i32,
    from: i64,
    to: Option<i64>,
) -> Result<(Option<i64>, Window), SinkError> {
    let mut attempts = retry.start(Operation::StoredOffsetsLookup);
    loop {
        let result = async {
            let (max, to) = match to {
                Some(to) => (None, to),
                None => match writer.max_stored_offset(topic, partition).await? {
                    Some(max) if max >= from => {
                        (Some(max), max.min(from + LOOKUP_WINDOW_OFFSETS - 1))
                    }
                    // Nothing stored from here on: no window to read, ever.
                    max => {
                        return Ok((
                            max.or(Some(-1)),
                            Window {
                                to: i64::MAX,
                                stored: BTreeMap::new(),
                            },
                        ));
                    }
                },
            };
            let stored = writer.stored_offsets(topic, partition, from, to).await?;
            Ok::<_, Failure>((max, Window { to, stored }))
        }
        .await;
        match result {
            Ok(found) => return Ok(found),
            Err(Failure::Fatal(message)) => {
                return Err(SinkError::clickhouse("stored offsets lookup")(
                    Failure::Fatal(message),
                ));
            }
            Err(failure) => attempts
                .wait(Some(partition), failure.kind(), failure.message())
                .await
                .map_err(|_| SinkError::Stopped)?,
        }
    }
}

impl<W: Writer, D: DeadLetterSink> Context<W, D> {
    /// Decodes one message into the batch.
    fn process<M: Message>(
        &self,
        message: &M,
        state: &mut PartitionState,
        batcher: &mut Batcher<Rows, D::Ack>,
        now: Instant,
    ) -> Result<(), SinkError> {
        let partition = message.partition();
        let offset = message.offset();
        let epoch = state.epoch;
        let payload = message.payload();
        if let Some(stored_id) = state.window.stored.remove(&offset) {
            // Skip it only if it is the event ClickHouse holds at this offset. Anything else
            // means the offsets were reused (the topic was deleted and recreated, or the table
            // holds another cluster's topic of that name): skipping would lose data, writing
            // would mix two topics' offsets. Stop, commit nothing, say what to do.
            let kafka_id = payload
                .and_then(|p| serde_json::from_slice::<EventIdOnly>(p).ok())
                .map(|e| e.event_id);
            if kafka_id != Some(stored_id) {
                return Err(SinkError::Inconsistent(format!(
                    "{topic}[{partition}] offset {offset}: ClickHouse ({database}.{table}) holds \
                     event {stored_id} at this offset, but the message there is {found}. \
                     {REUSED_OFFSETS}",
                    topic = self.topic,
                    database = self.database,
                    table = self.table,
                    found = kafka_id
                        .map_or_else(|| "not that event".to_owned(), |id| format!("event {id}")),
                )));
            }
            state.recent.note(stored_id, offset);
            self.metrics.replay_skipped.inc();
            batcher.push(partition, epoch, offset, Entry::AlreadyStored, now);
            return Ok(());
        }
        // At or below what ClickHouse holds at most, yet not stored (deleted by hand, before
        // a group reset): the write stage checks such rows landed.
        let reread = state.max_stored.filter(|&max| offset <= max);
        // Validate against the message's own timestamp, so a replay decides the same way.
        let timestamp_ms = message.timestamp().to_millis();
        let outcome = self.decode(payload, timestamp_ms).inspect(|event| {
            self.note(state, event.event_id, partition, offset);
        });
        match outcome {
            Ok(event) => {
                // Encoded once, here, into the partition's insert buffer, with the message's
                // timestamp (none: the time it is encoded, i.e. read).
                let row = RowRef::of_event(&event, &self.topic, partition, offset)
                    .with_kafka_timestamp(timestamp_ms);
                let writer = &self.writer;
                batcher.push_row(partition, epoch, offset, now, |rows| {
                    rows.push(
                        || {
                            writer
                                .layout()
                                .expect("the table's structure is read at start")
                        },
                        &row,
                    );
                    if let Some(ceiling) = reread {
                        rows.mark_reread(ceiling);
                    }
                });
            }
            Err(rejection) => {
                self.metrics
                    .dead_lettered
                    .get_or_create(&Metrics::label("reason", rejection.reason.as_str()))
                    .inc();
                if reread.is_some() {
                    // Read again after a crash or rebalance: the topic has it already.
                    self.metrics.dead_letters_repeated.inc();
                }
                tracing::debug!(partition, offset, reason = %rejection.reason, "dead-lettering");
                let ack = self.dead_letters.send(DeadLetter {
                    key: message.key().map(<[u8]>::to_vec),
                    payload: payload.map(<[u8]>::to_vec),
                    headers: original_headers(message),
                    reason: rejection.reason.as_str().to_owned(),
                    error: rejection.detail,
                    source_topic: self.topic.clone(),
                    source_partition: partition,
                    source_offset: offset,
                    source_timestamp_ms: timestamp_ms,
                });
                batcher.push(partition, epoch, offset, Entry::DeadLetter(ack), now);
            }
        }
        Ok(())
    }

    fn decode<'a>(
        &self,
        payload: Option<&'a [u8]>,
        timestamp_ms: Option<i64>,
    ) -> Result<clickstream_event::ClickEventRef<'a>, Rejection> {
        let at = timestamp_ms
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or_else(Utc::now);
        clickstream_event::decode_ref(payload, &self.limits, at)
    }

    /// Counts an event id seen again at another offset of the partition.
    fn note(&self, state: &mut PartitionState, id: Uuid, partition: i32, offset: i64) {
        if let Some(earlier) = state.recent.note(id, offset) {
            // Two Kafka records, one event (a producer retry without idempotence): both are
            // stored, each once; counted so that it is never silent.
            self.metrics.duplicate_event_ids.inc();
            tracing::debug!(partition, offset, earlier, event_id = %id, "event id seen again");
        }
    }
}

/// A message's headers, copied (for its dead letter).
pub(crate) fn original_headers<M: Message>(message: &M) -> Vec<(String, Vec<u8>)> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_seen_again_at_another_offset_are_reported_within_the_window() {
        let mut recent = RecentIds::new(3);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(recent.note(a, 10), None);
        assert_eq!(recent.note(a, 10), None, "a replay of the same offset");
        assert_eq!(recent.note(b, 11), None);
        assert_eq!(recent.note(a, 12), Some(10));
        for offset in 13..16 {
            recent.note(Uuid::from_u128(offset as u128 + 100), offset);
        }
        assert_eq!(recent.note(b, 16), Some(11), "within 2 x capacity rows");
        for offset in 17..24 {
            recent.note(Uuid::from_u128(offset as u128 + 100), offset);
        }
        assert_eq!(recent.note(a, 24), None, "out of the window");
        assert!(
            recent.current.len() + recent.previous.len() <= 6,
            "bounded: {} + {}",
            recent.current.len(),
            recent.previous.len()
        );
        assert_eq!(
            (0..20_000_u128)
                .filter(|&n| recent
                    .note(Uuid::from_u128(n << 64 | n), 100 + n as i64)
                    .is_some())
                .count(),
            0,
            "distinct ids never count as seen again"
        );
    }

    /// ClickHouse hangs while a partition's stored offsets are looked up, and the group
    /// takes the partition away and gives it back meanwhile.
    #[tokio::test]
    async fn a_lookup_of_an_old_assignment_is_cancelled_and_holds_nothing() {
        use std::sync::atomic::Ordering::SeqCst;

        use crate::batch::Policy;
        use crate::flush::tests::{FakeDeadLetters, FakeWriter, event};

        let settings = Settings::default();
        let writer = Arc::new(FakeWriter::new(|_| Ok(())));
        writer.hang_lookups.store(true, SeqCst);
        let ownership = Ownership::new(std::time::Duration::from_secs(10));
        ownership.assign(&[0]);
        let mut intake = Intake::new(
            &settings,
            writer.clone(),
            FakeDeadLetters::default(),
            RetryPolicy::immediate(),
        );
        let mut batcher: Batcher<Rows, DeadLetter> = Batcher::new(Policy {
            max_rows: 1_000,
            flush_interval: std::time::Duration::from_secs(1),
            max_batch_bytes: usize::MAX,
            min_flush_gap: std::time::Duration::ZERO,
            partitions_per_insert: 1,
            burst: 1,
            split_bytes: usize::MAX,
        });
        let message = OwnedMessage::new(
            Some(event(5, 0).to_json()),
            Some(b"u".to_vec()),
            settings.topic.clone(),
            rdkafka::Timestamp::NotAvailable,
            0,
            5,
            None,
        );
        let read = |intake: &mut Intake<_, _>, batcher: &mut _| {
            intake
                .handle_burst(
                    std::slice::from_ref(&message),
                    &ownership,
                    batcher,
                    Instant::now(),
                )
                .unwrap()
        };
        assert_eq!(
            read(&mut intake, &mut batcher),
            vec![0],
            "paused for a lookup"
        );
        async fn settle(count: &std::sync::atomic::AtomicUsize, want: usize) -> usize {
            for _ in 0..100 {
                if count.load(SeqCst) == want {
                    break;
                }
                tokio::task::yield_now().await;
            }
            count.load(SeqCst)
        }
        assert_eq!(settle(&writer.hanging, 1).await, 1, "the lookup hangs");
        assert_eq!(intake.waiting(), HashSet::from([0]));

        ownership.revoke(&[0], std::time::Duration::ZERO);
        ownership.assign(&[0]);
        intake.forget_stale(&ownership);
        assert!(
            intake.waiting().is_empty(),
            "the old assignment's lookup no longer holds the partition paused"
        );
        assert_eq!(
            settle(&writer.hanging, 0).await,
            0,
            "the old assignment's lookup is cancelled, not left retrying"
        );
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), intake.next_lookup())
                .await
                .is_err(),
            "a cancelled lookup is not reported as finished"
        );

        // Read again under the new assignment: a new lookup, answered now.
        writer.hang_lookups.store(false, SeqCst);
        assert_eq!(read(&mut intake, &mut batcher), vec![0]);
        let done = intake.next_lookup().await;
        assert_eq!(
            intake
                .finish_lookup(done, &ownership, &mut batcher)
                .unwrap(),
            Some(0),
            "resumed after the new lookup"
        );
        assert!(!batcher.is_empty(), "the message that waited was taken");
    }

    #[test]
    fn windows_are_read_only_where_stored_offsets_can_be() {
        let mut state = PartitionState {
            epoch: 1,
            max_stored: Some(250_000),
            window: Window {
                to: 99_999,
                stored: BTreeMap::new(),
            },
            waiting: None,
            recent: RecentIds::new(0),
            lookup: None,
        };
        assert_eq!(next_window(&state, 50_000), None, "inside the window");
        assert_eq!(next_window(&state, 100_000), Some(199_999));
        state.window.to = 199_999;
        assert_eq!(
            next_window(&state, 200_000),
            Some(250_000),
            "up to the last stored"
        );
        state.window.to = 250_000;
        assert_eq!(next_window(&state, 250_001), None, "past everything stored");
    }
}
