//! Pure, clock-driven batching. The pipeline pushes entries and asks [`Batcher::ready_at`];
//! it `select!`s on that instant and calls [`Batcher::take`]. No timers live here.
//!
//! Rules:
//! - entries are kept per Kafka partition as one contiguous offset range (a [`Segment`]), so
//!   each partition's insert covers `first..=last` and its commit is `last + 1`;
//! - every segment is due once the buffer holds `max_rows` rows (all partitions together, as
//!   "1,000 rows or 5 s" means for the sink), and a segment is due when its oldest entry has
//!   waited `flush_interval`, or at once while memory is full;
//! - partitions are written in parallel, one insert in flight per partition: a partition the
//!   pipeline reports busy is not taken (its rows wait for its insert to end);
//! - when one segment is due, every partition that is not busy is taken with it (one flush),
//!   and the next flush waits `min_flush_gap` per INSERT it makes: the segments with rows go
//!   `partitions_per_insert` to an INSERT (by default all of them in one), so at high rates
//!   batches grow instead of the insert rate (ClickHouse wants few, big inserts). A big flush
//!   (`split_bytes`) is written by as many INSERTs as the credit saved since the last allows
//!   (a token bucket of `burst`), so that ClickHouse works on them at once; the rate stays
//!   the same on average. Segments without rows (only dead letters or rows already stored)
//!   make no insert and are never held back;
//! - while an INSERT runs, the rows of partitions not busy wait for it (and any other) to
//!   end, so that the next flush takes every partition together, unless memory is full or
//!   their oldest row has waited `flush_interval`: one sink reading several partitions makes
//!   few, big INSERTs, not a stream of small ones at the rate limit as partitions' inserts
//!   end one by one;
//! - consumption should pause while the rows buffered and being inserted hold
//!   `max_batch_bytes` or more.

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
    /// Segments (partitions) written by one INSERT at most.
    pub partitions_per_insert: usize,
    /// INSERTs the rate limit lets a flush make at once from credit saved while none was
    /// made (the rate stays `1 / min_flush_gap` on average).
    pub burst: usize,
    /// A flush holding at least this many bytes of rows is written by as many INSERTs (a
    /// partition or more each, running at once) as its credit allows; a smaller one by as few
    /// as `partitions_per_insert` allows.
    pub split_bytes: usize,
}

impl Policy {
    /// The INSERTs that writing `with_rows` segments with rows takes.
    pub fn inserts_for(&self, with_rows: usize) -> usize {
        with_rows.div_ceil(self.partitions_per_insert.max(1))
    }
}

/// Where a segment's rows accumulate (encoded rows in the sink; anything in tests).
pub trait RowBuffer: Default {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Memory held.
    fn bytes(&self) -> usize;
}

/// What one Kafka offset became, besides a row.
#[derive(Debug)]
pub enum Entry<A> {
    /// A message sent to the dead-letter topic; `A` is its pending acknowledgement.
    DeadLetter(A),
    /// A message whose row ClickHouse already holds (found on replay).
    AlreadyStored,
}

/// One partition's batch: every offset from `first_offset` to `last_offset`.
#[derive(Debug)]
pub struct Segment<R, A> {
    pub partition: i32,
    /// The partition's assignment epoch the entries were read under.
    pub epoch: u64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub rows: R,
    pub dead_letters: Vec<A>,
    pub already_stored: usize,
    /// Memory the entries take (counted in [`Batcher::in_flight_bytes`] until released).
    pub bytes: usize,
    /// When the first entry was pushed.
    pub oldest: Instant,
}

impl<R, A> Segment<R, A> {
    /// The offset to commit once this segment is written.
    pub fn commit_offset(&self) -> i64 {
        self.last_offset + 1
    }
}

/// Accumulates entries until the policy says flush.
#[derive(Debug)]
pub struct Batcher<R, A> {
    policy: Policy,
    segments: BTreeMap<i32, Segment<R, A>>,
    rows: usize,
    bytes: usize,
    /// Memory of segments taken and not yet released (their inserts run).
    in_flight_bytes: usize,
    /// No flush with rows before this (the previous flush's inserts times `min_flush_gap`).
    next_flush_at: Option<Instant>,
}

