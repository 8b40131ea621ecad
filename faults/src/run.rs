//! One scenario's world: its own topic, dead-letter topic, group and database on the stack,
//! the events it produced (offsets from the broker's delivery reports), the sink processes it
//! started, and the offset-based oracle that judges the end state.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use clickstream_producer::simulator::{Generated, Simulator, SimulatorConfig};
pub use clickstream_testkit::http_request;
use clickstream_testkit::{apply_schema, create_topic_on, free_port, repo_root, unique_name};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use serde::{Deserialize, Serialize};

/// Where the stack is and which sink binary to run.
#[derive(Clone, Debug)]
pub struct Stack {
    pub brokers: String,
    pub clickhouse_url: String,
    pub sink_bin: PathBuf,
    pub log_dir: PathBuf,
    /// The durable broker can be restarted without losing data (STACK_KAFKA_STORAGE).
    pub durable_broker: bool,
    /// The full sizes (scripts/faults) rather than the quick ones (scripts/test).
    pub full: bool,
}

/// A dead letter as read back from the dead-letter topic.
#[derive(Clone, Debug)]
pub struct Letter {
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    pub headers: BTreeMap<String, String>,
    pub payload_len: usize,
}

pub struct Run {
    pub name: String,
    pub stack: Stack,
    pub topic: String,
    pub dlq: String,
    pub group: String,
    pub database: String,
    pub client: clickhouse::Client,
    producer: FutureProducer,
    simulator: Mutex<Simulator>,
    produced: Mutex<BTreeMap<i32, BTreeSet<i64>>>,
    letters: Arc<Mutex<Vec<Letter>>>,
    reader: tokio::task::JoinHandle<()>,
    sinks_started: Mutex<u32>,
}

/// A running sink process.
pub struct SinkProcess {
    pub child: Child,
    pub http_port: u16,
    pub log: PathBuf,
}

/// A sink left running when its scenario ends early (an error, a failed assertion) is killed:
/// an orphan would go on consuming, and hold whatever its parent held (found: a leaked sink
/// of the memory-limit scenario kept running after its test).
impl Drop for SinkProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl SinkProcess {
    /// What the sink logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident memory so far (VmHWM), in MB.
    pub fn peak_rss_mb(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .map_or(0.0, |kb| (kb / 1024.0 * 10.0).round() / 10.0)
    }

    /// The HTTP status of `/ready` (0 while the sink does not answer).
    pub async fn ready_status(&self) -> u16 {
        http_request(
            &format!("127.0.0.1:{}", self.http_port),
            "GET",
            "/ready",
            b"",
        )
        .await
        .map_or(0, |(status, _)| status)
    }

