//! `bench-sink`: the sink benchmark on a private local stack (`scripts/bench` builds the release
//! binaries and runs it). Writes `bench/results/latest.json` and the sink section of
//! `bench/REPORT.md` (between its own markers; the rest of the file is left as it is), with
//! SVG charts drawn by [`crate::charts`].
//!
//! ```text
//! settings (BENCH_*) ─▶ stack (scripts/stack) ─▶ measure (producer, bench-consume, sinks)
//!                                                   │ procs: CPU, RSS   profile: perf
//!                                                   ▼
//!                          results JSON ─▶ charts (SVG) ─▶ report (markdown section)
//! ```
//!
//! Every figure comes from the same run, so ratios hold on a noisy machine:
//!
//! 1. **throughput**: pre-load `BENCH_EVENTS` events with the producer (`--rate max`) into a
//!    3-partition topic, then time one sink from its start until `count()` of its table equals
//!    the number of events: events/s, MB/s, CPU seconds, peak RSS, inserts, parts. The time to
//!    the first row (group join + first insert) is reported apart from the steady rate.
//! 2. **bound**: bench-consume reads the same topic with the sink's consumer settings and does
//!    nothing else: the upper bound. Run before and after the sink; the better run counts. A
//!    flat perf profile of a repeat of the sink's run (perf slows the endpoint, so not the
//!    measured one).
//! 3. **ceiling**: the sink alone: the endpoint drops its INSERTs unread.
//! 4. **latency**: per flush setting and per rate, a sink on a fresh topic (joined first), the
//!    producer at the rate for `BENCH_SECONDS`, then event-to-queryable latency from the table
//!    itself (`inserted_at - event_time`), and inserts per second from `/metrics`.
//! 5. **scale**: 1, 2, 3 sinks in one group on the pre-loaded topic: time to all rows.
//! 6. **bulk** (not in the default sections): the reference projects' run, 10 million events
//!    produced at `--rate max`, then one sink with the defaults until all are queryable.
//!
//! Each measurement gets a fresh consumer group and a fresh database (`clickhouse/schema.sql`
//! renamed, rollups included, dropped afterwards); the read-only measurements share the
//! pre-loaded topic, so sink and bound read the very same bytes. The settings are read from
//! the environment once ([`Settings::from_env`]); `scripts/bench --help` lists them.

pub mod measure;
pub mod procs;
pub mod profile;
pub mod soak;
pub mod stack;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clickstream_testkit::repo_root;
use serde_json::{Value, json};

use crate::report::{self, Chart};
use clickstream_sink::settings::{REDACTED, is_secret_kafka_property};
use measure::{Bench, Bins, Drain, Mode, say};
use procs::round;

/// The bench's settings: each `BENCH_*` variable, its default and its meaning, in one place
/// (also printed by `--help`).
pub const VARIABLES: [(&str, &str, &str); 23] = [
    (
        "BENCH_EVENTS",
        "2000000",
        "events pre-loaded for throughput, bound, ceiling and scale",
    ),
    (
        "BENCH_RATES",
        "100 1000 10000 50000",
        "producer rates of the latency runs, events/s",
    ),
    ("BENCH_SECONDS", "60", "seconds per latency run"),
    (
        "BENCH_FLUSH",
        "default 1000",
        "latency runs: `default` = the sink's default flush interval, a number = --flush-interval-ms",
    ),
    (
        "BENCH_SCALE",
        "1 2 3",
        "sink instances of the scale-out runs",
    ),
    (
        "BENCH_SCALE_EVENTS",
        "3 × BENCH_EVENTS",
        "events the scale-out runs drain (the pre-loaded topic is topped up to this many, at \
         least BENCH_EVENTS): a drain of 2M events is about ten INSERTs, and when its last one \
         lands moved a run by up to 15 %",
    ),
    (
        "BENCH_SCALE_ROUNDS",
        "3",
        "rounds of the scale-out runs, interleaved (1, 2, 3 sinks, then again): the report \
         takes each count's median and the one-sink ratio of every round",
    ),
    (
        "BENCH_SECTIONS",
        "throughput ceiling latency scale",
        "what to run (throughput includes the bound); add `bulk` for the 10-million-event run",
    ),
    ("BENCH_BULK_EVENTS", "10000000", "events of the bulk run"),
    (
        "BENCH_SINK_ARGS",
        "-X session.timeout.ms=6000",
        "extra sink flags (the -X ones go to bench-consume too)",
    ),
    ("BENCH_OUT", "bench/results/latest.json", "the results file"),
    (
        "BENCH_SOAK_MINUTES",
        "30",
        "scripts/soak: how long the producer streams (the operations come at fixed fractions of it)",
    ),
    (
        "BENCH_SOAK_RATE",
        "5000",
        "scripts/soak: the producer's rate, events/s",
    ),
    (
        "BENCH_SOAK_OUT",
        "bench/results/soak.json",
        "scripts/soak: its results file",
    ),
    (
        "BENCH_REPORT",
        "bench/REPORT.md",
        "the report (only the sink section is rewritten)",
    ),
    (
        "BENCH_CHARTS",
        "charts/ beside BENCH_REPORT",
        "the SVG charts; the report links them relatively",
    ),
    (
        "BENCH_BEFORE",
        "bench/results/before-v2.json",
        "an earlier results file: the \"before\" of the charts (\"\" for none)",
    ),
    (
        "BENCH_BIN_DIR",
        "target/release",
        "where the binaries are (scripts/bench builds them)",
    ),
    (
        "BENCH_PROFILE",
        "1",
        "perf record a repeat of the throughput run (0: off; needs perf)",
    ),
    (
        "BENCH_KEEP_WORK",
        "",
        "keep the logs (and perf data) instead of deleting them",
    ),
    (
        "BENCH_KAFKA_BROKERS",
        "",
        "measure against these brokers instead of a stack of the bench's own (with \
         BENCH_CLICKHOUSE_URL; the sink alone is then skipped unless the endpoint is \
         scripts/clickhouse_http.py, and the servers' CPU is not measured)",
    ),
    (
        "BENCH_CLICKHOUSE_URL",
        "",
        "... and this ClickHouse (CLICKHOUSE_USER / CLICKHOUSE_PASSWORD, if set, for the \
         bench's queries and the sinks)",
    ),
    (
        "BENCH_KAFKA_PROPERTIES",
        "",
        "librdkafka properties (KEY=VALUE, whitespace-separated, quoted as in a shell) for every \
         Kafka client of the bench: the producer, bench-consume, the sinks and the topic \
         deletions; e.g. how to reach BENCH_KAFKA_BROKERS (security.protocol=SASL_SSL ...); \
         passed as -X arguments, so visible in ps",
    ),
];

