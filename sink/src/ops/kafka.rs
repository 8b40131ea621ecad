//! What the operations commands ask Kafka: partitions, offset ranges, the group's committed
//! offsets and members, the first offset at a time, and whole topics read once.
//!
//! One consumer with the sink's group id (so committed offsets are the group's) that never
//! subscribes: it reads by assignment and commits only when `replay` resets the group.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use crate::SinkError;
use crate::settings::Settings;

const TIMEOUT: Duration = Duration::from_secs(15);
/// How long reading for a partition's end may take at most (see [`OpsKafka::end_by_reading`]).
const END_READ_LIMIT: Duration = Duration::from_secs(10);

/// One member of a consumer group.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Member {
    pub id: String,
    pub client_id: String,
    pub host: String,
}

/// Reaching a partition's end is how these commands know they read it all: not an error.
pub struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        clickstream_settings::kafka_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_))
            && !reason.contains("reached end of partition")
        {
            tracing::warn!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for Quiet {}

/// What the operations consumer sets whatever the `kafka` settings say (the settings refuse
/// every key of this list): it commits only what a command commits, and sees where each
/// partition ends.
pub(crate) const OPS_PROPERTIES: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("enable.partition.eof", "true"),
    ("auto.offset.reset", "earliest"),
];

/// The Kafka side of the operations commands.
pub struct OpsKafka {
    consumer: BaseConsumer<Quiet>,
    pub group: String,
    /// The bootstrap brokers, for messages.
    brokers: String,
}

impl OpsKafka {
    pub fn new(settings: &Settings) -> Result<OpsKafka, SinkError> {
        let mut config = settings.kafka_client_config();
        config.set("group.id", &settings.group);
        for (key, value) in OPS_PROPERTIES {
            config.set(*key, *value);
        }
        let consumer: BaseConsumer<Quiet> = config
            .create_with_context(Quiet)
            .map_err(SinkError::kafka("create the operations consumer"))?;
        Ok(OpsKafka {
            consumer,
            group: settings.group.clone(),
            brokers: settings.brokers.clone(),
        })
    }

    /// The topic's partitions; an unknown topic is an error naming it.
    pub fn partitions(&self, topic: &str) -> Result<Vec<i32>, SinkError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(SinkError::kafka("read the topic's metadata"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(SinkError::Settings(format!(
                "topic `{topic}` does not exist on {} (check `topic` / `dlq_topic` and `brokers`)",
                self.brokers
            )));
        }
        let mut partitions = partitions;
        partitions.sort_unstable();
        Ok(partitions)
    }

    /// `[earliest, latest)` of a partition as the broker reports it.
    pub fn range(&self, topic: &str, partition: i32) -> Result<(i64, i64), SinkError> {
        self.consumer
            .fetch_watermarks(topic, partition, TIMEOUT)
            .map_err(SinkError::kafka("read the partition's offsets"))
    }

