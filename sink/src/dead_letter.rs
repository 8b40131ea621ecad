//! The dead-letter topic: messages that are not valid events (or rows ClickHouse rejected),
//! with their original key, payload and headers, plus headers saying why:
//! `reason`, `error`, `source_topic`, `source_partition`, `source_offset`, `source_timestamp`
//! (the message's Kafka timestamp, ms), `dead_lettered_at`.
//!
//! A dead letter is enqueued at once ([`DeadLetterSink::send`]) so consumption goes on; its
//! offset counts as done only after [`DeadLetterSink::confirm`] returned (acknowledged by the
//! broker, re-sent by the retry policy as often as needed).
//!
//! Dead letters always fit: at start the sink reads the dead-letter topic's
//! `max.message.bytes` and sizes its producer to it; a letter that would not fit keeps its
//! headers and source coordinates but carries only a prefix of its payload, with
//! `payload_truncated=true`, `payload_length` and `payload_sha256` headers. A letter the
//! broker refuses for good (too large, not authorized, no such topic) stops the sink with
//! that error instead of re-sending it forever.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use clickstream_settings::PolledProducer;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use sha2::{Digest, Sha256};

use crate::SinkError;
use crate::kafka_auth::KafkaContext;
use crate::retry::{Operation, RetryPolicy};
use crate::settings::Settings;
use crate::writer::Failure;

/// Kafka's default `max.message.bytes` for a topic (used when the broker does not say).
pub const KAFKA_DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;
/// Room left for the record and batch framing around key, value and headers.
const FRAMING_BYTES: usize = 512;

/// One message for the dead-letter topic.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Stable reason (`invalid_json`, `rejected_by_clickhouse`, ...).
    pub reason: String,
    /// Human-readable error.
    pub error: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    /// The source message's Kafka timestamp (ms), kept so that `dlq replay` judges the
    /// event against the same time as intake did.
    pub source_timestamp_ms: Option<i64>,
}

impl DeadLetter {
    /// Bytes of the record's key, value and headers.
    pub fn size(&self) -> usize {
        let headers: usize = self
            .record_headers()
            .iter()
            .map(|(k, v)| k.len() + v.len() + 10)
            .sum();
        self.key.as_ref().map_or(0, Vec::len) + self.payload.as_ref().map_or(0, Vec::len) + headers
    }

    /// The letter cut to at most `limit` bytes (record framing included): the payload keeps
    /// a prefix, and headers say how long it was and its SHA-256. Returns whether it was cut.
    pub fn fit(mut self, limit: usize) -> (DeadLetter, bool) {
        let budget = limit.saturating_sub(FRAMING_BYTES);
        if self.size() <= budget {
            return (self, false);
        }
        let payload = self.payload.take().unwrap_or_default();
        let digest = Sha256::digest(&payload);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.headers.extend([
            ("payload_truncated".to_owned(), b"true".to_vec()),
            (
                "payload_length".to_owned(),
                payload.len().to_string().into_bytes(),
            ),
            ("payload_sha256".to_owned(), hex.into_bytes()),
        ]);
        // The error text can be long (ClickHouse quotes the data): keep its start.
        if self.error.len() > 4_096 {
            let mut end = 4_096;
            while !self.error.is_char_boundary(end) {
                end -= 1;
            }
            self.error.truncate(end);
        }
        let room = budget.saturating_sub(self.size());
        self.payload = Some(payload[..room.min(payload.len())].to_vec());
        (self, true)
    }

