//! Kafka is the buffer: the sink keeps only the encoded rows of what it reads. In the rare
//! cases that need a message again (ClickHouse rejected its row: it goes to the dead-letter
//! topic as it was; the table changed under a buffered segment: its rows are encoded again)
//! the write stage reads those offsets back from the topic, which still holds them (they are
//! not committed yet).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::SinkError;
use crate::kafka_auth::KafkaContext;
use crate::settings::Settings;
use crate::writer::Failure;

/// A message read again.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The message's timestamp (ms): intake validated the event against it.
    pub timestamp_ms: Option<i64>,
}

/// Reads messages of the sink's topic again, by offset.
pub trait Refetch: Send + Sync + 'static {
    /// The messages at `offsets` (increasing) of `partition`. An offset the topic no longer
    /// holds (deleted by retention meanwhile) is missing from the answer.
    fn fetch(
        &self,
        partition: i32,
        offsets: &[i64],
    ) -> impl Future<Output = Result<Vec<Fetched>, Failure>> + Send;
}

/// How long one read-back may take before it counts as a transient failure.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// What the read-back consumer sets whatever the `kafka` settings say (with `group.id`, its
/// own group; the settings refuse every key of this list): it commits nothing.
pub(crate) const REFETCH_PROPERTIES: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("enable.partition.eof", "false"),
];

/// Reads back with a consumer of its own, outside the group (assign, no commits).
#[derive(Clone)]
pub struct KafkaRefetch {
    consumer: Arc<Mutex<BaseConsumer<KafkaContext>>>,
    topic: String,
}

impl KafkaRefetch {
    pub fn new(settings: &Settings) -> Result<KafkaRefetch, SinkError> {
        let mut config = settings.kafka_client_config();
        config.set("group.id", format!("{}.refetch", settings.group));
        for (key, value) in REFETCH_PROPERTIES {
            config.set(*key, *value);
        }
        let consumer: BaseConsumer<KafkaContext> = config
            .create_with_context(KafkaContext::default())
            .map_err(SinkError::kafka("create the read-back consumer"))?;
        Ok(KafkaRefetch {
            consumer: Arc::new(Mutex::new(consumer)),
            topic: settings.topic.clone(),
        })
    }
}

impl Refetch for KafkaRefetch {
    async fn fetch(&self, partition: i32, offsets: &[i64]) -> Result<Vec<Fetched>, Failure> {
        let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else {
            return Ok(Vec::new());
        };
        let wanted = offsets.to_vec();
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let read = tokio::task::spawn_blocking(move || {
            let consumer = consumer.lock().unwrap_or_else(|p| p.into_inner());
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&topic, partition, Offset::Offset(first))
                .map_err(|e| Failure::Transient(e.to_string()))?;
            consumer.assign(&list).map_err(|e| {
                Failure::Transient(format!("reading back {topic}[{partition}]: {e}"))
            })?;
            let started = std::time::Instant::now();
            let mut found = Vec::with_capacity(wanted.len());
            let outcome = loop {
                if started.elapsed() > FETCH_TIMEOUT {
                    break Err(Failure::Transient(format!(
                        "reading back {topic}[{partition}] offsets {first}..={last} took longer than {} s",
                        FETCH_TIMEOUT.as_secs()
                    )));
                }
                match consumer.poll(Duration::from_millis(100)) {
                    None => continue,
                    Some(Err(error)) => {
                        tracing::debug!(error = %error, "read-back: Kafka error");
                        continue;
                    }
                    Some(Ok(message)) => {
                        let offset = message.offset();
                        if wanted.binary_search(&offset).is_ok() {
                            found.push(Fetched {
                                offset,
                                key: message.key().map(<[u8]>::to_vec),
                                payload: message.payload().map(<[u8]>::to_vec),
                                headers: crate::intake::original_headers(&message),
                                timestamp_ms: message.timestamp().to_millis(),
                            });
                        }
                        if offset >= last {
                            break Ok(found);
                        }
                    }
                }
            };
            let _ = consumer.unassign();
            outcome
        });
        read.await
            .map_err(|e| Failure::Transient(format!("read-back task failed: {e}")))?
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The topic as a map of offset → message.
    #[derive(Default)]
    pub(crate) struct FakeTopic {
        pub messages: Mutex<BTreeMap<i64, Fetched>>,
        pub reads: Mutex<usize>,
    }

    impl Refetch for FakeTopic {
        async fn fetch(&self, _: i32, offsets: &[i64]) -> Result<Vec<Fetched>, Failure> {
            *self.reads.lock().unwrap() += 1;
            let messages = self.messages.lock().unwrap();
            Ok(offsets
                .iter()
                .filter_map(|o| messages.get(o).cloned())
                .collect())
        }
    }
}
