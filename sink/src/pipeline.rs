//! The consume loop: consumer → intake → batch → write (a task per partition, several at
//! once, while reading goes on) → commit, with rebalances, back-pressure, the stall watch and
//! an orderly shutdown. Once a second it also sets the freshness gauges
//! ([`crate::freshness`]) and runs the deduplication-window guard ([`crate::dedup_guard`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use rdkafka::consumer::Consumer;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::SinkError;
use crate::batch::{Batcher, Policy};
use crate::consumer::{KafkaCommitter, SinkConsumer, SinkContext, consumer_config, set_paused};
use crate::dead_letter::{DeadLetterSink, KafkaDeadLetters};
use crate::dedup_guard::{self, DedupGuard};
use crate::flush::{Flusher, Writes};
use crate::freshness::locked as lock;
use crate::http::Health;
use crate::intake::Intake;
use crate::kafka_auth::{self, AuthWatch};
use crate::metrics::Metrics;
use crate::ownership::Ownership;
use crate::refetch::KafkaRefetch;
use crate::retry::{Backoff, Operation, RetryPolicy};
use crate::rows::Rows;
use crate::settings::Settings;
use crate::stall::Change;
use crate::writer::{ClickHouseWriter, Failure};

type Ack = <KafkaDeadLetters as DeadLetterSink>::Ack;

/// After `shutdown_timeout_ms`, how long writes get to reach a step where they can stop.
pub const RECORD_GRACE: Duration = Duration::from_secs(3);

/// How long a full buffer only stops the loop from taking messages before the partitions are
/// paused. An insert usually frees the room within this: librdkafka keeps what it fetched
/// meanwhile (its prefetch), where a pause throws it away and a resume fetches it again
/// (measured: 0.1-0.7 s without a message after each resume while draining at full speed).
/// A longer wait (ClickHouse slow or away) pauses, so the loop goes on polling: rebalances are
/// served and the group keeps the member. The check runs at least every second (the stall
/// tick), so a pause comes at most a second after this.
pub const HOLD_BEFORE_PAUSE: Duration = Duration::from_secs(1);