    /// All headers of the dead-letter record: the original ones, then the sink's.
    pub fn record_headers(&self) -> Vec<(String, Vec<u8>)> {
        let mut headers = self.headers.clone();
        headers.extend([
            ("reason".to_owned(), self.reason.clone().into_bytes()),
            ("error".to_owned(), self.error.clone().into_bytes()),
            (
                "source_topic".to_owned(),
                self.source_topic.clone().into_bytes(),
            ),
            (
                "source_partition".to_owned(),
                self.source_partition.to_string().into_bytes(),
            ),
            (
                "source_offset".to_owned(),
                self.source_offset.to_string().into_bytes(),
            ),
        ]);
        if let Some(ts) = self.source_timestamp_ms {
            headers.push(("source_timestamp".to_owned(), ts.to_string().into_bytes()));
        }
        headers.extend([(
            "dead_lettered_at".to_owned(),
            Utc::now()
                .to_rfc3339_opts(SecondsFormat::Millis, true)
                .into_bytes(),
        )]);
        headers
    }
}

/// Where dead letters go.
pub trait DeadLetterSink: Send + Sync + 'static {
    type Ack: Send + 'static;
    /// Enqueues without waiting for the broker.
    fn send(&self, letter: DeadLetter) -> Self::Ack;
    /// Returns once the letter is acknowledged, re-sending it as needed. Fails with
    /// [`Failure::Fatal`] when the broker refuses it for good, and otherwise only when the
    /// sink is shutting down.
    fn confirm(&self, ack: Self::Ack) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// Dead letters produced to a Kafka topic (idempotent producer, acks=all).
#[derive(Clone)]
pub struct KafkaDeadLetters {
    producer: Arc<PolledProducer<LetterContext>>,
    topic: String,
    /// The largest record the topic takes.
    limit: usize,
    retry: RetryPolicy,
}

/// The broker's answer to one letter.
type Delivery = tokio::sync::oneshot::Receiver<Result<(), KafkaError>>;

/// A dead letter on its way: the letter (for re-sends) and its delivery, or why it was not
/// enqueued.
pub struct KafkaAck {
    letter: Arc<DeadLetter>,
    delivery: Result<Delivery, KafkaError>,
}

/// The dead-letter producer's context: the sink's Kafka context (logs, login failures), and
/// each letter's delivery report handed to the ack waiting for it.
#[derive(Clone, Default)]
struct LetterContext {
    kafka: KafkaContext,
}

impl ClientContext for LetterContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.kafka.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.kafka.error(error, reason);
    }
}

impl ProducerContext for LetterContext {
    type DeliveryOpaque = Box<tokio::sync::oneshot::Sender<Result<(), KafkaError>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Self::DeliveryOpaque) {
        // (The ack may be gone: a sink stopping drops what it no longer waits for.)
        let _ = reply.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

/// Broker answers that re-sending cannot change.
fn is_permanent(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | InvalidMessageSize
                | InvalidMessage
                | MessageBatchTooLarge
                | InvalidRecord
                | TopicAuthorizationFailed
                | ClusterAuthorizationFailed
                | TransactionalIdAuthorizationFailed
                | UnknownTopic
                | UnknownTopicOrPartition
                | InvalidTopic
                | InvalidRequiredAcks
        )
    )
}

impl KafkaDeadLetters {
    /// Checks that the dead-letter topic exists, reads its `max.message.bytes` and sizes the
    /// producer to it. `retry.cancel` ends re-sends at shutdown (the message is replayed).
    pub async fn connect(
        settings: &Settings,
        retry: RetryPolicy,
    ) -> Result<KafkaDeadLetters, SinkError> {
        let context = KafkaContext::default();
        let limit = topic_max_message_bytes(settings, &context).await?;
        let producer: BaseProducer<LetterContext> = producer_config(settings, limit)
            .create_with_context(LetterContext {
                kafka: context.clone(),
            })
            .map_err(SinkError::kafka("create the dead-letter producer"))?;
        let producer = PolledProducer::start(producer, "dead-letter poll")
            .map_err(|e| SinkError::Internal(format!("start the dead-letter poll thread: {e}")))?;
        let producer = Arc::new(producer);
        let topic = settings.dlq_topic.clone();
        let probe = producer.shared();
        let metadata = tokio::task::spawn_blocking(move || {
            probe
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
        })
        .await
        .map_err(|e| SinkError::Internal(e.to_string()))?
        .map_err(|source| {
            // A refused login shows here only as a transport failure: say what it was.
            context.auth.error().unwrap_or(SinkError::Kafka {
                operation: "read the dead-letter topic's metadata",
                source,
            })
        })?;
        let exists = metadata.topics().iter().any(|t| {
            t.name() == settings.dlq_topic && t.error().is_none() && !t.partitions().is_empty()
        });
        if !exists {
            return Err(SinkError::DeadLetter(format!(
                "the dead-letter topic {} does not exist: create it (for example \
                 kafka-topics.sh --create --topic {} --partitions 1), or set dlq_topic",
                settings.dlq_topic, settings.dlq_topic
            )));
        }
        tracing::info!(topic = %settings.dlq_topic, max_message_bytes = limit, "dead-letter topic checked");
        Ok(KafkaDeadLetters {
            producer,
            topic: settings.dlq_topic.clone(),
            limit,
            retry,
        })
    }

