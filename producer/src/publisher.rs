//! The publishing loop: simulator → pacer → outlet, until count, duration or shutdown; then
//! flush and account for every message.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::time::{Instant, sleep_until};
use tracing::{info, warn};

use crate::outlet::{Deliveries, Outlet, SendError};
use crate::pacer::{Pacer, Rate};
use crate::simulator::Simulator;

/// When to stop, how fast to go, how often to report.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub rate: Rate,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub progress_interval: Duration,
    pub flush_timeout: Duration,
}

/// How far the loop may fall behind its pacer before it gives up catching up (and restarts the
/// pacing from now, instead of sending the backlog in a burst).
pub const MAX_LAG: Duration = Duration::from_secs(1);

/// At `--rate max`, messages sent between two checks for shutdown.
const MAX_RATE_CHUNK: u64 = 1_024;

/// How long to wait before retrying when the producer queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(1);

/// The outcome of a run. `sent = delivered + failed + undelivered`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Messages handed to the producer (including ones it refused at once).
    pub sent: u64,
    /// Acknowledged by the broker.
    pub delivered: u64,
    /// Refused by the producer or failed after its retries.
    pub failed: u64,
    /// Still in flight when the flush timeout expired.
    pub undelivered: u64,
    /// Of `sent`, poison messages and late events.
    pub poison: u64,
    pub late: u64,
    /// From the first send to the end of sending (flush not included).
    pub elapsed_s: f64,
    /// `sent / elapsed_s`.
    pub rate_per_s: f64,
    /// Waiting for the last deliveries after sending stopped.
    pub flush_s: f64,
    /// Times the loop fell more than [`MAX_LAG`] behind and restarted pacing.
    pub stalls: u64,
    /// Delivered messages per partition.
    pub per_partition: BTreeMap<i32, u64>,
    pub seed: u64,
}

impl Summary {
    /// Every message was acknowledged.
    pub fn is_complete(&self) -> bool {
        self.delivered == self.sent
    }
}

