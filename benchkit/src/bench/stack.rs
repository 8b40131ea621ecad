//! The bench's private local stack (`scripts/stack` on its own ports and data directory) and
//! what the bench asks of it: databases with the real schema, counts, parts, topics, the
//! endpoint's discard rule.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use clickstream_testkit::{clickhouse_at, http_request, repo_root, schema_statements, tansu_bin};

/// A local stack started by [`Stack::up`] and stopped by [`Stack::down`] (or on drop).
pub struct Stack {
    env: Vec<(String, String)>,
    pub kafka: String,
    pub clickhouse: String,
    client: clickhouse::Client,
    rt: tokio::runtime::Runtime,
    running: bool,
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
    /// `scripts/stack up` with `env` (the `STACK_*` settings); reads the broker and the
    /// endpoint from the `export` lines it prints.
    pub fn up(env: Vec<(String, String)>) -> anyhow::Result<Stack> {
        let output = Command::new(repo_root().join("scripts/stack"))
            .arg("up")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .context("run scripts/stack up")?;
        let mut stack = Stack {
            env,
            kafka: String::new(),
            clickhouse: String::new(),
            client: clickhouse::Client::default(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            running: true,
        };
        if !output.status.success() {
            bail!("scripts/stack up failed (above)");
        }
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if let Some((key, value)) = line.strip_prefix("export ").and_then(|l| l.split_once('='))
            {
                match key {
                    "KAFKA_BROKERS" => stack.kafka = value.to_owned(),
                    "CLICKHOUSE_URL" => stack.clickhouse = value.to_owned(),
                    _ => {}
                }
            }
        }
        if stack.kafka.is_empty() || stack.clickhouse.is_empty() {
            bail!("scripts/stack up printed no KAFKA_BROKERS / CLICKHOUSE_URL");
        }
        stack.client = clickhouse_at(&stack.clickhouse);
        Ok(stack)
    }

    pub fn down(&mut self) {
        if std::mem::take(&mut self.running) {
            stop(&self.env);
        }
    }

    /// The pid of a stack service (`kafka`, `clickhouse`) from its pid file.
    pub fn pid(&self, service: &str) -> Option<u32> {
        let dir = self
            .env
            .iter()
            .find(|(k, _)| k == "STACK_DATA_DIR")
            .map(|(_, v)| PathBuf::from(v))?;
        std::fs::read_to_string(dir.join("run").join(format!("{service}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Runs `fut` to its end on the stack's runtime (the bench is otherwise synchronous).
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    pub fn delete_topic(&self, topic: &str) {
        let _ = Command::new(tansu_bin())
            .args(["topic", "delete", topic, "--broker"])
            .arg(format!("tcp://{}", self.kafka))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    pub fn execute(&self, sql: &str) -> anyhow::Result<()> {
        self.block_on(self.client.query(sql).execute())
            .with_context(|| format!("ClickHouse: {sql}"))
    }

    /// One row of a query.
    pub fn fetch_one<T>(&self, sql: &str) -> anyhow::Result<T>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        self.block_on(self.client.query(sql).fetch_one::<T>())
            .with_context(|| format!("ClickHouse: {sql}"))
    }

    pub fn count(&self, db: &str) -> anyhow::Result<u64> {
        self.fetch_one(&format!("SELECT count() FROM {db}.events"))
    }

    /// A database with the real schema (`clickhouse/schema.sql`, rollups included), renamed.
    pub fn create_db(&self, db: &str) -> anyhow::Result<()> {
        for statement in schema_statements(db) {
            self.execute(&statement)?;
        }
        Ok(())
    }

    pub fn drop_db(&self, db: &str) {
        if let Err(e) = self.execute(&format!("DROP DATABASE IF EXISTS {db}")) {
            eprintln!("bench: could not drop {db}: {e:#}");
        }
    }

    /// Makes the endpoint accept INSERTs into `db.events` and drop them unread (`on`), or
    /// stop doing so: a rule of `scripts/clickhouse_http.py`.
    pub fn discard_inserts(&self, db: &str, on: bool) -> anyhow::Result<()> {
        let address = self
            .clickhouse
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let table = format!("{db}.events");
        let (status, body) = if on {
            let rule = serde_json::json!({ "match": table, "discard": true }).to_string();
            self.block_on(http_request(address, "POST", "/_faults", rule.as_bytes()))?
        } else {
            let path = format!("/_faults?match={table}");
            self.block_on(http_request(address, "DELETE", &path, b""))?
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

impl Drop for Stack {
    fn drop(&mut self) {
        self.down();
    }
}

/// `scripts/stack down` with the stack's `STACK_*` settings.
pub fn stop(env: &[(String, String)]) {
    let _ = Command::new(repo_root().join("scripts/stack"))
        .arg("down")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .status();
}