/// The stack's ports and data directory, passed to `scripts/stack`.
pub const STACK_VARIABLES: [(&str, &str); 4] = [
    ("STACK_KAFKA_PORT", "39092"),
    ("STACK_CLICKHOUSE_PORT", "38123"),
    ("STACK_CLICKHOUSE_TLS_PORT", "38443"),
    ("STACK_DATA_DIR", "/tmp/stk-bench"),
];

/// The settings, from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub events: u64,
    pub rates: Vec<u64>,
    pub seconds_per_rate: u64,
    pub flush: Vec<String>,
    pub scale: Vec<usize>,
    pub scale_events: u64,
    pub scale_rounds: usize,
    pub sections: Vec<String>,
    pub bulk_events: u64,
    pub sink_args: Vec<String>,
    pub out: PathBuf,
    pub soak_minutes: f64,
    pub soak_rate: u64,
    pub soak_out: PathBuf,
    pub report: PathBuf,
    pub charts: PathBuf,
    pub before: Option<PathBuf>,
    pub bin_dir: PathBuf,
    pub profile: bool,
    pub keep_work: bool,
    pub stack: Vec<(String, String)>,
    /// Servers to measure against (broker list, ClickHouse URL) instead of a stack of its own.
    pub external: Option<(String, String)>,
    /// librdkafka properties for every Kafka client of the bench.
    pub kafka_properties: Vec<(String, String)>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn default_of(name: &str) -> &'static str {
    VARIABLES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map_or("", |(_, d, _)| d)
}

fn text(name: &str) -> String {
    var(name).unwrap_or_else(|| default_of(name).to_owned())
}

fn number<T: std::str::FromStr>(name: &str) -> anyhow::Result<T> {
    let value = text(name);
    value
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{name}: `{value}` is not a whole number"))
}

