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
//!   again after [`SETTLE`] and goes on only if still first: of two runs starting together
//!   exactly one goes on, as long as an insert is seen within [`SETTLE`] of its start;
//! - the holder adds a row every [`RENEW_EVERY`] while it runs (a failed one is tried again
//!   every 2 s), and one with `released = 1` when it ends, whether it succeeded or not;
//! - before every step that changes data the holder reads the lease again ([`Lease::check`]):
//!   it must still be first, and seen less than `LAPSE - RENEW_EVERY` ago by ClickHouse's
//!   clock. Otherwise it stops, as it does when ClickHouse does not answer;
//! - a lapse is final: a run whose rows ever lay [`LAPSE`] apart holds nothing, even when a
//!   late renewal lands (another run may have taken the lease meanwhile), and its next check
//!   stops it;
//! - a run killed stops renewing: its lease lapses [`LAPSE`] after it was last seen, or at
//!   once for a run of the same machine boot, process namespace and user whose process is
//!   gone (so that a `replay` killed part-way can be finished at once). No fencing: a single
//!   statement that runs on after its run lost the lease (ClickHouse taking no renewal for
//!   20 s meanwhile) can overlap the next run's.
//!
//! Every time compared is ClickHouse's (`now64(3)`). On a cluster the table is replicated:
//! two runs started at once on replicas more than [`SETTLE`] apart could both go on.

use std::time::Duration;

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
/// How soon a failed renewal is tried again.
const RENEW_RETRY: Duration = Duration::from_secs(2);

/// A run that holds or wants the lease, as read.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Run {
    run_id: String,
    command: String,
    host: String,
    pid: u32,
    scope: String,
    started_s_ago: f64,
    seen_s_ago: f64,
}

/// This run: who it is and where.
#[derive(Debug, Clone)]
struct Me {
    run_id: Uuid,
    command: String,
    host: String,
    pid: u32,
    /// The machine's boot, this process's pid namespace and user (empty where unknown): a run
    /// of the same scope whose pid is gone was killed.
    scope: String,
}

impl Me {
    fn new(command: &str) -> Me {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_owned())
        };
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| read("/proc/sys/kernel/hostname"))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "?".to_owned());
        let namespace = std::fs::read_link("/proc/self/ns/pid")
            .ok()
            .map(|p| p.display().to_string());
        // The user too: `/proc` mounted with `hidepid` hides other users' processes.
        let user = std::fs::metadata("/proc/self").ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid()
        });
        let scope = match (read("/proc/sys/kernel/random/boot_id"), namespace, user) {
            (Some(boot), Some(namespace), Some(user)) if !boot.is_empty() => {
                format!("{boot}/{namespace}/{user}")
            }
            _ => String::new(),
        };
        Me {
            run_id: Uuid::new_v4(),
            command: command.to_owned(),
            host,
            pid: std::process::id(),
            scope,
        }
    }

    /// Whether `run` was killed: of this machine boot and pid namespace, its process gone.
    fn sees_gone(&self, run: &Run) -> bool {
        !self.scope.is_empty()
            && run.scope == self.scope
            && run.pid != self.pid
            && !std::path::Path::new(&format!("/proc/{}", run.pid)).exists()
    }
}

async fn mark(
    client: &clickhouse::Client,
    table: &str,
    topic: &str,
    me: &Me,
    released: u8,
) -> Result<(), clickhouse::error::Error> {
    client
        .query(&format!(
            "INSERT INTO {table} (kafka_topic, run_id, command, host, pid, scope, released) \
             VALUES (?, toUUID(?), ?, ?, ?, ?, ?)"
        ))
        // Seen by the read that follows: not buffered by the server.
        .with_setting("async_insert", "0")
        .bind(topic)
        .bind(me.run_id.to_string())
        .bind(&me.command)
        .bind(&me.host)
        .bind(me.pid)
        .bind(&me.scope)
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
                 any(pid) AS pid, any(scope) AS scope, \
                 toFloat64(dateDiff('millisecond', min(at), now64(3))) / 1000 AS started_s_ago, \
                 toFloat64(dateDiff('millisecond', max(at), now64(3))) / 1000 AS seen_s_ago \
                 FROM {table} WHERE kafka_topic = ? GROUP BY run_id \
                 HAVING max(released) = 0 AND max(at) > now64(3) - toIntervalMillisecond(?) \
                 AND arrayMax(arrayPushBack(arrayDifference(arraySort( \
                     groupArray(toUnixTimestamp64Milli(at)))), 0)) < ? \
                 ORDER BY min(at), run_id"
            ))
            .bind(topic)
            .bind(LAPSE.as_millis() as u64)
            .bind(LAPSE.as_millis() as u64)
            .fetch_all(),
    )
    .await?)
}

