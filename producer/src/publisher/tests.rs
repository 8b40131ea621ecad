//! The loop against an in-memory outlet, on tokio's paused clock.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use chrono::TimeZone;
use tokio::time::sleep;

use super::*;
use crate::simulator::{Generated, SimulatorConfig};

/// Records every accepted message with the (paused) time it was sent.
#[derive(Default)]
struct Recorder {
    sent: RefCell<Vec<(Instant, String, Vec<u8>)>>,
    /// Every n-th accepted message fails delivery.
    fail_every: Option<u64>,
    /// Refuses messages larger than this at once.
    refuse_above_bytes: Option<usize>,
    /// Queue full from this instant until that one.
    full_between: Option<(Instant, Instant)>,
    /// Queue full for the next n attempts.
    full_attempts: Cell<u32>,
    attempts: Cell<u64>,
    /// Deliveries never complete.
    stuck: bool,
    flushes: Cell<u32>,
}

impl Outlet for Recorder {
    fn try_send(&self, key: &str, payload: &[u8]) -> Result<(), SendError> {
        self.attempts.set(self.attempts.get() + 1);
        let now = Instant::now();
        if self.full_attempts.get() > 0 {
            self.full_attempts.set(self.full_attempts.get() - 1);
            return Err(SendError::QueueFull);
        }
        if self
            .full_between
            .is_some_and(|(from, until)| from <= now && now < until)
        {
            return Err(SendError::QueueFull);
        }
        if self
            .refuse_above_bytes
            .is_some_and(|max| payload.len() > max)
        {
            return Err(SendError::Rejected("message too large".into()));
        }
        self.sent
            .borrow_mut()
            .push((now, key.to_owned(), payload.to_vec()));
        Ok(())
    }

    fn deliveries(&self) -> Deliveries {
        if self.stuck {
            return Deliveries::default();
        }
        let sent = self.sent.borrow();
        let mut deliveries = Deliveries::default();
        for (n, (_, key, _)) in sent.iter().enumerate() {
            if self
                .fail_every
                .is_some_and(|every| (n as u64 + 1).is_multiple_of(every))
            {
                deliveries.failed += 1;
            } else {
                deliveries.delivered += 1;
                let partition = (key.bytes().map(u64::from).sum::<u64>() % 3) as i32;
                *deliveries.per_partition.entry(partition).or_default() += 1;
            }
        }
        deliveries
    }

    fn flush(&self, _timeout: Duration) -> u64 {
        self.flushes.set(self.flushes.get() + 1);
        if self.stuck {
            self.sent.borrow().len() as u64
        } else {
            0
        }
    }
}

fn plan(rate: Rate) -> Plan {
    Plan {
        rate,
        count: None,
        duration: None,
        progress_interval: Duration::from_secs(5),
        flush_timeout: Duration::from_millis(10),
    }
}

fn simulator() -> Simulator {
    Simulator::new(SimulatorConfig {
        seed: 42,
        ..Default::default()
    })
}

/// A fixed clock advancing 10 ms per event, like the sink's tests use.
fn fixed_clock() -> impl FnMut() -> DateTime<Utc> {
    let mut now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
    move || {
        now += chrono::Duration::milliseconds(10);
        now
    }
}

async fn never() {
    std::future::pending::<()>().await;
}

#[tokio::test(start_paused = true)]
async fn each_event_is_sent_at_its_deadline() {
    let outlet = Recorder::default();
    let start = Instant::now();
    let plan = Plan {
        duration: Some(Duration::from_secs(10)),
        ..plan(Rate::PerSecond(100.0))
    };
    let summary = publish(&outlet, simulator(), &plan, fixed_clock(), never()).await;

    let sent = outlet.sent.borrow();
    assert_eq!(sent.len(), 1_000, "10 s at 100/s");
    for (n, (at, _, _)) in sent.iter().enumerate() {
        assert_eq!(
            at.duration_since(start),
            Duration::from_millis(10 * n as u64),
            "event {n}"
        );
    }
    assert_eq!(
        (summary.sent, summary.delivered, summary.failed),
        (1_000, 1_000, 0)
    );
    assert!(summary.is_complete());
    assert!((summary.rate_per_s - 100.0).abs() < 0.01, "{summary:?}");
    assert_eq!(summary.per_partition.values().sum::<u64>(), 1_000);
    assert_eq!(summary.seed, 42);
}

