//! Which partitions this sink owns, shared by the rebalance callbacks, the consume loop and the
//! flush task.
//!
//! - Every assignment of a partition gets a new *epoch*. Entries read under an older epoch are
//!   never written or committed: after a re-assignment the partition is replayed from its
//!   committed offset.
//! - A revoke waits (bounded) until no flush is writing the revoked partitions, so their rows
//!   are written and committed by this sink, or not at all; the next owner then starts from
//!   the committed offset and never races an insert of ours.
//! - A process that was frozen (a GC or VM pause, SIGSTOP) longer than half the session
//!   timeout may have lost its assignment without knowing yet: the group may already have
//!   given its partitions to another member, and librdkafka reports the loss only after its
//!   next heartbeat. So after such a gap no insert starts until one session timeout has
//!   passed: by then a lost assignment has been revoked here.

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Ownership {
    state: Mutex<State>,
    changed: Condvar,
    /// The heartbeat's last sign of life, and until when inserts wait after a freeze.
    alive: Mutex<(Instant, Option<Instant>)>,
    session_timeout: Duration,
}

impl Default for Ownership {
    fn default() -> Ownership {
        Ownership::new(Duration::from_secs(10))
    }
}

#[derive(Debug, Default)]
struct State {
    epochs: HashMap<i32, u64>,
    next_epoch: u64,
    /// Counts every change of `epochs` (assignments, revokes, losses).
    changes: u64,
    in_flight: HashSet<i32>,
}

impl Ownership {
    /// For a consumer with this `session.timeout.ms`.
    pub fn new(session_timeout: Duration) -> Ownership {
        Ownership {
            state: Mutex::default(),
            changed: Condvar::new(),
            alive: Mutex::new((Instant::now(), None)),
            session_timeout,
        }
    }

    /// The process is running (a heartbeat task calls this a few times a second). Returns how
    /// long it was away if that was longer than half the session timeout (a freeze): inserts
    /// then wait one session timeout.
    pub fn beat(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut alive = self.alive.lock().unwrap_or_else(|p| p.into_inner());
        let gap = now.duration_since(alive.0);
        alive.0 = now;
        (gap > self.session_timeout / 2).then(|| {
            alive.1 = Some(now + self.session_timeout);
            gap
        })
    }

