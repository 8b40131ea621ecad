//! The soak (`scripts/soak`): the product run the way an operator runs it, for a long time,
//! with a working day's operations on the way; the processes sampled throughout, exactly once
//! checked at the end.
//!
//! The producer streams at a fixed rate with poison and late events (as `scripts/demo`), one
//! sink (the demo's flags) writes a fresh database with the full schema, and the window
//! publisher reads its rollups. At fixed fractions of the run ([`OPERATIONS`]) a second sink
//! joins the group and leaves it again, the table is ALTERed under the sinks, the sink is
//! SIGKILLed and started again, and ClickHouse refuses its INSERTs (a full disk) for a
//! twentieth of the run (90 s of the default 30 minutes: longer than the sink's 60 s stall
//! timeout, so it must report itself stalled, then recover by itself). Every sample records each process's resident memory, the
//! sink's open files, threads, `/metrics` series and lag, and the rows queryable. At the end,
//! once the producer has stopped: every event delivered that is not poison is in the table
//! exactly once (by its Kafka partition and offset), the sinks exited cleanly, and no process
//! logged an error but the sink's stall report during the outage.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clickstream_testkit::{free_port, metric_families, scrape_metrics_text};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use super::measure::{Bench, POLL, Sink, last_json, say};
use super::procs::{self, Proc, round};

/// Poison and late events of the stream, as fractions (the demo streams them too).
const BAD_RATIO: &str = "0.001";
const LATE_RATIO: &str = "0.01";
/// The sinks' own flags: the demo's.
const SINK_FLAGS: [&str; 2] = ["--flush-interval-ms", "1000"];
/// The column the ALTER adds.
const ADDED_COLUMN: &str = "soak_note";
/// The sink's `stall_timeout_ms` (its default: the soak runs the demo's settings).
const STALL_TIMEOUT_S: f64 = 60.0;
/// An outage at least this long must have refused the sink's INSERTs (its retries grew): with
/// a 1 s flush interval it tries one a second, once it owns partitions again after the kill
/// (up to a 10 s session timeout for the killed member, then the join).
const MUST_RETRY_S: f64 = 20.0;
/// What the sink logs (at ERROR) when it declares itself stalled, and when it recovers.
const STALLED: &str = "the sink is stalled";
const RECOVERED: &str = "the sink makes progress again";

/// An operator's operation during the soak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A second sink joins the group: a rebalance, partitions move to it.
    Join,
    /// The second sink stops with SIGTERM: a rebalance, its partitions move back.
    Leave,
    /// A column is added to `events` under the running sink.
    Alter,
    /// The sink is SIGKILLed and started again at once: replays from its committed offsets.
    Kill,
    /// ClickHouse refuses every INSERT into `events` (Code 243, a full disk) from now on.
    Outage,
    /// ClickHouse takes them again.
    Restore,
}

/// The operations, each at its fraction of the run.
pub const OPERATIONS: [(f64, Operation); 6] = [
    (0.20, Operation::Join),
    (0.35, Operation::Leave),
    (0.50, Operation::Alter),
    (0.65, Operation::Kill),
    (0.78, Operation::Outage),
    (0.83, Operation::Restore),
];

/// The outage's length in a run of `seconds`.
fn outage_s(seconds: f64) -> f64 {
    let at = |wanted| {
        OPERATIONS
            .iter()
            .find(|(_, op)| *op == wanted)
            .map_or(0.0, |(at, _)| *at)
    };
    (at(Operation::Restore) - at(Operation::Outage)) * seconds
}

impl Operation {
    pub fn describe(self) -> String {
        match self {
            Operation::Join => "a second sink joins the group (rebalance)".to_owned(),
            Operation::Leave => "the second sink stops with SIGTERM (rebalance)".to_owned(),
            Operation::Alter => format!(
                "`ALTER TABLE events ADD COLUMN {ADDED_COLUMN} String DEFAULT ''` under the sink"
            ),
            Operation::Kill => "the sink is SIGKILLed and started again at once".to_owned(),
            Operation::Outage => {
                "ClickHouse refuses every INSERT into `events` (Code 243 NOT_ENOUGH_SPACE)"
                    .to_owned()
            }
            Operation::Restore => "ClickHouse takes the INSERTs again".to_owned(),
        }
    }
}

/// One look at the processes.
struct Sample {
    t_s: f64,
    sink_rss_mb: Option<f64>,
    second_rss_mb: Option<f64>,
    windows_rss_mb: Option<f64>,
    producer_rss_mb: Option<f64>,
    clickhouse_rss_mb: Option<f64>,
    kafka_rss_mb: Option<f64>,
    sink_fds: Option<usize>,
    sink_threads: Option<usize>,
    /// Lines of the sink's `/metrics` that are samples (not comments).
    sink_series: Option<usize>,
    /// The sink's `clickstream_sink_consumer_lag`, summed over its partitions.
    lag: Option<f64>,
    /// The sink's `clickstream_sink_stalled` (1: it reports itself stalled).
    stalled: Option<f64>,
    /// The sink's `clickstream_sink_retries_total`, every operation together.
    retries: Option<f64>,
    rows: Option<u64>,
}

