//! Kafka I/O: topic creation and an idempotent, lz4-compressed, batching producer whose
//! delivery callback counts every outcome.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clickstream_settings::PolledProducer;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use tracing::{info, warn};

use crate::Error;
use crate::metrics::Metrics;
use crate::outlet::{Deliveries, Outlet, SendError};
use crate::settings::Settings;

/// Producer properties for throughput without loss; `-X` properties override them.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    // Exactly one copy per message in each partition, in order, despite retries.
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("compression.type", "lz4"),
    // Wait up to 10 ms to fill batches of up to 10,000 messages / 1 MB.
    ("linger.ms", "10"),
    ("batch.num.messages", "10000"),
    ("batch.size", "1000000"),
    ("queue.buffering.max.messages", "500000"),
    // One produce request in flight per broker connection. With more (idempotence allows 5),
    // librdkafka 2.12's broker thread polls its socket with a zero timeout while requests wait
    // for a slow broker: against the busy tansu of a soak, 0.31 of a core at 200 events/s and
    // 1.06 at 50,000/s, against 0.04 and 0.36 with one (about the same on a quiet stack, as fast
    // at `--rate max`; see the README's "Delivery").
    ("max.in.flight.requests.per.connection", "1"),
];

/// The client settings shared by the admin client and the producer.
fn client_config(settings: &Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", "clickstream-producer");
    config
}

/// The producer's config: [`PRODUCER_DEFAULTS`], then the `-X` properties.
fn producer_config(settings: &Settings) -> ClientConfig {
    let mut config = client_config(settings);
    for (key, value) in PRODUCER_DEFAULTS {
        // A `-X` under another name of the same property (`request.required.acks` for `acks`)
        // replaces the default too: with both set, librdkafka would get them in the config
        // map's (random) order.
        let overridden = settings.kafka_properties.iter().any(|(user, _)| {
            clickstream_settings::owned_kafka_property(user, &[(*key, *value)]).is_some()
        });
        if !overridden {
            config.set(*key, *value);
        }
    }
    with_overrides(config, settings)
}

fn with_overrides(mut config: ClientConfig, settings: &Settings) -> ClientConfig {
    for (key, value) in &settings.kafka_properties {
        config.set(key, value);
    }
    config
}

/// Creates `settings.topic` with `settings.partitions` partitions unless it exists.
/// Returns whether it was created.
pub async fn ensure_topic(settings: &Settings) -> Result<bool, Error> {
    let admin: AdminClient<DefaultClientContext> =
        with_overrides(client_config(settings), settings)
            .create()
            .map_err(Error::CreateClient)?;
    let topic = NewTopic::new(
        &settings.topic,
        settings.partitions,
        TopicReplication::Fixed(settings.replication_factor),
    );
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .map_err(|source| Error::CreateTopic {
            topic: settings.topic.clone(),
            source,
        })?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(false),
        Some(Err((_, code))) => Err(Error::CreateTopic {
            topic: settings.topic.clone(),
            source: KafkaError::AdminOp(code),
        }),
        None => Err(Error::CreateTopic {
            topic: settings.topic.clone(),
            source: KafkaError::AdminOpCreation("no result for the topic".to_owned()),
        }),
    }
}

/// Counts delivery reports (called on the producer's polling thread), for the summary and for
/// the Prometheus counters.
#[derive(Default)]
pub struct DeliveryCounter {
    delivered: AtomicU64,
    failed: AtomicU64,
    per_partition: Mutex<BTreeMap<i32, u64>>,
    metrics: Arc<Metrics>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                self.metrics.delivered_to(message.partition());
                let mut per_partition = self
                    .per_partition
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                *per_partition.entry(message.partition()).or_default() += 1;
            }
            Err((error, message)) => {
                let failed = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
                self.metrics.failed.inc();
                // Every failure is counted; the first ten and then every 10,000th are logged.
                if failed <= 10 || failed.is_multiple_of(10_000) {
                    warn!(
                        error = %error,
                        partition = message.partition(),
                        failed,
                        "delivery failed"
                    );
                }
            }
        }
    }
}

/// The real [`Outlet`]: a producer whose own thread polls for delivery reports.
pub struct KafkaOutlet {
    producer: PolledProducer<DeliveryCounter>,
    topic: String,
}