fn numbers<T: std::str::FromStr>(name: &str) -> anyhow::Result<Vec<T>> {
    let value = text(name);
    value
        .split_whitespace()
        .map(|v| {
            v.parse()
                .map_err(|_| anyhow::anyhow!("{name}: `{v}` is not a whole number"))
        })
        .collect()
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Settings> {
        let root = repo_root();
        let path = |name: &str, default: PathBuf| var(name).map_or(default, PathBuf::from);
        let report = path("BENCH_REPORT", root.join("bench/REPORT.md"));
        let report_dir = report.parent().unwrap_or(Path::new(".")).to_path_buf();
        let sections: Vec<String> = text("BENCH_SECTIONS")
            .split_whitespace()
            .map(String::from)
            .collect();
        const KNOWN: [&str; 5] = ["throughput", "ceiling", "latency", "scale", "bulk"];
        if let Some(unknown) = sections.iter().find(|s| !KNOWN.contains(&s.as_str())) {
            anyhow::bail!("BENCH_SECTIONS: unknown section `{unknown}` (known: {KNOWN:?})");
        }
        let flush: Vec<String> = text("BENCH_FLUSH")
            .split_whitespace()
            .map(String::from)
            .collect();
        for f in &flush {
            measure::flush_ms(f)?;
        }
        let sink_args = shell_words(&text("BENCH_SINK_ARGS"));
        let kafka_properties = kafka_properties(&text("BENCH_KAFKA_PROPERTIES"))?;
        let external = match (
            var("BENCH_KAFKA_BROKERS").filter(|v| !v.is_empty()),
            var("BENCH_CLICKHOUSE_URL").filter(|v| !v.is_empty()),
        ) {
            (Some(kafka), Some(clickhouse)) => Some((kafka, clickhouse)),
            (None, None) => None,
            (Some(_), None) => {
                anyhow::bail!("BENCH_KAFKA_BROKERS is set: set BENCH_CLICKHOUSE_URL too")
            }
            (None, Some(_)) => {
                anyhow::bail!("BENCH_CLICKHOUSE_URL is set: set BENCH_KAFKA_BROKERS too")
            }
        };
        Ok(Settings {
            events: number("BENCH_EVENTS")?,
            rates: numbers("BENCH_RATES")?,
            seconds_per_rate: number("BENCH_SECONDS")?,
            flush,
            scale: numbers("BENCH_SCALE")?,
            scale_events: match (
                var("BENCH_SCALE_EVENTS")
                    .filter(|v| !v.is_empty())
                    .map(|_| number("BENCH_SCALE_EVENTS"))
                    .transpose()?,
                number::<u64>("BENCH_EVENTS")?,
            ) {
                (None, events) => events.saturating_mul(3),
                (Some(scale), events)
                    if scale < events && sections.iter().any(|s| s == "scale") =>
                {
                    anyhow::bail!(
                        "BENCH_SCALE_EVENTS: {scale} is fewer than BENCH_EVENTS ({events}); the \
                     scale-out runs drain the pre-loaded topic, topped up"
                    )
                }
                (Some(scale), _) => scale,
            },
            scale_rounds: match number("BENCH_SCALE_ROUNDS")? {
                0 => anyhow::bail!("BENCH_SCALE_ROUNDS: must be 1 or more"),
                rounds => rounds,
            },
            sections,
            bulk_events: number("BENCH_BULK_EVENTS")?,
            sink_args,
            out: path("BENCH_OUT", root.join("bench/results/latest.json")),
            soak_minutes: match text("BENCH_SOAK_MINUTES").trim().parse::<f64>() {
                Ok(minutes) if minutes >= 1.0 => minutes,
                _ => anyhow::bail!(
                    "BENCH_SOAK_MINUTES: `{}` is not a number of minutes, 1 or more",
                    text("BENCH_SOAK_MINUTES")
                ),
            },
            soak_rate: number("BENCH_SOAK_RATE")?,
            soak_out: path("BENCH_SOAK_OUT", root.join("bench/results/soak.json")),
            charts: path("BENCH_CHARTS", report_dir.join("charts")),
            report,
            before: match var("BENCH_BEFORE") {
                Some(before) if before.is_empty() => None,
                Some(before) => Some(PathBuf::from(before)),
                None => Some(root.join("bench/results/before-v2.json")),
            },
            bin_dir: path("BENCH_BIN_DIR", target_dir().join("release")),
            profile: text("BENCH_PROFILE") != "0",
            keep_work: var("BENCH_KEEP_WORK").is_some_and(|v| !v.is_empty()),
            stack: STACK_VARIABLES
                .iter()
                .map(|(k, d)| ((*k).to_owned(), var(k).unwrap_or_else(|| (*d).to_owned())))
                .collect(),
            external,
            kafka_properties,
        })
    }

    fn has(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }

    /// The settings as the results file records them.
    fn recorded(&self) -> Value {
        let mut settings = json!({
            "events": self.events, "rates": self.rates, "seconds_per_rate": self.seconds_per_rate,
            "flush": self.flush, "scale": self.scale, "scale_events": self.scale_events,
            "scale_rounds": self.scale_rounds,
            "sink_args": self.sink_args,
            "sections": self.sections,
            // The default of the sink measured (a later one may differ).
            "sink_max_batch_bytes": crate::report::sink_default_max_batch_bytes(),
            "sink_consumer_defaults": clickstream_sink::consumer::CONSUMER_DEFAULTS
                .iter()
                .map(|(key, value)| (key.to_string(), json!(value)))
                .collect::<serde_json::Map<_, _>>(),
            "note": "sink defaults otherwise: max_rows 1000, flush_interval_ms 5000, \
                     max_inserts_per_second 2, exactly-once, all rollups",
        });
        if self.has("bulk") {
            settings["bulk_events"] = json!(self.bulk_events);
        }
        if !self.kafka_properties.is_empty() {
            settings["kafka_properties"] = json!(shown_properties(&self.kafka_properties));
        }
        if let Some((kafka, clickhouse)) = &self.external {
            settings["external"] =
                json!({"kafka": kafka, "clickhouse": without_userinfo(clickhouse)});
        }
        settings
    }
}

/// `BENCH_KAFKA_PROPERTIES`: `KEY=VALUE` words.
fn kafka_properties(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    shell_words(text)
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_owned(), value.to_owned()))
            }
            _ => anyhow::bail!("BENCH_KAFKA_PROPERTIES: `{word}` is not KEY=VALUE"),
        })
        .collect()
}

/// Properties as the results file records them: secret values replaced.
fn shown_properties(properties: &[(String, String)]) -> Vec<String> {
    properties
        .iter()
        .map(|(key, value)| match is_secret_kafka_property(key) {
            true => format!("{key}={REDACTED}"),
            false => format!("{key}={value}"),
        })
        .collect()
}

