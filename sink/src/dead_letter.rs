//! The dead-letter topic: messages that are not valid events (or rows ClickHouse rejected),
//! with their original key, payload and headers, plus headers saying why:
//! `reason`, `error`, `source_topic`, `source_partition`, `source_offset`, `dead_lettered_at`.
//!
//! A dead letter is enqueued at once ([`DeadLetterSink::send`]) so consumption goes on; its
//! offset counts as done only after [`DeadLetterSink::confirm`] returned (acknowledged by the
//! broker, re-sent as often as needed).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::SinkError;
use crate::settings::Settings;
use crate::writer::Failure;

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
}

impl DeadLetter {
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
            (
                "dead_lettered_at".to_owned(),
                Utc::now()
                    .to_rfc3339_opts(SecondsFormat::Millis, true)
                    .into_bytes(),
            ),
        ]);
        headers
    }
}

/// Where dead letters go.
pub trait DeadLetterSink: Send + Sync + 'static {
    type Ack: Send + 'static;
    /// Enqueues without waiting for the broker.
    fn send(&self, letter: DeadLetter) -> Self::Ack;
    /// Returns once the letter is acknowledged, re-sending it as needed; fails only when
    /// the sink is shutting down.
    fn confirm(&self, ack: Self::Ack) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// Dead letters produced to a Kafka topic (idempotent producer, acks=all).
#[derive(Clone)]
pub struct KafkaDeadLetters {
    producer: FutureProducer,
    topic: String,
    cancel: CancellationToken,
}

/// A dead letter on its way: the letter (for re-sends) and its delivery, if enqueued.
pub struct KafkaAck {
    letter: Arc<DeadLetter>,
    delivery: Option<DeliveryFuture>,
}

impl KafkaDeadLetters {
    /// `cancel` ends re-send loops at shutdown (the message is replayed after a restart).
    pub fn new(
        settings: &Settings,
        cancel: CancellationToken,
    ) -> Result<KafkaDeadLetters, SinkError> {
        let mut config = settings.kafka_client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", "30000");
        let producer = config
            .create()
            .map_err(|e| SinkError::Kafka(format!("dead-letter producer: {e}")))?;
        Ok(KafkaDeadLetters {
            producer,
            topic: settings.dlq_topic.clone(),
            cancel,
        })
    }

    fn enqueue(&self, letter: &DeadLetter) -> Option<DeliveryFuture> {
        let mut headers = OwnedHeaders::new();
        for (key, value) in letter.record_headers() {
            headers = headers.insert(Header {
                key: &key,
                value: Some(&value),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &letter.payload {
            record = record.payload(payload.as_slice());
        }
        match self.producer.send_result(record) {
            Ok(delivery) => Some(delivery),
            Err((error, _)) => {
                tracing::warn!(error = %error, offset = letter.source_offset, "dead letter not queued yet; will retry");
                None
            }
        }
    }
}

impl DeadLetterSink for KafkaDeadLetters {
    type Ack = KafkaAck;

    fn send(&self, letter: DeadLetter) -> KafkaAck {
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
        let mut backoff = Duration::from_millis(100);
        loop {
            if let Some(pending) = delivery.take() {
                match pending.await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err((error, _))) => {
                        tracing::warn!(error = %error, offset = letter.source_offset, "dead letter not delivered; re-sending")
                    }
                    Err(_) => tracing::warn!(
                        offset = letter.source_offset,
                        "dead letter delivery cancelled; re-sending"
                    ),
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    return Err(Failure::Transient("shutting down before the dead letter was acknowledged".into()));
                }
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            delivery = self.enqueue(&letter);
        }
    }
}
