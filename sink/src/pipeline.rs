//! The consume loop: read → decode → batch → flush (in a task, while reading goes on) →
//! commit, with rebalances, back-pressure and an orderly shutdown.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clickstream_event::Limits;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::SinkError;
use crate::batch::{Batcher, Entry, Policy};
use crate::dead_letter::{DeadLetter, DeadLetterSink, KafkaDeadLetters};
use crate::flush::{Buffered, Committer, FlushReport, Flusher};
use crate::http::Health;
use crate::metrics::Metrics;
use crate::ownership::Ownership;
use crate::row::EventRow;
use crate::settings::{Delivery, Settings};
use crate::writer::{ClickHouseWriter, Failure, Writer};

/// How long a revoke waits for an in-flight insert of its partitions.
const REVOKE_WAIT: Duration = Duration::from_secs(60);

/// Rebalance and statistics callbacks.
pub struct SinkContext {
    ownership: Arc<Ownership>,
    metrics: Arc<Metrics>,
    topic: String,
}

fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(topic) = statistics.topics.get(&self.topic) {
            for (partition, stats) in &topic.partitions {
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .get_or_create(&Metrics::label("partition", partition))
                        .set(stats.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions = partitions_of(list);
            let finished = self.ownership.revoke(&partitions, REVOKE_WAIT);
            tracing::info!(
                ?partitions,
                in_flight_finished = finished,
                "partitions revoked"
            );
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = partitions_of(list);
                self.ownership.assign(&partitions);
                tracing::info!(?partitions, owned = ?self.ownership.partitions(), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => tracing::warn!(error = %error, "rebalance error"),
        }
    }
}

type SinkConsumer = StreamConsumer<SinkContext>;

/// Commits through the group consumer (synchronously, off the async workers).
pub struct KafkaCommitter {
    consumer: Arc<SinkConsumer>,
    topic: String,
}

impl Committer for KafkaCommitter {
    async fn commit(&self, offsets: &[(i32, i64)]) -> Result<(), String> {
        let mut list = TopicPartitionList::new();
        for &(partition, offset) in offsets {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                .map_err(|e| e.to_string())?;
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

type Ack = <KafkaDeadLetters as DeadLetterSink>::Ack;

/// Consumer properties the sink sets unless `kafka.<property>` overrides them.
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "1000"),
];

fn consumer_config(settings: &Settings) -> ClientConfig {
    let mut config = settings.kafka_client_config();
    // A crashed sink holds its partitions until its session times out; librdkafka's 45 s
    // default makes every crash (and, on tansu, the first join) a long stall. Overridable.
    for (key, value) in CONSUMER_DEFAULTS {
        if !settings.kafka.contains_key(*key) {
            config.set(*key, *value);
        }
    }
    config
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000");
    config
}

/// The one field a replayed message is checked by.
#[derive(serde::Deserialize)]
struct EventIdOnly {
    event_id: uuid::Uuid,
}

/// Per-partition state of the consume loop.
struct PartitionState {
    epoch: u64,
    /// Offsets ClickHouse already holds (found when the partition was assigned), with the
    /// event id stored at each.
    stored: BTreeMap<i64, uuid::Uuid>,
}

/// Runs the sink until `shutdown` is cancelled (then drains in order) or a fatal error.
pub async fn run(
    settings: Settings,
    shutdown: CancellationToken,
    health: Arc<Health>,
) -> Result<(), SinkError> {
    let metrics = health.metrics.clone();
    let writer = ClickHouseWriter::new(&settings);
    let hard_stop = CancellationToken::new();
    let backoff = crate::flush::Backoff {
        initial: Duration::from_millis(settings.retry_initial_ms),
        max: Duration::from_millis(settings.retry_max_ms),
    };
    // ClickHouse may still be starting: wait for it, but stop on a configuration problem.
    retry_transient("start-up check", backoff, &shutdown, &metrics, || {
        writer.check_startup()
    })
    .await?;
    tracing::info!(
        clickhouse = %settings.clickhouse_url,
        table = %format!("{}.{}", settings.database, settings.table),
        delivery = ?settings.delivery,
        "ClickHouse checked"
    );

    let ownership = Arc::new(Ownership::default());
    let context = SinkContext {
        ownership: ownership.clone(),
        metrics: metrics.clone(),
        topic: settings.topic.clone(),
    };
    let consumer: Arc<SinkConsumer> = Arc::new(
        consumer_config(&settings)
            .create_with_context(context)
            .map_err(|e| SinkError::Kafka(format!("consumer: {e}")))?,
    );
    consumer
        .subscribe(&[&settings.topic])
        .map_err(|e| SinkError::Kafka(format!("subscribe to {}: {e}", settings.topic)))?;
    let dead_letters = KafkaDeadLetters::new(&settings, hard_stop.clone())?;
    let committer = KafkaCommitter {
        consumer: consumer.clone(),
        topic: settings.topic.clone(),
    };
    let flusher = Arc::new(Flusher::new(
        &settings,
        writer.clone(),
        dead_letters.clone(),
        committer,
        ownership.clone(),
        metrics.clone(),
        hard_stop.clone(),
    ));
    health.set_ready(true);
    tracing::info!(topic = %settings.topic, group = %settings.group, brokers = %settings.brokers, "consuming");

    let mut batcher: Batcher<Buffered, Ack> = Batcher::new(Policy {
        max_rows: settings.max_rows,
        flush_interval: settings.flush_interval(),
        max_batch_bytes: settings.max_batch_bytes,
        min_flush_gap: settings.min_flush_gap(),
    });
    let limits = settings.limits();
    let mut partitions: HashMap<i32, PartitionState> = HashMap::new();
    let mut in_flight: Option<JoinHandle<Result<FlushReport, SinkError>>> = None;
    let mut paused = false;

    let outcome: Result<(), SinkError> = loop {
        let ready_at = if in_flight.is_none() {
            batcher.ready_at()
        } else {
            None
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            joined = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                in_flight = None;
                if let Err(error) = flush_result(joined) {
                    break Err(error);
                }
            }
            _ = tokio::time::sleep_until(ready_at.unwrap_or_else(Instant::now)), if ready_at.is_some() => {
                if let Some(batch) = batcher.take(Instant::now()) {
                    let flusher = flusher.clone();
                    in_flight = Some(tokio::spawn(async move { flusher.write_batch(batch).await }));
                }
            }
            message = consumer.recv() => match message {
                Ok(message) => {
                    let step = on_message(
                        &message, &settings, &limits, &writer, &dead_letters, &ownership,
                        &metrics, &mut partitions, &mut batcher, backoff, &shutdown,
                    ).await;
                    if let Err(error) = step {
                        break Err(error);
                    }
                }
                // librdkafka reconnects by itself; nothing is lost while the broker is away.
                Err(error) => tracing::warn!(error = %error, "Kafka error"),
            }
        }
        metrics.buffered_rows.set(batcher.rows() as i64);
        let full = batcher.should_pause();
        if full != paused {
            let assigned = consumer.assignment().unwrap_or_default();
            let result = if full {
                consumer.pause(&assigned)
            } else {
                consumer.resume(&assigned)
            };
            if let Err(error) = result {
                tracing::warn!(error = %error, "pause/resume failed");
            }
            metrics
                .paused_partitions
                .set(if full { assigned.count() as i64 } else { 0 });
            tracing::debug!(
                paused = full,
                buffered_bytes = batcher.bytes(),
                "back-pressure"
            );
            paused = full;
        }
    };

    // Drain in order: stop consuming, finish the insert in flight, flush the rest, commit.
    health.set_ready(false);
    let drain = async {
        if let Some(handle) = in_flight.take() {
            flush_result(handle.await)?;
        }
        if outcome.is_ok()
            && let Some(batch) = batcher.take(Instant::now())
        {
            flusher.write_batch(batch).await?;
        }
        Ok::<(), SinkError>(())
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
            Ok(())
        }
    };
    hard_stop.cancel();
    consumer.unsubscribe();
    drop(flusher);
    tracing::info!("stopped");
    outcome.and(drained)
}

