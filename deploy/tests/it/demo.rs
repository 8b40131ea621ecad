//! scripts/demo: starts a private stack, producer and sink (debug binaries, free ports), rows
//! reach ClickHouse, and Ctrl-C stops everything it started; so does a SIGKILL of the demo, and
//! a sink that stops on its own (named, with its reason).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use clickstream_testkit::{TempDir, free_port, repo_root, unique_name};

/// Every marked process still running: the demo passes its environment, marker included, to
/// everything it starts (the stack's services too, though they run in their own sessions).
fn marked_processes(marker: &str) -> Vec<String> {
    let needle = format!("CLICKSTREAM_DEMO_TEST={marker}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
    {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
}

/// Stops the demo if the test fails half-way, so that nothing outlives the test.
struct Demo {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
        }
    }
}

impl Demo {
    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn metric(port: u16, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The ports of a demo: the stack's and its three processes'.
struct Ports {
    kafka: u16,
    clickhouse: u16,
    https: u16,
    sink: u16,
    producer: u16,
    windows: u16,
}

impl Ports {
    fn free() -> Ports {
        let ports = [
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        ];
        assert_eq!(
            ports
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            6
        );
        let [kafka, clickhouse, https, sink, producer, windows] = ports;
        Ports {
            kafka,
            clickhouse,
            https,
            sink,
            producer,
            windows,
        }
    }
}

/// Starts `scripts/demo --no-top` on `ports` and `data`, its processes marked with `marker`;
/// returns once it says it runs.
async fn start_demo(ports: &Ports, data: &TempDir, marker: &str) -> Demo {
    start_demo_with(ports, data, marker, &["--no-top"]).await
}

/// [`start_demo`] with `args` (none: with the terminal dashboard, its frames discarded).
async fn start_demo_with(ports: &Ports, data: &TempDir, marker: &str, args: &[&str]) -> Demo {
    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new(repo_root().join("scripts/demo"))
        .args(args)
        // Its own process group, as a terminal's foreground job: Ctrl-C reaches all of it.
        .process_group(0)
        .env("STACK_KAFKA_PORT", ports.kafka.to_string())
        .env("STACK_CLICKHOUSE_PORT", ports.clickhouse.to_string())
        .env("STACK_CLICKHOUSE_TLS_PORT", ports.https.to_string())
        .env("STACK_DATA_DIR", data.path())
        .env("DEMO_SINK_PORT", ports.sink.to_string())
        .env("DEMO_PRODUCER_PORT", ports.producer.to_string())
        .env("DEMO_WINDOWS_PORT", ports.windows.to_string())
        .env("DEMO_BIN_DIR", crate::bin_dir())
        .env("DEMO_RATE", "200")
        .env("CLICKSTREAM_DEMO_TEST", marker)
        .env_remove("KAFKA_BROKERS")
        .env_remove("CLICKHOUSE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start scripts/demo");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (ready, ready_rx) = mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Ctrl-C stops everything") {
                    let _ = ready.send(());
                }
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
    }
    let mut demo = Demo { child, log };