/// A URL without the `user:password@` it may carry.
fn without_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

fn target_dir() -> PathBuf {
    var("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from)
}

/// Splits flags as a shell would for the simple cases: whitespace, single and double quotes.
fn shell_words(text: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut any) = (vec![], String::new(), None, false);
    for c in text.chars() {
        match (quote, c) {
            (None, '\'' | '"') => (quote, any) = (Some(c), true),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            (_, c) => (word.push(c), any = true).1,
        }
    }
    if any {
        words.push(word);
    }
    words
}

/// Re-renders the charts and the report section from the results file (`--report`).
pub fn rerender(settings: &Settings) -> anyhow::Result<()> {
    rerender_from(settings, &settings.out, |results| {
        write_report(settings, results)
    })
}

/// Reads the results file `from` and `write`s the report from it.
fn rerender_from(
    settings: &Settings,
    from: &Path,
    write: impl FnOnce(&Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(from).with_context(|| format!("read {}", from.display()))?;
    let results: Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", from.display()))?;
    write(&results)?;
    say(&format!(
        "wrote {} from {}",
        settings.report.display(),
        from.display()
    ));
    Ok(())
}

/// Draws the charts from the results file (against BENCH_BEFORE, if it exists) and writes the
/// report section embedding them. A failure of the charts costs the charts, not the report.
fn write_report(settings: &Settings, results: &Value) -> anyhow::Result<()> {
    let before = settings.before.as_ref().filter(|b| b.exists());
    let written = crate::charts::run(&crate::charts::Settings {
        results: settings.out.clone(),
        before: before.cloned(),
        out: settings.charts.clone(),
    });
    let relative = charts_relative(settings);
    let charts: Vec<Chart> = match written {
        Ok(written) => {
            say(&format!(
                "charts in {}: {}",
                settings.charts.display(),
                written
                    .iter()
                    .map(|c| c.file.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            written
                .into_iter()
                .map(|c| Chart {
                    path: format!("{}/{}", relative.display(), c.file),
                    file: c.file,
                    title: c.title,
                })
                .collect()
        }
        Err(e) => {
            say(&format!("WARNING: no charts ({:#})", anyhow::Error::new(e)));
            vec![]
        }
    };
    let before = settings.before.as_ref().map(|b| {
        let root = repo_root();
        absolute(b)
            .strip_prefix(&root)
            .map_or(b.clone(), Path::to_path_buf)
            .display()
            .to_string()
    });
    let section = report::render(results, &charts, before.as_deref());
    report::write_section(&settings.report, &section)
        .with_context(|| format!("write {}", settings.report.display()))
}

/// The soak's chart and its section of the report (between its own markers), from its results.
fn write_soak_report(settings: &Settings, results: &Value) -> anyhow::Result<()> {
    let chart = match crate::charts::soak(&settings.soak_out, &settings.charts) {
        Ok(written) => written.map(|written| Chart {
            path: format!("{}/{}", charts_relative(settings).display(), written.file),
            file: written.file,
            title: written.title,
        }),
        Err(e) => {
            say(&format!("WARNING: no chart ({:#})", anyhow::Error::new(e)));
            None
        }
    };
    let section = crate::soak_report::render(results, chart.as_ref());
    report::write_between(
        &settings.report,
        crate::soak_report::BEGIN,
        crate::soak_report::END,
        &section,
    )
    .with_context(|| format!("write {}", settings.report.display()))
}

/// Re-renders the soak's chart and section from its results file (`--soak --report`).
pub fn rerender_soak(settings: &Settings) -> anyhow::Result<()> {
    rerender_from(settings, &settings.soak_out, |results| {
        write_soak_report(settings, results)
    })
}

/// The charts' directory, relative to the report's where it is inside it.
fn charts_relative(settings: &Settings) -> PathBuf {
    let report_dir = absolute(settings.report.parent().unwrap_or(Path::new(".")));
    let charts_dir = absolute(&settings.charts);
    charts_dir
        .strip_prefix(&report_dir)
        .map_or(charts_dir.clone(), Path::to_path_buf)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// What `git` prints, trailing whitespace removed (the leading space of a `--porcelain` line is
/// part of its status).
fn git(args: &[&str]) -> String {
    std::process::Command::new("git")
        .args(args)
        .current_dir(repo_root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_owned())
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("?", |(_, m)| m.trim());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    json!({
        "cores": procs::cores(), "cpu": model, "memory_gb": round(kb / 1024.0 / 1024.0, 1),
        "loadavg_start": procs::loadavg(),
    })
}

/// Copies the binaries into the work directory: a concurrent build must not replace one under
/// a running measurement.
fn copy_bins(settings: &Settings, work: &Path) -> anyhow::Result<Bins> {
    let dir = work.join("bin");
    std::fs::create_dir_all(&dir)?;
    let copy = |name: &str| -> anyhow::Result<PathBuf> {
        let from = settings.bin_dir.join(name);
        let to = dir.join(name);
        std::fs::copy(&from, &to).with_context(|| {
            format!(
                "copy {} (build it: cargo build --release -p clickstream-producer -p \
                 clickstream-sink -p clickstream-benchkit)",
                from.display()
            )
        })?;
        Ok(to)
    };
    Ok(Bins {
        producer: copy("clickstream-producer")?,
        sink: copy("clickstream-sink")?,
        consume: copy("bench-consume")?,
        // Only the soak runs it.
        windows: copy("clickstream-windows").ok(),
    })
}

/// On SIGINT or SIGTERM: kill the children and start no other ([`procs::interrupt`]), so the
/// main thread fails where it is and unwinds: its stack is stopped once, on the way out. Should
/// it not be done within a minute, the stack is stopped here and the bench exits.
fn on_interrupt(stack_env: Option<Vec<(String, String)>>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut term, mut int) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        });
        say("interrupted: stopping the sinks and the stack");
        procs::interrupt();
        std::thread::sleep(std::time::Duration::from_secs(60));
        say("still running a minute after the interruption: stopping the stack and exiting");
        if let Some(env) = stack_env {
            clickstream_testkit::stop_local_stack(&env);
        }
        std::process::exit(130);
    });
    Ok(())
}

