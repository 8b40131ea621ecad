//! clickstream-faults: the fault-injection suite (`scripts/faults` runs it on a private local
//! stack). Each scenario runs the real `clickstream-sink` binary through crashes, outages and
//! rebalances and judges the end state offset by offset; see [`scenarios`].
//!
//! Writes `bench/results/faults.json` and the fault section of `bench/REPORT.md`. Exit code 0
//! only if every scenario that ran passed.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use clickstream_faults::{git_commit, run, scenarios};
use clickstream_testkit::repo_root;
use serde_json::json;

/// Runs the fault-injection scenarios against KAFKA_BROKERS / CLICKHOUSE_URL.
#[derive(Parser, Debug)]
#[command(name = "clickstream-faults")]
struct Cli {
    /// Comma-separated scenarios to run (default: all; `--list` prints them).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Results file.
    #[arg(long, default_value = "bench/results/faults.json")]
    out: PathBuf,
    /// Report whose fault section (between marker comments) is replaced.
    #[arg(long, default_value = "bench/REPORT.md")]
    report: PathBuf,
    /// Print the scenarios, one a line, and exit.
    #[arg(long)]
    list: bool,
    /// Quick sizes (as scripts/test runs them) instead of the full ones.
    #[arg(long)]
    quick: bool,
    /// The sink binary to run.
    #[arg(long, env = "FAULTS_SINK_BIN")]
    sink_bin: Option<PathBuf>,
}

const BEGIN: &str = "<!-- faults:begin (written by scripts/faults) -->";
const END: &str = "<!-- faults:end -->";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.list {
        for name in scenarios::ALL {
            println!("{name}");
        }
        return Ok(());
    }
    let root = repo_root();
    let names: Vec<String> = if cli.only.is_empty() {
        scenarios::ALL.iter().map(|s| (*s).to_owned()).collect()
    } else {
        cli.only.clone()
    };
    for name in &names {
        anyhow::ensure!(
            scenarios::ALL.contains(&name.as_str()),
            "unknown scenario {name}; known: {}",
            scenarios::ALL.join(", ")
        );
    }
    let storage = std::env::var("STACK_KAFKA_STORAGE").unwrap_or_default();
    let stack = run::Stack {
        brokers: std::env::var("KAFKA_BROKERS").context("KAFKA_BROKERS")?,
        clickhouse_url: std::env::var("CLICKHOUSE_URL").context("CLICKHOUSE_URL")?,
        sink_bin: cli
            .sink_bin
            .clone()
            .unwrap_or_else(|| root.join("target/release/clickstream-sink")),
        log_dir: root.join("target/faults-logs"),
        durable_broker: !storage.is_empty() && !storage.starts_with("memory"),
        full: !cli.quick,
    };
    anyhow::ensure!(
        stack.sink_bin.exists(),
        "{} not found: build it (cargo build --release -p clickstream-sink) or set FAULTS_SINK_BIN",
        stack.sink_bin.display()
    );

    let mut outcomes = Vec::new();
    for name in &names {
        eprintln!("faults: {name} ...");
        let outcome = scenarios::run(name, &stack).await;
        eprintln!(
            "faults: {name}: {} in {} s{}",
            if outcome.skipped.is_some() {
                "SKIPPED"
            } else if outcome.passed {
                "passed"
            } else {
                "FAILED"
            },
            outcome.seconds,
            outcome
                .error
                .as_deref()
                .or(outcome.skipped.as_deref())
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        outcomes.push(outcome);
    }

    // Scenarios not run now keep their earlier results (scripts/faults runs the broker
    // restart on a second, durable stack): merge by name, in the suite's order.
    let out = root.join(&cli.out);
    let mut merged: Vec<serde_json::Value> = Vec::new();
    let earlier: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| v.get("scenarios").and_then(|s| s.as_array()).cloned())
        .unwrap_or_default();
    for name in scenarios::ALL {
        if let Some(now) = outcomes.iter().find(|o| o.scenario == *name) {
            merged.push(serde_json::to_value(now)?);
        } else if let Some(before) = earlier.iter().find(|o| o["scenario"] == *name) {
            merged.push(before.clone());
        }
    }
    let all_passed = merged
        .iter()
        .all(|o| o["passed"] == true || !o["skipped"].is_null());
    let results = json!({
        "generated_at": chrono::Utc::now().to_rfc3339(),
        "git_commit": git_commit(),
        "machine": {
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "memory_gb": memory_gb(),
        },
        "all_passed": all_passed,
        "scenarios": merged,
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results)? + "\n")?;
    write_report(&root.join(&cli.report), &merged)?;
    eprintln!(
        "faults: wrote {} and {}",
        cli.out.display(),
        cli.report.display()
    );
    anyhow::ensure!(
        outcomes.iter().all(|o| o.passed || o.skipped.is_some()),
        "some scenarios failed (see above)"
    );
    Ok(())
}

