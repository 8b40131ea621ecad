//! clickstream-windows: publishes each closed window of the rollups as one JSON message on a
//! Kafka topic (`clickstream-metrics`), for consumers that do not read ClickHouse.
//!
//! ```text
//!  start:  topic ──read back──▶ Tracker (newest revision of every window the topic holds)
//!  every poll_interval_ms:
//!    events.inserted_at ≥ last scan − 60 s ──▶ windows late rows touched ──┐
//!    windows closed since the last check ──────────────────────────────────┤
//!                                                                          ▼
//!    events_1m merged into windows ──▶ Tracker::decide ──▶ publish, await ack ──▶ record
//! ```
//!
//! Guarantees:
//! - A window is published once it is closed: its end plus `allowed_lateness_ms` has passed.
//! - Exactly once per window and revision, across restarts and crashes: what was published is
//!   read back from the topic itself at start (no local state), a window is published only if
//!   the topic has no message for it or its numbers differ from the newest one (then as the
//!   next revision: a correction, same key), and a message counts as published only once Kafka
//!   acknowledged it (idempotent producer, acks=all). A failed publish stops the program: the
//!   restart reads the topic back instead of guessing whether the message got there.
//! - Late rows are found by their insert time (`events.inserted_at`, server clock), scanned
//!   with a 60 s overlap (an insert's rows become visible when it ends, up to the sink's 30 s
//!   insert timeout after `inserted_at`): a re-check that finds the same numbers publishes
//!   nothing, so the overlap costs a query, never a message.
//! - Only windows the topic still holds (its retention) are corrected.
//! - One instance per topic: two would each publish the same windows.
//!
//! Layout: [`settings`] · [`window`] (pure: window arithmetic, message, tracker) · [`source`]
//! (ClickHouse) · [`topic`] (Kafka) · [`metrics`] (`/metrics`, `/health`).

pub mod metrics;
pub mod settings;
pub mod source;
pub mod topic;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::source::Source;
use crate::topic::Publisher;
use crate::window::{Tracker, Windows, rfc3339};

/// Overlap of two late-row scans: an insert's rows become visible when it ends, which can be
/// up to the sink's insert timeout (30 s) after their `inserted_at`.
pub const SCAN_OVERLAP_MS: i64 = 60_000;

/// How long reading the topic back at start may take.
pub const READ_BACK_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything that can fail, named after the operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("settings: {0}")]
    Settings(String),
    #[error("Kafka client: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {source}")]
    CreateTopic {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("reading the topic back: {0}")]
    ReadBack(String),
    #[error(
        "publishing window {key}: {source} (stopping: at the restart the topic is read back, \
         so the message is sent again only if it did not get there)"
    )]
    Publish {
        key: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("encoding a window message: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("ClickHouse query: {0}")]
    Query(#[source] clickhouse::error::Error),
}

/// Runs until `shutdown` is cancelled (or a publish fails).
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::default());
    if settings.http_addr != "off" {
        let bound = metrics::serve(&settings.http_addr, metrics.clone(), shutdown.clone()).await?;
        tracing::info!(addr = %bound, "serving /metrics and /health");
    }
    let minutes = settings.window_minutes().unwrap_or(5);
    let windows = Windows {
        size: chrono::Duration::minutes(minutes),
        lateness: chrono::Duration::milliseconds(settings.allowed_lateness_ms as i64),
    };
    let retention = chrono::Duration::milliseconds(settings.topic_retention_ms as i64);
    let source = Source::new(source::client(&settings)?, minutes, settings.top_n);

    if topic::ensure_topic(&settings).await? {
        tracing::info!(topic = %settings.topic, retention_ms = settings.topic_retention_ms, "created the topic");
    }
    let read_settings = settings.clone();
    let read_back =
        tokio::task::spawn_blocking(move || topic::read_back(&read_settings, READ_BACK_TIMEOUT))
            .await
            .map_err(|e| Error::ReadBack(e.to_string()))??;
    metrics.read_back.inc_by(read_back.len() as u64);
    // Windows of another length on the topic would be taken for this length's (same start):
    // corrections of one size mixed into the other's.
    if let Some(other) = read_back
        .iter()
        .find(|m| m.window_end - m.window_start != chrono::Duration::minutes(minutes))
    {
        return Err(Error::Settings(format!(
            "invalid value for `window`: {} windows, but topic {} holds windows of {} minutes \
             (from {}): use a topic of its own for each window length",
            settings.window,
            settings.topic,
            (other.window_end - other.window_start).num_minutes(),
            rfc3339(other.window_start)
        )));
    }
    let mut tracker = Tracker::new(
        windows,
        read_back,
        settings.since_time(),
        Utc::now(),
        retention,
    );
    if let Some(since) = settings.since_time()
        && windows.start_of(since) < tracker.first()
    {
        tracing::warn!(
            since = %settings.since,
            first = %rfc3339(tracker.first()),
            topic_retention_ms = settings.topic_retention_ms,
            "since is older than the topic keeps: publishing from the oldest window it keeps \
             (raise topic_retention_ms for a new topic to publish older ones)"
        );
    }
    tracing::info!(
        topic = %settings.topic,
        windows_on_topic = tracker.published().len(),
        newest = tracker.published().keys().next_back().map(|t| rfc3339(*t)).unwrap_or_default(),
        window = %settings.window,
        "read the topic back; publishing closed windows"
    );
    let publisher = Publisher::new(&settings)?;
    let interval = Duration::from_millis(settings.poll_interval_ms);
    // Late rows inserted before this are covered by the first check, which looks at every
    // window from the start on.
    let mut scanned_from = loop {
        match source.server_now_ms().await {
            Ok(now) => break now - SCAN_OVERLAP_MS,
            Err(error) => {
                tracing::warn!(error = %error, "ClickHouse not reachable yet; retrying");
                metrics.check_failures.inc();
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        }
    };
    loop {
        match check(&mut tracker, &source, &publisher, scanned_from, &metrics).await {
            Ok(next) => {
                scanned_from = next;
                tracker.prune(Utc::now(), retention);
                metrics.checks.inc();
            }
            Err(error @ Error::Query(_)) => {
                tracing::warn!(error = %error, "check failed; retrying at the next interval");
                metrics.check_failures.inc();
            }
            Err(error) => {
                publisher.flush();
                return Err(error);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    publisher.flush();
    tracing::info!("stopped");
    Ok(())
}

/// One check: find the windows late rows touched, compute every closed window due, publish
/// what changed. Returns where the next late-row scan starts.
async fn check(
    tracker: &mut Tracker,
    source: &Source,
    publisher: &Publisher,
    scanned_from: i64,
    metrics: &Metrics,
) -> Result<i64, Error> {
    let server_now = source.server_now_ms().await?;
    let touched = source.touched_since(scanned_from).await?;
    tracker.touched(touched);
    let due = tracker.due(Utc::now());
    for chunk in due.chunks(500) {
        for current in source.compute(chunk).await? {
            let message = tracker.decide(&current);
            if let Some(message) = &message {
                publisher.send(message).await?;
                let kind = if message.revision == 1 {
                    "first"
                } else {
                    "correction"
                };
                metrics.published(kind).inc();
                metrics.last_window_start.set(
                    metrics
                        .last_window_start
                        .get()
                        .max(message.window_start.timestamp()),
                );
                tracing::info!(
                    window_start = %message.key(),
                    revision = message.revision,
                    total_events = message.total_events,
                    kind,
                    "published"
                );
            }
            tracker.record(message, current.window_start);
        }
    }
    Ok(server_now - SCAN_OVERLAP_MS)
}
