//! `clickstream-producer`: simulates the visitors of an online shop and publishes their click
//! events to Kafka, as JSON keyed by user id, at a steady rate.
//!
//! ```text
//! Simulator ──Generated──▶ publish loop ──key, payload──▶ Outlet ──▶ Kafka topic
//! (seeded, pure)            │  paced by Pacer              (KafkaOutlet: idempotent,
//!                           │  stops at count/duration/     lz4, delivery callback
//!                           │  shutdown, then flushes       counts every outcome)
//!                           └──▶ Summary (sent = delivered + failed + undelivered)
//! ```
//!
//! Layout:
//! * [`simulator`] users, sessions, the site map walk, poison and late data (no I/O, seeded).
//! * [`pacer`] the deadline of event `n` at a rate (pure; tokio time, so tests pause it).
//! * [`publisher`] the loop that drives both into an [`outlet::Outlet`], and the [`Summary`].
//! * [`kafka`] topic creation and the real outlet; [`settings`] the typed settings and flags.
//! * [`metrics`] Prometheus counters (sent, delivered by partition, failed) and the optional
//!   `/metrics` + `/health` endpoint (`--metrics-addr`).
//!
//! Guarantees:
//! * **No silent loss.** Every message is counted as delivered (acknowledged by all in-sync
//!   replicas, idempotent producer), failed, or undelivered at the end of the flush timeout;
//!   [`run`] returns [`Error::Undelivered`] unless all were delivered, and the binary exits 1.
//! * **Rate.** Deadlines are absolute, so the long-run rate is exact whenever the machine keeps
//!   up; each wake-up sends only what is due, so there are no bursts. After a stall of more than
//!   [`publisher::MAX_LAG`] pacing restarts instead of sending the backlog at once.
//! * **Reproducible.** The same seed and clock values give the same messages (see
//!   [`simulator`] for ids).
//! * **Shutdown.** When the injected `shutdown` future completes, sending stops, outstanding
//!   messages are flushed and the summary is returned, as at the end of a count or duration.

pub mod kafka;
pub mod metrics;
pub mod outlet;
pub mod pacer;
pub mod publisher;
pub mod settings;
pub mod simulator;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use rdkafka::error::KafkaError;
use tracing::{info, warn};

pub use publisher::{Plan, Summary};
pub use settings::Settings;

/// Everything that can go wrong in the producer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {flag}: {reason}")]
    InvalidSetting { flag: &'static str, reason: String },
    #[error("creating the Kafka client failed")]
    CreateClient(#[source] KafkaError),
    #[error("creating topic {topic} failed")]
    CreateTopic {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("no metadata for topic {topic}: {detail}")]
    Metadata { topic: String, detail: String },
    #[error(
        "{} of {} messages were not delivered ({} failed, {} still in flight at the end)",
        summary.failed + summary.undelivered, summary.sent, summary.failed, summary.undelivered
    )]
    Undelivered { summary: Box<Summary> },
    #[error("cannot listen on {addr} (--metrics-addr)")]
    MetricsEndpoint {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Creates the topic if missing, then publishes until `settings.count`, `settings.duration`
/// or `shutdown`, and flushes. `Ok` only if every message was delivered.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<Summary, Error> {
    let metrics = Arc::new(metrics::Metrics::new());
    // Bound first, so a busy address fails before anything is produced; stops when dropped.
    let endpoint = match settings.metrics_addr {
        Some(addr) => Some(metrics::serve(addr, metrics.clone()).await?),
        None => None,
    };
    let created = kafka::ensure_topic(&settings).await?;
    let (outlet, partitions) = kafka::KafkaOutlet::connect(&settings, metrics.clone()).await?;
    if !created && i32::try_from(partitions).ok() != Some(settings.partitions) {
        warn!(
            topic = %settings.topic,
            partitions,
            requested = settings.partitions,
            "the topic already exists with another number of partitions: it is used as it is \
             (--partitions applies only when the producer creates the topic)"
        );
    }
    info!(
        brokers = %settings.brokers,
        topic = %settings.topic,
        created,
        partitions,
        rate = %settings.rate,
        count = settings.count,
        duration = settings.duration.map(|d| humantime::format_duration(d).to_string()),
        users = settings.simulator.users,
        seed = settings.simulator.seed,
        bad_ratio = settings.simulator.bad_ratio,
        late_ratio = settings.simulator.late_ratio,
        metrics_addr = endpoint.as_ref().map(|e| e.addr().to_string()),
        "producing"
    );
    metrics.set_producing(true);
    let plan = Plan {
        rate: settings.rate,
        count: settings.count,
        duration: settings.duration,
        progress_interval: settings.progress_interval,
        flush_timeout: settings.flush_timeout,
    };
    let simulator = simulator::Simulator::new(settings.simulator.clone());
    let summary = publisher::publish(&outlet, simulator, &plan, chrono::Utc::now, shutdown).await;
    metrics.set_producing(false);
    drop(endpoint);
    if summary.is_complete() {
        Ok(summary)
    } else {
        Err(Error::Undelivered {
            summary: Box::new(summary),
        })
    }
}