    /// Sends a signal (STOP, CONT, ...) to the process.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        signal(self.child.id(), name)
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `limit` for the exit status.
    pub async fn terminate(self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        signal(self.child.id(), "TERM")?;
        self.exit_within(limit, "exit after SIGTERM").await
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits for the process to exit by itself (a failpoint), up to `limit`.
    pub async fn wait_exit(self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        self.exit_within(limit, "reach its failpoint").await
    }

    /// The exit status once the process exits; killed, and an error, after `limit`.
    async fn exit_within(
        mut self,
        limit: Duration,
        what: &str,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("the sink did not {what} within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One metric family summed over its labels, from the sink's `/metrics` (0 while the
    /// sink does not answer yet, or before the family has a sample).
    pub async fn metric(&self, name: &str) -> f64 {
        scrape(self.http_port)
            .await
            .ok()
            .and_then(|m| m.get(name).copied())
            .unwrap_or(0.0)
    }
}

pub fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

impl Run {
    /// Creates the topics and the database (the real schema) for scenario `name`.
    pub async fn new(name: &str, stack: &Stack, seed: u64, bad_ratio: f64) -> anyhow::Result<Run> {
        let prefix = format!("faults_{}", name.replace('-', "_"));
        let topic = unique_name(&prefix);
        let dlq = format!("{topic}_dlq");
        create_topic_on(&stack.brokers, &topic, 3)
            .await
            .map_err(anyhow::Error::msg)?;
        create_topic_on(&stack.brokers, &dlq, 1)
            .await
            .map_err(anyhow::Error::msg)?;
        let database = unique_name(&prefix);
        let base = clickhouse::Client::default().with_url(&stack.clickhouse_url);
        let client = apply_schema(&base, &database).await;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &stack.brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("message.max.bytes", "2000000")
            .create()?;
        let letters = Arc::new(Mutex::new(Vec::new()));
        let reader = tokio::spawn(read_dead_letters(
            stack.brokers.clone(),
            dlq.clone(),
            letters.clone(),
        ));
        std::fs::create_dir_all(stack.log_dir.join(name))?;
        Ok(Run {
            name: name.to_owned(),
            stack: stack.clone(),
            group: format!("{topic}_group"),
            topic,
            dlq,
            database,
            client,
            producer,
            simulator: Mutex::new(Simulator::new(SimulatorConfig {
                seed,
                bad_ratio,
                ..SimulatorConfig::default()
            })),
            produced: Mutex::new(BTreeMap::new()),
            letters,
            reader,
            sinks_started: Mutex::new(0),
        })
    }

    /// Produces `count` simulated messages and waits for every delivery report (in rounds of
    /// at most 50,000: the producer's queue holds 100,000 messages).
    pub async fn produce(&self, count: usize) -> anyhow::Result<()> {
        let mut left = count;
        while left > 0 {
            let round = left.min(50_000);
            let messages: Vec<(String, Vec<u8>)> = {
                let mut simulator = self.simulator.lock().expect("simulator lock");
                (0..round)
                    .map(|_| Generated::into_key_and_payload(simulator.next(Utc::now())))
                    .collect()
            };
            self.produce_messages(messages).await?;
            left -= round;
        }
        Ok(())
    }

    /// Produces these keyed payloads and records their offsets.
    pub async fn produce_messages(&self, messages: Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
        self.produce_timed(messages.into_iter().map(|(k, p)| (k, p, None)).collect())
            .await
    }

    /// Produces keyed payloads with their Kafka timestamps (milliseconds; None: now).
    pub async fn produce_timed(
        &self,
        messages: Vec<(String, Vec<u8>, Option<i64>)>,
    ) -> anyhow::Result<()> {
        let mut deliveries = Vec::with_capacity(messages.len());
        for (key, payload, timestamp) in &messages {
            let mut record = FutureRecord::to(&self.topic).key(key).payload(payload);
            if let Some(timestamp) = timestamp {
                record = record.timestamp(*timestamp);
            }
            let delivery = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?;
            deliveries.push(delivery);
        }
        for delivery in deliveries {
            let delivered = delivery
                .await
                .context("delivery future")?
                .map_err(|(e, _)| anyhow::anyhow!("delivery failed: {e}"))?;
            self.produced
                .lock()
                .expect("produced lock")
                .entry(delivered.partition)
                .or_default()
                .insert(delivered.offset);
        }
        Ok(())
    }

    /// Simulated events that happened at `times` (keyed, JSON), each with a Kafka timestamp one
    /// second after its event time, as a producer backfilling history would send them.
    pub fn events_at(
        &self,
        times: &[chrono::DateTime<Utc>],
    ) -> Vec<(String, Vec<u8>, Option<i64>)> {
        let mut simulator = self.simulator.lock().expect("simulator lock");
        times
            .iter()
            .map(|&at| {
                let (key, payload) = Generated::into_key_and_payload(simulator.next(at));
                (key, payload, Some(at.timestamp_millis() + 1_000))
            })
            .collect()
    }

    /// Produces `rate` messages per second for `seconds`, in 20 ms steps.
    pub async fn stream(&self, rate: u64, seconds: u64) -> anyhow::Result<()> {
        let step = Duration::from_millis(20);
        let per_step = (rate / 50).max(1) as usize;
        let start = tokio::time::Instant::now();
        for n in 0..seconds * 50 {
            tokio::time::sleep_until(start + step * n as u32).await;
            self.produce(per_step).await?;
        }
        Ok(())
    }

    /// Runs one statement on the run's database.
    pub async fn sql(&self, statement: &str) -> anyhow::Result<()> {
        self.client
            .query(statement)
            .execute()
            .await
            .with_context(|| statement.to_owned())
    }

    /// Injects a fault for INSERTs into this run's events table (see
    /// scripts/clickhouse_http.py): `rule` without `match`, e.g. {"error_code": 243, "count": -1}.
    pub async fn inject(&self, mut rule: serde_json::Value) -> anyhow::Result<()> {
        if rule.get("match").is_none() {
            rule["match"] = format!("{}.events", self.database).into();
        }
        let address = self
            .stack
            .clickhouse_url
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let (status, body) =
            http_request(address, "POST", "/_faults", rule.to_string().as_bytes()).await?;
        anyhow::ensure!(status == 200, "fault injection refused ({status}): {body}");
        Ok(())
    }

    /// Removes this run's injected fault for its events table.
    pub async fn clear_fault(&self) -> anyhow::Result<()> {
        self.clear_fault_matching(&format!("{}.events", self.database))
            .await
    }

    /// Removes an injected fault by its `match`.
    pub async fn clear_fault_matching(&self, matching: &str) -> anyhow::Result<()> {
        let address = self
            .stack
            .clickhouse_url
            .trim_start_matches("http://")
            .trim_end_matches('/');
        // Percent-encoded: a match may hold spaces, `&` or `=`.
        let encoded: String = matching
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let path = format!("/_faults?match={encoded}");
        let (status, body) = http_request(address, "DELETE", &path, b"").await?;
        anyhow::ensure!(
            status == 200,
            "clearing the fault failed ({status}): {body}"
        );
        Ok(())
    }

    /// The dead letters read back so far.
    pub fn letters(&self) -> Vec<Letter> {
        self.letters.lock().expect("letters lock").clone()
    }

    pub fn produced_total(&self) -> u64 {
        self.produced
            .lock()
            .expect("produced lock")
            .values()
            .map(|s| s.len() as u64)
            .sum()
    }

    /// Starts a sink process for this run (its log goes to the run's log folder).
    pub fn start_sink(
        &self,
        extra_env: &[(&str, String)],
        args: &[&str],
    ) -> anyhow::Result<SinkProcess> {
        let http_port = free_port();
        let n = {
            let mut started = self.sinks_started.lock().expect("sinks lock");
            *started += 1;
            *started
        };
        let log_path = self
            .stack
            .log_dir
            .join(&self.name)
            .join(format!("sink-{n:03}.log"));
        let log = File::create(&log_path)?;
        let child = Command::new(&self.stack.sink_bin)
            .args(args)
            .env("KAFKA_BROKERS", &self.stack.brokers)
            .env("CLICKHOUSE_URL", &self.stack.clickhouse_url)
            .env("CLICKSTREAM_SINK_TOPIC", &self.topic)
            .env("CLICKSTREAM_SINK_GROUP", &self.group)
            .env("CLICKSTREAM_SINK_DLQ_TOPIC", &self.dlq)
            .env("CLICKSTREAM_SINK_DATABASE", &self.database)
            .env("CLICKSTREAM_SINK_FLUSH_INTERVAL_MS", "1000")
            .env("CLICKSTREAM_SINK_RETRY_MAX_MS", "2000")
            .env(
                "CLICKSTREAM_SINK_HTTP_ADDR",
                format!("127.0.0.1:{http_port}"),
            )
            .env("CLICKSTREAM_SINK_LOG_FORMAT", "json")
            // A killed member holds its partitions until its session times out: keep it short.
            .env("CLICKSTREAM_SINK_KAFKA__SESSION.TIMEOUT.MS", "4000")
            .env("CLICKSTREAM_SINK_KAFKA__HEARTBEAT.INTERVAL.MS", "400")
            .env("RUST_LOG", "info,rdkafka=warn")
            .envs(extra_env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.stack.sink_bin.display()))?;
        Ok(SinkProcess {
            child,
            http_port,
            log: log_path,
        })
    }

    /// Waits until ClickHouse and the dead-letter topic together account for every produced
    /// offset (distinct), or `limit` passes.
    pub async fn wait_accounted(&self, limit: Duration) -> anyhow::Result<()> {
        let want = self.produced_total();
        let deadline = Instant::now() + limit;
        loop {
            let stored: u64 = self
                .client
                .query("SELECT uniqExact(kafka_partition, kafka_offset) FROM events")
                .fetch_one()
                .await
                .unwrap_or(0);
            let letters = self
                .letters
                .lock()
                .expect("letters lock")
                .iter()
                .map(|l| (l.partition, l.offset))
                .collect::<BTreeSet<_>>()
                .len() as u64;
            if stored + letters >= want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "after {limit:?}: {stored} offsets in ClickHouse + {letters} dead letters < {want} produced"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The oracle: per partition, the offsets in ClickHouse plus those in the dead-letter topic
    /// are exactly the produced ones (no gap, no repeat), and every rollup equals the raw table.
    /// The product's own `clickstream-sink verify` of this run's topic, group and database.
    pub async fn product_verify(&self) -> anyhow::Result<clickstream_sink::ops::verify::Report> {
        let settings = clickstream_sink::Settings {
            brokers: self.stack.brokers.clone(),
            clickhouse_url: self.stack.clickhouse_url.clone(),
            topic: self.topic.clone(),
            group: self.group.clone(),
            dlq_topic: self.dlq.clone(),
            database: self.database.clone(),
            ..clickstream_sink::Settings::default()
        };
        clickstream_sink::ops::verify::verify(&settings, None)
            .await
            .context("clickstream-sink verify")
    }

    pub async fn verdict(&self) -> anyhow::Result<Verdict> {
        // Give late dead-letter reads a moment.
        tokio::time::sleep(Duration::from_secs(2)).await;
        #[derive(Debug, Deserialize, clickhouse::Row)]
        struct Stored {
            kafka_partition: i32,
            kafka_offset: i64,
        }
        let rows = self
            .client
            .query("SELECT kafka_partition, kafka_offset FROM events")
            .fetch_all::<Stored>()
            .await?;
        let letters = self.letters.lock().expect("letters lock").clone();
        let produced = self.produced.lock().expect("produced lock").clone();

        let mut seen: BTreeMap<(i32, i64), u32> = BTreeMap::new();
        for row in &rows {
            *seen
                .entry((row.kafka_partition, row.kafka_offset))
                .or_default() += 1;
        }
        // The dead-letter topic is keyed by source partition and offset: a letter written
        // again on a replay is a repeat (counted), not a second copy of the event.
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        let mut lettered: BTreeSet<(i32, i64)> = BTreeSet::new();
        let mut dead_letter_repeats = 0;
        for letter in &letters {
            if !lettered.insert((letter.partition, letter.offset)) {
                dead_letter_repeats += 1;
                continue;
            }
            *seen.entry((letter.partition, letter.offset)).or_default() += 1;
            *reasons.entry(letter.reason.clone()).or_default() += 1;
        }
        let duplicates: u64 = seen.values().map(|&n| u64::from(n.saturating_sub(1))).sum();
        let produced_set: BTreeSet<(i32, i64)> = produced
            .iter()
            .flat_map(|(p, offsets)| offsets.iter().map(move |o| (*p, *o)))
            .collect();
        let missing = produced_set
            .iter()
            .filter(|k| !seen.contains_key(k))
            .count() as u64;
        let unexpected = seen.keys().filter(|k| !produced_set.contains(k)).count() as u64;
        // Produced offsets form a contiguous range per partition (the topic is fresh).
        let gaps_in_produced: u64 = produced
            .values()
            .map(|offsets| {
                let span = offsets.last().map_or(0, |l| l + 1) as u64;
                span - offsets.len() as u64
            })
            .sum();

        // The rollups against the raw table: the product's own check (`clickstream-sink
        // verify`), window by window; per rollup, its totals over all its checks.
        let checks = clickstream_sink::ops::verify::check_rollups(
            &self.client,
            &self.database,
            "events",
            None,
        )
        .await?;
        let mut rollups: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut rollups_equal = true;
        for check in &checks {
            rollups_equal &= check.equal();
            let entry = rollups.entry(check.rollup.clone()).or_insert((0, 0));
            // The first check of a rollup is its count (kafka_progress: rows; events_1m: 'all').
            if entry == &(0, 0) {
                *entry = (check.rollup_total as u64, check.raw_total as u64);
            }
        }
        let product = self.product_verify().await?;
        Ok(Verdict {
            product_verify_ok: product.ok(),
            product_verify_problems: product.problems,
            produced: produced_set.len() as u64,
            rows_in_clickhouse: rows.len() as u64,
            dead_lettered: lettered.len() as u64,
            dead_letter_repeats,
            dead_letter_reasons: reasons,
            duplicates,
            missing,
            unexpected,
            gaps_in_produced,
            rollups: rollups
                .into_iter()
                .map(|(name, (got, want))| {
                    (
                        name,
                        RollupCheck {
                            rollup: got,
                            raw: want,
                        },
                    )
                })
                .collect(),
            rollups_equal,
            exact: duplicates == 0 && missing == 0 && unexpected == 0 && gaps_in_produced == 0,
        })
    }

    /// Drops the scenario's database (topics stay: tansu cannot delete them cheaply).
    pub async fn cleanup(self) {
        self.reader.abort();
        let _ = self
            .client
            .query(&format!("DROP DATABASE IF EXISTS {}", self.database))
            .execute()
            .await;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RollupCheck {
    pub rollup: u64,
    pub raw: u64,
}

/// The end state of a scenario, judged offset by offset.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub produced: u64,
    pub rows_in_clickhouse: u64,
    /// Distinct source offsets in the dead-letter topic.
    pub dead_lettered: u64,
    /// Letters written again for an offset already there (replays; keyed, so harmless).
    pub dead_letter_repeats: u64,
    pub dead_letter_reasons: BTreeMap<String, u64>,
    /// Offsets found more than once (in the table, or both in the table and the dead-letter
    /// topic).
    pub duplicates: u64,
    /// Produced offsets found nowhere.
    pub missing: u64,
    /// Offsets found that were never produced.
    pub unexpected: u64,
    /// Holes in the produced offsets themselves (0 on a fresh topic).
    pub gaps_in_produced: u64,
    pub rollups: BTreeMap<String, RollupCheck>,
    pub rollups_equal: bool,
    /// Every produced offset exactly once in ClickHouse or the dead-letter topic.
    pub exact: bool,
    /// What the product's own `clickstream-sink verify` reported on the same run (it knows
    /// only Kafka and ClickHouse, not what was produced): whether all is well, its problems.
    pub product_verify_ok: bool,
    pub product_verify_problems: Vec<String>,
}

async fn read_dead_letters(brokers: String, dlq: String, letters: Arc<Mutex<Vec<Letter>>>) {
    let consumer: StreamConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique_name("faults_dlq_reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
    {
        Ok(consumer) => consumer,
        Err(e) => {
            eprintln!("faults: dead-letter reader: {e}");
            return;
        }
    };
    if let Err(e) = consumer.subscribe(&[&dlq]) {
        eprintln!("faults: dead-letter reader: {e}");
        return;
    }
    loop {
        let Ok(message) = consumer.recv().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        if let Some(hs) = message.headers() {
            for h in hs.iter() {
                headers.insert(
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        let letter = Letter {
            partition: headers
                .get("source_partition")
                .and_then(|p| p.parse().ok())
                .unwrap_or(-1),
            offset: headers
                .get("source_offset")
                .and_then(|o| o.parse().ok())
                .unwrap_or(-1),
            reason: headers.get("reason").cloned().unwrap_or_default(),
            payload_len: message.payload().map_or(0, <[u8]>::len),
            headers,
        };
        letters.lock().expect("letters lock").push(letter);
    }
}

/// The sink's `/metrics`, each family summed over its labels.
pub async fn scrape(port: u16) -> anyhow::Result<BTreeMap<String, f64>> {
    Ok(clickstream_testkit::scrape_metrics(port).await?)
}

/// Kills one service of the local stack (SIGKILL to its process group, via its pid file);
/// [`start_stack`] brings it back (`scripts/stack up` starts only what is not running).
pub fn kill_stack_service(service: &str) -> anyhow::Result<()> {
    let data_dir =
        std::env::var("STACK_DATA_DIR").context("STACK_DATA_DIR (scripts/faults sets it)")?;
    let pid = clickstream_testkit::stack_service_pid(data_dir.as_ref(), service)
        .with_context(|| format!("no pid file of {service} under {data_dir}/run"))?
        .to_string();
    // The stack starts services in their own process group (setsid).
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status();
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    Ok(())
}

pub async fn start_stack() -> anyhow::Result<()> {
    let status = tokio::process::Command::new(repo_root().join("scripts/stack"))
        .arg("up")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .await?;
    anyhow::ensure!(status.success(), "scripts/stack up failed");
    Ok(())
}