/// Runs the sink until `shutdown` is cancelled (then drains in order) or a fatal error.
pub async fn run(
    settings: Settings,
    shutdown: CancellationToken,
    health: Arc<Health>,
) -> Result<(), SinkError> {
    let metrics = health.metrics.clone();
    let writer = Arc::new(ClickHouseWriter::new(&settings)?);
    let hard_stop = CancellationToken::new();
    let backoff = Backoff {
        initial: Duration::from_millis(settings.retry_initial_ms),
        max: Duration::from_millis(settings.retry_max_ms),
    };
    let policy = |cancel: &CancellationToken| RetryPolicy {
        backoff,
        metrics: metrics.clone(),
        stall: health.stall.clone(),
        cancel: cancel.clone(),
    };
    // ClickHouse may still be starting: wait for it, but stop on a configuration problem.
    let startup = policy(&shutdown);
    let mut retry = startup.start(Operation::StartupCheck);
    loop {
        match writer.check_startup().await {
            Ok(()) => break,
            Err(Failure::Fatal(message)) => {
                return Err(SinkError::clickhouse("start-up check")(Failure::Fatal(
                    message,
                )));
            }
            Err(failure) => retry
                .wait(None, failure.kind(), failure.message())
                .await
                .map_err(|_| SinkError::Stopped)?,
        }
    }
    tracing::info!(
        clickhouse = %clickstream_connect::redact_url(&settings.clickhouse_url),
        table = %format!("{}.{}", settings.database, settings.table),
        delivery = ?settings.delivery,
        "ClickHouse checked"
    );
    let mut guard = dedup_guard_for(&settings).await;
    let dead_letters = KafkaDeadLetters::connect(&settings, policy(&hard_stop)).await?;

    let config = consumer_config(&settings);
    let session_timeout_ms: u64 = config
        .get("session.timeout.ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let ownership = Arc::new(Ownership::new(Duration::from_millis(session_timeout_ms)));
    let auth = Arc::new(AuthWatch::default());
    let context = SinkContext {
        auth: auth.clone(),
        ownership: ownership.clone(),
        metrics: metrics.clone(),
        topic: settings.topic.clone(),
        revoke_wait: Duration::from_millis(settings.insert_timeout_ms) + Duration::from_secs(5),
    };
    let consumer: Arc<SinkConsumer> = Arc::new(
        config
            .create_with_context(context)
            .map_err(SinkError::kafka("create the consumer"))?,
    );
    consumer
        .subscribe(&[&settings.topic])
        .map_err(SinkError::kafka("subscribe"))?;
    let committer = KafkaCommitter {
        consumer: consumer.clone(),
        topic: settings.topic.clone(),
    };
    let flusher = Arc::new(Flusher::new(
        &settings,
        writer.clone(),
        dead_letters.clone(),
        committer,
        KafkaRefetch::new(&settings)?,
        ownership.clone(),
        policy(&hard_stop),
    ));
    let mut intake = Intake::new(&settings, writer, dead_letters, policy(&shutdown));
    health.set_ready(true);
    tracing::info!(topic = %settings.topic, group = %settings.group, brokers = %settings.brokers, "consuming");

    let mut batcher: Batcher<Rows, Ack> = Batcher::new(Policy {
        max_rows: settings.max_rows,
        flush_interval: settings.flush_interval(),
        max_batch_bytes: settings.max_batch_bytes,
        min_flush_gap: settings.min_flush_gap(),
        partitions_per_insert: settings.partitions_per_insert,
        burst: settings.max_parallel_inserts,
        split_bytes: settings.max_batch_bytes / 8,
    });
    let stall_timeout = Duration::from_millis(settings.stall_timeout_ms);
    let mut stall_tick = tokio::time::interval(Duration::from_secs(1));
    stall_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let heartbeat = spawn_heartbeat(ownership.clone(), session_timeout_ms);
    let mut writes = SinkWrites::default();
    let mut paused = false;
    // Since when the buffer has been full (see [`HOLD_BEFORE_PAUSE`]).
    let mut full_since: Option<Instant> = None;
    let mut ownership_seen = ownership.changes();
    // The newest event time of each partition's segment being written (for freshness).
    let mut writing: HashMap<i32, Option<i64>> = HashMap::new();

    // One message stream for the sink's life (each `recv()` would register a waker anew), and
    // one timer, moved only when the next flush time changes.
    let mut messages = consumer.stream();
    let mut flush_timer = std::pin::pin!(tokio::time::sleep_until(Instant::now()));
    let mut armed: Option<Instant> = None;

    let outcome: Result<(), SinkError> = loop {
        let ready_at = (writes.running() < settings.max_parallel_inserts)
            .then(|| batcher.ready_at(|p| writes.busy(p)))
            .flatten();
        if ready_at != armed
            && let Some(at) = ready_at
        {
            flush_timer.as_mut().reset(at);
        }
        armed = ready_at;
        // Paused, the stream is polled as before (rebalances, the little fetched before the
        // pause).
        let taking = full_since.is_none() || paused;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            Some(joined) = writes.tasks.join_next(), if writes.running() > 0 => {
                match writes.finished(joined, &mut batcher) {
                    Ok(reports) => for report in reports {
                        let newest = writing.remove(&report.partition).flatten();
                        if report.inserted > 0 {
                            lock(&metrics).inserted(report.partition, newest, chrono::Utc::now().timestamp_millis());
                        }
                        guard.finished(report.partition, report.committed.is_some());
                    },
                    Err(error) => break Err(error),
                }
            }
            done = intake.next_lookup(), if intake.has_lookups() => {
                match intake.finish_lookup(done, &ownership, &mut batcher) {
                    Ok(Some(partition)) if !paused => set_paused(&consumer, &settings.topic, &[partition], false),
                    Ok(_) => {}
                    Err(error) => break Err(error),
                }
            }
            _ = &mut flush_timer, if ready_at.is_some() => {
                armed = None;
                let room = settings.max_parallel_inserts - writes.running();
                for segments in batcher.take_inserts(Instant::now(), |p| writes.busy(p), room) {
                    for segment in &segments {
                        writing.insert(segment.partition, segment.rows.newest_event_ms());
                        guard.started(segment.partition, metrics.inserts.get());
                    }
                    writes.start(&flusher, segments);
                }
            }
            _ = stall_tick.tick() => {
                let has_work = !batcher.is_empty() || writes.running() > 0 || intake.has_lookups();
                report_stall(health.stall.check(has_work, stall_timeout), &metrics, batcher.rows());
                lock(&metrics).report(chrono::Utc::now().timestamp_millis(), &metrics);
                guard.retain(&ownership.partitions());
                guard.check(metrics.inserts.get(), &metrics);
            }
            Some(message) = messages.next(), if taking => {
                // Then what else is already fetched, up to a burst, without a trip through
                // `select!` per message; each decoded and encoded as it is taken, in order.
                let mut burst = Vec::with_capacity(BURST);
                let mut failed = None;
                let mut next = Some(message);
                // Errors count too: a stream of them must not keep this loop from `select!`.
                let mut taken = 0;
                while let Some(message) = next.take() {
                    taken += 1;
                    match message {
                        Ok(message) => burst.push(message),
                        // librdkafka reconnects by itself; nothing is lost while the broker is away.
                        // A refused login or access is no outage: stop and say what to fix.
                        Err(error) => {
                            if let Some(fatal) = kafka_auth::fatal_consume_error(&error, auth.failure()) {
                                failed = Some(fatal);
                                break;
                            }
                            health.stall.failing(None, format!("Kafka: {error}"));
                            tracing::warn!(error = %error, "Kafka error");
                        }
                    }
                    if taken < BURST {
                        next = messages.next().now_or_never().flatten();
                    }
                }
                if let Some(error) = failed {
                    break Err(error);
                }
                match intake.handle_burst(&burst, &ownership, &mut batcher, Instant::now()) {
                    Ok(pause) => if !pause.is_empty() {
                        set_paused(&consumer, &settings.topic, &pause, true);
                    },
                    Err(error) => break Err(error),
                }
            }
        }
        // The owned partitions changed: rows buffered for a partition no longer owned under
        // their epoch are never written nor committed (its next owner replays them), so they
        // stop holding memory now rather than when they fall due.
        let ownership_now = ownership.changes();
        let rebalanced = ownership_now != ownership_seen;
        if rebalanced {
            ownership_seen = ownership_now;
            intake.forget_stale(&ownership);
            let dropped = batcher.drop_stale(|partition, epoch| ownership.owns(partition, epoch));
            if dropped > 0 {
                tracing::info!(
                    rows = dropped,
                    "rows buffered for partitions no longer owned dropped: their next owner reads them again"
                );
            }
        }
        metrics.buffered_rows.set(batcher.rows() as i64);
        metrics.buffered_bytes.set(batcher.bytes() as i64);
        metrics
            .in_flight_bytes
            .set(batcher.in_flight_bytes() as i64);
        metrics.inserts_in_flight.set(writes.running() as i64);
        let now = Instant::now();
        full_since = batcher.should_pause().then(|| full_since.unwrap_or(now));
        let full = full_since.is_some_and(|since| now - since >= HOLD_BEFORE_PAUSE);
        // The owned partitions changed (an assignment, even an empty one, a revoke, a loss):
        // librdkafka keeps a partition paused across a revoke and a new assignment, so one
        // paused for a lookup of its old assignment would never be read again (measured:
        // `rebalance-mid-lookup`). Old assignments' state is forgotten (their lookups
        // cancelled) and every assigned partition paused or resumed as the buffer says. (A
        // rebalance event ends a burst: a message of the new assignment comes in a later turn,
        // whose lookup pauses its partition after this resume; resuming one not paused does
        // nothing.)
        if rebalanced || full != paused {
            back_pressure(
                &consumer,
                &settings.topic,
                full,
                &intake.waiting(),
                &metrics,
            );
            tracing::debug!(
                paused = full,
                rebalanced,
                buffered_bytes = batcher.bytes(),
                in_flight_bytes = batcher.in_flight_bytes(),
                "back-pressure"
            );
            paused = full;
        }
    };

    // Drain in order: stop consuming, finish the inserts in flight, write the rest, commit.
    health.set_ready(false);
    let drain = async {
        let mut result = writes.wait_all(&mut batcher).await;
        if outcome.is_ok() && result.is_ok() {
            let segments = batcher.take_all(Instant::now());
            writes.start_flush(&flusher, segments, settings.partitions_per_insert);
            result = writes.wait_all(&mut batcher).await;
        }
        result
    };
    let deadline = Duration::from_millis(settings.shutdown_timeout_ms);
    let drained = match tokio::time::timeout(deadline, drain).await {
        Ok(result) => result,
        Err(_) => {
            hard_stop.cancel();
            tracing::warn!(
                shutdown_timeout_ms = settings.shutdown_timeout_ms,
                "could not flush before the shutdown timeout; uncommitted rows will be replayed"
            );
            // Writes stop at their next step; one that ClickHouse just refused records the
            // rollup keys of what it left (for the next owner) before it stops.
            match tokio::time::timeout(RECORD_GRACE, writes.wait_all(&mut batcher)).await {
                Ok(Ok(())) | Ok(Err(SinkError::Stopped)) => Ok(()),
                Ok(Err(error)) => Err(error),
                Err(_) => {
                    tracing::warn!(
                        grace_ms = RECORD_GRACE.as_millis() as u64,
                        "writes still running after the shutdown timeout and its grace: stopped where they were"
                    );
                    Ok(())
                }
            }
        }
    };
    hard_stop.cancel();
    drop(messages);
    consumer.unsubscribe();
    heartbeat.abort();
    close_within((intake, flusher, consumer), CLOSE_LIMIT);
    tracing::info!("stopped");
    outcome.and(drained)
}