fn flush_result(
    joined: Result<Result<FlushReport, SinkError>, tokio::task::JoinError>,
) -> Result<(), SinkError> {
    match joined {
        Ok(Ok(_)) | Ok(Err(SinkError::Stopped)) => Ok(()),
        Ok(Err(error)) => Err(error),
        Err(join) => Err(SinkError::Internal(format!("flush task failed: {join}"))),
    }
}

/// Decodes one message into the batch.
#[allow(clippy::too_many_arguments)]
async fn on_message(
    message: &BorrowedMessage<'_>,
    settings: &Settings,
    limits: &Limits,
    writer: &ClickHouseWriter,
    dead_letters: &KafkaDeadLetters,
    ownership: &Ownership,
    metrics: &Metrics,
    partitions: &mut HashMap<i32, PartitionState>,
    batcher: &mut Batcher<Buffered, Ack>,
    backoff: crate::flush::Backoff,
    shutdown: &CancellationToken,
) -> Result<(), SinkError> {
    metrics.consumed.inc();
    let partition = message.partition();
    let offset = message.offset();
    let Some(epoch) = ownership.epoch(partition) else {
        return Ok(()); // revoked meanwhile: its next owner reads it
    };
    if partitions.get(&partition).map(|s| s.epoch) != Some(epoch) {
        // (Re)assigned: anything buffered under the old epoch will be replayed.
        let dropped = batcher.drop_partition(partition);
        let stored = match settings.delivery {
            Delivery::ExactlyOnce => {
                retry_transient("stored offsets lookup", backoff, shutdown, metrics, || {
                    writer.stored_offsets(&settings.topic, partition, offset)
                })
                .await?
            }
            Delivery::AtLeastOnce => BTreeMap::new(),
        };
        tracing::info!(
            partition,
            epoch,
            from_offset = offset,
            already_stored = stored.len(),
            dropped_buffered = dropped,
            "reading partition"
        );
        partitions.insert(partition, PartitionState { epoch, stored });
    }
    let state = partitions.get_mut(&partition).expect("inserted above");
    let now = Instant::now();
    let payload = message.payload();
    let size = payload.map_or(0, <[u8]>::len) + 64;
    if let Some(stored_id) = state.stored.remove(&offset) {
        // Skip it only if it is the event ClickHouse holds at this offset. Anything else means
        // the offsets were reused (the topic was deleted and recreated, or the table holds
        // another cluster's topic of that name): skipping would lose data, writing would mix
        // two topics' offsets. Stop, commit nothing, say what to do.
        let kafka_id = payload
            .and_then(|p| serde_json::from_slice::<EventIdOnly>(p).ok())
            .map(|e| e.event_id);
        if kafka_id != Some(stored_id) {
            return Err(SinkError::Inconsistent(format!(
                "{topic}[{partition}] offset {offset}: ClickHouse ({database}.{table}) holds event \
                 {stored_id} at this offset, but the message there is {found}. The topic was \
                 probably deleted and recreated, so its offsets start again. Nothing was skipped \
                 or committed. Remove the old rows (ALTER TABLE {database}.{table} DELETE WHERE \
                 kafka_topic = '{topic}', and the same on {database}.kafka_progress) or use a new \
                 database or topic name.",
                topic = settings.topic,
                database = settings.database,
                table = settings.table,
                found = kafka_id
                    .map_or_else(|| "not that event".to_owned(), |id| format!("event {id}")),
            )));
        }
        metrics.replay_skipped.inc();
        batcher.push(partition, epoch, offset, Entry::AlreadyStored, 16, now);
        return Ok(());
    }
    // Validate against the message's own timestamp, so a replay decides the same way.
    let at = message
        .timestamp()
        .to_millis()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(Utc::now);
    let headers = original_headers(message);
    match clickstream_event::decode(payload, limits, at) {
        Ok(event) => {
            let row = EventRow::new(event, &settings.topic, partition, offset);
            let bytes = size + row.encoded_len();
            let buffered = Buffered {
                row,
                key: message.key().map(<[u8]>::to_vec),
                payload: payload.map(<[u8]>::to_vec).unwrap_or_default(),
                headers,
            };
            batcher.push(partition, epoch, offset, Entry::Row(buffered), bytes, now);
        }
        Err(rejection) => {
            metrics
                .dead_lettered
                .get_or_create(&Metrics::label("reason", rejection.reason.as_str()))
                .inc();
            tracing::debug!(partition, offset, reason = %rejection.reason, "dead-lettering");
            let ack = dead_letters.send(DeadLetter {
                key: message.key().map(<[u8]>::to_vec),
                payload: payload.map(<[u8]>::to_vec),
                headers,
                reason: rejection.reason.as_str().to_owned(),
                error: rejection.detail,
                source_topic: settings.topic.clone(),
                source_partition: partition,
                source_offset: offset,
            });
            batcher.push(partition, epoch, offset, Entry::DeadLetter(ack), size, now);
        }
    }
    Ok(())
}

fn original_headers(message: &BorrowedMessage<'_>) -> Vec<(String, Vec<u8>)> {
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

/// Retries `operation` while it fails transiently; fatal failures stop the sink.
async fn retry_transient<T, F, Fut>(
    what: &str,
    backoff: crate::flush::Backoff,
    shutdown: &CancellationToken,
    metrics: &Metrics,
    mut operation: F,
) -> Result<T, SinkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut attempt = 0;
    loop {
        match operation().await {
            Ok(value) => return Ok(value),
            Err(Failure::Transient(message)) => {
                metrics
                    .retries
                    .get_or_create(&vec![
                        ("operation".to_owned(), what.replace(' ', "_")),
                        ("error".to_owned(), "transient".to_owned()),
                    ])
                    .inc();
                let delay = backoff.delay(attempt);
                tracing::warn!(attempt, retry_in_ms = delay.as_millis() as u64, error = %message, "{what} failed; retrying");
                attempt += 1;
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(SinkError::Stopped),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(failure) => return Err(SinkError::ClickHouse(format!("{what}: {failure}"))),
        }
    }
}