    // Up: stack, sink and producer ready.
    // Two demos start at once in the test run, each with its stack (up to 2 min on CI).
    let deadline = Instant::now() + Duration::from_secs(300);
    while ready_rx.try_recv().is_err() {
        assert!(
            matches!(demo.child.try_wait(), Ok(None)),
            "the demo exited at start:\n{}",
            demo.log()
        );
        assert!(
            Instant::now() < deadline,
            "not ready in 300 s:\n{}",
            demo.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    demo
}

/// Waits until ClickHouse holds `at_least` rows of the demo; their count.
async fn rows_arrive(demo: &Demo, clickhouse: u16, at_least: u64) -> u64 {
    let client = clickhouse::Client::default().with_url(format!("http://127.0.0.1:{clickhouse}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: u64 = client
            .query("SELECT count() FROM clickstream.events")
            .fetch_one()
            .await
            .unwrap_or(0);
        if rows >= at_least {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "only {rows} rows in ClickHouse after 60 s:\n{}",
            demo.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_runs_the_product_and_ctrl_c_stops_all_of_it() {
    let data = TempDir::new("it_demo");
    let marker = unique_name("demo");
    let ports = Ports::free();
    let Ports {
        kafka,
        clickhouse,
        sink,
        producer,
        windows,
        ..
    } = ports;
    let started = Instant::now();
    let mut demo = start_demo(&ports, &data, &marker).await;

    // Rows arrive in ClickHouse, through the sink.
    let rows = rows_arrive(&demo, clickhouse, 100).await;
    // The sink counts an insert once ClickHouse has answered it, which can be a moment after
    // its rows became visible: wait for the counter to catch up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !metric(sink, "clickstream_sink_inserted_rows_total").is_some_and(|n| n >= rows as f64) {
        assert!(
            Instant::now() < deadline,
            "the sink's inserted_rows_total stays below the {rows} rows ClickHouse holds: {:?}",
            metric(sink, "clickstream_sink_inserted_rows_total")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric(producer, "clickstream_producer_sent_total").is_some_and(|n| n > 0.0));
    // The window publisher checked the rollups (its first check publishes the newest closed
    // window).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !metric(windows, "clickstream_windows_checks_total").is_some_and(|n| n >= 1.0) {
        assert!(
            Instant::now() < deadline,
            "clickstream-windows made no check in 60 s:\n{}",
            demo.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let running = marked_processes(&marker);
    assert!(
        running.len() >= 6,
        "demo, stack, producer, sink, windows: {running:#?}"
    );

    // Ctrl-C: everything stops, cleanly.
    signal(demo.child.id(), "INT");
    let (status, log) = demo_exit(&mut demo, "Ctrl-C").await;
    assert_eq!(status.code(), Some(0), "exit status after Ctrl-C:\n{log}");
    assert_stopped(
        &log,
        &["producer", "sink", "windows", "clickhouse", "kafka"],
    );
    let left = marked_processes(&marker);
    assert!(
        left.is_empty(),
        "still running after Ctrl-C: {left:#?}\n{log}"
    );
    for port in [kafka, clickhouse, sink, producer, windows] {
        assert!(!port_open(port), "port {port} still open");
    }
    // The producer flushed: everything it sent was delivered.
    producer_delivered_all(&data);
    // The demo talks plain HTTP: nothing warns about TLS settings it does not use.
    for program in ["sink", "windows"] {
        let path = data.path().join(format!("log/{program}.log"));
        let text = std::fs::read_to_string(&path).expect("the demo's log");
        assert!(
            !text.contains("TLS files are set"),
            "{program} warns about TLS files the demo set:\n{text}"
        );
    }
    assert!(!Path::new(&data.path().join("run/sink.pid")).exists());
    // A bound on the whole, well above the steps' own limits' usual sum: CI runs this next to
    // the other tests on two cores, where starting a broker and ClickHouse alone can take 2 min.
    assert!(
        started.elapsed() < Duration::from_secs(400),
        "{:?}",
        started.elapsed()
    );
}

/// The demo's output says it stopped each of `names` (its programs, the stack's services).
fn assert_stopped(log: &str, names: &[&str]) {
    for name in names {
        assert!(
            log.contains(&format!("stopped {name}")),
            "'stopped {name}' missing:\n{log}"
        );
    }
}

/// Waits up to `secs` for every process marked `marker` to end (after `what`).
async fn nothing_left(marker: &str, secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = marked_processes(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running {secs} s after {what}: {left:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits up to 90 s (after `what`) for the demo to exit; its status and its whole output.
async fn demo_exit(demo: &mut Demo, what: &str) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = demo.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 90 s after {what}:\n{}",
            demo.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The reader thread sees the last lines once the pipe closes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !demo.log().contains("logs are in") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    (status, demo.log())
}

/// An ALTER the sink cannot follow (a column narrowed below what valid events hold) stops the
/// sink loudly; the demo then ends everything it started and says which program ended and why,
/// the sink's own "change it back" included, not only where the logs are. With the terminal
/// dashboard too: it ends rather than go on showing a pipeline that no longer runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_sink_that_stops_ends_the_demo_with_its_reason() {
    a_sink_stops(&["--no-top"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_that_stops_ends_the_demo_and_its_dashboard_with_its_reason() {
    a_sink_stops(&[]).await;
}

async fn a_sink_stops(args: &[&str]) {
    let data = TempDir::new("it_demo_sink_stops");
    let marker = unique_name("demo-sink-stops");
    let ports = Ports::free();
    let mut demo = start_demo_with(&ports, &data, &marker, args).await;
    let _orphans = KillLeftovers(&marker);
    rows_arrive(&demo, ports.clickhouse, 100).await;

    let client =
        clickhouse::Client::default().with_url(format!("http://127.0.0.1:{}", ports.clickhouse));
    client
        .query("ALTER TABLE clickstream.events MODIFY COLUMN price Nullable(Decimal(7, 2))")
        .execute()
        .await
        .expect("narrow the price column");
    let (status, log) = demo_exit(&mut demo, "the ALTER").await;
    assert_eq!(status.code(), Some(1), "exit status:\n{log}");
    let reason = log
        .lines()
        .find(|l| l.contains("the sink exited on its own (exit code 1)"))
        .unwrap_or_else(|| panic!("the sink's exit is not named:\n{log}"));
    assert!(
        reason.contains("ERROR") && reason.contains("`price`") && reason.contains("change it back"),
        "the reason is not the sink's error: {reason}"
    );
    assert_stopped(&log, &["producer", "windows", "kafka"]);
    nothing_left(&marker, 30, "the demo ended").await;
}

/// Ctrl-C at a terminal, with the dashboard: SIGINT reaches the demo's whole process group (the
/// dashboard and the programs), and everything stops cleanly, exit 0, nothing named as having
/// failed.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_to_the_demo_and_its_dashboard_stops_all_of_it_cleanly() {
    dashboard_demo_stops_on("INT", true).await;
}

/// A SIGTERM to the demo alone, with the dashboard (`kill PID`, a service manager): the demo
/// stops everything at once, as on Ctrl-C, rather than wait for the dashboard to return (it
/// never did: it ran in the foreground, and bash serves a trap only once that returns).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_to_the_demo_alone_stops_it_and_its_dashboard_cleanly() {
    dashboard_demo_stops_on("TERM", false).await;
}

async fn dashboard_demo_stops_on(signal: &str, whole_group: bool) {
    let data = TempDir::new("it_demo_top_stops");
    let marker = unique_name("demo-top-stops");
    let ports = Ports::free();
    let mut demo = start_demo_with(&ports, &data, &marker, &[]).await;
    let _orphans = KillLeftovers(&marker);
    rows_arrive(&demo, ports.clickhouse, 100).await;
    let pid = demo.child.id();
    let target = if whole_group {
        format!("-{pid}")
    } else {
        pid.to_string()
    };
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &target])
        .status();
    let (status, log) = demo_exit(&mut demo, &format!("SIG{signal}")).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIG{signal}:\n{log}"
    );
    assert!(!log.contains("error"), "{log}");
    assert_stopped(&log, &["producer", "sink", "windows", "kafka"]);
    nothing_left(&marker, 30, &format!("SIG{signal}")).await;
    producer_delivered_all(&data);
}

/// The demo's producer flushed as it stopped: its summary says everything sent was delivered.
fn producer_delivered_all(data: &TempDir) {
    let producer_log = std::fs::read_to_string(data.path().join("log/producer.log"))
        .unwrap_or_else(|e| panic!("the producer's log: {e}"));
    let summary: serde_json::Value = producer_log
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no summary in the producer's log:\n{producer_log}"));
    assert_eq!(summary["delivered"], summary["sent"], "{summary}");
}

/// SIGKILLs whatever of a demo still runs when dropped (a failed test must leave nothing
/// behind; the stack's watcher stops the stack).
struct KillLeftovers<'a>(&'a str);

impl Drop for KillLeftovers<'_> {
    fn drop(&mut self) {
        for process in marked_processes(self.0) {
            if let Some(pid) = process.split(':').next().and_then(|p| p.parse().ok()) {
                signal(pid, "KILL");
            }
        }
    }
}

/// A demo killed with no chance to clean up (SIGKILL, as an out-of-memory kill or a CI timeout
/// does): its producer, sink and window publisher get SIGTERM from the kernel and exit after
/// their flush, and the stack's watcher stops the stack. Nothing of it keeps running.
#[tokio::test(flavor = "multi_thread")]
async fn a_demo_killed_outright_leaves_nothing_running() {
    let data = TempDir::new("it_demo_killed");
    let marker = unique_name("demo-killed");
    let ports = Ports::free();
    let mut demo = start_demo(&ports, &data, &marker).await;
    let _orphans = KillLeftovers(&marker);
    rows_arrive(&demo, ports.clickhouse, 100).await;
    let running = marked_processes(&marker);
    assert!(
        running.len() >= 6,
        "demo, stack, producer, sink, windows: {running:#?}"
    );

    signal(demo.child.id(), "KILL");
    let _ = demo.child.wait();
    nothing_left(&marker, 90, "the demo was killed").await;
    for port in [
        ports.kafka,
        ports.clickhouse,
        ports.sink,
        ports.producer,
        ports.windows,
    ] {
        assert!(!port_open(port), "port {port} still open");
    }
    // They stopped as on Ctrl-C (SIGTERM: flushed and exited), not killed.
    let log = |name: &str| {
        std::fs::read_to_string(data.path().join(format!("log/{name}.log"))).unwrap_or_default()
    };
    assert!(
        log("sink").contains("signal received"),
        "the sink got no SIGTERM:\n{}",
        log("sink")
    );
    producer_delivered_all(&data);
    assert!(
        log("watch").contains("is gone: stopping the stack"),
        "the stack's watcher did not stop it:\n{}",
        log("watch")
    );
}