/// The guard over the windows of the sink's table and its views' targets; without them (the
/// query failed) it only reports the reach.
async fn dedup_guard_for(settings: &Settings) -> DedupGuard {
    let read = async {
        let client = crate::clickhouse_client::client(settings).map_err(|e| e.to_string())?;
        dedup_guard::read_windows(&client, &settings.database, &settings.table)
            .await
            .map_err(|e| e.to_string())
    };
    match read.await {
        Ok(tables) => {
            tracing::info!(?tables, "deduplication windows");
            DedupGuard::new(&tables)
        }
        Err(error) => {
            tracing::warn!(error = %error, "could not read the deduplication windows; the guard only reports the reach");
            DedupGuard::new(&[])
        }
    }
}

type SinkWrites = Writes<ClickHouseWriter, KafkaDeadLetters, KafkaCommitter, KafkaRefetch>;

/// Beats the ownership's liveness clock four times a second for the sink's whole life (the
/// drain included), so that a freeze of the process shows as a gap (see [`Ownership::beat`]).
fn spawn_heartbeat(ownership: Arc<Ownership>, session_timeout_ms: u64) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if let Some(gap) = ownership.beat() {
                tracing::warn!(
                    frozen_ms = gap.as_millis() as u64,
                    session_timeout_ms,
                    "the sink was frozen longer than half the session timeout: its assignment may be lost; inserts wait one session timeout for the group to settle"
                );
            }
        }
    })
}