impl Sample {
    fn json(&self) -> Value {
        let mb = |v: Option<f64>| v.map(|v| round(v, 1));
        json!({
            "t_s": round(self.t_s, 1),
            "sink_rss_mb": mb(self.sink_rss_mb),
            "second_sink_rss_mb": mb(self.second_rss_mb),
            "windows_rss_mb": mb(self.windows_rss_mb),
            "producer_rss_mb": mb(self.producer_rss_mb),
            "clickhouse_rss_mb": mb(self.clickhouse_rss_mb),
            "kafka_rss_mb": mb(self.kafka_rss_mb),
            "sink_fds": self.sink_fds,
            "sink_threads": self.sink_threads,
            "sink_series": self.sink_series,
            "lag": self.lag,
            "stalled": self.stalled,
            "retries": self.retries,
            "rows": self.rows,
        })
    }
}

fn entries(dir: String) -> Option<usize> {
    std::fs::read_dir(dir).ok().map(Iterator::count)
}

/// A process's log: its lines at ERROR and at WARN, and the distinct messages of those (the
/// time stamp left out), at most `keep`.
fn log_findings(path: &PathBuf, keep: usize) -> (usize, usize, Vec<String>) {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let (mut errors, mut warnings, mut messages) = (0, 0, Vec::<String>::new());
    for line in text.lines() {
        let level = if line.contains(" ERROR ") {
            errors += 1;
            "ERROR"
        } else if line.contains(" WARN ") {
            warnings += 1;
            "WARN"
        } else {
            continue;
        };
        let message = line
            .split_once(&format!(" {level} "))
            .map_or(line, |(_, rest)| rest);
        let message: String = format!("{level} {message}").chars().take(200).collect();
        if messages.len() < keep && !messages.contains(&message) {
            messages.push(message);
        }
    }
    (errors, warnings, messages)
}

/// How long after ClickHouse takes INSERTs again a stall report still counts as the outage's
/// (the sink checks once a second; a report logged just as the outage ends is written late).
const STALL_REPORT_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// Lines of a sink's log that report it stalled (at ERROR) from `window.0` to `window.1` plus
/// [`STALL_REPORT_GRACE`] (the outage's: any other stall report is an error like another),
/// and lines that report it recovered.
fn stall_lines(path: &PathBuf, window: Option<(DateTime<Utc>, DateTime<Utc>)>) -> (usize, usize) {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let in_window = |line: &str| {
        let at = line
            .split_whitespace()
            .next()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
        matches!((window, at), (Some((from, to)), Some(at)) if at >= from && at <= to + STALL_REPORT_GRACE)
    };
    let stalled = text
        .lines()
        .filter(|l| l.contains(" ERROR ") && l.contains(STALLED) && in_window(l));
    let recovered = text.lines().filter(|l| l.contains(RECOVERED));
    (stalled.count(), recovered.count())
}

/// The outage under way: its rule is removed when it ends, or when the soak stops early.
struct Refusing<'a> {
    stack: &'a super::stack::Stack,
    db: String,
    ended: bool,
}

impl Refusing<'_> {
    fn end(mut self) -> anyhow::Result<()> {
        self.ended = true;
        self.stack.refuse_inserts(&self.db, false)
    }
}

impl Drop for Refusing<'_> {
    fn drop(&mut self) {
        if !self.ended
            && let Err(e) = self.stack.refuse_inserts(&self.db, false)
        {
            eprintln!("soak: could not end the outage of {}: {e:#}", self.db);
        }
    }
}

/// What the outage showed.
#[derive(Debug, Clone, Default)]
struct Outage {
    /// Not run: this ClickHouse has no fault rules (a server, not the stack's endpoint).
    skipped: bool,
    /// It ran to its end (ClickHouse took INSERTs again).
    ran: bool,
    /// How long it lasted, as measured.
    seconds: f64,
    /// The samples' interval.
    sample_every_s: f64,
    /// ERROR lines of the sinks saying they are stalled during the outage (or just after),
    /// and lines saying they recovered.
    stall_reports: usize,
    recoveries: usize,
    /// Samples in which the sink's `clickstream_sink_stalled` was 1, and its last value.
    stalled_samples: usize,
    stalled_at_end: Option<f64>,
    /// The running sink's retries at the end (since its restart, every cause).
    retries_at_end: Option<f64>,
    /// Its retries of INSERTs from the outage's start to its end (`None`: not measured, its
    /// `/metrics` did not answer).
    retries_during: Option<f64>,
}

impl Outage {
    fn json(&self) -> Value {
        json!({
            "skipped": self.skipped,
            "ran": self.ran,
            "seconds": round(self.seconds, 1),
            "stall_timeout_s": STALL_TIMEOUT_S,
            "stall_reports": self.stall_reports,
            "recoveries": self.recoveries,
            "stalled_samples": self.stalled_samples,
            "stalled_at_end": self.stalled_at_end,
            "retries_at_end": self.retries_at_end,
            "retries_during": self.retries_during,
            "must_retry_s": MUST_RETRY_S,
        })
    }

