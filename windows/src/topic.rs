//! Kafka: the window topic's creation (with its retention), reading it back at start (where
//! publishing stopped), and publishing with an idempotent producer that waits for each
//! acknowledgement.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::Error;
use crate::settings::Settings;
use crate::window::WindowMessage;

/// Creates the topic (one partition: one writer, messages in window order) with
/// `retention.ms` = `topic_retention_ms`, unless it exists. Returns whether it was created.
pub async fn ensure_topic(settings: &Settings) -> Result<bool, Error> {
    let admin: AdminClient<KafkaLog> = settings
        .kafka_client_config()
        .create_with_context(KafkaLog)
        .map_err(Error::Kafka)?;
    let retention = settings.topic_retention_ms.to_string();
    let topic = NewTopic::new(&settings.topic, 1, TopicReplication::Fixed(-1))
        .set("retention.ms", &retention);
    let results = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .map_err(Error::Kafka)?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => Ok(false),
        Some(Err((topic, code))) => Err(Error::CreateTopic {
            topic,
            source: KafkaError::AdminOp(code),
        }),
    }
}

/// What the read-back consumer sets whatever the `kafka` settings say (they refuse these keys
/// from this list): it reads the whole topic, under a group of its own that commits nothing,
/// and sees where each partition ends.
pub(crate) const READ_BACK_PROPERTIES: &[(&str, &str)] = &[
    ("group.id", "clickstream-windows-read-back"),
    ("enable.auto.commit", "false"),
    ("enable.partition.eof", "true"),
    ("auto.offset.reset", "earliest"),
];

/// What the publisher sets whatever the `kafka` settings say (refused there, from this list):
/// each window message written once, acknowledged by all in-sync replicas.
pub(crate) const PUBLISHER_PROPERTIES: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("client.id", "clickstream-windows"),
];

/// Every window message the topic holds, in offset order per partition: what was published
/// before (a later revision of a window comes after an earlier one). Messages that are not
/// window messages are skipped with a warning.
pub fn read_back(settings: &Settings, timeout: Duration) -> Result<Vec<WindowMessage>, Error> {
    let mut config = settings.kafka_client_config();
    for (key, value) in READ_BACK_PROPERTIES {
        config.set(*key, *value);
    }
    let consumer: BaseConsumer<ReadBackContext> = config
        .create_with_context(ReadBackContext)
        .map_err(Error::Kafka)?;
    let metadata = consumer
        .fetch_metadata(Some(&settings.topic), Duration::from_secs(10))
        .map_err(Error::Kafka)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut list = TopicPartitionList::new();
    let mut open = BTreeSet::new();
    for partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&settings.topic, *partition, Duration::from_secs(10))
            .map_err(Error::Kafka)?;
        if high > low {
            list.add_partition_offset(&settings.topic, *partition, Offset::Beginning)
                .map_err(Error::Kafka)?;
            open.insert(*partition);
        }
    }
    let mut messages = Vec::new();
    if open.is_empty() {
        return Ok(messages);
    }
    consumer.assign(&list).map_err(Error::Kafka)?;
    let deadline = Instant::now() + timeout;
    while !open.is_empty() {
        if Instant::now() > deadline {
            return Err(Error::ReadBack(format!(
                "{} did not reach the end of partitions {open:?} within {timeout:?}",
                settings.topic
            )));
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                open.remove(&partition);
            }
            Some(Err(error)) => return Err(Error::Kafka(error)),
            Some(Ok(message)) => {
                let parsed = message
                    .payload()
                    .map(serde_json::from_slice::<WindowMessage>);
                match parsed {
                    Some(Ok(window)) => messages.push(window),
                    _ => tracing::warn!(
                        partition = message.partition(),
                        offset = message.offset(),
                        "not a window message: skipped"
                    ),
                }
            }
        }
    }
    Ok(messages)
}

/// The read-back consumer's context: the end of a partition is how the read-back knows it is
/// done, not an error to log.
struct ReadBackContext;

impl ClientContext for ReadBackContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        clickstream_settings::kafka_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::error!(error = %error, reason, "librdkafka");
        }
    }
}

impl ConsumerContext for ReadBackContext {}

/// The admin client's and the publisher's context: librdkafka's log as every client of the
/// programs logs it (the `kafka` settings reach the read-back consumer and the publisher
/// alike: librdkafka's warning that one ignores a property of the other is said at debug).
struct KafkaLog;

impl ClientContext for KafkaLog {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        clickstream_settings::kafka_log(level, fac, message);
    }
}

/// Publishes window messages, one at a time, each acknowledged by all in-sync replicas.
pub struct Publisher {
    producer: FutureProducer<KafkaLog>,
    topic: String,
}

impl Publisher {
    pub fn new(settings: &Settings) -> Result<Publisher, Error> {
        let mut config = settings.kafka_client_config();
        for (key, value) in PUBLISHER_PROPERTIES {
            config.set(*key, *value);
        }
        Ok(Publisher {
            producer: config.create_with_context(KafkaLog).map_err(Error::Kafka)?,
            topic: settings.topic.clone(),
        })
    }

    /// Sends `message` keyed by its window start and waits for the acknowledgement.
    pub async fn send(&self, message: &WindowMessage) -> Result<(), Error> {
        let key = message.key();
        let payload = serde_json::to_vec(message).map_err(Error::Encode)?;
        let revision = message.revision.to_string();
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&payload)
            .headers(OwnedHeaders::new().insert(Header {
                key: "revision",
                value: Some(&revision),
            }));
        self.producer
            .send(record, Duration::from_secs(60))
            .await
            .map(|_| ())
            .map_err(|(error, _)| Error::Publish { key, source: error })
    }

    pub fn flush(&self) {
        let _ = self.producer.flush(Duration::from_secs(10));
    }
}