    /// The group's committed offset per partition (`None`: nothing committed).
    pub fn committed(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, Option<i64>>, SinkError> {
        let mut list = TopicPartitionList::new();
        for &p in partitions {
            list.add_partition(topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(list, TIMEOUT)
            .map_err(SinkError::kafka("read the group's committed offsets"))?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.partition(), offset)
            })
            .collect())
    }

    /// The group's active members (empty when no sink of the group runs).
    pub fn members(&self) -> Result<Vec<Member>, SinkError> {
        Ok(self.group_state()?.1)
    }

    /// The group's state as the broker names it (`Stable`, `PreparingRebalance`, `Empty`,
    /// ...; empty when the broker does not know the group) and its members.
    pub fn group_state(&self) -> Result<(String, Vec<Member>), SinkError> {
        let groups = self
            .consumer
            .fetch_group_list(Some(&self.group), TIMEOUT)
            .map_err(SinkError::kafka("describe the consumer group"))?;
        let Some(group) = groups.groups().iter().find(|g| g.name() == self.group) else {
            return Ok((String::new(), Vec::new()));
        };
        let members = group
            .members()
            .iter()
            .map(|m| Member {
                id: m.id().to_owned(),
                client_id: m.client_id().to_owned(),
                host: m.client_host().to_owned(),
            })
            .collect();
        Ok((group.state().to_owned(), members))
    }

    /// Sets the group's committed offsets (the group must have no active member: Kafka
    /// refuses a commit from outside a live group).
    pub fn commit(&self, topic: &str, offsets: &BTreeMap<i32, i64>) -> Result<(), SinkError> {
        let mut list = TopicPartitionList::new();
        for (&p, &o) in offsets {
            list.add_partition_offset(topic, p, Offset::Offset(o))
                .map_err(SinkError::kafka("build the offsets to commit"))?;
        }
        self.consumer
            .commit(&list, CommitMode::Sync)
            .map_err(SinkError::kafka("commit the group's new offsets"))
    }

    /// The first offset of `partition` whose message timestamp is at or after `time_ms`
    /// (`latest` if none): Kafka's offsets-for-times, checked by reading the messages around
    /// the answer, and found by bisection over the messages' timestamps when the broker's
    /// answer is not right (the local test broker ignores the time). Timestamps are taken to
    /// grow with offsets, as Kafka's own time index does.
    pub fn offset_for_time(
        &self,
        topic: &str,
        partition: i32,
        time_ms: i64,
    ) -> Result<i64, SinkError> {
        let (low, high) = self.range(topic, partition)?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Offset(time_ms))
            .map_err(SinkError::kafka("build the offsets-for-times request"))?;
        let answer = self
            .consumer
            .offsets_for_times(list, TIMEOUT)
            .ok()
            .and_then(|l| {
                l.elements().first().and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
            });
        // The end: the broker's high watermark may be behind (count by reading).
        let end = self.end_by_reading(topic, partition, high)?;
        let before = |offset: i64| -> Result<bool, SinkError> {
            // Is the message at `offset` older than the time?
            Ok(self
                .timestamp_at(topic, partition, offset)?
                .is_some_and(|ts| ts < time_ms))
        };
        if let Some(o) = answer
            && (low..=end).contains(&o)
        {
            let at_ok = o == end || !before(o)?;
            let prev_ok = o == low || before(o - 1)?;
            if at_ok && prev_ok {
                return Ok(o);
            }
        }
        // Bisection: the first offset in [low, end) whose message is not older than the time.
        let (mut lo, mut hi) = (low, end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if before(mid)? {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The end of a partition (one past its last message), reading from `hint` on. On a topic
    /// still written to, the end as of now: reading stops at the first message stamped after
    /// this call, and after [`END_READ_LIMIT`] at most (a live producer never lets the
    /// partition go quiet: without these bounds `verify` read on for ever).
    pub fn end_by_reading(&self, topic: &str, partition: i32, hint: i64) -> Result<i64, SinkError> {
        let mut end = hint;
        let snapshot_ms = chrono::Utc::now().timestamp_millis();
        let started = Instant::now();
        self.read(topic, &[(partition, hint.max(0))], |m| {
            if m.timestamp().to_millis().is_some_and(|ms| ms > snapshot_ms) {
                return false;
            }
            end = end.max(m.offset() + 1);
            started.elapsed() < END_READ_LIMIT
        })?;
        Ok(end)
    }

    /// The timestamp (ms) of the message at `offset`, `None` if there is none there.
    fn timestamp_at(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<Option<i64>, SinkError> {
        let mut found = None;
        self.read(topic, &[(partition, offset)], |m| {
            if m.offset() >= offset {
                found = m.timestamp().to_millis();
                return false;
            }
            true
        })?;
        Ok(found)
    }

    /// Reads the given partitions from the given offsets to their end, calling `each` for
    /// every message until it returns false. The end is where the broker says the partition
    /// ends and nothing more arrives for a moment (the broker's end can lag behind).
    pub fn read(
        &self,
        topic: &str,
        from: &[(i32, i64)],
        each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> bool,
    ) -> Result<(), SinkError> {
        self.read_until(topic, from, None, each)
    }

    /// [`OpsKafka::read`], where a message stamped after `until_ms` (if given) ends its
    /// partition, unread: on a topic still written to, the read ends.
    fn read_until(
        &self,
        topic: &str,
        from: &[(i32, i64)],
        until_ms: Option<i64>,
        mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> bool,
    ) -> Result<(), SinkError> {
        const QUIET: Duration = Duration::from_millis(1_500);
        let mut list = TopicPartitionList::new();
        for &(p, o) in from {
            list.add_partition_offset(topic, p, Offset::Offset(o))
                .map_err(SinkError::kafka("build the partitions to read"))?;
        }
        self.consumer
            .assign(&list)
            .map_err(SinkError::kafka("assign the partitions to read"))?;
        let mut at_end: BTreeMap<i32, bool> = from.iter().map(|&(p, _)| (p, false)).collect();
        // Partitions that reached a message stamped after `until_ms`.
        let mut passed: BTreeSet<i32> = BTreeSet::new();
        let mut last_message = Instant::now();
        let outcome = loop {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message))
                    if until_ms.is_some_and(|until| {
                        message.timestamp().to_millis().is_some_and(|ms| ms > until)
                    }) =>
                {
                    passed.insert(message.partition());
                }
                Some(Ok(message)) => {
                    last_message = Instant::now();
                    at_end.insert(message.partition(), false);
                    if !each(&message) {
                        break Ok(());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p, true);
                }
                Some(Err(error)) if last_message.elapsed() > TIMEOUT => {
                    break Err(SinkError::Kafka {
                        operation: "read the topic",
                        source: error,
                    });
                }
                Some(Err(_)) | None => {}
            }
            // Checked after every poll: messages past `until_ms` arriving faster than the poll's
            // wait never let it come back empty.
            let quiet = last_message.elapsed();
            let ended = at_end.iter().all(|(p, &eof)| eof || passed.contains(p));
            if (ended && quiet > QUIET) || quiet > TIMEOUT {
                break Ok(());
            }
        };
        let _ = self.consumer.unassign();
        outcome
    }

    /// Reads a whole topic (every partition from its earliest offset) into owned messages: the
    /// messages stamped up to this call (a topic written to all the time, such as the
    /// dead-letter topic under a flood of poison, never goes quiet).
    pub fn read_all(&self, topic: &str) -> Result<Vec<OwnedMessage>, SinkError> {
        // Ten seconds of margin for the writers' clocks.
        let snapshot_ms = chrono::Utc::now().timestamp_millis() + 10_000;
        let partitions = self.partitions(topic)?;
        let mut from = Vec::new();
        for p in partitions {
            let (low, _) = self.range(topic, p)?;
            from.push((p, low));
        }
        let mut messages = Vec::new();
        self.read_until(topic, &from, Some(snapshot_ms), |m| {
            messages.push(m.detach());
            true
        })?;
        Ok(messages)
    }
}

/// A message's headers as text (values that are not UTF-8 are shown lossily).
pub fn headers_of(message: &impl Message) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(headers) = message.headers() {
        for h in headers.iter() {
            out.insert(
                h.key.to_owned(),
                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
            );
        }
    }
    out
}
