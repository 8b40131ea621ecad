//! Pure, clock-driven batching. The pipeline pushes entries and asks [`Batcher::ready_at`];
//! it `select!`s on that instant and calls [`Batcher::take`]. No timers live here.
//!
//! Rules:
//! - a batch is ready when it has `max_rows` rows, or when its oldest entry has waited
//!   `flush_interval` — but never sooner than `min_flush_gap` per INSERT of the previous
//!   flush after it (a flush makes one INSERT per partition with rows), so at high rates
//!   batches grow instead of the insert rate (ClickHouse wants few, big inserts);
//! - consumption should pause while the buffer holds `max_batch_bytes` or more;
//! - entries are kept per Kafka partition as one contiguous offset range (a [`Segment`]), so
//!   each partition's insert covers `first..=last` and its commit is `last + 1`.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// The batching policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub max_rows: usize,
    pub flush_interval: Duration,
    pub max_batch_bytes: usize,
    /// The least time per INSERT between flushes (1 / max_inserts_per_second).
    pub min_flush_gap: Duration,
}

/// What one Kafka offset became.
#[derive(Debug)]
pub enum Entry<R, A> {
    /// A row to insert.
    Row(R),
    /// A message sent to the dead-letter topic; `A` is its pending acknowledgement.
    DeadLetter(A),
    /// A message whose row ClickHouse already holds (found on replay).
    AlreadyStored,
}

/// One partition's part of a batch: every offset from `first_offset` to `last_offset`.
#[derive(Debug)]
pub struct Segment<R, A> {
    pub partition: i32,
    /// The partition's assignment epoch the entries were read under.
    pub epoch: u64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub rows: Vec<(i64, R)>,
    pub dead_letters: Vec<A>,
    pub already_stored: usize,
    /// Memory the entries take (as reported to [`Batcher::push`]).
    pub bytes: usize,
}

impl<R, A> Segment<R, A> {
    /// The offset to commit once this segment is written.
    pub fn commit_offset(&self) -> i64 {
        self.last_offset + 1
    }
}

/// A batch taken for writing.
#[derive(Debug)]
pub struct Batch<R, A> {
    pub segments: Vec<Segment<R, A>>,
    pub rows: usize,
    pub bytes: usize,
    /// When the oldest entry was pushed.
    pub oldest: Instant,
}

/// Accumulates entries until the policy says flush.
#[derive(Debug)]
pub struct Batcher<R, A> {
    policy: Policy,
    segments: BTreeMap<i32, Segment<R, A>>,
    rows: usize,
    bytes: usize,
    oldest: Option<Instant>,
    /// No flush before this (the previous flush's inserts times `min_flush_gap` after it).
    next_flush_at: Option<Instant>,
}

impl<R, A> Batcher<R, A> {
    pub fn new(policy: Policy) -> Batcher<R, A> {
        Batcher {
            policy,
            segments: BTreeMap::new(),
            rows: 0,
            bytes: 0,
            oldest: None,
            next_flush_at: None,
        }
    }

    /// Adds the entry for `offset` of `partition`, taking `bytes` of memory.
    ///
    /// Offsets of one partition arrive in increasing order; gaps (compacted or transaction
    /// markers) are fine, the segment's range simply spans them.
    pub fn push(
        &mut self,
        partition: i32,
        epoch: u64,
        offset: i64,
        entry: Entry<R, A>,
        bytes: usize,
        now: Instant,
    ) {
        let segment = self.segments.entry(partition).or_insert_with(|| Segment {
            partition,
            epoch,
            first_offset: offset,
            last_offset: offset,
            rows: Vec::new(),
            dead_letters: Vec::new(),
            already_stored: 0,
            bytes: 0,
        });
        debug_assert!(
            offset >= segment.last_offset,
            "offsets of a partition arrive in order"
        );
        segment.last_offset = offset;
        match entry {
            Entry::Row(row) => {
                segment.rows.push((offset, row));
                self.rows += 1;
            }
            Entry::DeadLetter(ack) => segment.dead_letters.push(ack),
            Entry::AlreadyStored => segment.already_stored += 1,
        }
        segment.bytes += bytes;
        self.bytes += bytes;
        self.oldest.get_or_insert(now);
    }