/// Whether `me` is the first of `runs` (leaving out runs killed), and when ClickHouse last
/// saw it (s ago); if not, who is.
fn first(runs: &[Run], me: &Me, topic: &str) -> Result<f64, ReplayError> {
    let mine = me.run_id.to_string();
    let runs: Vec<&Run> = runs
        .iter()
        .filter(|r| r.run_id == mine || !me.sees_gone(r))
        .collect();
    match runs.first() {
        Some(first) if first.run_id == mine => Ok(first.seen_s_ago),
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

/// The lease, held until [`Lease::release`] (or until it lapses, if the run is killed).
pub struct Lease {
    client: clickhouse::Client,
    table: String,
    topic: String,
    me: Me,
    renew: tokio::task::JoinHandle<()>,
}

/// Takes the lease of `database`'s operations on `topic` for `command`, or says who holds it.
pub async fn acquire(
    client: &clickhouse::Client,
    database: &str,
    topic: &str,
    command: &str,
) -> Result<Lease, ReplayError> {
    let table = format!("`{database}`.{LEASE_TABLE}");
    let me = Me::new(command);
    ch(
        "take the operations lease (ops_leases: apply clickhouse/schema.sql first)",
        mark(client, &table, topic, &me, 0),
    )
    .await?;
    let held = async {
        first(&runs(client, &table, topic).await?, &me, topic)?;
        tokio::time::sleep(SETTLE).await;
        first(&runs(client, &table, topic).await?, &me, topic)
    }
    .await;
    if let Err(refused) = held {
        // Ours must not hold anyone back once we are gone.
        if let Err(error) = mark(client, &table, topic, &me, 1).await {
            tracing::warn!(error = %error, "could not release the operations lease not taken: it lapses by itself in 30 s");
        }
        return Err(refused);
    }
    let renew = tokio::spawn({
        let (client, table, topic, me) =
            (client.clone(), table.clone(), topic.to_owned(), me.clone());
        async move {
            let mut wait = RENEW_EVERY;
            loop {
                tokio::time::sleep(wait).await;
                wait = match mark(&client, &table, &topic, &me, 0).await {
                    Ok(()) => RENEW_EVERY,
                    Err(error) => {
                        tracing::warn!(error = %error, "could not renew the operations lease: trying again (the run stops before its next step if ClickHouse last saw it 20 s ago or more)");
                        RENEW_RETRY
                    }
                };
            }
        }
    });
    Ok(Lease {
        client: client.clone(),
        table,
        topic: topic.to_owned(),
        me,
        renew,
    })
}

impl Lease {
    /// Whether the lease is still this run's: read again before every step that changes data.
    /// It must be first, and seen by ClickHouse less than `LAPSE - RENEW_EVERY` ago (a lease
    /// about to lapse could be another run's by the time the step ends).
    pub async fn check(&self) -> Result<(), ReplayError> {
        let seen_s_ago = first(
            &runs(&self.client, &self.table, &self.topic).await?,
            &self.me,
            &self.topic,
        )?;
        if seen_s_ago >= (LAPSE - RENEW_EVERY).as_secs_f64() {
            return Err(Refusal::LeaseLost {
                since_s: seen_s_ago as u64,
            }
            .into());
        }
        Ok(())
    }

    /// Ends the lease: the next run may start at once.
    pub async fn release(self) {
        self.renew.abort();
        if let Err(error) = mark(&self.client, &self.table, &self.topic, &self.me, 1).await {
            tracing::warn!(error = %error, "could not release the operations lease: the next run may start once it lapses (30 s)");
        }
    }
}

/// [`Lease::check`] for a run that holds `lease`; nothing to check for a dry run (`None`).
pub async fn still_held(lease: Option<&Lease>) -> Result<(), ReplayError> {
    match lease {
        Some(lease) => lease.check().await,
        None => Ok(()),
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
    }
}