/// Publishes messages from `simulator` to `outlet` according to `plan`; `clock` stamps the
/// events. Stops at `plan.count`, after `plan.duration`, or when `shutdown` completes; then
/// flushes for up to `plan.flush_timeout`.
pub async fn publish<O: Outlet>(
    outlet: &O,
    mut simulator: Simulator,
    plan: &Plan,
    mut clock: impl FnMut() -> DateTime<Utc>,
    shutdown: impl Future<Output = ()>,
) -> Summary {
    tokio::pin!(shutdown);
    let start = Instant::now();
    let end = plan.duration.map(|duration| start + duration);
    let limit = plan.count.unwrap_or(u64::MAX);
    let mut pacer = match plan.rate {
        Rate::Max => None,
        Rate::PerSecond(rate) => Some(Pacer::new(start, rate)),
    };
    let mut sent = 0_u64;
    let mut refused = 0_u64;
    let mut stalls = 0_u64;
    let mut pending: Option<(String, Vec<u8>)> = None;
    let mut progress = Progress::new(start, plan.progress_interval);

    let stopped_at = loop {
        let now = Instant::now();
        if end.is_some_and(|end| now >= end) {
            break now;
        }
        if let Some(pacer) = pacer.as_mut()
            && now.saturating_duration_since(pacer.deadline(sent)) > MAX_LAG
        {
            stalls += 1;
            warn!(
                behind_s = now.duration_since(pacer.deadline(sent)).as_secs_f64(),
                "fell behind the rate; pacing restarts from now"
            );
            pacer.restart_at(now, sent);
        }
        let due = match &pacer {
            Some(pacer) => pacer.due(now),
            None => sent + MAX_RATE_CHUNK,
        }
        .min(limit);

        let mut queue_full = false;
        while sent < due {
            let (key, payload) = match pending.take() {
                Some(message) => message,
                None => simulator.next(clock()).into_key_and_payload(),
            };
            match outlet.try_send(&key, &payload) {
                Ok(()) => sent += 1,
                Err(SendError::QueueFull) => {
                    pending = Some((key, payload));
                    queue_full = true;
                    break;
                }
                Err(SendError::Rejected(error)) => {
                    sent += 1;
                    refused += 1;
                    if refused <= 10 || refused.is_multiple_of(10_000) {
                        warn!(error, refused, "producer refused a message");
                    }
                }
            }
        }

        if sent >= limit {
            break Instant::now();
        }
        if now >= progress.next {
            progress.log(now, sent, refused, &outlet.deliveries());
        }

        let wake = if queue_full {
            now + QUEUE_FULL_BACKOFF
        } else {
            match &pacer {
                Some(pacer) => pacer.deadline(sent),
                None => now, // max rate: only yield to the scheduler and check for shutdown
            }
        };
        let wake = [Some(wake), end, Some(progress.next)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(wake);
        if wake <= now {
            tokio::select! {
                biased;
                () = &mut shutdown => break Instant::now(),
                () = tokio::task::yield_now() => {}
            }
        } else {
            tokio::select! {
                biased;
                () = &mut shutdown => break Instant::now(),
                () = sleep_until(wake) => {}
            }
        }
    };

    let elapsed = stopped_at.duration_since(start);
    info!(
        sent,
        elapsed_s = elapsed.as_secs_f64(),
        "sending stopped; waiting for deliveries"
    );
    let flush_started = std::time::Instant::now();
    let flush_deadline = flush_started + plan.flush_timeout;
    loop {
        let left = flush_deadline.saturating_duration_since(std::time::Instant::now());
        let in_flight = outlet.flush(left.min(Duration::from_millis(200)));
        if in_flight == 0 || left.is_zero() {
            break;
        }
    }

    let deliveries = outlet.deliveries();
    let failed = deliveries.failed + refused;
    let stats = simulator.stats();
    let summary = Summary {
        sent,
        delivered: deliveries.delivered,
        failed,
        undelivered: sent.saturating_sub(deliveries.delivered + failed),
        poison: stats.poison,
        late: stats.late,
        elapsed_s: elapsed.as_secs_f64(),
        rate_per_s: if elapsed.is_zero() {
            0.0
        } else {
            sent as f64 / elapsed.as_secs_f64()
        },
        flush_s: flush_started.elapsed().as_secs_f64(),
        stalls,
        per_partition: deliveries.per_partition,
        seed: simulator.config().seed,
    };
    info!(
        sent = summary.sent,
        delivered = summary.delivered,
        failed = summary.failed,
        undelivered = summary.undelivered,
        rate_per_s = format_args!("{:.1}", summary.rate_per_s),
        partitions = %partitions(&summary.per_partition),
        "done"
    );
    summary
}

/// The progress line every `interval`: totals, the rate over the last interval, errors, and
/// deliveries per partition.
struct Progress {
    interval: Duration,
    next: Instant,
    last: Instant,
    last_sent: u64,
}

impl Progress {
    fn new(start: Instant, interval: Duration) -> Progress {
        Progress {
            interval,
            next: start + interval,
            last: start,
            last_sent: 0,
        }
    }

    fn log(&mut self, now: Instant, sent: u64, refused: u64, deliveries: &Deliveries) {
        let seconds = now.duration_since(self.last).as_secs_f64();
        let rate = if seconds > 0.0 {
            (sent - self.last_sent) as f64 / seconds
        } else {
            0.0
        };
        info!(
            sent,
            rate_per_s = format_args!("{rate:.1}"),
            delivered = deliveries.delivered,
            errors = deliveries.failed + refused,
            in_flight = sent.saturating_sub(deliveries.delivered + deliveries.failed + refused),
            partitions = %partitions(&deliveries.per_partition),
            "progress"
        );
        self.last = now;
        self.last_sent = sent;
        self.next = now + self.interval;
    }
}

fn partitions(per_partition: &BTreeMap<i32, u64>) -> String {
    per_partition
        .iter()
        .map(|(partition, count)| format!("{partition}:{count}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
