//! The consumer stage: the group consumer's configuration, its rebalance and statistics
//! callbacks (ownership of partitions, lag), pausing and resuming partitions, and the commit
//! of offsets after their rows were written.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::flush::{CommitError, Committer};
use crate::freshness::locked as lock;
use crate::kafka_auth::AuthWatch;
use crate::metrics::Metrics;
use crate::ownership::Ownership;
use crate::settings::Settings;

/// Rebalance and statistics callbacks.
pub struct SinkContext {
    pub(crate) ownership: Arc<Ownership>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) topic: String,
    /// How long a revoke waits for an in-flight insert of its partitions: longer than one
    /// insert may take, so that a revoked partition's insert has ended (landed or failed)
    /// before its next owner starts.
    pub(crate) revoke_wait: Duration,
    /// A refused login or TLS handshake of the consumer, with librdkafka's reason.
    pub(crate) auth: Arc<AuthWatch>,
}

fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        clickstream_settings::kafka_log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if !self.auth.observe(&error, reason) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }

    fn stats(&self, statistics: Statistics) {
        if let Some(topic) = statistics.topics.get(&self.topic) {
            let now_ms = chrono::Utc::now().timestamp_millis();
            for (partition, stats) in &topic.partitions {
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .get_or_create(&Metrics::label("partition", partition))
                        .set(stats.consumer_lag);
                    if self.ownership.partitions().contains(partition) {
                        lock(&self.metrics).lag(*partition, stats.consumer_lag, now_ms);
                    }
                }
            }
        }
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions = partitions_of(list);
            let finished = self.ownership.revoke(&partitions, self.revoke_wait);
            for &partition in &partitions {
                lock(&self.metrics).forget(partition, &self.metrics);
            }
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

pub type SinkConsumer = StreamConsumer<SinkContext>;

/// Commits through the group consumer (synchronously, off the async workers).
pub struct KafkaCommitter {
    pub(crate) consumer: Arc<SinkConsumer>,
    pub(crate) topic: String,
}

impl Committer for KafkaCommitter {
    async fn commit(&self, offsets: &[(i32, i64)]) -> Result<(), CommitError> {
        let mut list = TopicPartitionList::new();
        for &(partition, offset) in offsets {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                .map_err(|e| CommitError::Failed(e.to_string()))?;
        }
        let consumer = self.consumer.clone();
        let result = tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .map_err(|e| CommitError::Failed(e.to_string()))?;
        result.map_err(|error| {
            use RDKafkaErrorCode::*;
            let fenced = matches!(
                error.rdkafka_error_code(),
                Some(
                    RebalanceInProgress
                        | IllegalGeneration
                        | UnknownMemberId
                        | FencedInstanceId
                        | StaleMemberEpoch
                        | AssignmentLost
                )
            );
            if fenced {
                CommitError::Fenced(error.to_string())
            } else {
                CommitError::Failed(error.to_string())
            }
        })
    }
}

/// Consumer properties the sink sets unless `kafka.<property>` overrides them.
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "1000"),
    // librdkafka stops fetching a partition whose queue holds `queued.min.messages` (100,000)
    // and waits `fetch.queue.backoff.ms` (1 s) before looking again: a sink that drains its
    // queue in 0.2 s then idles 0.8 s of every second (measured: 140k events/s instead of
    // 450k). Look again after 20 ms.
    ("fetch.queue.backoff.ms", "20"),
    // Its prefetch: 2 MB instead of librdkafka's 64. With the short backoff a small prefetch
    // is as fast (2M pre-loaded events drained in 17.8 s with 4 MB, 18.5 s with 16 MB) and
    // takes far less memory: peak RSS draining at full speed 133 MB with 4 MB against 179 with
    // 16. What librdkafka fetched is still the biggest memory after the rows: its per-message
    // records took a 46 MB arena with 4 MB, 13 MB with 1 MB. A/B on 2M pre-loaded events
    // (2026-12-02): 2 MB against 4 MB, peak RSS 112 MB against 130, as fast (the sink alone:
    // 8.4 s against 8.9 s; 1 MB was 9-19 % slower).
    ("queued.max.messages.kbytes", "2048"),
];

pub(crate) fn consumer_config(settings: &Settings) -> ClientConfig {
    let mut config = settings.kafka_client_config();
    // A crashed sink holds its partitions until its session times out; librdkafka's 45 s
    // default makes every crash (and, on tansu, the first join) a long stall. Overridable.
    for (key, value) in CONSUMER_DEFAULTS {
        if !settings.kafka.contains_key(*key) {
            config.set(*key, *value);
        }
    }
    config.set("group.id", &settings.group);
    for (key, value) in CONSUMER_PROPERTIES {
        config.set(*key, *value);
    }
    config
}

/// What the sink sets on its consumer whatever the `kafka` settings say; the settings refuse
/// these keys (and their other names) from this list. It commits offsets itself, only after
/// the write; a new group reads the topic from its start; end-of-partition events are not
/// used; the lag gauge comes from librdkafka's statistics every 5 s.
pub(crate) const CONSUMER_PROPERTIES: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    ("enable.partition.eof", "false"),
    ("statistics.interval.ms", "5000"),
];

/// librdkafka properties that come from the sink's own settings (refused in `kafka`).
pub(crate) const PROPERTIES_FROM_SETTINGS: &[(&str, &str)] =
    &[("bootstrap.servers", "brokers"), ("group.id", "group")];

/// Pauses or resumes partitions of the topic (a failure is logged: the next call retries).
pub(crate) fn set_paused(consumer: &SinkConsumer, topic: &str, partitions: &[i32], pause: bool) {
    let mut list = TopicPartitionList::new();
    for &partition in partitions {
        list.add_partition(topic, partition);
    }
    let result = if pause {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    if let Err(error) = result {
        tracing::warn!(error = %error, ?partitions, pause, "pause/resume failed");
    }
}