    /// Long enough that the sink must have tried an INSERT during it.
    fn must_retry(&self) -> bool {
        self.ran && self.seconds >= MUST_RETRY_S
    }

    /// Long enough that the sink must declare itself stalled, and stay so for a samples'
    /// interval and 5 s more, so that one sample at least sees its gauge at 1.
    fn must_stall(&self) -> bool {
        self.ran && self.seconds >= STALL_TIMEOUT_S + self.sample_every_s + 5.0
    }
}

/// The retries of INSERTs in a sink's `/metrics` text (no series: it never retried one).
fn insert_retries(text: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with("clickstream_sink_retries_total{") && l.contains("operation=\"insert\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A sink that exited without being asked to stops the soak at once, with the end of its log:
/// nothing after it would mean anything.
fn stopped_on_its_own(name: &str, sink: &mut Sink) -> anyhow::Result<()> {
    match sink.proc.exited() {
        None => Ok(()),
        Some(code) => bail!(
            "soak: the {name} exited {code} on its own; the end of its log {}:\n{}",
            sink.proc.log.display(),
            procs::log_tail(&sink.proc.log)
        ),
    }
}

impl Bench<'_> {
    /// The soak: `minutes` of the producer at `rate` events/s with the operations on the way
    /// (see the module). Fails when it cannot run or a sink exits on its own; the verdict is in
    /// the result.
    pub fn soak(
        &self,
        minutes: f64,
        rate: u64,
        windows_bin: &std::path::Path,
    ) -> anyhow::Result<Value> {
        let run = &self.run;
        let (topic, db, group) = (
            format!("bench-soak-{run}"),
            format!("bench_soak_{run}"),
            format!("bench-soak-{run}"),
        );
        let windows_topic = format!("bench-soak-windows-{run}");
        let flags: Vec<String> = SINK_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        let seconds = (minutes * 60.0).round().max(60.0) as u64;
        let every = Duration::from_secs((seconds / 120).clamp(5, 30));
        // The topic, with one warm-up event: once that is queryable, the sink has joined.
        self.produce(&topic, "soak-warmup", &["--rate", "max", "--count", "1"])?;
        let database = self.stack.database(&db)?;
        let mut logs: Vec<(String, PathBuf)> = Vec::new();
        let mut sink = self
            .start_sinks("soak", &topic, &group, &db, 1, &flags)?
            .remove(0);
        logs.push(("sink".into(), sink.proc.log.clone()));
        let t0 = Instant::now();
        while self.stack.count(&db)? < 1 {
            if sink.proc.exited().is_some() || t0.elapsed() > Duration::from_secs(120) {
                bail!(
                    "soak: the sink did not insert the warm-up event; see {}",
                    sink.proc.log.display()
                );
            }
            std::thread::sleep(POLL);
        }
        let windows_port = free_port();
        let mut windows_argv = self.argv(windows_bin, &windows_topic);
        windows_argv.extend(
            [
                "--window",
                "1m",
                "--database",
                &db,
                "--clickhouse-url",
                &self.stack.clickhouse,
                "--http-addr",
                &format!("127.0.0.1:{windows_port}"),
            ]
            .map(String::from),
        );
        let windows = procs::start(&windows_argv, &self.log("soak-windows"), false)?;
        logs.push(("windows".into(), windows.log.clone()));
        say(&format!(
            "soak: {rate} events/s for {seconds} s, a sample every {} s; an outage of {:.0} s; \
             operations at {}",
            every.as_secs(),
            outage_s(seconds as f64),
            OPERATIONS
                .iter()
                .map(|(at, op)| format!("{:.0} s ({op:?})", at * seconds as f64))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let producer = procs::start(
            &self.producer_argv(
                &topic,
                &[
                    "--rate",
                    &rate.to_string(),
                    "--duration",
                    &format!("{seconds}s"),
                    "--bad-ratio",
                    BAD_RATIO,
                    "--late-ratio",
                    LATE_RATIO,
                ],
            ),
            &self.log("soak-producer"),
            true,
        )?;
        let producer_pid = producer.pid();
        let start = Instant::now();
        let (mut samples, mut operations) = (Vec::<Sample>::new(), Vec::<Value>::new());
        let (mut second, mut next_op, mut sink_exits) = (None::<Sink>, 0, Vec::<Value>::new());
        // The outage needs the endpoint's fault rules (a ClickHouse server has none): without
        // them it is skipped, and said so.
        let can_refuse = self.stack.discards();
        let mut refusing: Option<Refusing<'_>> = None;
        // When the outage began and ended: run time (s) and the clock the logs use.
        let (mut outage_began, mut outage_ended) = (None::<(f64, DateTime<Utc>)>, None);
        // The sink's retries then (the same sink throughout: the kill comes before).
        let (mut retries_began, mut retries_ended) = (None::<f64>, None::<f64>);
        let mut next_sample = start;
        while start.elapsed() < Duration::from_secs(seconds) {
            if procs::interrupted() {
                bail!("interrupted");
            }
            stopped_on_its_own("sink", &mut sink)?;
            if let Some(second) = second.as_mut() {
                stopped_on_its_own("second sink", second)?;
            }
            let t = start.elapsed().as_secs_f64();
            while let Some(&(at, op)) = OPERATIONS.get(next_op)
                && t >= at * seconds as f64
            {
                next_op += 1;
                let began = Instant::now();
                match op {
                    Operation::Join => {
                        let joined = self
                            .start_sinks("soak-second", &topic, &group, &db, 1, &flags)?
                            .remove(0);
                        logs.push(("second sink".into(), joined.proc.log.clone()));
                        second = Some(joined);
                    }
                    Operation::Leave => {
                        if let Some(leaving) = second.take() {
                            let exit = leaving.proc.reap(Duration::from_secs(60))?;
                            sink_exits.push(
                                json!({"sink": "second", "code": exit.code, "how": "SIGTERM"}),
                            );
                        }
                    }
                    Operation::Alter => self.stack.execute(&format!(
                        "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS {ADDED_COLUMN} String \
                         DEFAULT ''"
                    ))?,
                    Operation::Kill => {
                        sink.proc.signal(Signal::SIGKILL);
                        let killed = std::mem::replace(
                            &mut sink,
                            self.start_sinks("soak-restarted", &topic, &group, &db, 1, &flags)?
                                .remove(0),
                        );
                        let exit = killed.proc.wait(Duration::from_secs(10))?;
                        sink_exits
                            .push(json!({"sink": "first", "code": exit.code, "how": "SIGKILL"}));
                        logs.push(("restarted sink".into(), sink.proc.log.clone()));
                    }
                    Operation::Outage if can_refuse => {
                        retries_began = self.insert_retries(&sink);
                        self.stack.refuse_inserts(&db, true)?;
                        outage_began = Some((start.elapsed().as_secs_f64(), Utc::now()));
                        refusing = Some(Refusing {
                            stack: self.stack,
                            db: db.clone(),
                            ended: false,
                        });
                    }
                    Operation::Restore if can_refuse => {
                        if let Some(outage) = refusing.take() {
                            // (Its end is taken before the rule goes: the length measured is
                            // never longer than the refusal.)
                            outage_ended = Some((start.elapsed().as_secs_f64(), Utc::now()));
                            retries_ended = self.insert_retries(&sink);
                            outage.end()?;
                        }
                    }
                    Operation::Outage | Operation::Restore => {
                        say(
                            "soak: skipped: this ClickHouse has no fault rules (a server, not the stack's endpoint)",
                        );
                    }
                }
                say(&format!("soak: {:.0} s: {}", t, op.describe()));
                let skipped = !can_refuse && matches!(op, Operation::Outage | Operation::Restore);
                operations.push(json!({
                    "at_s": round(t, 1),
                    "operation": format!("{op:?}").to_lowercase(),
                    "what": op.describe(),
                    "took_s": round(began.elapsed().as_secs_f64(), 2),
                    "skipped": skipped,
                }));
            }
            if Instant::now() >= next_sample {
                samples.push(self.sample(t, &sink, second.as_ref(), &windows, producer_pid, &db));
                next_sample += every;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if let Some(outage) = refusing.take() {
            outage.end()?;
        }
        let (out, producer_exit) = producer.finish(Duration::from_secs(600))?;
        let mut summary = last_json(&out).context("soak: the producer's summary")?;
        if let Some(map) = summary.as_object_mut() {
            map.remove("per_partition");
        }
        summary["cpu_s"] = json!(round(producer_exit.cpu_s, 2));
        let number = |key: &str| summary[key].as_u64().unwrap_or(0);
        let (sent, delivered, poison) = (number("sent"), number("delivered"), number("poison"));
        // The warm-up event is the table's first row.
        let expected = 1 + delivered - poison.min(delivered);
        let drain_start = Instant::now();
        let mut rows = self.stack.count(&db)?;
        while rows < expected && drain_start.elapsed() < Duration::from_secs(300) {
            if procs::interrupted() {
                bail!("interrupted");
            }
            stopped_on_its_own("sink", &mut sink)?;
            std::thread::sleep(Duration::from_secs(1));
            rows = self.stack.count(&db)?;
        }
        let drain_s = drain_start.elapsed().as_secs_f64();
        // Two flush intervals more: a duplicate inserted late would show.
        std::thread::sleep(Duration::from_secs(3));
        samples.push(self.sample(
            start.elapsed().as_secs_f64(),
            &sink,
            second.as_ref(),
            &windows,
            producer_pid,
            &db,
        ));
        let rows = self.stack.count(&db)?;
        let distinct: u64 = self.stack.fetch_one(&format!(
            "SELECT uniqExact(kafka_partition, kafka_offset) FROM {db}.events"
        ))?;
        let exit = sink.proc.reap(Duration::from_secs(60))?;
        sink_exits.push(json!({"sink": "restarted", "code": exit.code, "how": "SIGTERM"}));
        if let Some(left) = second.take() {
            let exit = left.proc.reap(Duration::from_secs(60))?;
            sink_exits.push(json!({"sink": "second", "code": exit.code, "how": "SIGTERM"}));
        }
        let windows_exit = windows.reap(Duration::from_secs(60))?;
        drop(database);
        self.stack.delete_topic(&topic);
        self.stack.delete_topic(&windows_topic);

        let mut logged = Vec::new();
        let (mut errors, mut warnings, mut stall_reports, mut recoveries) = (0, 0, 0, 0);
        let window = outage_began
            .zip(outage_ended)
            .map(|((_, from), (_, to))| (from, to));
        for (process, path) in &logs {
            let (e, w, messages) = log_findings(path, 5);
            errors += e;
            warnings += w;
            let (stalled, recovered) = stall_lines(path, window);
            stall_reports += stalled;
            recoveries += recovered;
            logged.push(
                json!({"process": process, "errors": e, "warnings": w, "messages": messages}),
            );
        }
        let outage = Outage {
            skipped: !can_refuse,
            ran: window.is_some(),
            seconds: outage_began
                .zip(outage_ended)
                .map_or(0.0, |((from, _), (to, _))| to - from),
            sample_every_s: every.as_secs_f64(),
            stall_reports,
            recoveries,
            stalled_samples: samples.iter().filter(|s| s.stalled == Some(1.0)).count(),
            stalled_at_end: samples.last().and_then(|s| s.stalled),
            retries_at_end: samples.last().and_then(|s| s.retries),
            retries_during: retries_began
                .zip(retries_ended)
                .map(|(began, ended)| ended - began),
        };
        let failures = failures(&Checks {
            sent,
            delivered,
            rows,
            expected,
            distinct,
            sink_exits: &sink_exits,
            windows_exit: windows_exit.code,
            errors,
            operations_run: next_op,
            outage: &outage,
        });
        let verdict = if failures.is_empty() { "pass" } else { "fail" };
        say(&format!(
            "soak: {verdict}: {rows} rows, {expected} expected, {distinct} distinct; {errors} errors, \
             {warnings} warnings{}",
            if failures.is_empty() {
                String::new()
            } else {
                format!(": {}", failures.join("; "))
            }
        ));
        Ok(json!({
            "minutes": round(seconds as f64 / 60.0, 2),
            "rate": rate,
            "bad_ratio": BAD_RATIO.parse::<f64>().unwrap_or(0.0),
            "late_ratio": LATE_RATIO.parse::<f64>().unwrap_or(0.0),
            "sink_flags": SINK_FLAGS,
            "sample_every_s": every.as_secs(),
            "producer": summary,
            "operations": operations,
            "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
            "summary": summarize(&samples, seconds as f64),
            "drain_after_producer_s": round(drain_s, 1),
            "checks": {
                "delivered": delivered,
                "poison": poison,
                "expected_rows": expected,
                "rows": rows,
                "distinct_offsets": distinct,
                "duplicates": rows.saturating_sub(distinct),
                "missing": expected.saturating_sub(distinct),
                "sink_exits": sink_exits,
                "windows_exit": windows_exit.code,
                "error_lines": errors,
                "warning_lines": warnings,
                "outage": outage.json(),
            },
            "logs": logged,
            "verdict": verdict,
            "failures": failures,
        }))
    }

    /// The sink's retries of INSERTs now (`clickstream_sink_retries_total` with
    /// `operation="insert"`, every error); `None` when three scrapes in a row failed.
    fn insert_retries(&self, sink: &Sink) -> Option<f64> {
        (0..3).find_map(|attempt| {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            let text = self
                .stack
                .block_on(async {
                    tokio::time::timeout(Duration::from_secs(5), scrape_metrics_text(sink.port))
                        .await
                })
                .ok()
                .and_then(Result::ok)?;
            Some(insert_retries(&text))
        })
    }

    fn sample(
        &self,
        t_s: f64,
        sink: &Sink,
        second: Option<&Sink>,
        windows: &Proc,
        producer: u32,
        db: &str,
    ) -> Sample {
        let pid = sink.proc.pid();
        let text = self
            .stack
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(5), scrape_metrics_text(sink.port)).await
            })
            .ok()
            .and_then(Result::ok);
        Sample {
            t_s,
            sink_rss_mb: procs::proc_rss_mb(pid),
            second_rss_mb: second.and_then(|s| procs::proc_rss_mb(s.proc.pid())),
            windows_rss_mb: procs::proc_rss_mb(windows.pid()),
            producer_rss_mb: procs::proc_rss_mb(producer),
            clickhouse_rss_mb: self.stack.pid("clickhouse").and_then(procs::proc_rss_mb),
            kafka_rss_mb: self.stack.pid("kafka").and_then(procs::proc_rss_mb),
            sink_fds: entries(format!("/proc/{pid}/fd")),
            sink_threads: entries(format!("/proc/{pid}/task")),
            sink_series: text.as_deref().map(|t| {
                t.lines()
                    .filter(|l| !l.starts_with('#') && !l.is_empty())
                    .count()
            }),
            lag: text.as_deref().map(|t| {
                metric_families(t)
                    .get("clickstream_sink_consumer_lag")
                    .copied()
                    .unwrap_or(0.0)
            }),
            stalled: text
                .as_deref()
                .and_then(|t| metric_families(t).get("clickstream_sink_stalled").copied()),
            retries: text.as_deref().and_then(|t| {
                metric_families(t)
                    .get("clickstream_sink_retries_total")
                    .copied()
            }),
            rows: self.stack.count(db).ok(),
        }
    }
}

/// What the soak's verdict rests on.
struct Checks<'a> {
    sent: u64,
    delivered: u64,
    rows: u64,
    expected: u64,
    distinct: u64,
    /// `{"sink", "code", "how"}` of each sink that ended.
    sink_exits: &'a [Value],
    windows_exit: i32,
    errors: usize,
    operations_run: usize,
    outage: &'a Outage,
}

/// Why the soak failed; empty when it passed.
fn failures(c: &Checks<'_>) -> Vec<String> {
    let mut failures = Vec::new();
    if c.sent != c.delivered {
        failures.push(format!(
            "the producer delivered {} of {} events",
            c.delivered, c.sent
        ));
    }
    if c.rows != c.expected || c.distinct != c.rows {
        failures.push(format!(
            "{} rows ({} distinct offsets) where {} were expected",
            c.rows, c.distinct, c.expected
        ));
    }
    for exit in c.sink_exits {
        if exit["how"] == "SIGTERM" && exit["code"] != 0 {
            failures.push(format!(
                "the {} sink exited {} on SIGTERM",
                exit["sink"].as_str().unwrap_or("?"),
                exit["code"]
            ));
        }
    }
    if c.windows_exit != 0 {
        failures.push(format!(
            "the window publisher exited {} on SIGTERM",
            c.windows_exit
        ));
    }
    // The stall reports during the outage are the errors expected (one per sink running
    // then: it recovers only once the outage ends); any other is a failure.
    if c.errors > c.outage.stall_reports {
        failures.push(format!(
            "{} ERROR lines in the logs besides the outage's stall reports",
            c.errors - c.outage.stall_reports
        ));
    }
    if c.outage.must_stall() && (c.outage.stall_reports == 0 || c.outage.stalled_samples == 0) {
        failures.push(format!(
            "the outage of {:.0} s was not reported as a stall ({} ERROR lines, {} samples with \
             clickstream_sink_stalled 1)",
            c.outage.seconds, c.outage.stall_reports, c.outage.stalled_samples
        ));
    }
    if c.outage.recoveries < c.outage.stall_reports || c.outage.stalled_at_end == Some(1.0) {
        failures.push(format!(
            "the sink did not recover from the outage by itself ({} stall reports, {} \
             recoveries, clickstream_sink_stalled {:?} at the end)",
            c.outage.stall_reports, c.outage.recoveries, c.outage.stalled_at_end
        ));
    }
    if c.outage.must_retry() {
        match c.outage.retries_during {
            Some(retries) if retries > 0.0 => {}
            Some(_) => failures.push(format!(
                "the outage of {:.0} s never reached the sink: it retried no INSERT meanwhile",
                c.outage.seconds
            )),
            None => failures.push(format!(
                "the sink's INSERT retries during the outage of {:.0} s could not be measured \
                 (its /metrics did not answer at the outage's start or end)",
                c.outage.seconds
            )),
        }
    }
    if c.operations_run < OPERATIONS.len() {
        failures.push(format!(
            "only {} of {} operations ran",
            c.operations_run,
            OPERATIONS.len()
        ));
    }
    failures
}

/// Each sampled figure's range, and the sink's memory per quarter of the run (a leak grows
/// from quarter to quarter; the restart after the kill starts the last quarters afresh).
fn summarize(samples: &[Sample], seconds: f64) -> Value {
    let range = |values: Vec<f64>| -> Value {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if values.is_empty() {
            Value::Null
        } else {
            json!({"min": round(min, 1), "max": round(max, 1), "last": values.last().map(|v| round(*v, 1))})
        }
    };
    let of = |f: fn(&Sample) -> Option<f64>| samples.iter().filter_map(f).collect::<Vec<f64>>();
    let quarters: Vec<Value> = (0..4)
        .map(|q| {
            let (from, to) = (q as f64 * seconds / 4.0, (q + 1) as f64 * seconds / 4.0);
            let max = samples
                .iter()
                .filter(|s| s.t_s >= from && s.t_s < to)
                .filter_map(|s| s.sink_rss_mb)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            json!(max.map(|v| round(v, 1)))
        })
        .collect();
    json!({
        "sink_rss_mb": range(of(|s| s.sink_rss_mb)),
        "sink_rss_mb_max_by_quarter": quarters,
        "second_sink_rss_mb": range(of(|s| s.second_rss_mb)),
        "windows_rss_mb": range(of(|s| s.windows_rss_mb)),
        "producer_rss_mb": range(of(|s| s.producer_rss_mb)),
        "clickhouse_rss_mb": range(of(|s| s.clickhouse_rss_mb)),
        "kafka_rss_mb": range(of(|s| s.kafka_rss_mb)),
        "sink_fds": range(of(|s| s.sink_fds.map(|v| v as f64))),
        "sink_threads": range(of(|s| s.sink_threads.map(|v| v as f64))),
        "sink_series": range(of(|s| s.sink_series.map(|v| v as f64))),
        "lag": range(of(|s| s.lag)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 90 s outage the sink reported as a stall once, and recovered from.
    const OUTAGE: Outage = Outage {
        skipped: false,
        ran: true,
        seconds: 90.0,
        sample_every_s: 15.0,
        stall_reports: 1,
        recoveries: 1,
        stalled_samples: 2,
        stalled_at_end: Some(0.0),
        retries_at_end: Some(40.0),
        retries_during: Some(30.0),
    };

    fn checks(sink_exits: &[Value]) -> Checks<'_> {
        Checks {
            sent: 100,
            delivered: 100,
            rows: 98,
            expected: 98,
            distinct: 98,
            sink_exits,
            windows_exit: 0,
            errors: 1,
            operations_run: OPERATIONS.len(),
            outage: &OUTAGE,
        }
    }

    #[test]
    fn the_verdict_fails_on_each_broken_check_and_only_then() {
        let exits = [
            json!({"sink": "first", "code": -9, "how": "SIGKILL"}),
            json!({"sink": "restarted", "code": 0, "how": "SIGTERM"}),
        ];
        assert!(
            failures(&checks(&exits)).is_empty(),
            "a SIGKILL's -9 is expected"
        );
        let unreported = Outage {
            stall_reports: 0,
            recoveries: 0,
            ..OUTAGE
        };
        let unsampled = Outage {
            stalled_samples: 0,
            ..OUTAGE
        };
        let stuck = Outage {
            stalled_at_end: Some(1.0),
            ..OUTAGE
        };
        let no_recovery = Outage {
            recoveries: 0,
            ..OUTAGE
        };
        let unreached = Outage {
            retries_during: Some(0.0),
            ..OUTAGE
        };
        let unscraped = Outage {
            retries_during: None,
            ..OUTAGE
        };
        let broken: [(&str, Checks<'_>); 13] = [
            (
                "delivered",
                Checks {
                    delivered: 99,
                    ..checks(&exits)
                },
            ),
            (
                "rows",
                Checks {
                    rows: 99,
                    distinct: 98,
                    ..checks(&exits)
                },
            ),
            (
                "rows",
                Checks {
                    rows: 97,
                    distinct: 97,
                    ..checks(&exits)
                },
            ),
            (
                "ERROR lines in the logs besides",
                Checks {
                    errors: 2,
                    ..checks(&exits)
                },
            ),
            (
                "not reported as a stall",
                Checks {
                    errors: 0,
                    outage: &unreported,
                    ..checks(&exits)
                },
            ),
            (
                "not reported as a stall",
                Checks {
                    outage: &unsampled,
                    ..checks(&exits)
                },
            ),
            (
                "did not recover",
                Checks {
                    outage: &stuck,
                    ..checks(&exits)
                },
            ),
            (
                "did not recover",
                Checks {
                    outage: &no_recovery,
                    ..checks(&exits)
                },
            ),
            (
                "never reached the sink",
                Checks {
                    outage: &unreached,
                    ..checks(&exits)
                },
            ),
            (
                "could not be measured",
                Checks {
                    outage: &unscraped,
                    ..checks(&exits)
                },
            ),
            (
                "window publisher",
                Checks {
                    windows_exit: 1,
                    ..checks(&exits)
                },
            ),
            (
                "operations",
                Checks {
                    operations_run: 3,
                    ..checks(&exits)
                },
            ),
            (
                "delivered",
                Checks {
                    sent: 101,
                    ..checks(&exits)
                },
            ),
        ];
        for (what, c) in broken {
            let found = failures(&c);
            assert!(
                found.len() == 1 && found[0].contains(what),
                "{what}: {found:?}"
            );
        }
        let bad_exit = [json!({"sink": "second", "code": 2, "how": "SIGTERM"})];
        assert_eq!(
            failures(&checks(&bad_exit)),
            ["the second sink exited 2 on SIGTERM"]
        );
        // A stall report outside the outage is an error like another (no report counts as the
        // outage's then); an outage shorter than the stall timeout need not be reported.
        let skipped = Outage {
            skipped: true,
            ran: false,
            stall_reports: 0,
            recoveries: 0,
            stalled_samples: 0,
            ..OUTAGE
        };
        // (Nor need one shorter than MUST_RETRY_S have reached the sink: after the kill it
        // may not own partitions yet.)
        let short = Outage {
            seconds: 15.0,
            stall_reports: 0,
            recoveries: 0,
            stalled_samples: 0,
            retries_during: Some(0.0),
            ..OUTAGE
        };
        assert_eq!(
            failures(&Checks {
                outage: &skipped,
                ..checks(&exits)
            }),
            ["1 ERROR lines in the logs besides the outage's stall reports"]
        );
        assert!(
            failures(&Checks {
                outage: &short,
                errors: 0,
                ..checks(&exits)
            })
            .is_empty()
        );
        assert_eq!(outage_s(1_800.0).round(), 90.0, "a twentieth of the run");
        // Long enough to stall for a samples' interval and 5 s: 90 s with a sample every 15 s
        // (the default 30 minutes), not with one every 26 s.
        assert!(OUTAGE.must_stall());
        assert!(
            !Outage {
                sample_every_s: 26.0,
                ..OUTAGE
            }
            .must_stall()
        );
    }

    #[test]
    fn only_insert_retries_count_as_the_outage_reaching_the_sink() {
        let text = "# TYPE clickstream_sink_retries_total counter\n\
            clickstream_sink_retries_total{operation=\"insert\",error=\"transient\"} 2\n\
            clickstream_sink_retries_total{operation=\"commit\",error=\"transient\"} 5\n\
            clickstream_sink_retries_total{operation=\"insert\",error=\"timeout\"} 1\n\
            clickstream_sink_inserts_total 9\n";
        assert_eq!(insert_retries(text), 3.0);
        assert_eq!(insert_retries("clickstream_sink_inserts_total 9\n"), 0.0);
    }

    #[test]
    fn only_stall_reports_during_the_outage_or_just_after_count_as_its_own() {
        let dir = clickstream_testkit::TempDir::new("soak-stall");
        let path = dir.path().join("sink.log");
        std::fs::write(
            &path,
            "2026-12-03T00:00:00Z ERROR p: the sink is stalled: before\n\
             2026-12-03T00:02:00Z ERROR p: the sink is stalled: during\n\
             2026-12-03T00:02:40Z  INFO p: the sink makes progress again after_ms=1\n\
             2026-12-03T00:02:50Z ERROR p: the sink is stalled: just after\n\
             2026-12-03T00:05:00Z ERROR p: the sink is stalled: long after\n\
             2026-12-03T00:05:01Z  WARN p: the sink is stalled: not an error\n",
        )
        .unwrap();
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let window = (at("2026-12-03T00:01:00Z"), at("2026-12-03T00:02:30Z"));
        assert_eq!(stall_lines(&path, Some(window)), (2, 1));
        assert_eq!(
            stall_lines(&path, None),
            (0, 1),
            "no outage: none is its own"
        );
    }

    #[test]
    fn a_log_counts_errors_and_warnings_and_keeps_their_distinct_messages() {
        let dir = clickstream_testkit::TempDir::new("soak-log");
        let path = dir.path().join("sink.log");
        std::fs::write(
            &path,
            "2026-12-03T00:00:00Z  INFO a: started\n\
             2026-12-03T00:00:01Z  WARN a: slow x=1\n\
             2026-12-03T00:00:02Z  WARN a: slow x=1\n\
             2026-12-03T00:00:03Z ERROR b: failed\n",
        )
        .unwrap();
        let (errors, warnings, messages) = log_findings(&path, 5);
        assert_eq!((errors, warnings), (1, 2));
        assert_eq!(messages, ["WARN a: slow x=1", "ERROR b: failed"]);
        assert_eq!(log_findings(&path, 1).2, ["WARN a: slow x=1"]);
    }

    #[test]
    fn the_summary_gives_ranges_and_the_sink_memory_of_each_quarter() {
        let sample = |t_s: f64, rss: Option<f64>| Sample {
            t_s,
            sink_rss_mb: rss,
            second_rss_mb: None,
            windows_rss_mb: None,
            producer_rss_mb: None,
            clickhouse_rss_mb: None,
            kafka_rss_mb: None,
            sink_fds: Some(30),
            sink_threads: None,
            sink_series: None,
            lag: Some(t_s),
            stalled: None,
            retries: None,
            rows: None,
        };
        let samples = [
            sample(0.0, Some(10.0)),
            sample(20.0, Some(12.0)),
            sample(30.0, Some(11.0)),
            sample(70.0, None),
            sample(90.0, Some(15.0)),
        ];
        let s = summarize(&samples, 100.0);
        assert_eq!(
            s["sink_rss_mb_max_by_quarter"],
            json!([12.0, 11.0, null, 15.0])
        );
        assert_eq!(
            s["sink_rss_mb"],
            json!({"min": 10.0, "max": 15.0, "last": 15.0})
        );
        assert_eq!(s["lag"]["max"], 90.0);
        assert!(s["second_sink_rss_mb"].is_null());
    }
}