/// The whole run.
pub fn run(settings: &Settings) -> anyhow::Result<()> {
    session(
        settings,
        &settings.out,
        settings.recorded(),
        |bench, stack, result, run_id| measure_all(settings, bench, stack, result, run_id),
        |result| write_report(settings, result),
    )
}

/// The soak (`scripts/soak`, [`soak`]): writes `BENCH_SOAK_OUT`, its chart and its section of
/// the report. `Ok(false)`: it ran, and failed its checks.
pub fn soak_run(settings: &Settings) -> anyhow::Result<bool> {
    if settings.external.is_some() {
        anyhow::bail!(
            "the soak runs on a stack of its own: unset BENCH_KAFKA_BROKERS and BENCH_CLICKHOUSE_URL"
        );
    }
    let mut passed = false;
    let recorded = json!({
        "minutes": settings.soak_minutes,
        "rate": settings.soak_rate,
        "sink_args": settings.sink_args,
    });
    session(
        settings,
        &settings.soak_out,
        recorded,
        |bench, _, result, _| {
            let windows = bench.bins.windows.as_ref().context(
                "no clickstream-windows binary (build it: cargo build --release -p \
                 clickstream-windows)",
            )?;
            let soak = bench.soak(settings.soak_minutes, settings.soak_rate, windows)?;
            passed = soak["verdict"] == "pass";
            result["soak"] = soak;
            Ok(())
        },
        |result| write_soak_report(settings, result),
    )?;
    Ok(passed)
}