impl KafkaOutlet {
    /// Creates the producer and waits (up to 30 s) until the topic's partitions are known, so a
    /// wrong broker address or topic fails here, before the first event. Every outcome is also
    /// counted in `metrics`.
    pub async fn connect(
        settings: &Settings,
        metrics: Arc<Metrics>,
    ) -> Result<(KafkaOutlet, usize), Error> {
        let producer: BaseProducer<DeliveryCounter> = producer_config(settings)
            .create_with_context(DeliveryCounter {
                metrics,
                ..DeliveryCounter::default()
            })
            .map_err(Error::CreateClient)?;
        let producer = PolledProducer::start(producer, "producer poll").map_err(|error| {
            Error::CreateClient(KafkaError::ClientCreation(format!(
                "start the delivery-report thread: {error}"
            )))
        })?;
        let topic = settings.topic.clone();
        let partitions = {
            let producer = producer.shared();
            let topic = topic.clone();
            tokio::task::spawn_blocking(move || partition_count(&producer, &topic))
                .await
                .map_err(|error| Error::Metadata {
                    topic: settings.topic.clone(),
                    detail: error.to_string(),
                })??
        };
        Ok((KafkaOutlet { producer, topic }, partitions))
    }
}

fn partition_count(producer: &BaseProducer<DeliveryCounter>, topic: &str) -> Result<usize, Error> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let detail = match producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
        {
            Ok(metadata) => match metadata.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    return Ok(t.partitions().len());
                }
                Some(t) => format!("topic error {:?}", t.error()),
                None => "topic missing from metadata".to_owned(),
            },
            Err(error) => error.to_string(),
        };
        if std::time::Instant::now() >= deadline {
            return Err(Error::Metadata {
                topic: topic.to_owned(),
                detail,
            });
        }
        info!(topic, detail, "waiting for topic metadata");
        std::thread::sleep(Duration::from_millis(500));
    }
}

impl Outlet for KafkaOutlet {
    fn try_send(&self, key: &str, payload: &[u8]) -> Result<(), SendError> {
        let record = BaseRecord::to(&self.topic).key(key).payload(payload);
        let metrics = &self.producer.context().metrics;
        let result =
            self.producer
                .send(record)
                .map_err(|(error, _)| match error.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::QueueFull) => SendError::QueueFull,
                    _ => SendError::Rejected(error.to_string()),
                });
        // Counted like the summary: a refused message is sent and failed; a full queue is not
        // a send (the same message is tried again).
        if !matches!(result, Err(SendError::QueueFull)) {
            metrics.sent.inc();
        }
        if matches!(result, Err(SendError::Rejected(_))) {
            metrics.failed.inc();
        }
        result
    }

    fn deliveries(&self) -> Deliveries {
        let counter = self.producer.context();
        Deliveries {
            delivered: counter.delivered.load(Ordering::Relaxed),
            failed: counter.failed.load(Ordering::Relaxed),
            per_partition: counter
                .per_partition
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        }
    }

    fn flush(&self, timeout: Duration) -> u64 {
        // A timeout is not an error here: the caller sees the count still in flight.
        let _ = self.producer.flush(timeout);
        u64::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_property_given_under_another_name_replaces_the_default() {
        let settings = Settings {
            kafka_properties: vec![
                ("request.required.acks".into(), "1".into()),
                ("queue.buffering.max.ms".into(), "50".into()),
            ],
            ..Settings::new("127.0.0.1:9092")
        };
        let config = producer_config(&settings);
        assert_eq!(config.get("acks"), None);
        assert_eq!(config.get("request.required.acks"), Some("1"));
        assert_eq!(config.get("linger.ms"), None);
        assert_eq!(config.get("queue.buffering.max.ms"), Some("50"));
        assert_eq!(
            config.get("compression.type"),
            Some("lz4"),
            "the other defaults stay"
        );
        let defaults = producer_config(&Settings::new("127.0.0.1:9092"));
        assert_eq!(defaults.get("acks"), Some("all"));
        assert_eq!(defaults.get("linger.ms"), Some("10"));
        assert_eq!(
            defaults.get("max.in.flight.requests.per.connection"),
            Some("1")
        );
        let more = Settings {
            kafka_properties: vec![("max.in.flight".into(), "5".into())],
            ..Settings::new("127.0.0.1:9092")
        };
        let config = producer_config(&more);
        assert_eq!(config.get("max.in.flight.requests.per.connection"), None);
        assert_eq!(config.get("max.in.flight"), Some("5"));
    }
}