    /// Whether an insert may start now (not frozen, not waiting after a freeze).
    pub fn may_write(&self) -> bool {
        let now = Instant::now();
        let alive = self.alive.lock().unwrap_or_else(|p| p.into_inner());
        now.duration_since(alive.0) <= self.session_timeout / 2
            && alive.1.is_none_or(|until| now >= until)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Partitions newly assigned to this sink.
    pub fn assign(&self, partitions: &[i32]) {
        let mut state = self.lock();
        state.changes += 1;
        for &partition in partitions {
            state.next_epoch += 1;
            let epoch = state.next_epoch;
            state.epochs.insert(partition, epoch);
        }
    }

    /// Partitions taken away. Waits up to `wait` for flushes writing them to finish; returns
    /// false if one was still running then (its commit will be skipped).
    pub fn revoke(&self, partitions: &[i32], wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut state = self.lock();
        let mut finished = true;
        while partitions.iter().any(|p| state.in_flight.contains(p)) {
            let now = Instant::now();
            if now >= deadline {
                finished = false;
                break;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        for partition in partitions {
            state.epochs.remove(partition);
        }
        state.changes += 1;
        finished
    }

    /// `partition`, owned under `epoch`, lost without a revoke (the group coordinator refused
    /// a commit of that assignment): nothing more is inserted or committed for it until it is
    /// assigned again. A later assignment (the refusal answered after the partition came back)
    /// is kept: no rebalance would follow to give it back.
    pub fn lose(&self, partition: i32, epoch: u64) {
        let mut state = self.lock();
        if state.epochs.get(&partition) == Some(&epoch) {
            state.epochs.remove(&partition);
            state.changes += 1;
        }
    }

    /// Changes whenever the owned partitions may have changed: an assignment (even of no
    /// partition: an eager rebalance can leave this sink none), a revoke or a loss.
    pub fn changes(&self) -> u64 {
        self.lock().changes
    }

    /// The current epoch of `partition`, if this sink owns it.
    pub fn epoch(&self, partition: i32) -> Option<u64> {
        self.lock().epochs.get(&partition).copied()
    }

    /// Whether `partition` is still owned under `epoch`.
    pub fn owns(&self, partition: i32, epoch: u64) -> bool {
        self.epoch(partition) == Some(epoch)
    }

    /// All owned partitions.
    pub fn partitions(&self) -> Vec<i32> {
        let mut partitions: Vec<i32> = self.lock().epochs.keys().copied().collect();
        partitions.sort_unstable();
        partitions
    }

    /// Marks the owned ones of `segments` (partition, epoch) as being written; returns them.
    /// The flush must call [`Ownership::end_flush`] with the result.
    pub fn begin_flush(&self, segments: &[(i32, u64)]) -> Vec<i32> {
        let mut state = self.lock();
        let owned: Vec<i32> = segments
            .iter()
            .filter(|(p, e)| state.epochs.get(p) == Some(e))
            .map(|(p, _)| *p)
            .collect();
        state.in_flight.extend(owned.iter().copied());
        owned
    }

    pub fn end_flush(&self, partitions: &[i32]) {
        let mut state = self.lock();
        for partition in partitions {
            state.in_flight.remove(partition);
        }
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_assignment_is_a_new_epoch() {
        let ownership = Ownership::default();
        ownership.assign(&[0, 1]);
        let first = ownership.epoch(0).unwrap();
        assert!(ownership.owns(0, first));
        ownership.revoke(&[0], Duration::ZERO);
        assert_eq!(ownership.epoch(0), None);
        ownership.assign(&[0]);
        assert!(
            !ownership.owns(0, first),
            "a re-assignment invalidates what was read before"
        );
        assert_eq!(ownership.partitions(), vec![0, 1]);
    }

    #[test]
    fn flushes_only_cover_owned_partitions() {
        let ownership = Ownership::default();
        ownership.assign(&[0, 1]);
        let e0 = ownership.epoch(0).unwrap();
        let e1 = ownership.epoch(1).unwrap();
        ownership.revoke(&[1], Duration::ZERO);
        assert_eq!(ownership.begin_flush(&[(0, e0), (1, e1), (2, 9)]), vec![0]);
        ownership.end_flush(&[0]);
    }

    #[test]
    fn revoke_waits_for_the_flush_of_its_partitions() {
        let ownership = Arc::new(Ownership::default());
        ownership.assign(&[0]);
        let epoch = ownership.epoch(0).unwrap();
        assert_eq!(ownership.begin_flush(&[(0, epoch)]), vec![0]);
        let flusher = {
            let ownership = ownership.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                assert!(
                    ownership.owns(0, epoch),
                    "still owned while the revoke waits"
                );
                ownership.end_flush(&[0]);
            })
        };
        assert!(ownership.revoke(&[0], Duration::from_secs(10)));
        assert_eq!(ownership.epoch(0), None);
        flusher.join().unwrap();
    }

    #[test]
    fn a_lost_partition_is_neither_written_nor_committed_until_reassigned() {
        let ownership = Ownership::default();
        ownership.assign(&[0, 1]);
        let epoch = ownership.epoch(1).unwrap();
        ownership.lose(1, epoch);
        assert!(!ownership.owns(1, epoch));
        assert_eq!(ownership.begin_flush(&[(1, epoch)]), Vec::<i32>::new());
        ownership.assign(&[1]);
        let again = ownership.epoch(1).unwrap();
        assert_ne!(again, epoch);
        // A refusal of the old assignment's commit, answered late, keeps the new one.
        ownership.lose(1, epoch);
        assert!(ownership.owns(1, again));
    }

    #[test]
    fn every_change_of_the_owned_partitions_is_counted() {
        let ownership = Ownership::default();
        let mut seen = ownership.changes();
        let mut changed = |what: &str| {
            let now = ownership.changes();
            assert_ne!(now, seen, "{what}");
            seen = now;
        };
        ownership.assign(&[0, 1]);
        changed("assignment");
        ownership.revoke(&[0, 1], Duration::ZERO);
        changed("a revoke of everything, with no new assignment to follow");
        ownership.assign(&[]);
        changed("an empty assignment (more sinks than partitions)");
        ownership.assign(&[1]);
        let epoch = ownership.epoch(1).unwrap();
        changed("assignment");
        ownership.lose(1, epoch + 1);
        assert_eq!(
            ownership.changes(),
            seen,
            "losing another epoch changes nothing"
        );
        ownership.lose(1, epoch);
        assert_ne!(ownership.changes(), seen, "a loss");
    }

    #[test]
    fn after_a_freeze_inserts_wait_one_session_timeout() {
        // Seconds, not milliseconds: a beat later than half the timeout is a new freeze, so
        // the beats' sleeps need room for a loaded machine's scheduling (400 ms here).
        let ownership = Ownership::new(Duration::from_secs(2));
        assert_eq!(ownership.beat(), None);
        assert!(ownership.may_write());
        std::thread::sleep(Duration::from_millis(1_500));
        assert!(
            !ownership.may_write(),
            "the loop has not beaten for half the timeout"
        );
        assert!(ownership.beat().is_some(), "a freeze");
        assert!(!ownership.may_write(), "holding after the freeze");
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(600));
            ownership.beat();
        }
        assert!(ownership.may_write(), "one session timeout later");
    }

    #[test]
    fn revoke_gives_up_after_its_bound() {
        let ownership = Ownership::default();
        ownership.assign(&[3]);
        let epoch = ownership.epoch(3).unwrap();
        ownership.begin_flush(&[(3, epoch)]);
        assert!(!ownership.revoke(&[3], Duration::from_millis(20)));
        assert!(!ownership.owns(3, epoch), "the late flush must not commit");
    }
}
