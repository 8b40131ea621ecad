//! The stall watch: nothing may stall the sink silently.
//!
//! Progress (an insert, a confirmed dead letter, a commit) resets the clock; a failed attempt
//! records why. The pipeline asks [`Stall::check`] once a second with whether it has work
//! (rows buffered, a flush or lookup running): after `stall_timeout_ms` without progress
//! while there is work, the sink is *stalled* — `/ready` answers 503, the gauge
//! `clickstream_sink_stalled` is 1 and an ERROR names the partition and the cause — until
//! progress resumes.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Stall {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    last_progress: Instant,
    cause: Option<String>,
    stalled: bool,
}

impl Default for Stall {
    fn default() -> Stall {
        Stall {
            state: Mutex::new(State {
                last_progress: Instant::now(),
                cause: None,
                stalled: false,
            }),
        }
    }
}

/// A change of the stall state, for the caller to log and export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// No progress for `for_ms` while there was work; why, as far as known.
    Stalled {
        for_ms: u64,
        cause: String,
    },
    Recovered {
        after_ms: u64,
    },
}

impl Stall {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Something was written, dead-lettered or committed.
    pub fn progress(&self) {
        let mut state = self.lock();
        state.last_progress = Instant::now();
        state.cause = None;
    }

    /// An attempt failed: the cause a stall will report.
    pub fn failing(&self, partition: Option<i32>, cause: String) {
        self.lock().cause = Some(match partition {
            Some(partition) => format!("partition {partition}: {cause}"),
            None => cause,
        });
    }

    pub fn cause(&self) -> Option<String> {
        self.lock().cause.clone()
    }

    pub fn is_stalled(&self) -> bool {
        self.lock().stalled
    }

    /// Called periodically; `has_work` says whether anything waits to be written.
    pub fn check(&self, has_work: bool, timeout: Duration) -> Option<Change> {
        let now = Instant::now();
        let mut state = self.lock();
        if !has_work {
            // Idle is not stalled: the clock starts when work appears.
            state.last_progress = now;
        }
        let quiet = now.duration_since(state.last_progress);
        match (state.stalled, quiet >= timeout) {
            (false, true) => {
                state.stalled = true;
                Some(Change::Stalled {
                    for_ms: quiet.as_millis() as u64,
                    cause: state
                        .cause
                        .clone()
                        .unwrap_or_else(|| "no failure reported: waiting on a slow step".into()),
                })
            }
            (true, false) => {
                state.stalled = false;
                Some(Change::Recovered {
                    after_ms: quiet.as_millis() as u64,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn work_without_progress_for_the_timeout_is_a_stall_with_its_cause() {
        let stall = Stall::default();
        stall.failing(Some(1), "insert failed: Code: 243".into());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(stall.check(true, TIMEOUT), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        match stall.check(true, TIMEOUT) {
            Some(Change::Stalled { cause, for_ms }) => {
                assert_eq!(for_ms, 30_000);
                assert_eq!(cause, "partition 1: insert failed: Code: 243");
            }
            other => panic!("{other:?}"),
        }
        assert!(stall.is_stalled());
        assert_eq!(stall.check(true, TIMEOUT), None, "reported once");
        stall.progress();
        assert!(matches!(
            stall.check(true, TIMEOUT),
            Some(Change::Recovered { .. })
        ));
        assert!(!stall.is_stalled());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_sink_never_stalls() {
        let stall = Stall::default();
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(60)).await;
            assert_eq!(stall.check(false, TIMEOUT), None);
        }
        // Work appears: the clock starts now, not at the last insert an hour ago.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(stall.check(true, TIMEOUT), None);
    }
}