    /// Drops everything buffered for `partition` (revoked, or re-assigned: it is replayed).
    pub fn drop_partition(&mut self, partition: i32) -> usize {
        let Some(segment) = self.segments.remove(&partition) else {
            return 0;
        };
        self.rows -= segment.rows.len();
        self.bytes -= segment.bytes;
        if self.segments.is_empty() {
            self.oldest = None;
        }
        segment.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.segments.keys().copied()
    }

    /// Whether consumption should pause until the next flush.
    pub fn should_pause(&self) -> bool {
        self.bytes >= self.policy.max_batch_bytes
    }

    /// When the batch should be flushed, or `None` while it is empty.
    pub fn ready_at(&self) -> Option<Instant> {
        let oldest = self.oldest?;
        let due = if self.rows >= self.policy.max_rows || self.should_pause() {
            oldest
        } else {
            oldest + self.policy.flush_interval
        };
        Some(match self.next_flush_at {
            Some(next) => due.max(next),
            None => due,
        })
    }

    /// Takes the whole buffer as a batch and starts a new one.
    pub fn take(&mut self, now: Instant) -> Option<Batch<R, A>> {
        let oldest = self.oldest.take()?;
        let inserts = self
            .segments
            .values()
            .filter(|s| !s.rows.is_empty())
            .count();
        self.next_flush_at = Some(now + self.policy.min_flush_gap * inserts.max(1) as u32);
        let batch = Batch {
            segments: std::mem::take(&mut self.segments).into_values().collect(),
            rows: self.rows,
            bytes: self.bytes,
            oldest,
        };
        self.rows = 0;
        self.bytes = 0;
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            max_rows: 1_000,
            flush_interval: Duration::from_secs(5),
            max_batch_bytes: 1_000_000,
            min_flush_gap: Duration::from_millis(500),
        }
    }

    fn row(batcher: &mut Batcher<u32, ()>, partition: i32, offset: i64) {
        batcher.push(
            partition,
            1,
            offset,
            Entry::Row(offset as u32),
            100,
            Instant::now(),
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_100_events_per_second_flushes_every_5_seconds() {
        let mut batcher = Batcher::new(policy());
        assert_eq!(batcher.ready_at(), None, "an empty batch never flushes");
        let start = Instant::now();
        let mut flushed = Vec::new();
        for i in 0..1_600 {
            tokio::time::advance(Duration::from_millis(10)).await;
            row(&mut batcher, (i % 3) as i32, i / 3);
            if batcher.ready_at().is_some_and(|at| at <= Instant::now()) {
                let batch = batcher.take(Instant::now()).unwrap();
                flushed.push((Instant::now() - start, batch.rows));
            }
        }
        assert_eq!(flushed.len(), 3, "{flushed:?}");
        for (_, rows) in &flushed {
            assert!((499..=501).contains(rows), "{flushed:?}");
        }
        assert_eq!(
            flushed[0].0,
            Duration::from_millis(5_010),
            "oldest row waited exactly 5 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_is_ready_at_once() {
        let mut batcher = Batcher::new(policy());
        for offset in 0..1_000 {
            row(&mut batcher, 0, offset);
        }
        assert_eq!(batcher.ready_at(), Some(Instant::now()));
        let batch = batcher.take(Instant::now()).unwrap();
        assert_eq!(batch.rows, 1_000);
        assert_eq!(batch.segments.len(), 1);
        assert_eq!(
            (
                batch.segments[0].first_offset,
                batch.segments[0].commit_offset()
            ),
            (0, 1_000)
        );
        assert!(batcher.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn at_high_rates_batches_grow_instead_of_inserts() {
        let mut batcher = Batcher::new(policy());
        let mut offset = 0;
        let mut flushes = 0;
        let mut sizes = Vec::new();
        // 100,000 events/s for 10 s: 10 rows every 100 µs.
        for _ in 0..100_000 {
            tokio::time::advance(Duration::from_micros(100)).await;
            for _ in 0..10 {
                row(&mut batcher, 0, offset);
                offset += 1;
            }
            if batcher.ready_at().is_some_and(|at| at <= Instant::now()) {
                sizes.push(batcher.take(Instant::now()).unwrap().rows);
                flushes += 1;
            }
        }
        assert!(
            flushes <= 21,
            "at most 2 flushes a second (+1), got {flushes}"
        );
        assert!(sizes[1..].iter().all(|&rows| rows >= 40_000), "{sizes:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn inserts_per_second_stay_at_the_limit_across_partitions() {
        let mut batcher = Batcher::new(policy());
        let mut offsets = [0_i64; 3];
        let mut inserts = 0;
        // 90,000 events/s over 3 partitions for 10 s.
        for step in 0..100_000_u32 {
            tokio::time::advance(Duration::from_micros(100)).await;
            for i in 0..9 {
                let partition = ((step + i) % 3) as i32;
                row(&mut batcher, partition, offsets[partition as usize]);
                offsets[partition as usize] += 1;
            }
            if batcher.ready_at().is_some_and(|at| at <= Instant::now()) {
                let batch = batcher.take(Instant::now()).unwrap();
                inserts += batch.segments.iter().filter(|s| !s.rows.is_empty()).count();
            }
        }
        // 2 inserts a second (min_flush_gap 500 ms per insert), +3 for the first flush.
        assert!(inserts <= 23, "{inserts} inserts in 10 s");
        assert!(inserts >= 15, "{inserts} inserts in 10 s");
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_at_max_batch_bytes_and_flushes_then() {
        let mut batcher = Batcher::new(Policy {
            max_batch_bytes: 10_000,
            max_rows: 1_000_000,
            ..policy()
        });
        for offset in 0..99 {
            row(&mut batcher, 0, offset);
        }
        assert!(!batcher.should_pause());
        assert!(batcher.ready_at().unwrap() > Instant::now());
        row(&mut batcher, 0, 99);
        assert!(batcher.should_pause());
        assert_eq!(
            batcher.ready_at(),
            Some(Instant::now()),
            "a full buffer flushes at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn segments_cover_every_offset_including_dead_letters() {
        let mut batcher: Batcher<u32, &str> = Batcher::new(policy());
        let now = Instant::now();
        batcher.push(2, 7, 10, Entry::Row(10), 1, now);
        batcher.push(2, 7, 11, Entry::DeadLetter("bad"), 1, now);
        batcher.push(2, 7, 12, Entry::AlreadyStored, 1, now);
        batcher.push(2, 7, 14, Entry::Row(14), 1, now);
        batcher.push(0, 3, 5, Entry::DeadLetter("worse"), 1, now);
        let batch = batcher.take(now).unwrap();
        assert_eq!(batch.rows, 2);
        let p0 = &batch.segments[0];
        assert_eq!(
            (p0.partition, p0.epoch, p0.first_offset, p0.commit_offset()),
            (0, 3, 5, 6)
        );
        assert!(p0.rows.is_empty());
        let p2 = &batch.segments[1];
        assert_eq!(
            (p2.first_offset, p2.commit_offset(), p2.already_stored),
            (10, 15, 1)
        );
        assert_eq!(
            p2.rows.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            vec![10, 14]
        );
        assert_eq!(p2.dead_letters, vec!["bad"]);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_partition_forgets_its_rows() {
        let mut batcher = Batcher::new(policy());
        row(&mut batcher, 0, 0);
        row(&mut batcher, 1, 0);
        assert_eq!(batcher.drop_partition(1), 1);
        assert_eq!(batcher.rows(), 1);
        assert_eq!(batcher.partitions().collect::<Vec<_>>(), vec![0]);
        assert_eq!(batcher.drop_partition(0), 1);
        assert!(batcher.is_empty());
        assert_eq!(batcher.ready_at(), None);
    }
}