/// One run on the stack: the header of the results (date, commit, machine, `recorded`
/// settings), `measure` filling in the rest, the results written to `out`, then `report`.
fn session(
    settings: &Settings,
    out: &Path,
    recorded: Value,
    measure: impl FnOnce(&Bench<'_>, &stack::Stack, &mut Value, &str) -> anyhow::Result<()>,
    report: impl FnOnce(&Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let run_id = chrono::Utc::now().format("%m%d%H%M%S").to_string();
    let dirty: Vec<String> = git(&[
        "status",
        "--porcelain",
        "--",
        "event",
        "producer",
        "sink",
        "benchkit",
        "Cargo.lock",
    ])
    .lines()
    .map(|l| l.get(3..).unwrap_or(l).to_owned())
    .collect();
    let mut result = json!({
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        "git": {"commit": git(&["rev-parse", "HEAD"]), "dirty": dirty},
        "machine": machine(),
        "settings": recorded,
    });
    let work = std::env::temp_dir().join(format!("bench-sink-{}-{run_id}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    // Servers someone else runs are never stopped.
    on_interrupt(settings.external.is_none().then(|| settings.stack.clone()))?;
    let outcome = (|| -> anyhow::Result<()> {
        let bins = copy_bins(settings, &work)?;
        let stack = match &settings.external {
            Some((kafka, clickhouse)) => {
                say(&format!(
                    "measuring against kafka {kafka}, clickhouse {}",
                    without_userinfo(clickhouse)
                ));
                stack::Stack::external(kafka, clickhouse, &settings.kafka_properties)?
            }
            None => {
                let port = |k: &str| {
                    let found = settings.stack.iter().find(|(n, _)| n == k);
                    found.map_or("", |(_, v)| v.as_str())
                };
                say(&format!(
                    "stack on kafka :{}, clickhouse :{}",
                    port("STACK_KAFKA_PORT"),
                    port("STACK_CLICKHOUSE_PORT")
                ));
                stack::Stack::up(settings.stack.clone())?
            }
        };
        let bench = Bench::new(&stack, &bins, &work, settings, run_id.clone());
        measure(&bench, &stack, &mut result, &run_id)?;
        result["machine"]["loadavg_end"] = json!(procs::loadavg());
        result["bench_wall_s"] = json!(procs::whole(started.elapsed().as_secs_f64()));
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(&result)? + "\n";
        report::write_whole(out, &text).with_context(|| format!("write {}", out.display()))?;
        report(&result)?;
        say(&format!(
            "wrote {} and {} in {}s",
            out.display(),
            settings.report.display(),
            result["bench_wall_s"]
        ));
        Ok(())
    })();
    if settings.keep_work {
        say(&format!("logs kept in {}", work.display()));
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    outcome
}

fn measure_all(
    settings: &Settings,
    bench: &Bench<'_>,
    stack: &stack::Stack,
    result: &mut Value,
    run_id: &str,
) -> anyhow::Result<()> {
    let events = settings.events;
    if ["throughput", "ceiling", "scale"]
        .iter()
        .any(|s| settings.has(s))
    {
        let topic = format!("bench-load-{run_id}");
        say(&format!("pre-loading {events} events into {topic}"));
        let count = events.to_string();
        let mut preload =
            bench.produce(&topic, "preload", &["--rate", "max", "--count", &count])?;
        if let Some(map) = preload.as_object_mut() {
            map.remove("per_partition");
        }
        result["preload"] = preload;
        let mut payload_bytes = None;
        if settings.has("throughput") {
            let mut bounds = vec![
                bench.consume_bound(&topic, "stream", "bound-stream-1")?,
                bench.consume_bound(&topic, "base", "bound-base")?,
            ];
            payload_bytes = bounds[0]["payload_bytes"].as_f64();
            let mut tp = bench.drain(&Drain::of("throughput", &topic, events, payload_bytes))?;
            bounds.push(bench.consume_bound(&topic, "stream", "bound-stream-2")?);
            if settings.profile && profile::available() {
                // perf costs the endpoint noticeably (thread events): a repeat of the run, not
                // the measured one, is profiled.
                let profiled = bench.drain(
                    &Drain::of("profile", &topic, events, payload_bytes).mode(Mode::Profiled),
                )?;
                let mut p = profiled["profile"].clone();
                p["profiled_run_steady_events_per_s"] = profiled["steady_events_per_s"].clone();
                p["profiled_run_perf_and_other_cpu_s"] = profiled["other_processes_cpu_s"].clone();
                tp["profile"] = p;
            }
            let of = |b: &Value, key: &str| b[key].as_f64().unwrap_or(0.0);
            // The first of the fastest, as the figures always took it.
            let best = bounds
                .iter()
                .fold(None::<&Value>, |best, b| match best {
                    Some(best) if of(best, "events_per_s") >= of(b, "events_per_s") => Some(best),
                    _ => Some(b),
                })
                .cloned()
                .unwrap_or_default();
            let best_steady = bounds
                .iter()
                .map(|b| of(b, "steady_events_per_s"))
                .fold(0.0, f64::max);
            let figures = json!({
                "sink_events_per_s": tp["events_per_s"],
                "sink_steady_events_per_s": tp["steady_events_per_s"],
                "sink_mb_per_s": tp["mb_per_s"],
                "sink_first_row_s": tp["first_row_s"],
                "sink_cpu_s": tp["sink_cpu_s"],
                "sink_peak_rss_mb": tp["sink_peak_rss_mb"],
                "sink_inserts": tp["inserts"],
                "sink_parts_created": tp["parts_created_by_inserts"],
                "inserts_per_s_at_max": tp["inserts_per_s_steady"],
                "bound_events_per_s": best["events_per_s"],
                "bound_steady_events_per_s": best_steady,
                "sink_bound_ratio": round(of(&tp, "events_per_s") / of(&best, "events_per_s"), 3),
                "sink_bound_ratio_steady": round(of(&tp, "steady_events_per_s") / best_steady, 3),
            });
            result["throughput"] = tp;
            result["bound"] = json!({"runs": bounds, "best": best});
            merge(result, figures);
        }
        let ceiling = settings.has("ceiling") && stack.discards();
        if settings.has("ceiling") && !ceiling {
            say(
                "WARNING: the sink alone (ceiling) is skipped: this ClickHouse cannot drop INSERTs \
                 unread (only scripts/clickhouse_http.py can)",
            );
        }
        if ceiling {
            let mut ceiling = bench
                .drain(&Drain::of("ceiling", &topic, events, payload_bytes).mode(Mode::Discard))?;
            if let Some(map) = ceiling.as_object_mut() {
                map.remove("progress");
            }
            if let Some(bound) = result["bound_steady_events_per_s"].as_f64() {
                ceiling["bound_ratio_steady"] = json!(round(
                    ceiling["steady_events_per_s"].as_f64().unwrap_or(0.0) / bound,
                    3
                ));
            }
            result["ceiling"] = ceiling;
        }
        if settings.has("scale") {
            // Longer drains than the others': with a dozen big INSERTs per drain, when the
            // last one lands decides a short drain's rate.
            let events = settings.scale_events;
            if events > settings.events {
                let more = (events - settings.events).to_string();
                say(&format!(
                    "topping {topic} up to {events} events for the scale-out runs"
                ));
                let mut top_up = bench.produce(
                    &topic,
                    "preload-scale",
                    &["--rate", "max", "--count", &more],
                )?;
                if let Some(map) = top_up.as_object_mut() {
                    map.remove("per_partition");
                }
                result["preload_scale"] = top_up;
            }
            // Rounds interleaved (1, 2, 3 sinks, then again), so that a slow minute of the
            // machine falls on every count alike (one run per count moved by up to 15 %).
            // Each round also drains with one sink given the memory bound of the most sinks
            // together (k times the default `max_batch_bytes`): what one sink lacks against k.
            let most = settings.scale.iter().copied().max().unwrap_or(1);
            // (Not when the sinks' own arguments set the bound: a flag given twice is refused.)
            let bound_given = settings
                .sink_args
                .iter()
                .any(|a| a.starts_with("--max-batch-bytes"));
            let pooled =
                (settings.scale.first() == Some(&1) && most > 1 && !bound_given).then(|| {
                    let bytes =
                        clickstream_sink::settings::Settings::default().max_batch_bytes * most;
                    vec!["--max-batch-bytes".to_owned(), bytes.to_string()]
                });
            let (mut rounds, mut pooled_runs) = (Vec::new(), Vec::new());
            for round in 1..=settings.scale_rounds {
                let runs = settings
                    .scale
                    .iter()
                    .map(|&k| {
                        let name = match settings.scale_rounds {
                            1 => format!("scale{k}"),
                            _ => format!("scale{k}r{round}"),
                        };
                        let mut run = bench
                            .drain(&Drain::of(&name, &topic, events, payload_bytes).sinks(k))?;
                        run["round"] = json!(round);
                        Ok(run)
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                if let Some(args) = &pooled {
                    let name = format!("scale1mem{most}r{round}");
                    let mut run = bench.drain(
                        &Drain::of(&name, &topic, events, payload_bytes).args(args.clone()),
                    )?;
                    run["round"] = json!(round);
                    run["sink_args"] = json!(args);
                    pooled_runs.push(run);
                }
                rounds.push(runs);
            }
            let pooled_out = pooled
                .is_some()
                .then(|| pooled_memory(most, &rounds, &pooled_runs));
            merge(result, scale_out(&settings.scale, rounds));
            if let Some(pooled) = pooled_out {
                result["one_sink_pooled_memory"] = pooled;
            }
        }
        stack.delete_topic(&topic);
    }
    if settings.has("latency") {
        let mut latency = serde_json::Map::new();
        for flush in &settings.flush {
            let key = format!("flush_{}ms", measure::flush_ms(flush)?);
            let mut per_rate = serde_json::Map::new();
            for &rate in &settings.rates {
                per_rate.insert(rate.to_string(), bench.latency(flush, rate)?);
            }
            latency.insert(key, Value::Object(per_rate));
        }
        result["latency"] = Value::Object(latency);
    }
    if settings.has("bulk") {
        result["bulk"] = bench.bulk(settings.bulk_events)?;
    }
    Ok(())
}

/// The scale-out results of `rounds` (each a run per sink count of `scale`): `scale_out`, per
/// count its median run by steady rate (the table and charts show it); `scale_rounds`, every
/// round's steady rates; `one_sink_of_most_steady`, the median over rounds of one sink's steady
/// rate over the most sinks' in the same round.
fn scale_out(scale: &[usize], rounds: Vec<Vec<Value>>) -> Value {
    let steady = |run: &Value| run["steady_events_per_s"].as_f64().unwrap_or(0.0);
    let median = |mut values: Vec<f64>| -> f64 {
        values.sort_by(f64::total_cmp);
        match values.len() {
            0 => 0.0,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        }
    };
    let per_round: Vec<Vec<f64>> = rounds
        .iter()
        .map(|runs| runs.iter().map(steady).collect())
        .collect();
    let ratios: Vec<f64> = per_round
        .iter()
        .filter_map(|r| match (r.first(), r.last()) {
            (Some(&one), Some(&most)) if most > 0.0 => Some(round(one / most, 3)),
            _ => None,
        })
        .collect();
    let mut medians = Vec::new();
    for i in 0..scale.len() {
        let mut runs: Vec<Value> = rounds.iter().filter_map(|r| r.get(i).cloned()).collect();
        runs.sort_by(|a, b| steady(a).total_cmp(&steady(b)));
        // The lower middle of an even count: a run that happened, not an average of two.
        let mut chosen = runs.swap_remove((runs.len() - 1) / 2);
        chosen["steady_events_per_s_rounds"] =
            json!(per_round.iter().map(|r| r[i]).collect::<Vec<_>>());
        medians.push(chosen);
    }
    let mut out = json!({
        "scale_out": medians,
        "scale_rounds": per_round,
    });
    if scale.len() > 1 && scale[0] == 1 {
        out["one_sink_of_most_steady_rounds"] = json!(ratios);
        out["one_sink_of_most_steady"] = json!(round(median(ratios.clone()), 3));
    }
    out
}

/// One sink with the memory bound of `most` sinks, round by round (`pooled`, one run per round
/// of `rounds`): its steady rates, peak RSS, and its steady rate over the most sinks' in the
/// same round, with their median.
fn pooled_memory(most: usize, rounds: &[Vec<Value>], pooled: &[Value]) -> Value {
    let steady = |run: &Value| run["steady_events_per_s"].as_f64().unwrap_or(0.0);
    let mut ratios: Vec<f64> = rounds
        .iter()
        .zip(pooled)
        .filter_map(|(runs, one)| {
            let most = steady(runs.last()?);
            (most > 0.0).then(|| round(steady(one) / most, 3))
        })
        .collect();
    let each = ratios.clone();
    ratios.sort_by(f64::total_cmp);
    let median = match ratios.len() {
        0 => None,
        n if n % 2 == 1 => Some(ratios[n / 2]),
        n => Some(round((ratios[n / 2 - 1] + ratios[n / 2]) / 2.0, 3)),
    };
    json!({
        "sinks_pooled": most,
        "sink_args": pooled.first().map(|run| run["sink_args"].clone()),
        "steady_events_per_s_rounds": pooled.iter().map(steady).collect::<Vec<_>>(),
        "sink_peak_rss_mb_rounds": pooled.iter().map(|run| run["sink_peak_rss_mb"].clone()).collect::<Vec<_>>(),
        "inserts_rounds": pooled.iter().map(|run| run["inserts"].clone()).collect::<Vec<_>>(),
        "duplicates_rounds": pooled.iter().map(|run| run["duplicates"].clone()).collect::<Vec<_>>(),
        "of_most_steady_rounds": each,
        "of_most_steady": median,
    })
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_properties_are_key_value_words_recorded_without_secrets() {
        let properties =
            kafka_properties("security.protocol=SASL_SSL 'sasl.password=a b=c' x.y=").unwrap();
        assert_eq!(
            shown_properties(&properties),
            [
                "security.protocol=SASL_SSL",
                "sasl.password=<redacted>",
                "x.y="
            ]
        );
        assert_eq!(properties[1].1, "a b=c");
        for bad in ["novalue", "=v"] {
            let error = kafka_properties(bad).unwrap_err().to_string();
            assert!(error.starts_with("BENCH_KAFKA_PROPERTIES: "), "{error}");
        }
    }

    #[test]
    fn scale_out_takes_each_counts_median_run_and_the_median_of_the_rounds_ratios() {
        let run = |k: usize, round: usize, steady: f64| json!({"instances": k, "round": round, "steady_events_per_s": steady});
        let rounds = vec![
            vec![run(1, 1, 100.0), run(3, 1, 200.0)],
            vec![run(1, 2, 180.0), run(3, 2, 200.0)],
            vec![run(1, 3, 150.0), run(3, 3, 160.0)],
        ];
        let out = scale_out(&[1, 3], rounds);
        assert_eq!(
            out["scale_out"][0]["round"], 3,
            "150 is the median of one sink"
        );
        assert_eq!(out["scale_out"][1]["round"], 1, "the first 200 of three");
        assert_eq!(
            out["scale_out"][0]["steady_events_per_s_rounds"],
            json!([100.0, 180.0, 150.0])
        );
        assert_eq!(
            out["one_sink_of_most_steady_rounds"],
            json!([0.5, 0.9, 0.938])
        );
        assert_eq!(out["one_sink_of_most_steady"], 0.9);
        let two = scale_out(&[1, 3], vec![vec![run(1, 1, 1.0), run(3, 1, 4.0)]; 2]);
        assert_eq!(two["one_sink_of_most_steady"], 0.25);
        let without_one = scale_out(&[2, 3], vec![vec![run(2, 1, 1.0), run(3, 1, 2.0)]]);
        assert!(without_one.get("one_sink_of_most_steady").is_none());
    }

    #[test]
    fn one_sink_with_pooled_memory_is_set_against_the_most_sinks_of_its_round() {
        let run = |steady: f64| {
            json!({"steady_events_per_s": steady, "sink_peak_rss_mb": 240.0,
            "inserts": 12, "duplicates": 0, "sink_args": ["--max-batch-bytes", "201326592"]})
        };
        let rounds = vec![
            vec![run(100.0), run(200.0)],
            vec![run(100.0), run(250.0)],
            vec![run(100.0), run(0.0)],
        ];
        let out = pooled_memory(3, &rounds, &[run(190.0), run(250.0), run(180.0)]);
        assert_eq!(out["of_most_steady_rounds"], json!([0.95, 1.0]));
        assert_eq!(out["of_most_steady"], json!(0.975));
        assert_eq!(
            out["steady_events_per_s_rounds"],
            json!([190.0, 250.0, 180.0])
        );
        assert_eq!(out["sinks_pooled"], 3);
        assert_eq!(out["sink_args"][1], "201326592");
        assert!(pooled_memory(3, &[], &[])["of_most_steady"].is_null());
    }

    #[test]
    fn a_url_is_recorded_without_its_credentials() {
        assert_eq!(without_userinfo("http://u:p@h:8123/x"), "http://h:8123/x");
        assert_eq!(without_userinfo("https://h:8443"), "https://h:8443");
    }

    #[test]
    fn sink_flags_split_as_a_shell_would() {
        assert_eq!(
            shell_words("-X session.timeout.ms=6000  --max-batch-bytes 1000"),
            ["-X", "session.timeout.ms=6000", "--max-batch-bytes", "1000"]
        );
        assert_eq!(shell_words("-X 'a=b c' \"\""), ["-X", "a=b c", ""]);
        assert!(shell_words("  ").is_empty());
    }
}