/// Messages handled per wake-up of the consume loop at most (the rest of the loop runs between).
const BURST: usize = 512;

/// How long closing the Kafka clients may take at exit.
pub const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// Drops the Kafka clients on a thread of their own and waits at most `limit`. librdkafka's
/// close can hang: a broker that went away, or a wall clock stepped back (its timed waits run
/// on the realtime clock: after a 1 h step back, a poll or a close waits an hour).
/// Everything is flushed and committed by now, so the process may exit without them.
fn close_within<T: Send + 'static>(clients: T, limit: Duration) {
    let (closed, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(clients);
        let _ = closed.send(());
    });
    if done.recv_timeout(limit).is_err() {
        tracing::warn!(
            limit_ms = limit.as_millis() as u64,
            "the Kafka clients did not close in time; exiting without waiting for them (everything is flushed and committed)"
        );
    }
}

/// Pauses every assigned partition, or resumes those not waiting for a lookup.
fn back_pressure(
    consumer: &SinkConsumer,
    topic: &str,
    full: bool,
    waiting: &HashSet<i32>,
    metrics: &Metrics,
) {
    let assigned: Vec<i32> = consumer
        .assignment()
        .map(|list| list.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default();
    let partitions: Vec<i32> = assigned
        .iter()
        .copied()
        .filter(|p| full || !waiting.contains(p))
        .collect();
    set_paused(consumer, topic, &partitions, full);
    metrics
        .paused_partitions
        .set(if full { assigned.len() as i64 } else { 0 });
}

fn report_stall(change: Option<Change>, metrics: &Metrics, buffered_rows: usize) {
    match change {
        Some(Change::Stalled { for_ms, cause }) => {
            metrics.stalled.set(1);
            tracing::error!(
                no_progress_ms = for_ms,
                buffered_rows,
                cause = %cause,
                "the sink is stalled: nothing was written for stall_timeout_ms while work waits. \
                 It keeps retrying and nothing is lost, but fix the cause: /ready answers 503 \
                 until it makes progress (see clickstream_sink_retries_total by operation)"
            );
        }
        Some(Change::Recovered { after_ms }) => {
            metrics.stalled.set(0);
            tracing::info!(after_ms, "the sink makes progress again");
        }
        None => {}
    }
}