fn write_report(path: &std::path::Path, outcomes: &[serde_json::Value]) -> anyhow::Result<()> {
    let mut section = format!(
        "{BEGIN}\n## Fault injection (`scripts/faults`)\n\n\
         Each scenario runs the real `clickstream-sink` binary on a fresh topic and database and \
         judges the end state with an offset oracle: per partition, the offsets in ClickHouse \
         plus the source offsets in the dead-letter topic must be exactly the produced ones (no \
         gap, no repeat), and every rollup must equal the raw table. The negative control runs \
         the kill scenario with `--delivery at-least-once` and passes only if the oracle finds \
         duplicates. `clickstream-sink verify` (the product's own check, which knows only Kafka and \
         ClickHouse) runs on the same end state: its column says whether it found all well. Raw \
         results: `bench/results/faults.json`.\n\n\
         | scenario | run | broker | injected | produced | rows in ClickHouse | dead-lettered | duplicates | missing | rollups = raw | `verify` | result |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for o in outcomes {
        let text = |key: &str| o[key].as_str().unwrap_or_default().to_owned();
        let injected = o["injected"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| *k != "sigkill_after_ms")
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
            .replace('|', "/");
        let result = if !o["skipped"].is_null() {
            format!("skipped: {}", text("skipped"))
        } else if !o["error"].is_null() {
            format!(
                "FAILED: {}",
                text("error").replace('|', "/").replace('\n', " ")
            )
        } else if o["passed"] == true {
            "passed".to_owned()
        } else {
            "FAILED".to_owned()
        };
        let v = &o["verdict"];
        let number = |key: &str| v[key].as_u64().map(|n| n.to_string()).unwrap_or_default();
        section.push_str(&format!(
            "| {} | {} (commit {}) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            text("scenario"),
            text("run_at"),
            text("git_commit"),
            text("broker_storage"),
            injected,
            number("produced"),
            number("rows_in_clickhouse"),
            number("dead_lettered"),
            number("duplicates"),
            number("missing"),
            match v["rollups_equal"].as_bool() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            },
            match v["product_verify_ok"].as_bool() {
                Some(true) => "OK".to_owned(),
                Some(false) => format!(
                    "problems: {}",
                    v["product_verify_problems"]
                        .as_array()
                        .map(|p| p
                            .iter()
                            .filter_map(|x| x.as_str())
                            .map(|x| x.chars().take(120).collect::<String>())
                            .collect::<Vec<_>>()
                            .join("; "))
                        .unwrap_or_default()
                        .replace('|', "/")
                ),
                None => String::new(),
            },
            result
        ));
    }
    section.push_str(END);
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let updated = match (existing.find(BEGIN), existing.find(END)) {
        (Some(begin), Some(end)) if end > begin => {
            format!(
                "{}{}{}",
                &existing[..begin],
                section,
                &existing[end + END.len()..]
            )
        }
        _ if existing.is_empty() => {
            format!("# Benchmark and fault-injection report\n\n{section}\n")
        }
        _ => format!("{}\n\n{section}\n", existing.trim_end()),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, updated)?;
    Ok(())
}

fn memory_gb() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|kb| kb.parse::<f64>().ok())
                })
        })
        .map_or(0.0, |kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
}