    fn enqueue(&self, letter: &DeadLetter) -> Result<Delivery, KafkaError> {
        let mut headers = OwnedHeaders::new();
        for (key, value) in letter.record_headers() {
            headers = headers.insert(Header {
                key: &key,
                value: Some(&value),
            });
        }
        let (reply, delivery) = tokio::sync::oneshot::channel();
        let mut record: BaseRecord<'_, [u8], [u8], _> =
            BaseRecord::with_opaque_to(&self.topic, Box::new(reply)).headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &letter.payload {
            record = record.payload(payload.as_slice());
        }
        self.producer
            .send(record)
            .map(|()| delivery)
            .map_err(|(error, _)| error)
    }
}

/// The dead-letter producer's librdkafka config: the `kafka` settings (TLS, SASL) plus what
/// the sink needs (idempotent, acks=all, records up to the topic's `limit`).
pub fn producer_config(settings: &Settings, limit: usize) -> rdkafka::ClientConfig {
    let mut config = settings.kafka_client_config();
    for (key, value) in PRODUCER_PROPERTIES {
        config.set(*key, *value);
    }
    config.set("message.max.bytes", limit.max(1_000).to_string());
    config
}

/// What the sink sets on its dead-letter producer whatever the `kafka` settings say (they
/// refuse these keys and their other names from this list): each letter written once, by
/// all in-sync replicas, or an error within 30 s.
pub(crate) const PRODUCER_PROPERTIES: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("linger.ms", "5"),
    ("compression.type", "lz4"),
    ("message.timeout.ms", "30000"),
];

/// The dead-letter topic's `max.message.bytes` (Kafka's default where the broker does not
/// answer DescribeConfigs; an error when it refuses the sink's login).
async fn topic_max_message_bytes(
    settings: &Settings,
    context: &KafkaContext,
) -> Result<usize, SinkError> {
    let admin: AdminClient<KafkaContext> = settings
        .kafka_client_config()
        .create_with_context(context.clone())
        .map_err(SinkError::kafka("create an admin client"))?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(&settings.dlq_topic)], &options)
        .await;
    if let Some(refused) = context.auth.error() {
        return Err(refused);
    }
    let value = described.ok().and_then(|results| {
        results
            .into_iter()
            .next()?
            .ok()?
            .get("max.message.bytes")?
            .value
            .clone()
    });
    Ok(match value.and_then(|v| v.parse::<usize>().ok()) {
        Some(limit) => limit,
        None => {
            tracing::warn!(
                topic = %settings.dlq_topic,
                assumed = KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
                "the broker did not report the dead-letter topic's max.message.bytes; assuming Kafka's default"
            );
            KAFKA_DEFAULT_MAX_MESSAGE_BYTES
        }
    })
}

impl DeadLetterSink for KafkaDeadLetters {
    type Ack = KafkaAck;

    fn send(&self, letter: DeadLetter) -> KafkaAck {
        let (letter, truncated) = letter.fit(self.limit);
        if truncated {
            self.retry.metrics.dead_letters_truncated.inc();
            tracing::warn!(
                partition = letter.source_partition,
                offset = letter.source_offset,
                limit = self.limit,
                "dead letter larger than the dead-letter topic takes: its payload is cut (length and SHA-256 in its headers)"
            );
        }
        let delivery = self.enqueue(&letter);
        KafkaAck {
            letter: Arc::new(letter),
            delivery,
        }
    }

