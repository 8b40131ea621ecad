//! One operations run at a time per topic: `replay` and `dlq replay` rebuild rollup keys
//! (delete them, then insert the view's query over the raw table), so two of them at once
//! could count rows twice. Each run holds a lease in ClickHouse (`ops_leases`, created by
//! clickhouse/schema.sql) while it runs:
//!
//! - a run adds a row (`released = 0`) and then reads which runs hold or want the lease: those
//!   seen in the last [`LAPSE`] and not released, the earliest first (then by run id). The
//!   first is the holder; any other run releases its row and stops with
//!   [`super::replay::Refusal::Busy`], naming the holder. Two runs starting at once both see
//!   both rows, so exactly one goes on;
//! - the holder adds a row every [`RENEW_EVERY`] while it runs, and one with `released = 1`
//!   when it ends (whether it succeeded or not);
//! - a run killed stops renewing: its lease lapses [`LAPSE`] after it was last seen.
//!
//! Every time is the server's (`now64(3)`): the hosts' clocks do not matter. On a cluster the
//! table is replicated: two runs started at once on replicas further apart than the time
//! between a run's insert and its read could both go on.

use std::time::Duration;

use uuid::Uuid;

use super::ch;
use super::replay::{Refusal, ReplayError};

pub const LEASE_TABLE: &str = "ops_leases";
/// A run not seen for this long holds nothing.
pub const LAPSE: Duration = Duration::from_secs(30);
/// How often the holder says it still runs.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

/// A run that holds or wants the lease.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Run {
    run_id: String,
    command: String,
    host: String,
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
    renew: tokio::task::JoinHandle<()>,
}

/// Where this run is: the host's name and the process id.
fn host() -> String {
    let name = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "?".to_owned());
    format!("{name} (pid {})", std::process::id())
}

async fn mark(
    client: &clickhouse::Client,
    table: &str,
    topic: &str,
    run_id: Uuid,
    command: &str,
    host: &str,
    released: u8,
) -> Result<(), clickhouse::error::Error> {
    client
        .query(&format!(
            "INSERT INTO {table} (kafka_topic, run_id, command, host, released) \
             VALUES (?, toUUID(?), ?, ?, ?)"
        ))
        .bind(topic)
        .bind(run_id.to_string())
        .bind(command)
        .bind(host)
        .bind(released)
        .execute()
        .await
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
    let host = host();
    ch(
        "take the operations lease (ops_leases: apply clickhouse/schema.sql first)",
        mark(client, &table, topic, run_id, command, &host, 0),
    )
    .await?;
    let runs: Vec<Run> = ch(
        "read the operations lease",
        client
            .query(&format!(
                "SELECT toString(run_id) AS run_id, any(command) AS command, any(host) AS host, \
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
    .await?;
    match runs.first() {
        Some(first) if first.run_id != run_id.to_string() => {
            // Ours must not hold anyone back once we are gone.
            if let Err(error) = mark(client, &table, topic, run_id, command, &host, 1).await {
                tracing::warn!(error = %error, "could not release the operations lease not taken: it lapses by itself");
            }
            Err(Refusal::Busy {
                command: first.command.clone(),
                host: first.host.clone(),
                started_s_ago: first.started_s_ago,
                seen_s_ago: first.seen_s_ago,
                topic: topic.to_owned(),
                lapse_s: LAPSE.as_secs(),
            }
            .into())
        }
        _ => {
            let renew = tokio::spawn({
                let (client, table, topic) = (client.clone(), table.clone(), topic.to_owned());
                let (command, host) = (command.to_owned(), host.clone());
                async move {
                    loop {
                        tokio::time::sleep(RENEW_EVERY).await;
                        if let Err(error) =
                            mark(&client, &table, &topic, run_id, &command, &host, 0).await
                        {
                            tracing::warn!(error = %error, "could not renew the operations lease (it lapses 30 s after the last renewal)");
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
                renew,
            })
        }
    }
}

impl Lease {
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
