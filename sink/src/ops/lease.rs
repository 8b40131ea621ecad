//! One operations run at a time per topic: `replay` and `dlq replay` rebuild rollup keys
//! (delete them, then insert the view's query over the raw table), so two of them at once
//! could count rows twice. Each run holds a lease in ClickHouse (`ops_leases`, created by
//! clickhouse/schema.sql) while it runs:
//!
//! - a run adds a row (`released = 0`) and then reads which runs hold or want the lease: those
//!   seen in the last [`LAPSE`] and not released, the earliest first (then by run id). The
//!   first is the holder; any other run releases its row and stops with
//!   [`super::replay::Refusal::Busy`], naming the holder. A row's time is taken when its
//!   insert starts and it is seen once the insert ends, so a run that finds itself first reads
//!   again after [`SETTLE`] (longer than such an insert takes) and goes on only if still
//!   first: of two runs starting together exactly one goes on;
//! - the holder adds a row every [`RENEW_EVERY`] while it runs, and one with `released = 1`
//!   when it ends (whether it succeeded or not). A holder that could not renew for
//!   `LAPSE - RENEW_EVERY` may have lost the lease to another run: [`Lease::check`], called
//!   before every step that changes data, stops it;
//! - a run killed stops renewing: its lease lapses [`LAPSE`] after it was last seen, or at
//!   once for a run on the same host (by name) whose process is gone (so that a `replay`
//!   killed part-way can be finished at once).
//!
//! Every time is the server's (`now64(3)`): the hosts' clocks do not matter. On a cluster the
//! table is replicated: two runs started at once on replicas more than [`SETTLE`] apart could
//! both go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::ch;
use super::replay::{Refusal, ReplayError};

pub const LEASE_TABLE: &str = "ops_leases";
/// A run not seen for this long holds nothing.
pub const LAPSE: Duration = Duration::from_secs(30);
/// How often the holder says it still runs.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How long a run that found itself first waits before it reads again (longer than a
/// one-row insert takes from its start to being seen).
pub const SETTLE: Duration = Duration::from_secs(2);

/// A run that holds or wants the lease.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Run {
    run_id: String,
    command: String,
    host: String,
    pid: u32,
    started_s_ago: f64,
    seen_s_ago: f64,
}

/// The lease, held until [`Lease::release`] (or until it lapses, if the run is killed).
pub struct Lease {
    client: clickhouse::Client,
    table: String,
    topic: String,
    run_id: Uuid,
    command: String,
    host: String,
    pid: u32,
    renew: tokio::task::JoinHandle<()>,
    /// When the lease was taken, and the last renewal that landed (ms after it).
    taken: Instant,
    renewed_ms: Arc<AtomicU64>,
    /// A renewal landed too late: another run may hold the lease now.
    lost: Arc<AtomicBool>,
}

/// The host's name.
fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "?".to_owned())
}