    async fn confirm(&self, ack: KafkaAck) -> Result<(), Failure> {
        let KafkaAck {
            letter,
            mut delivery,
        } = ack;
        let mut retry = self.retry.start(Operation::DeadLetter);
        loop {
            let error = match delivery {
                Ok(pending) => match pending.await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(error)) => error,
                    Err(_) => KafkaError::Canceled,
                },
                Err(error) => error,
            };
            let message = format!(
                "dead letter for {}[{}] offset {} ({} bytes) to {}: {error}",
                letter.source_topic,
                letter.source_partition,
                letter.source_offset,
                letter.size(),
                self.topic
            );
            if is_permanent(&error) {
                return Err(Failure::Fatal(format!(
                    "{message}. The broker refuses it for good: check the dead-letter topic \
                     (exists, writable by this user, max.message.bytes); nothing was committed"
                )));
            }
            if retry
                .wait(Some(letter.source_partition), "transient", &message)
                .await
                .is_err()
            {
                return Err(Failure::Transient(
                    "shutting down before the dead letter was acknowledged".into(),
                ));
            }
            delivery = self.enqueue(&letter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(payload: usize) -> DeadLetter {
        DeadLetter {
            key: Some(b"user_1".to_vec()),
            payload: Some(vec![b'x'; payload]),
            headers: vec![("trace".into(), b"abc".to_vec())],
            reason: "oversized".into(),
            error: "message of 1040000 bytes exceeds max_message_bytes".into(),
            source_topic: "clickstream-events".into(),
            source_partition: 2,
            source_offset: 77,
            source_timestamp_ms: Some(1_700_000_000_000),
        }
    }

    #[test]
    fn a_letter_that_fits_is_untouched() {
        let original = letter(10_000);
        let (fitted, cut) = original.clone().fit(KAFKA_DEFAULT_MAX_MESSAGE_BYTES);
        assert!(!cut);
        assert_eq!(fitted, original);
    }

    #[test]
    fn a_letter_near_kafkas_limit_keeps_headers_and_a_prefix() {
        let original = letter(1_040_000);
        let (fitted, cut) = original.clone().fit(1_000_000);
        assert!(cut);
        assert!(
            fitted.size() <= 1_000_000 - FRAMING_BYTES,
            "{}",
            fitted.size()
        );
        let payload = fitted.payload.as_ref().unwrap();
        assert!(
            payload.len() > 990_000,
            "keeps most of it: {}",
            payload.len()
        );
        assert_eq!(
            payload[..],
            original.payload.as_ref().unwrap()[..payload.len()]
        );
        let headers = fitted.record_headers();
        let header = |key: &str| {
            headers
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_else(|| panic!("header {key}"))
        };
        assert_eq!(header("payload_truncated"), "true");
        assert_eq!(header("payload_length"), "1040000");
        let digest = Sha256::digest(original.payload.as_ref().unwrap());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(header("payload_sha256"), hex);
        assert_eq!(header("trace"), "abc");
        assert_eq!(header("source_offset"), "77");
    }

    #[test]
    fn permanent_broker_answers_are_told_from_passing_ones() {
        use rdkafka::types::RDKafkaErrorCode as Code;
        assert!(is_permanent(&KafkaError::MessageProduction(
            Code::MessageSizeTooLarge
        )));
        assert!(is_permanent(&KafkaError::MessageProduction(
            Code::TopicAuthorizationFailed
        )));
        assert!(!is_permanent(&KafkaError::MessageProduction(
            Code::MessageTimedOut
        )));
        assert!(!is_permanent(&KafkaError::MessageProduction(
            Code::QueueFull
        )));
        assert!(!is_permanent(&KafkaError::Canceled));
    }
}
