//! The one retry policy: capped exponential backoff with jitter, used by every loop that
//! retries (start-up check, stored-offset lookups, inserts, dead letters, commits). Each
//! retry is counted under a stable `operation` label and reported to the stall watch, so a
//! retry that never succeeds shows up as a stall (`/ready` 503, an ERROR log) instead of a
//! quiet loop.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::stall::Stall;

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
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

/// What is being retried: the `operation` label of `clickstream_sink_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    StartupCheck,
    StoredOffsetsLookup,
    Insert,
    DeadLetter,
    Commit,
    /// Reading messages back from Kafka (a rejected row's original, rows to encode again).
    ReadBack,
}

impl Operation {
    pub fn label(self) -> &'static str {
        match self {
            Operation::StartupCheck => "startup_check",
            Operation::StoredOffsetsLookup => "stored_offsets_lookup",
            Operation::Insert => "insert",
            Operation::DeadLetter => "dead_letter",
            Operation::Commit => "commit",
            Operation::ReadBack => "read_back",
        }
    }
}

/// The retry was abandoned because the sink is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

/// Shared by everything that retries.
#[derive(Clone)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    pub metrics: Arc<Metrics>,
    pub stall: Arc<Stall>,
    /// Ends every wait (shutdown, or the shutdown deadline for flushes).
    pub cancel: CancellationToken,
}

impl RetryPolicy {
    /// For tests: 1 ms between attempts, fresh metrics and stall watch.
    #[cfg(test)]
    pub fn immediate() -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(1),
            },
            metrics: Arc::new(Metrics::new()),
            stall: Arc::new(Stall::default()),
            cancel: CancellationToken::new(),
        }
    }

    /// One retry loop of `operation` (attempts count from 0).
    pub fn start(&self, operation: Operation) -> Retry<'_> {
        Retry {
            policy: self,
            operation,
            attempt: 0,
        }
    }
}

pub struct Retry<'a> {
    policy: &'a RetryPolicy,
    operation: Operation,
    attempt: u32,
}

impl Retry<'_> {
    /// Counts and logs a failed attempt, tells the stall watch why no progress is made, and
    /// waits the backoff delay.
    pub async fn wait(
        &mut self,
        partition: Option<i32>,
        kind: &str,
        error: &str,
    ) -> Result<(), Cancelled> {
        let policy = self.policy;
        policy
            .metrics
            .retries
            .get_or_create(&vec![
                ("operation".to_owned(), self.operation.label().to_owned()),
                ("error".to_owned(), kind.to_owned()),
            ])
            .inc();
        policy.stall.failing(
            partition,
            format!("{} failed: {error}", self.operation.label()),
        );
        let delay = policy.backoff.delay(self.attempt);
        tracing::warn!(
            operation = self.operation.label(),
            partition,
            attempt = self.attempt,
            retry_in_ms = delay.as_millis() as u64,
            error = %error,
            "retrying"
        );
        self.attempt += 1;
        tokio::select! {
            _ = policy.cancel.cancelled() => Err(Cancelled),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for (attempt, base) in [(0, 100), (1, 200), (3, 800), (5, 2_000), (30, 2_000)] {
            let delay = backoff.delay(attempt).as_millis() as u64;
            assert!(
                (base * 3 / 4..=base * 5 / 4).contains(&delay),
                "attempt {attempt}: {delay} ms"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_retry_is_counted_and_reported_to_the_stall_watch() {
        let policy = RetryPolicy::immediate();
        let mut retry = policy.start(Operation::Insert);
        retry.wait(Some(2), "transient", "boom").await.unwrap();
        retry.wait(Some(2), "transient", "boom").await.unwrap();
        assert_eq!(retry.attempts(), 2);
        assert!(policy.metrics.render().contains(
            "clickstream_sink_retries_total{operation=\"insert\",error=\"transient\"} 2"
        ));
        assert!(policy.stall.cause().unwrap().contains("partition 2"));
        policy.cancel.cancel();
        assert_eq!(retry.wait(None, "transient", "boom").await, Err(Cancelled));
    }
}