/// Whether process `pid` of this host is gone (known only where `/proc` is).
fn gone(pid: u32) -> bool {
    std::path::Path::new("/proc/self").exists()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[allow(clippy::too_many_arguments)]
async fn mark(
    client: &clickhouse::Client,
    table: &str,
    topic: &str,
    run_id: Uuid,
    command: &str,
    host: &str,
    pid: u32,
    released: u8,
) -> Result<(), clickhouse::error::Error> {
    client
        .query(&format!(
            "INSERT INTO {table} (kafka_topic, run_id, command, host, pid, released) \
             VALUES (?, toUUID(?), ?, ?, ?, ?)"
        ))
        // Seen by the read that follows: not buffered by the server.
        .with_setting("async_insert", "0")
        .bind(topic)
        .bind(run_id.to_string())
        .bind(command)
        .bind(host)
        .bind(pid)
        .bind(released)
        .execute()
        .await
}

/// The runs that hold or want the lease on `topic`, the holder first.
async fn runs(
    client: &clickhouse::Client,
    table: &str,
    topic: &str,
) -> Result<Vec<Run>, ReplayError> {
    Ok(ch(
        "read the operations lease",
        client
            .query(&format!(
                "SELECT toString(run_id) AS run_id, any(command) AS command, any(host) AS host, \
                 any(pid) AS pid, \
                 toFloat64(dateDiff('millisecond', min(at), now64(3))) / 1000 AS started_s_ago, \
                 toFloat64(dateDiff('millisecond', max(at), now64(3))) / 1000 AS seen_s_ago \
                 FROM {table} WHERE kafka_topic = ? GROUP BY run_id \
                 HAVING max(released) = 0 AND max(at) > now64(3) - toIntervalMillisecond(?) \
                 ORDER BY min(at), run_id"
            ))
            .bind(topic)
            .bind(LAPSE.as_millis() as u64)
            .fetch_all(),
    )
    .await?)
}

/// Whether `run_id` is the first of `runs` (leaving out runs of this host whose process is
/// gone); if not, who is.
fn first(runs: &[Run], run_id: Uuid, topic: &str) -> Result<(), ReplayError> {
    let mine = run_id.to_string();
    let here = host();
    let runs: Vec<&Run> = runs
        .iter()
        .filter(|r| r.run_id == mine || r.host != here || !gone(r.pid))
        .collect();
    match runs.first() {
        Some(first) if first.run_id == mine => Ok(()),
        Some(first) if runs.iter().any(|r| r.run_id == mine) => Err(Refusal::Busy {
            command: first.command.clone(),
            host: first.host.clone(),
            pid: first.pid,
            started_s_ago: first.started_s_ago,
            seen_s_ago: first.seen_s_ago,
            topic: topic.to_owned(),
            lapse_s: LAPSE.as_secs(),
        }
        .into()),
        _ => Err(Refusal::LeaseUnseen.into()),
    }
}

/// Takes the lease of `database`'s operations on `topic` for `command`, or says who holds it.
pub async fn acquire(
    client: &clickhouse::Client,
    database: &str,
    topic: &str,
    command: &str,
) -> Result<Lease, ReplayError> {
    let table = format!("`{database}`.{LEASE_TABLE}");
    let run_id = Uuid::new_v4();
    let (host, pid) = (host(), std::process::id());
    ch(
        "take the operations lease (ops_leases: apply clickhouse/schema.sql first)",
        mark(client, &table, topic, run_id, command, &host, pid, 0),
    )
    .await?;
    let taken = Instant::now();
    let held = async {
        first(&runs(client, &table, topic).await?, run_id, topic)?;
        tokio::time::sleep(SETTLE).await;
        first(&runs(client, &table, topic).await?, run_id, topic)
    }
    .await;
    if let Err(refused) = held {
        // Ours must not hold anyone back once we are gone.
        if let Err(error) = mark(client, &table, topic, run_id, command, &host, pid, 1).await {
            tracing::warn!(error = %error, "could not release the operations lease not taken: it lapses by itself in 30 s");
        }
        return Err(refused);
    }
    let renewed_ms = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicBool::new(false));
    let renew = tokio::spawn({
        let (client, table, topic) = (client.clone(), table.clone(), topic.to_owned());
        let (command, host) = (command.to_owned(), host.clone());
        let (renewed_ms, lost) = (renewed_ms.clone(), lost.clone());
        async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                match mark(&client, &table, &topic, run_id, &command, &host, pid, 0).await {
                    Ok(()) => {
                        let now = taken.elapsed().as_millis() as u64;
                        if now - renewed_ms.load(Ordering::Relaxed) >= at_risk_after_ms() {
                            // It may have lapsed meanwhile: do not pretend it did not.
                            lost.store(true, Ordering::Relaxed);
                            return;
                        }
                        renewed_ms.store(now, Ordering::Relaxed);
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "could not renew the operations lease (it lapses 30 s after the last renewal)");
                    }
                }
            }
        }
    });
    Ok(Lease {
        client: client.clone(),
        table,
        topic: topic.to_owned(),
        run_id,
        command: command.to_owned(),
        host,
        pid,
        renew,
        taken,
        renewed_ms,
        lost,
    })
}

/// Time since the last renewal after which the lease may be lost: a renewal more is due
/// before it lapses.
fn at_risk_after_ms() -> u64 {
    (LAPSE - RENEW_EVERY).as_millis() as u64
}

impl Lease {
    /// Whether the lease is still held: called before every step that changes data. A lease
    /// not renewed for `LAPSE - RENEW_EVERY` may have lapsed, and another run started.
    pub fn check(&self) -> Result<(), ReplayError> {
        let since =
            self.taken.elapsed().as_millis() as u64 - self.renewed_ms.load(Ordering::Relaxed);
        if self.lost.load(Ordering::Relaxed) || since >= at_risk_after_ms() {
            return Err(Refusal::LeaseLost {
                since_s: since / 1000,
            }
            .into());
        }
        Ok(())
    }

    /// Ends the lease: the next run may start at once.
    pub async fn release(self) {
        self.renew.abort();
        let done = mark(
            &self.client,
            &self.table,
            &self.topic,
            self.run_id,
            &self.command,
            &self.host,
            self.pid,
            1,
        )
        .await;
        if let Err(error) = done {
            tracing::warn!(error = %error, "could not release the operations lease: the next run may start once it lapses (30 s)");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
    }
}
