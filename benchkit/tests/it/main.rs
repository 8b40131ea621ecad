//! `bench-sink` end to end at a tiny size, on a private stack of its own (as `scripts/bench`
//! runs it): every section, then the results, the report and the charts are checked. Run by
//! `scripts/test`, so the benchmark cannot rot between two of its (long) real runs.

use clickstream_testkit::{TempDir, clickhouse_url, free_port, kafka_brokers, workspace_bin_dir};
use serde_json::{Value, json};

/// A stack of the bench's own under `dir`, on free ports.
fn private_stack(dir: &TempDir) -> [(&'static str, String); 4] {
    [
        (
            "STACK_DATA_DIR",
            dir.path().join("stack").display().to_string(),
        ),
        ("STACK_KAFKA_PORT", free_port().to_string()),
        ("STACK_CLICKHOUSE_PORT", free_port().to_string()),
        ("STACK_CLICKHOUSE_TLS_PORT", free_port().to_string()),
    ]
}

/// Two benches at once would share two cores: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_small_run_of_every_section_measures_what_it_drained() {
    let _one_at_a_time = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = TempDir::new("bench-it");
    let bins = workspace_bin_dir();
    let (out, report, charts) = (
        dir.path().join("results.json"),
        dir.path().join("REPORT.md"),
        dir.path().join("charts"),
    );
    std::fs::write(&report, "# Title\n\nThe faults' section, kept.\n").expect("write report");
    let events = 20_000;
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_bench-sink"))
        .env_remove("KAFKA_BROKERS")
        .env_remove("CLICKHOUSE_URL")
        .envs([
            ("BENCH_EVENTS", events.to_string()),
            ("BENCH_RATES", "200".into()),
            ("BENCH_SECONDS", "3".into()),
            ("BENCH_FLUSH", "1000".into()),
            ("BENCH_SCALE", "2".into()),
            ("BENCH_SCALE_ROUNDS", "2".into()),
            (
                "BENCH_SECTIONS",
                "throughput ceiling latency scale bulk".into(),
            ),
            ("BENCH_BULK_EVENTS", "5000".into()),
            ("BENCH_PROFILE", "0".into()),
            ("BENCH_BEFORE", String::new()),
            ("BENCH_OUT", out.display().to_string()),
            ("BENCH_REPORT", report.display().to_string()),
            ("BENCH_CHARTS", charts.display().to_string()),
            ("BENCH_BIN_DIR", bins.display().to_string()),
        ])
        .envs(private_stack(&dir))
        .status()
        .expect("run bench-sink");
    assert!(status.success(), "bench-sink: {status}");

    let text = std::fs::read_to_string(&out).expect("results file");
    let r: Value = serde_json::from_str(&text).expect("results JSON");
    let drained = |run: &Value, what: &str, expected: u64| {
        assert_eq!(run["rows"], expected, "{what}: {run}");
        assert_eq!(run["duplicates"], 0, "{what}");
        assert!(run["inserts"].as_u64().unwrap_or(0) >= 1, "{what}: {run}");
        assert!(run["sink_cpu_s"].as_f64().unwrap_or(0.0) > 0.0, "{what}");
        assert!(
            run["sink_peak_rss_mb"].as_f64().unwrap_or(0.0) > 1.0,
            "{what}"
        );
        assert!(run["first_row_s"].as_f64().unwrap_or(0.0) > 0.0, "{what}");
    };
    drained(&r["throughput"], "one sink", events);
    drained(&r["ceiling"], "the sink alone", events);
    // The scale-out runs drain the topic topped up to three times the events.
    drained(&r["scale_out"][0], "two sinks", 3 * events);
    assert_eq!(r["preload_scale"]["delivered"], 2 * events, "the top-up");
    drained(&r["bulk"], "bulk", 5_000);
    assert_eq!(
        r["scale_out"][0]["processes"].as_array().map(Vec::len),
        Some(2)
    );
    // Two rounds ran, each draining everything; the table keeps one of them.
    let rounds = r["scale_rounds"].as_array().expect("scale rounds");
    assert_eq!(rounds.len(), 2, "{rounds:?}");
    for round in rounds {
        assert!(round[0].as_f64().unwrap_or(0.0) > 0.0, "{round}");
    }
    assert!([1, 2].contains(&r["scale_out"][0]["round"].as_u64().unwrap_or(0)));
    assert_eq!(r["bulk"]["producer"]["delivered"], 5_000);
    assert!(
        r["throughput"]["clickhouse_endpoint_cpu_s"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    );
    // The bound read every pre-loaded event, three times, and its peak memory was seen.
    let runs = r["bound"]["runs"].as_array().expect("bound runs");
    assert_eq!(runs.len(), 3);
    for run in runs {
        assert_eq!(run["messages"], events, "{run}");
        assert!(run["peak_rss_mb"].as_f64().unwrap_or(0.0) > 1.0, "{run}");
    }
    let latency = &r["latency"]["flush_1000ms"]["200"];
    assert_eq!(latency["rows"], latency["delivered"], "{latency}");
    let p99 = latency["latency_ms"]["p99"].as_i64().unwrap_or(-1);
    assert!((1..60_000).contains(&p99), "{latency}");

    let report = std::fs::read_to_string(&report).expect("report");
    assert!(
        report.starts_with("# Title\n\n<!-- bench:begin"),
        "{report}"
    );
    assert!(report.contains("The faults' section, kept."));
    for heading in [
        "### 1–2. Throughput",
        "### The sink alone",
        "### 3. Latency",
        "### 4. Scale-out",
        "### 5. ",
    ] {
        assert!(report.contains(heading), "no `{heading}` in the report");
    }
    for chart in [
        "throughput.svg",
        "latency.svg",
        "rss.svg",
        "cpu.svg",
        "bulk.svg",
    ] {
        assert!(charts.join(chart).exists(), "{chart} not drawn");
        assert!(
            report.contains(&format!("(charts/{chart})")),
            "{chart} not linked"
        );
    }
}

/// Against servers the bench does not start (here the stack under test, as `KAFKA_BROKERS` /
/// `CLICKHOUSE_URL` give it; docker compose's servers the same way): no stack of its own is
/// started, the servers' CPU is not measured, and the sink alone runs only where the endpoint
/// can drop INSERTs (`scripts/clickhouse_http.py`, not a ClickHouse server).
#[test]
fn a_run_against_external_servers_starts_no_stack_of_its_own() {
    let _one_at_a_time = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = TempDir::new("bench-it-external");
    let (out, report, stack_dir) = (
        dir.path().join("results.json"),
        dir.path().join("REPORT.md"),
        dir.path().join("no-stack"),
    );
    let events = 10_000;
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_bench-sink"))
        .envs([
            ("BENCH_KAFKA_BROKERS", kafka_brokers()),
            // Given to every Kafka client of the bench (each must accept it).
            (
                "BENCH_KAFKA_PROPERTIES",
                "client.id=bench-external socket.keepalive.enable=true".into(),
            ),
            ("BENCH_CLICKHOUSE_URL", clickhouse_url()),
            ("BENCH_EVENTS", events.to_string()),
            ("BENCH_SECTIONS", "throughput ceiling".into()),
            ("BENCH_PROFILE", "0".into()),
            ("BENCH_BEFORE", String::new()),
            ("BENCH_OUT", out.display().to_string()),
            ("BENCH_REPORT", report.display().to_string()),
            (
                "BENCH_CHARTS",
                dir.path().join("charts").display().to_string(),
            ),
            ("BENCH_BIN_DIR", workspace_bin_dir().display().to_string()),
            ("STACK_DATA_DIR", stack_dir.display().to_string()),
        ])
        .status()
        .expect("run bench-sink");
    assert!(status.success(), "bench-sink: {status}");
    assert!(!stack_dir.exists(), "a stack of its own was started");

    let r: Value = serde_json::from_str(&std::fs::read_to_string(&out).expect("results"))
        .expect("results JSON");
    let t = &r["throughput"];
    assert_eq!(t["rows"], events, "{t}");
    assert_eq!(t["duplicates"], 0);
    assert!(t["sink_cpu_s"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(
        t["clickhouse_endpoint_cpu_s"].is_null(),
        "measured someone else's server"
    );
    assert_eq!(r["settings"]["external"]["kafka"], kafka_brokers());
    assert_eq!(
        r["settings"]["kafka_properties"],
        json!(["client.id=bench-external", "socket.keepalive.enable=true"])
    );
    let discards = !r["ceiling"].is_null();
    if discards {
        assert_eq!(r["ceiling"]["rows"], events);
    }
    let report = std::fs::read_to_string(&report).expect("report");
    assert!(report.contains("Servers: Kafka at "), "{report}");
    assert_eq!(report.contains("### The sink alone"), discards);
}

/// `scripts/soak` at its shortest (one minute), on a private stack of its own: every operation
/// (the outage included) runs on the way, the verdict rests on the table's real contents, and the report keeps the
/// other sections.
#[test]
fn a_one_minute_soak_runs_every_operation_and_finds_each_event_once() {
    let _one_at_a_time = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = TempDir::new("bench-it-soak");
    let (out, report, charts) = (
        dir.path().join("soak.json"),
        dir.path().join("REPORT.md"),
        dir.path().join("charts"),
    );
    std::fs::write(
        &report,
        "# Title\n\n<!-- bench:begin -->\nkept\n<!-- bench:end -->\n",
    )
    .expect("write report");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_bench-sink"))
        .arg("--soak")
        .env_remove("KAFKA_BROKERS")
        .env_remove("CLICKHOUSE_URL")
        .envs([
            ("BENCH_SOAK_MINUTES", "1".to_owned()),
            ("BENCH_SOAK_RATE", "300".into()),
            ("BENCH_SOAK_OUT", out.display().to_string()),
            ("BENCH_REPORT", report.display().to_string()),
            ("BENCH_CHARTS", charts.display().to_string()),
            ("BENCH_BIN_DIR", workspace_bin_dir().display().to_string()),
        ])
        .envs(private_stack(&dir))
        .status()
        .expect("run bench-sink --soak");
    let text = std::fs::read_to_string(&out).expect("soak results file");
    let r: Value = serde_json::from_str(&text).expect("soak results JSON");
    let s = &r["soak"];
    assert!(
        status.success(),
        "bench-sink --soak: {status}: {}",
        s["failures"]
    );
    assert_eq!(s["verdict"], "pass");
    let operations: Vec<&str> = s["operations"]
        .as_array()
        .expect("operations")
        .iter()
        .filter_map(|o| o["operation"].as_str())
        .collect();
    assert_eq!(
        operations,
        ["join", "leave", "alter", "kill", "outage", "restore"]
    );
    let c = &s["checks"];
    // The outage ran on the stack's endpoint (3 s of a one-minute run: shorter than the stall
    // timeout, so no stall is due), and the sink came out of it not stalled.
    assert_eq!(c["outage"]["ran"], true, "{c}");
    assert_eq!(c["outage"]["stalled_at_end"], 0.0, "{c}");
    let delivered = c["delivered"].as_u64().expect("delivered");
    assert!(delivered >= 300 * 50, "{c}");
    assert_eq!(c["rows"], c["expected_rows"], "{c}");
    assert_eq!(c["distinct_offsets"], c["rows"], "{c}");
    assert_eq!(
        c["rows"].as_u64(),
        Some(1 + delivered - c["poison"].as_u64().unwrap_or(0))
    );
    let exits = c["sink_exits"].as_array().expect("sink exits");
    assert_eq!(
        exits.len(),
        3,
        "second, killed and restarted sinks: {exits:?}"
    );
    assert!(
        s["samples"].as_array().map_or(0, Vec::len) >= 10,
        "a sample every 5 s"
    );
    assert!(s["summary"]["sink_rss_mb"]["max"].as_f64().unwrap_or(0.0) > 1.0);
    assert!(
        s["summary"]["windows_rss_mb"]["max"]
            .as_f64()
            .unwrap_or(0.0)
            > 1.0
    );
    assert!(s["summary"]["sink_series"]["max"].as_f64().unwrap_or(0.0) > 10.0);
    let report = std::fs::read_to_string(&report).expect("report");
    assert!(report.contains("<!-- bench:begin -->\nkept\n<!-- bench:end -->"));
    assert!(report.contains("## Soak (`scripts/soak`)"), "{report}");
    assert!(report.contains("**Verdict: pass.**"), "{report}");
    assert!(charts.join("soak.svg").exists());
    assert!(report.contains("(charts/soak.svg)"));
}
