//! The bench's private local stack (`scripts/stack` on its own ports and data directory) and
//! what the bench asks of it: databases with the real schema, counts, parts, topics, the
//! endpoint's discard rule.

use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use clickstream_testkit::{
    LocalStack, clickhouse_at, delete_topic_on, http_request, schema_statements, try_tansu_bin,
};

/// The servers the bench measures against: its own local stack ([`LocalStack`]: stopped when
/// dropped), or servers someone else runs (docker compose, a cluster), and a
/// client of the ClickHouse side.
pub struct Stack {
    local: Option<LocalStack>,
    pub kafka: String,
    pub clickhouse: String,
    /// librdkafka properties for the bench's own Kafka client (topic deletion).
    kafka_properties: Vec<(String, String)>,
    client: clickhouse::Client,
    rt: tokio::runtime::Runtime,
}

/// How long a query of the bench may take.
const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A database of one measurement ([`Stack::database`]), dropped with the guard.
pub struct Database<'a> {
    stack: &'a Stack,
    pub name: String,
    discarding: bool,
}

impl Database<'_> {
    /// The endpoint drops the INSERTs into its `events` unread (until the guard goes).
    pub fn discard_inserts(&mut self) -> anyhow::Result<()> {
        self.stack.discard_inserts(&self.name, true)?;
        self.discarding = true;
        Ok(())
    }
}

impl Drop for Database<'_> {
    fn drop(&mut self) {
        if self.discarding
            && let Err(e) = self.stack.discard_inserts(&self.name, false)
        {
            eprintln!(
                "bench: could not remove the discard rule of {}: {e:#}",
                self.name
            );
        }
        self.stack.drop_db(&self.name);
    }
}

/// The parts of `db.events`: how many its inserts created, and how many are left.
#[derive(Debug, Clone, Copy, clickhouse::Row, serde::Deserialize)]
pub struct Parts {
    pub total_parts: u64,
    pub active_parts: u64,
    pub level0_parts: u64,
    pub created_by_inserts: u64,
}