/// Bytes counted for an entry that is not a row (a pending dead letter, a skipped offset).
pub const ENTRY_BYTES: usize = 64;

impl<R: RowBuffer, A> Batcher<R, A> {
    pub fn new(policy: Policy) -> Batcher<R, A> {
        Batcher {
            policy,
            segments: BTreeMap::new(),
            rows: 0,
            bytes: 0,
            in_flight_bytes: 0,
            next_flush_at: None,
        }
    }

    fn segment(
        &mut self,
        partition: i32,
        epoch: u64,
        offset: i64,
        now: Instant,
    ) -> &mut Segment<R, A> {
        let segment = self.segments.entry(partition).or_insert_with(|| Segment {
            partition,
            epoch,
            first_offset: offset,
            last_offset: offset,
            rows: R::default(),
            dead_letters: Vec::new(),
            already_stored: 0,
            bytes: 0,
            oldest: now,
        });
        debug_assert!(
            offset >= segment.last_offset,
            "offsets of a partition arrive in order"
        );
        segment.last_offset = offset;
        segment
    }

    /// Adds the row at `offset` of `partition`: `fill` appends it to the segment's rows.
    ///
    /// Offsets of one partition arrive in increasing order; gaps (compacted or transaction
    /// markers) are fine, the segment's range simply spans them.
    pub fn push_row(
        &mut self,
        partition: i32,
        epoch: u64,
        offset: i64,
        now: Instant,
        fill: impl FnOnce(&mut R),
    ) {
        let segment = self.segment(partition, epoch, offset, now);
        let (rows, bytes) = (segment.rows.len(), segment.rows.bytes());
        fill(&mut segment.rows);
        let added_rows = segment.rows.len() - rows;
        let added_bytes = segment.rows.bytes().saturating_sub(bytes);
        segment.bytes += added_bytes;
        self.rows += added_rows;
        self.bytes += added_bytes;
    }

    /// Adds an offset that is not a row.
    pub fn push(&mut self, partition: i32, epoch: u64, offset: i64, entry: Entry<A>, now: Instant) {
        let segment = self.segment(partition, epoch, offset, now);
        match entry {
            Entry::DeadLetter(ack) => segment.dead_letters.push(ack),
            Entry::AlreadyStored => segment.already_stored += 1,
        }
        segment.bytes += ENTRY_BYTES;
        self.bytes += ENTRY_BYTES;
    }

    /// Drops everything buffered for `partition` (revoked, or re-assigned: it is replayed).
    pub fn drop_partition(&mut self, partition: i32) -> usize {
        let Some(segment) = self.segments.remove(&partition) else {
            return 0;
        };
        self.rows -= segment.rows.len();
        self.bytes -= segment.bytes;
        segment.rows.len()
    }