#[tokio::test(start_paused = true)]
async fn high_rates_are_smooth_millisecond_by_millisecond() {
    let outlet = Recorder::default();
    let start = Instant::now();
    let plan = Plan {
        duration: Some(Duration::from_secs(3)),
        ..plan(Rate::PerSecond(10_000.0))
    };
    let summary = publish(&outlet, simulator(), &plan, fixed_clock(), never()).await;
    // Tokio timers tick in milliseconds: each tick sends what became due since the last one,
    // never early; so events 29991..29999 (due within the last millisecond) are not sent.
    assert_eq!(summary.sent, 29_991);
    let mut per_ms: HashMap<u128, u32> = HashMap::new();
    for (at, _, _) in outlet.sent.borrow().iter() {
        *per_ms
            .entry(at.duration_since(start).as_millis())
            .or_default() += 1;
    }
    assert_eq!(per_ms.len(), 3_000, "every millisecond has sends");
    assert_eq!(per_ms[&0], 1, "event 0 at the start");
    assert!(
        per_ms.iter().all(|(&ms, &n)| ms == 0 || n == 10),
        "10 per ms, no bursts"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fractional_rate_is_kept_over_a_long_run() {
    let outlet = Recorder::default();
    let plan = Plan {
        duration: Some(Duration::from_secs(600)),
        ..plan(Rate::PerSecond(2.5))
    };
    let summary = publish(&outlet, simulator(), &plan, fixed_clock(), never()).await;
    assert_eq!(summary.sent, 1_500);
}

#[tokio::test(start_paused = true)]
async fn count_stops_after_exactly_that_many_messages_in_order() {
    let outlet = Recorder::default();
    let plan = Plan {
        count: Some(5_000),
        ..plan(Rate::Max)
    };
    let summary = publish(&outlet, simulator(), &plan, fixed_clock(), never()).await;
    assert_eq!(summary.sent, 5_000);
    assert!(summary.is_complete(), "{summary:?}");

    // What was sent is the simulator's stream, in order, nothing skipped or repeated.
    let mut expected = simulator();
    let mut clock = fixed_clock();
    for (n, (_, key, payload)) in outlet.sent.borrow().iter().enumerate() {
        let message = expected.next(clock());
        assert_eq!(
            (key.as_str(), payload),
            (message.key(), &message.payload()),
            "message {n}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_sending_and_flushes() {
    let outlet = Recorder::default();
    let summary = publish(
        &outlet,
        simulator(),
        &plan(Rate::PerSecond(100.0)),
        fixed_clock(),
        sleep(Duration::from_millis(2_505)),
    )
    .await;
    assert_eq!(summary.sent, 251, "events at 0, 10, ..., 2500 ms");
    assert!(outlet.flushes.get() >= 1, "flushed after stopping");
    assert!(summary.is_complete());
}

#[tokio::test(start_paused = true)]
async fn shutdown_interrupts_max_rate() {
    let outlet = Recorder::default();
    let summary = publish(
        &outlet,
        simulator(),
        &plan(Rate::Max),
        fixed_clock(),
        std::future::ready(()),
    )
    .await;
    assert!(
        summary.sent <= MAX_RATE_CHUNK,
        "at most one chunk before the shutdown is seen: {}",
        summary.sent
    );
}

#[tokio::test(start_paused = true)]
async fn delivery_failures_are_counted() {
    let outlet = Recorder {
        fail_every: Some(100),
        ..Default::default()
    };
    let plan = Plan {
        count: Some(1_000),
        ..plan(Rate::Max)
    };
    let summary = publish(&outlet, simulator(), &plan, fixed_clock(), never()).await;
    assert_eq!(
        (summary.sent, summary.delivered, summary.failed),
        (1_000, 990, 10)
    );
    assert!(!summary.is_complete());
}

#[tokio::test(start_paused = true)]
async fn refused_messages_count_as_failed() {
    let outlet = Recorder {
        refuse_above_bytes: Some(64 * 1024),
        ..Default::default()
    };
    let simulator = Simulator::new(SimulatorConfig {
        seed: 1,
        bad_ratio: 0.5,
        ..Default::default()
    });
    let plan = Plan {
        count: Some(2_000),
        ..plan(Rate::Max)
    };
    let summary = publish(&outlet, simulator, &plan, fixed_clock(), never()).await;
    let accepted = outlet.sent.borrow().len() as u64;
    assert!(accepted < 2_000, "the oversized poison was refused");
    assert_eq!(summary.sent, 2_000);
    assert_eq!(summary.failed, 2_000 - accepted);
    assert_eq!(summary.delivered + summary.failed, summary.sent);
    assert!(summary.poison > 800, "{summary:?}");
}

#[tokio::test(start_paused = true)]
async fn messages_still_in_flight_after_the_flush_timeout_are_undelivered() {
    let outlet = Recorder {
        stuck: true,
        ..Default::default()
    };
    let plan = Plan {
        count: Some(50),
        ..plan(Rate::Max)
    };
    let summary = publish(&outlet, simulator(), &plan, fixed_clock(), never()).await;
    assert_eq!((summary.sent, summary.undelivered), (50, 50));
    assert!(!summary.is_complete());
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_retries_the_same_message() {
    let outlet = Recorder {
        full_attempts: Cell::new(5),
        ..Default::default()
    };
    let plan = Plan {
        count: Some(100),
        ..plan(Rate::Max)
    };
    let summary = publish(&outlet, simulator(), &plan, fixed_clock(), never()).await;
    assert_eq!(outlet.attempts.get(), 105);
    assert_eq!(outlet.sent.borrow().len(), 100);
    let mut expected = simulator();
    let mut clock = fixed_clock();
    let first: Generated = expected.next(clock());
    assert_eq!(outlet.sent.borrow()[0].2, first.payload());
    assert!(summary.is_complete());
}

#[tokio::test(start_paused = true)]
async fn after_a_stall_pacing_restarts_instead_of_bursting() {
    let start = Instant::now();
    let outlet = Recorder {
        full_between: Some((
            start + Duration::from_secs(1),
            start + Duration::from_secs(4),
        )),
        ..Default::default()
    };
    let plan = Plan {
        duration: Some(Duration::from_secs(8)),
        ..plan(Rate::PerSecond(100.0))
    };
    let summary = publish(&outlet, simulator(), &plan, fixed_clock(), never()).await;
    assert!(summary.stalls >= 1, "{summary:?}");
    let mut per_100ms: HashMap<u128, u32> = HashMap::new();
    for (at, _, _) in outlet.sent.borrow().iter() {
        *per_100ms
            .entry(at.duration_since(start).as_millis() / 100)
            .or_default() += 1;
    }
    let max = per_100ms.values().max().copied().unwrap_or(0);
    // At most the lag bound (1 s = 100 events) is caught up at once, on top of the 10 due in
    // those 100 ms; never the whole 3 s backlog.
    assert!(max <= 111, "largest 100 ms burst: {max}");
    assert!(
        (400..=600).contains(&summary.sent),
        "about 5 s of sending: {}",
        summary.sent
    );
}