impl Stack {
    /// `scripts/stack up` with `env` (the `STACK_*` settings).
    pub fn up(env: Vec<(String, String)>) -> anyhow::Result<Stack> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = LocalStack::up(env).context("the bench's local stack")?;
        Ok(Stack {
            kafka: local.kafka.clone(),
            clickhouse: local.clickhouse.clone(),
            client: clickhouse_at(&local.clickhouse),
            local: Some(local),
            kafka_properties: Vec::new(),
            rt,
        })
    }

    /// Servers the bench does not start or stop (`CLICKHOUSE_USER` / `CLICKHOUSE_PASSWORD` for
    /// the bench's own queries).
    pub fn external(
        kafka: &str,
        clickhouse: &str,
        kafka_properties: &[(String, String)],
    ) -> anyhow::Result<Stack> {
        Ok(Stack {
            kafka: kafka.to_owned(),
            kafka_properties: kafka_properties.to_vec(),
            clickhouse: clickhouse.to_owned(),
            client: clickhouse_at(clickhouse),
            local: None,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// The pid of a service of the bench's own stack (`kafka`, `clickhouse`): the CPU of
    /// servers elsewhere is not measured.
    pub fn pid(&self, service: &str) -> Option<u32> {
        self.local.as_ref()?.pid(service)
    }

    /// Whether the endpoint can drop INSERTs unread (a rule of `scripts/clickhouse_http.py`;
    /// a ClickHouse server cannot): the sink-alone measurement needs it.
    pub fn discards(&self) -> bool {
        let probe = "bench_probe_of_discard.events";
        self.discard_inserts_into(probe, true).is_ok()
            && self.discard_inserts_into(probe, false).is_ok()
    }

    /// Runs `fut` to its end on the stack's runtime (the bench is otherwise synchronous).
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    pub fn delete_topic(&self, topic: &str) {
        if self.local.is_none() {
            if let Err(e) =
                self.block_on(delete_topic_on(&self.kafka, topic, &self.kafka_properties))
            {
                eprintln!("bench: {e}");
            }
            return;
        }
        let Some(tansu) = try_tansu_bin() else {
            eprintln!("bench: no tansu binary to delete topic {topic} with");
            return;
        };
        let _ = Command::new(tansu)
            .args(["topic", "delete", topic, "--broker"])
            .arg(format!("tcp://{}", self.kafka))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    pub fn execute(&self, sql: &str) -> anyhow::Result<()> {
        self.bounded(sql, self.client.query(sql).execute())
    }

    /// One row of a query.
    pub fn fetch_one<T>(&self, sql: &str) -> anyhow::Result<T>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        self.bounded(sql, self.client.query(sql).fetch_one::<T>())
    }

    /// A query's answer within a minute: a stuck endpoint must not hang the bench.
    fn bounded<T>(
        &self,
        sql: &str,
        query: impl std::future::Future<Output = clickhouse::error::Result<T>>,
    ) -> anyhow::Result<T> {
        // The timer is made inside the runtime (it needs one).
        match self.block_on(async { tokio::time::timeout(QUERY_TIMEOUT, query).await }) {
            Ok(answer) => answer.with_context(|| format!("ClickHouse: {sql}")),
            Err(_) => bail!("ClickHouse did not answer within {QUERY_TIMEOUT:?}: {sql}"),
        }
    }

    pub fn count(&self, db: &str) -> anyhow::Result<u64> {
        self.fetch_one(&format!("SELECT count() FROM {db}.events"))
    }

    /// A database with the real schema (`clickhouse/schema.sql`, rollups included), renamed;
    /// dropped (with its discard rule) when the guard goes, on success or on error.
    pub fn database(&self, db: &str) -> anyhow::Result<Database<'_>> {
        let database = Database {
            stack: self,
            name: db.to_owned(),
            discarding: false,
        };
        for statement in schema_statements(db) {
            self.execute(&statement)?;
        }
        Ok(database)
    }

    /// Drops `db` at once (`SYNC`): a plain DROP leaves the tables' data to be removed 8
    /// minutes later (`database_atomic_delay_before_drop_table_sec`), in the middle of a later
    /// measurement. The bench of 2026-12-04 without it: the latency runs with the default flush
    /// interval, 8 minutes after the throughput runs' drops, had 9.9 s and 14.0 s tails at 100
    /// and 1,000 events/s and fell behind at 50,000 (p99 7.4 s); on a fresh stack the same runs
    /// reached 5.4 s, 1.5 s and 2.6 s at most.
    pub fn drop_db(&self, db: &str) {
        if let Err(e) = self.execute(&format!("DROP DATABASE IF EXISTS {db} SYNC")) {
            eprintln!("bench: could not drop {db}: {e:#}");
        }
    }

    /// Makes the endpoint accept INSERTs into `db.events` and drop them unread (`on`), or
    /// stop doing so: a rule of `scripts/clickhouse_http.py`.
    pub fn discard_inserts(&self, db: &str, on: bool) -> anyhow::Result<()> {
        self.discard_inserts_into(&format!("{db}.events"), on)
    }

    /// Makes the endpoint refuse every INSERT into `db.events` with Code 243 NOT_ENOUGH_SPACE
    /// (a full disk) (`on`), or take them again.
    pub fn refuse_inserts(&self, db: &str, on: bool) -> anyhow::Result<()> {
        let table = format!("{db}.events");
        let rule = serde_json::json!({
            "match": table,
            "error_code": 243,
            "error_name": "NOT_ENOUGH_SPACE",
            "count": -1,
        });
        self.fault_rule(&table, on.then_some(rule))
    }

    fn discard_inserts_into(&self, table: &str, on: bool) -> anyhow::Result<()> {
        let rule = serde_json::json!({ "match": table, "discard": true });
        self.fault_rule(table, on.then_some(rule))
    }

    /// Sets the endpoint's fault rule for INSERTs whose statement holds `table` (`rule`), or
    /// removes it (None).
    fn fault_rule(&self, table: &str, rule: Option<serde_json::Value>) -> anyhow::Result<()> {
        let address = self
            .clickhouse
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let (status, body) = match rule {
            Some(rule) => self.block_on(http_request(
                address,
                "POST",
                "/_faults",
                rule.to_string().as_bytes(),
            ))?,
            None => {
                let path = format!("/_faults?match={table}");
                self.block_on(http_request(address, "DELETE", &path, b""))?
            }
        };
        if status != 200 {
            bail!("the endpoint's /_faults answered {status}: {body}");
        }
        Ok(())
    }

    /// Merges replace parts, and outdated parts are removed after a while, so counting level-0
    /// parts undercounts. Every part an insert creates takes the next block number of the
    /// table, and a merged part covers the block numbers of its sources: the active parts'
    /// block ranges add up to the parts the inserts created.
    pub fn parts(&self, db: &str) -> anyhow::Result<Parts> {
        self.fetch_one(&format!(
            "SELECT count() AS total_parts, countIf(active) AS active_parts, \
             countIf(level = 0) AS level0_parts, \
             toUInt64(sumIf(max_block_number - min_block_number + 1, active)) \
             AS created_by_inserts \
             FROM system.parts WHERE database = '{db}' AND table = 'events'"
        ))
    }
}