    /// Drops every segment `owned(partition, epoch)` refuses (its partition revoked, lost or
    /// assigned again since it was read); the rows dropped.
    pub fn drop_stale(&mut self, owned: impl Fn(i32, u64) -> bool) -> usize {
        let stale: Vec<i32> = self
            .segments
            .values()
            .filter(|s| !owned(s.partition, s.epoch))
            .map(|s| s.partition)
            .collect();
        stale.into_iter().map(|p| self.drop_partition(p)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Rows buffered (not counting those being inserted).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Memory buffered (not counting what is being inserted).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Memory of segments taken and not yet released.
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.segments.keys().copied()
    }

    /// Whether consumption should pause until inserts end.
    pub fn should_pause(&self) -> bool {
        self.bytes + self.in_flight_bytes >= self.policy.max_batch_bytes
    }

    fn due(&self, segment: &Segment<R, A>) -> Instant {
        // `max_rows` counts the sink's buffer, not one partition's: with 3 partitions at
        // 1,000 events/s a per-partition count would hold rows 3 s instead of 1 s.
        if self.rows >= self.policy.max_rows || self.should_pause() {
            segment.oldest
        } else {
            segment.oldest + self.policy.flush_interval
        }
    }

    /// Whether segments with rows wait for the INSERTs running to end (see the module's
    /// rules): while one runs and memory is not full.
    fn held(&self) -> bool {
        self.in_flight_bytes > 0 && !self.should_pause()
    }

    /// When a segment may be taken: when due, and for one with rows not before the rate
    /// limit allows, nor while INSERTs run ([`Batcher::held`]) unless its oldest row has
    /// waited `flush_interval`.
    fn ready(&self, segment: &Segment<R, A>) -> Instant {
        let due = self.due(segment);
        if segment.rows.is_empty() {
            return due;
        }
        let mut at = match self.next_flush_at {
            Some(next) => due.max(next),
            None => due,
        };
        if self.held() {
            at = at.max(segment.oldest + self.policy.flush_interval);
        }
        at
    }

    /// When the next flush should happen, or `None` while nothing but `busy` partitions
    /// have entries.
    pub fn ready_at(&self, busy: impl Fn(i32) -> bool) -> Option<Instant> {
        self.segments
            .values()
            .filter(|s| !busy(s.partition))
            .map(|s| self.ready(s))
            .min()
    }

    /// [`Batcher::take`], grouped into INSERTs (at most `max_inserts`): one with every
    /// partition of the flush (`partitions_per_insert` at most), or for a big flush as many as
    /// the rate limit's credit allows, balanced by size, so that ClickHouse works on them at
    /// once. A group without rows makes no INSERT.
    pub fn take_inserts(
        &mut self,
        now: Instant,
        busy: impl Fn(i32) -> bool,
        max_inserts: usize,
    ) -> Vec<Vec<Segment<R, A>>> {
        let per_insert = self.policy.partitions_per_insert.max(1);
        let taken = self.take_segments(now, busy, max_inserts.saturating_mul(per_insert));
        let (mut with_rows, without): (Vec<_>, Vec<_>) =
            taken.into_iter().partition(|s| !s.rows.is_empty());
        let fewest = self.policy.inserts_for(with_rows.len());
        let bytes: usize = with_rows.iter().map(|s| s.bytes).sum();
        let inserts = if bytes >= self.policy.split_bytes {
            fewest.max(self.credit(now).min(with_rows.len()))
        } else {
            fewest
        }
        .min(max_inserts.max(fewest));
        self.spend(now, inserts);
        let mut groups: Vec<(usize, Vec<Segment<R, A>>)> =
            (0..inserts).map(|_| (0, Vec::new())).collect();
        with_rows.sort_by_key(|s| std::cmp::Reverse(s.bytes));
        for segment in with_rows {
            let group = groups
                .iter_mut()
                .filter(|g| g.1.len() < per_insert)
                .min_by_key(|g| g.0)
                .expect("enough INSERTs for every segment");
            group.0 += segment.bytes;
            group.1.push(segment);
        }
        let mut groups: Vec<Vec<Segment<R, A>>> = groups.into_iter().map(|g| g.1).collect();
        match groups.first_mut() {
            Some(first) => first.extend(without),
            None if !without.is_empty() => groups.push(without),
            None => {}
        }
        for group in &mut groups {
            group.sort_by_key(|s| s.partition);
        }
        groups
    }

    /// INSERTs the rate limit allows now: 1 when its gap has passed, more for every further
    /// gap waited, up to `burst`.
    fn credit(&self, now: Instant) -> usize {
        let burst = self.policy.burst.max(1);
        match self.next_flush_at {
            None => burst,
            Some(next) if now < next => 0,
            Some(_) if self.policy.min_flush_gap.is_zero() => burst,
            Some(next) => {
                let saved = (now - next).as_nanos() / self.policy.min_flush_gap.as_nanos();
                burst.min(1 + usize::try_from(saved).unwrap_or(usize::MAX))
            }
        }
    }

    /// Spends the credit of `inserts` INSERTs made now.
    fn spend(&mut self, now: Instant, inserts: usize) {
        if inserts == 0 {
            return;
        }
        let gap = self.policy.min_flush_gap;
        let saved_since = now
            .checked_sub(gap * (self.policy.burst.max(1) as u32 - 1))
            .unwrap_or(now);
        let from = self
            .next_flush_at
            .map_or(saved_since, |next| next.max(saved_since));
        self.next_flush_at = Some(from + gap * inserts as u32);
    }

    /// Takes, once a segment is ready, every segment of a partition that is not `busy` (only
    /// those without rows while the rate limit holds the others back), each its own INSERT
    /// (see [`Batcher::take_inserts`]). Their memory counts as in flight until
    /// [`Batcher::release`].
    ///
    /// At most `max` segments are taken, those ready first.
    pub fn take(
        &mut self,
        now: Instant,
        busy: impl Fn(i32) -> bool,
        max: usize,
    ) -> Vec<Segment<R, A>> {
        self.take_inserts(now, busy, max)
            .into_iter()
            .flatten()
            .collect()
    }

    fn take_segments(
        &mut self,
        now: Instant,
        busy: impl Fn(i32) -> bool,
        max: usize,
    ) -> Vec<Segment<R, A>> {
        if self.ready_at(&busy).is_none_or(|at| at > now) {
            return Vec::new();
        }
        // Segments with rows go when the rate limit allows, and while INSERTs run only once
        // one of them has waited its flush interval: then all of them together.
        let open = self.next_flush_at.is_none_or(|next| next <= now)
            && (!self.held()
                || self
                    .segments
                    .values()
                    .any(|s| !busy(s.partition) && !s.rows.is_empty() && self.ready(s) <= now));
        let mut eligible: Vec<(Instant, i32)> = self
            .segments
            .values()
            .filter(|s| !busy(s.partition) && (open || s.rows.is_empty()))
            .map(|s| (self.ready(s), s.partition))
            .collect();
        eligible.sort_unstable();
        eligible.truncate(max);
        let mut partitions: Vec<i32> = eligible.into_iter().map(|(_, p)| p).collect();
        partitions.sort_unstable();
        self.take_partitions(&partitions)
    }

    /// Takes everything (the drain at shutdown, when nothing is in flight).
    pub fn take_all(&mut self, now: Instant) -> Vec<Segment<R, A>> {
        let partitions: Vec<i32> = self.segments.keys().copied().collect();
        let taken = self.take_partitions(&partitions);
        let inserts = self
            .policy
            .inserts_for(taken.iter().filter(|s| !s.rows.is_empty()).count());
        self.spend(now, inserts);
        taken
    }

    fn take_partitions(&mut self, partitions: &[i32]) -> Vec<Segment<R, A>> {
        let taken: Vec<Segment<R, A>> = partitions
            .iter()
            .filter_map(|p| self.segments.remove(p))
            .collect();
        for segment in &taken {
            self.rows -= segment.rows.len();
            self.bytes -= segment.bytes;
            self.in_flight_bytes += segment.bytes;
        }
        taken
    }

    /// A taken segment's insert ended: its memory is free.
    pub fn release(&mut self, bytes: usize) {
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows as their offsets, 100 bytes each.
    #[derive(Debug, Default, PartialEq)]
    struct Offsets(Vec<i64>);

    impl RowBuffer for Offsets {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn bytes(&self) -> usize {
            self.0.len() * 100
        }
    }

    fn policy() -> Policy {
        Policy {
            max_rows: 1_000,
            flush_interval: Duration::from_secs(5),
            max_batch_bytes: 1_000_000,
            min_flush_gap: Duration::from_millis(500),
            partitions_per_insert: 1,
            burst: 1,
            split_bytes: usize::MAX,
        }
    }

    fn idle(_: i32) -> bool {
        false
    }

    fn row(batcher: &mut Batcher<Offsets, ()>, partition: i32, offset: i64) {
        batcher.push_row(partition, 1, offset, Instant::now(), |rows| {
            rows.0.push(offset)
        });
    }

    fn rows(segments: &[Segment<Offsets, ()>]) -> usize {
        segments.iter().map(|s| s.rows.len()).sum()
    }

    #[tokio::test(start_paused = true)]
    async fn at_100_events_per_second_flushes_every_5_seconds() {
        let mut batcher = Batcher::new(policy());
        assert_eq!(batcher.ready_at(idle), None, "an empty batch never flushes");
        let start = Instant::now();
        let mut flushed = Vec::new();
        for i in 0..1_600 {
            tokio::time::advance(Duration::from_millis(10)).await;
            row(&mut batcher, (i % 3) as i32, i / 3);
            if batcher
                .ready_at(idle)
                .is_some_and(|at| at <= Instant::now())
            {
                let segments = batcher.take(Instant::now(), idle, usize::MAX);
                flushed.push((Instant::now() - start, segments.len(), rows(&segments)));
            }
        }
        assert_eq!(flushed.len(), 3, "{flushed:?}");
        for (_, partitions, rows) in &flushed {
            assert_eq!(*partitions, 3, "{flushed:?}");
            assert!((499..=501).contains(rows), "{flushed:?}");
        }
        assert_eq!(
            flushed[0].0,
            Duration::from_millis(5_010),
            "oldest row waited exactly 5 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_segment_is_ready_at_once() {
        let mut batcher = Batcher::new(policy());
        for offset in 0..1_000 {
            row(&mut batcher, 0, offset);
        }
        assert_eq!(batcher.ready_at(idle), Some(Instant::now()));
        let segments = batcher.take(Instant::now(), idle, usize::MAX);
        assert_eq!(segments.len(), 1);
        assert_eq!(rows(&segments), 1_000);
        assert_eq!(
            (segments[0].first_offset, segments[0].commit_offset()),
            (0, 1_000)
        );
        assert!(batcher.is_empty());
        assert_eq!(batcher.in_flight_bytes(), 100_000);
        batcher.release(100_000);
        assert_eq!(batcher.in_flight_bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn max_rows_counts_every_partition_together() {
        let mut batcher = Batcher::new(policy());
        for offset in 0..333 {
            for partition in 0..3 {
                row(&mut batcher, partition, offset);
            }
        }
        assert!(
            batcher.ready_at(idle).unwrap() > Instant::now(),
            "999 rows wait"
        );
        row(&mut batcher, 0, 333);
        assert_eq!(
            batcher.ready_at(idle),
            Some(Instant::now()),
            "1,000 rows are due"
        );
        assert_eq!(batcher.take(Instant::now(), idle, usize::MAX).len(), 3);
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
            if batcher
                .ready_at(idle)
                .is_some_and(|at| at <= Instant::now())
            {
                let taken = batcher.take(Instant::now(), idle, usize::MAX);
                batcher.release(taken.iter().map(|s| s.bytes).sum());
                sizes.push(rows(&taken));
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
    async fn inserts_per_second_stay_at_the_limit_with_partitions_in_flight() {
        let mut batcher = Batcher::new(policy());
        let mut offsets = [0_i64; 3];
        let mut inserts = 0;
        // Each insert takes 700 ms; partitions are busy meanwhile.
        let mut busy_until = [Instant::now(); 3];
        // 90,000 events/s over 3 partitions for 10 s.
        for step in 0..100_000_u32 {
            tokio::time::advance(Duration::from_micros(100)).await;
            let now = Instant::now();
            for i in 0..9 {
                let partition = ((step + i) % 3) as i32;
                row(&mut batcher, partition, offsets[partition as usize]);
                offsets[partition as usize] += 1;
            }
            let busy = |p: i32| busy_until[p as usize] > now;
            if batcher.ready_at(busy).is_some_and(|at| at <= now) {
                for segment in batcher.take(now, busy, usize::MAX) {
                    assert!(
                        busy_until[segment.partition as usize] <= now,
                        "one insert per partition"
                    );
                    busy_until[segment.partition as usize] = now + Duration::from_millis(700);
                    batcher.release(segment.bytes);
                    inserts += 1;
                }
            }
        }
        // 2 inserts a second (min_flush_gap 500 ms per insert), +3 for the first flush.
        assert!(inserts <= 23, "{inserts} inserts in 10 s");
        assert!(inserts >= 15, "{inserts} inserts in 10 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_partition_waits_while_the_others_are_taken() {
        let mut batcher = Batcher::new(Policy {
            min_flush_gap: Duration::ZERO,
            ..policy()
        });
        for offset in 0..1_000 {
            row(&mut batcher, 0, offset);
            row(&mut batcher, 1, offset);
        }
        let busy = |p: i32| p == 0;
        let taken = batcher.take(Instant::now(), busy, usize::MAX);
        assert_eq!(
            taken.iter().map(|s| s.partition).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(
            batcher.ready_at(busy),
            None,
            "only the busy partition is left"
        );
        row(&mut batcher, 0, 1_000);
        assert_eq!(batcher.rows(), 1_001, "its rows keep accumulating");
        batcher.release(taken[0].bytes);
        let taken = batcher.take(Instant::now(), idle, usize::MAX);
        assert_eq!(
            (taken[0].first_offset, taken[0].commit_offset()),
            (0, 1_001)
        );
    }

    /// Partitions 0 and 1 with 1,000 rows each, taken (their INSERTs run), then 1,000 more
    /// rows each (due at once: `max_rows`); the bytes of the two taken.
    fn two_inserts_running(batcher: &mut Batcher<Offsets, ()>) -> [usize; 2] {
        for offset in 0..1_000 {
            row(batcher, 0, offset);
            row(batcher, 1, offset);
        }
        let taken = batcher.take(Instant::now(), idle, usize::MAX);
        assert_eq!(taken.len(), 2);
        for offset in 1_000..2_000 {
            row(batcher, 0, offset);
            row(batcher, 1, offset);
        }
        [taken[0].bytes, taken[1].bytes]
    }

    fn partitions(segments: &[Segment<Offsets, ()>]) -> Vec<i32> {
        segments.iter().map(|s| s.partition).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_whose_insert_ended_waits_for_the_others_then_all_go_together() {
        let mut batcher = Batcher::new(Policy {
            min_flush_gap: Duration::ZERO,
            ..policy()
        });
        let oldest = Instant::now();
        let bytes = two_inserts_running(&mut batcher);
        batcher.release(bytes[0]);
        let busy = |p: i32| p == 1;
        assert_eq!(
            batcher.ready_at(busy),
            Some(oldest + Duration::from_secs(5)),
            "partition 0 waits for partition 1's insert (its flush interval at most)"
        );
        assert!(batcher.take(Instant::now(), busy, usize::MAX).is_empty());
        tokio::time::advance(Duration::from_millis(700)).await;
        batcher.release(bytes[1]);
        assert_eq!(batcher.ready_at(idle), Some(oldest), "due since max_rows");
        let taken = batcher.take(Instant::now(), idle, usize::MAX);
        assert_eq!(partitions(&taken), vec![0, 1], "one flush of both");
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_waits_for_running_inserts_no_longer_than_its_flush_interval() {
        let mut batcher = Batcher::new(Policy {
            min_flush_gap: Duration::ZERO,
            ..policy()
        });
        let bytes = two_inserts_running(&mut batcher);
        batcher.release(bytes[0]);
        let busy = |p: i32| p == 1;
        tokio::time::advance(Duration::from_secs(5)).await;
        let taken = batcher.take(Instant::now(), busy, usize::MAX);
        assert_eq!(
            partitions(&taken),
            vec![0],
            "partition 1's insert still runs"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_does_not_wait_for_running_inserts_while_memory_is_full() {
        let mut batcher = Batcher::new(Policy {
            min_flush_gap: Duration::ZERO,
            max_batch_bytes: 300_000,
            ..policy()
        });
        let bytes = two_inserts_running(&mut batcher);
        batcher.release(bytes[0]);
        assert!(
            batcher.should_pause(),
            "200,000 bytes buffered and 100,000 in flight"
        );
        let busy = |p: i32| p == 1;
        let taken = batcher.take(Instant::now(), busy, usize::MAX);
        assert_eq!(partitions(&taken), vec![0]);
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_at_max_batch_bytes_in_flight_included_and_flushes_then() {
        let mut batcher = Batcher::new(Policy {
            max_batch_bytes: 10_000,
            max_rows: 1_000_000,
            ..policy()
        });
        for offset in 0..99 {
            row(&mut batcher, 0, offset);
        }
        assert!(!batcher.should_pause());
        assert!(batcher.ready_at(idle).unwrap() > Instant::now());
        row(&mut batcher, 0, 99);
        assert!(batcher.should_pause());
        assert_eq!(
            batcher.ready_at(idle),
            Some(Instant::now()),
            "a full buffer flushes at once"
        );
        let taken = batcher.take(Instant::now(), idle, usize::MAX);
        assert!(batcher.should_pause(), "still full while the insert runs");
        batcher.release(taken[0].bytes);
        assert!(!batcher.should_pause());
    }

    #[tokio::test(start_paused = true)]
    async fn segments_cover_every_offset_including_dead_letters() {
        let mut batcher: Batcher<Offsets, &str> = Batcher::new(policy());
        let now = Instant::now();
        batcher.push_row(2, 7, 10, now, |r| r.0.push(10));
        batcher.push(2, 7, 11, Entry::DeadLetter("bad"), now);
        batcher.push(2, 7, 12, Entry::AlreadyStored, now);
        batcher.push_row(2, 7, 14, now, |r| r.0.push(14));
        batcher.push(0, 3, 5, Entry::DeadLetter("worse"), now);
        let segments = batcher.take_all(now);
        let p0 = &segments[0];
        assert_eq!(
            (p0.partition, p0.epoch, p0.first_offset, p0.commit_offset()),
            (0, 3, 5, 6)
        );
        assert_eq!(p0.rows.len(), 0);
        let p2 = &segments[1];
        assert_eq!(
            (p2.first_offset, p2.commit_offset(), p2.already_stored),
            (10, 15, 1)
        );
        assert_eq!(p2.rows, Offsets(vec![10, 14]));
        assert_eq!(p2.dead_letters, vec!["bad"]);
    }

    #[tokio::test(start_paused = true)]
    async fn segments_without_rows_are_not_held_back_by_the_rate_limit() {
        let mut batcher: Batcher<Offsets, ()> = Batcher::new(Policy {
            min_flush_gap: Duration::from_secs(10),
            ..policy()
        });
        let t0 = Instant::now();
        row(&mut batcher, 0, 0);
        batcher.push(1, 1, 0, Entry::AlreadyStored, t0);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(batcher.take(Instant::now(), idle, usize::MAX).len(), 2);
        // One insert made: the next one not before t0 + 15 s.
        row(&mut batcher, 0, 1);
        batcher.push(1, 1, 1, Entry::AlreadyStored, Instant::now());
        tokio::time::advance(Duration::from_secs(5)).await;
        let taken = batcher.take(Instant::now(), idle, usize::MAX);
        assert_eq!(
            taken.iter().map(|s| s.partition).collect::<Vec<_>>(),
            vec![1],
            "skipped offsets need no insert: committed when due"
        );
        assert_eq!(batcher.ready_at(idle), Some(t0 + Duration::from_secs(15)));
    }

    #[tokio::test(start_paused = true)]
    async fn partitions_written_together_wait_one_gap_per_insert() {
        for (per_insert, gaps) in [(1, 3), (2, 2), (64, 1)] {
            let mut batcher = Batcher::new(Policy {
                partitions_per_insert: per_insert,
                ..policy()
            });
            for partition in 0..3 {
                for offset in 0..400 {
                    row(&mut batcher, partition, offset);
                }
            }
            let t0 = Instant::now();
            let taken = batcher.take(t0, idle, usize::MAX);
            assert_eq!(taken.len(), 3);
            batcher.release(taken.iter().map(|s| s.bytes).sum());
            for partition in 0..3 {
                for offset in 400..800 {
                    row(&mut batcher, partition, offset);
                }
            }
            assert_eq!(
                batcher.ready_at(idle),
                Some(t0 + Duration::from_millis(500) * gaps),
                "{per_insert} partitions per insert: {gaps} inserts made"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_big_flush_is_split_into_inserts_the_saved_credit_pays_for() {
        let mut batcher = Batcher::new(Policy {
            max_rows: 100,
            partitions_per_insert: 64,
            burst: 4,
            split_bytes: 50_000,
            ..policy()
        });
        let fill = |batcher: &mut Batcher<Offsets, ()>, rows: i64, from: i64| {
            for partition in 0..3 {
                for offset in from..from + rows {
                    row(batcher, partition, offset);
                }
            }
        };
        let partitions = |groups: &[Vec<Segment<Offsets, ()>>]| -> Vec<Vec<i32>> {
            groups
                .iter()
                .map(|g| g.iter().map(|s| s.partition).collect())
                .collect()
        };
        // Small: one INSERT, whatever the credit.
        fill(&mut batcher, 100, 0);
        let t0 = Instant::now();
        // (Each insert ends at once: none is running when the next flush comes.)
        let release = |batcher: &mut Batcher<Offsets, ()>, groups: &[Vec<Segment<Offsets, ()>>]| {
            batcher.release(groups.iter().flatten().map(|s| s.bytes).sum());
        };
        let groups = batcher.take_inserts(t0, idle, usize::MAX);
        assert_eq!(partitions(&groups), vec![vec![0, 1, 2]]);
        release(&mut batcher, &groups);
        // Big after a long wait: one INSERT per partition (3 of the 4 saved), at once.
        tokio::time::advance(Duration::from_secs(10)).await;
        fill(&mut batcher, 400, 100);
        let groups = batcher.take_inserts(Instant::now(), idle, usize::MAX);
        assert_eq!(groups.len(), 3, "{:?}", partitions(&groups));
        release(&mut batcher, &groups);
        // Right after: the one saved INSERT is left (at most `burst` at once)...
        fill(&mut batcher, 400, 500);
        let groups = batcher.take_inserts(Instant::now(), idle, usize::MAX);
        assert_eq!(groups.len(), 1);
        release(&mut batcher, &groups);
        // ...and none until the gap has passed; no more than `max_inserts` either.
        fill(&mut batcher, 400, 900);
        assert!(
            batcher
                .take_inserts(Instant::now(), idle, usize::MAX)
                .is_empty()
        );
        tokio::time::advance(Duration::from_millis(1_000)).await;
        let groups = batcher.take_inserts(Instant::now(), idle, 1);
        assert_eq!(partitions(&groups), vec![vec![0, 1, 2]]);
        // Over a minute at full load: 2 INSERTs a second on average (+ the burst).
        let (start, mut inserts, mut offset) = (Instant::now(), 0, 1_300);
        while Instant::now() - start < Duration::from_secs(60) {
            tokio::time::advance(Duration::from_millis(100)).await;
            fill(&mut batcher, 300, offset);
            offset += 300;
            let groups = batcher.take_inserts(Instant::now(), idle, usize::MAX);
            batcher.release(groups.iter().flatten().map(|s| s.bytes).sum());
            inserts += groups.len();
        }
        assert!((118..=124).contains(&inserts), "{inserts} inserts in 60 s");
    }

    #[tokio::test(start_paused = true)]
    async fn segments_read_under_an_epoch_no_longer_owned_are_dropped() {
        let mut batcher = Batcher::new(policy());
        for (partition, epoch) in [(0, 1), (1, 2), (2, 3)] {
            for offset in 0..10 {
                batcher.push_row(
                    partition,
                    epoch,
                    offset,
                    Instant::now(),
                    |rows: &mut Offsets| rows.0.push(offset),
                );
            }
        }
        batcher.push(1, 2, 10, Entry::DeadLetter(()), Instant::now());
        let bytes = batcher.bytes();
        // Partition 1 revoked; partition 2 assigned again (epoch 4).
        let dropped =
            batcher.drop_stale(|partition, epoch| matches!((partition, epoch), (0, 1) | (2, 4)));
        assert_eq!(dropped, 20);
        assert_eq!(batcher.partitions().collect::<Vec<_>>(), vec![0]);
        assert_eq!(batcher.rows(), 10);
        assert_eq!(batcher.bytes(), bytes - 20 * 100 - ENTRY_BYTES);
        assert_eq!(batcher.drop_stale(|_, _| true), 0);
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
        assert_eq!(batcher.ready_at(idle), None);
    }
}
