//! The scripts the containers run: the health probe `deploy/http-ok`, ClickHouse's
//! `03-passwords.sh`, Kafka's health check `deploy/kafka/kafka-ready` (against the stack's real
//! broker) and Grafana's entrypoint `deploy/grafana/first-start.sh`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clickstream_testkit::{TempDir, repo_root};

/// Serves one connection with `response` (or holds it open without answering when `None`);
/// sends the request line it received.
fn serve_once(response: Option<&'static str>) -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut request_line = String::new();
        let _ = reader.read_line(&mut request_line);
        let _ = sender.send(request_line.trim_end().to_owned());
        // Read the rest of the request, as an HTTP server does, before answering.
        let mut header = String::new();
        while reader.read_line(&mut header).is_ok_and(|n| n > 0) && header.trim() != "" {
            header.clear();
        }
        match response {
            Some(text) => {
                let mut stream = stream;
                let _ = stream.write_all(text.as_bytes());
            }
            None => std::thread::sleep(Duration::from_secs(10)),
        }
    });
    (port, receiver)
}

fn http_ok(port: u16, path: &str) -> Output {
    Command::new(repo_root().join("deploy/http-ok"))
        .args([&port.to_string(), path])
        .output()
        .expect("run deploy/http-ok")
}

#[test]
fn the_health_probe_passes_on_200_only() {
    let (port, request) = serve_once(Some("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"));
    let output = http_ok(port, "/ready");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(request.recv().unwrap(), "GET /ready HTTP/1.0");

    let (port, _) = serve_once(Some("HTTP/1.0 503 Service Unavailable\r\n\r\nnot ready\n"));
    assert_eq!(http_ok(port, "/ready").status.code(), Some(1));

    // Nothing listening: fails at once, quietly.
    let port = clickstream_testkit::free_port();
    let output = http_ok(port, "/health");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A server that never answers: fails after its 3 s read timeout, not never.
    let (port, _) = serve_once(None);
    let started = Instant::now();
    assert_eq!(http_ok(port, "/health").status.code(), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // Misuse is an error of its own.
    let output = Command::new(repo_root().join("deploy/http-ok"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

/// Runs 03-passwords.sh with a `clickhouse-client` that prints the SQL it is given.
fn passwords_sql(sink: &str, reader: &str) -> Output {
    let dir = TempDir::new("fake_clickhouse_client");
    let fake = dir.path().join("clickhouse-client");
    std::fs::write(&fake, "#!/bin/sh\ncat\n").expect("write the fake client");
    let status = Command::new("chmod").arg("+x").arg(&fake).status();
    assert!(status.is_ok_and(|s| s.success()), "chmod +x");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new(repo_root().join("deploy/clickhouse/03-passwords.sh"));
    command
        .env("PATH", path)
        .env("CLICKHOUSE_SINK_PASSWORD", sink)
        .env("CLICKHOUSE_READER_PASSWORD", reader)
        .stdin(Stdio::null());
    if sink.is_empty() {
        command.env_remove("CLICKHOUSE_SINK_PASSWORD");
    }
    command.output().expect("run 03-passwords.sh")
}

#[tokio::test]
async fn the_passwords_script_sets_any_password_verbatim() {
    let sink = r#"it's a "quote" \ back$lash & `tick` ü"#;
    let reader = r"ends with a backslash \";
    let output = passwords_sql(sink, reader);
    assert!(output.status.success(), "{output:?}");
    let sql = String::from_utf8(output.stdout).unwrap();
    let statements: Vec<&str> = sql.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(statements.len(), 2, "{sql}");

    let client = clickstream_testkit::clickhouse();
    for (statement, user, password) in [
        (statements[0], "clickstream_sink", sink),
        (statements[1], "clickstream_reader", reader),
    ] {
        let prefix = format!("ALTER USER {user} IDENTIFIED WITH sha256_password BY ");
        let literal = statement
            .strip_prefix(&prefix)
            .and_then(|s| s.strip_suffix(';'))
            .unwrap_or_else(|| panic!("unexpected statement: {statement}"));
        // ClickHouse reads the literal back as exactly the password ...
        let read: String = client
            .query(&format!("SELECT {literal}"))
            .fetch_one()
            .await
            .unwrap_or_else(|e| panic!("SELECT {literal}: {e}"));
        assert_eq!(read, password);
        // ... and the statement parses (chDB refuses to run ALTER USER, not to parse it).
        client
            .query(&format!("EXPLAIN AST {}", statement.trim_end_matches(';')))
            .fetch_all::<String>()
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }

    // A missing password stops the init (and so the container) with a message.
    let output = passwords_sql("", "x");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("CLICKHOUSE_SINK_PASSWORD"),
        "{output:?}"
    );
}

fn kafka_ready(host: &str, port: &str) -> Output {
    Command::new("bash")
        .arg(repo_root().join("deploy/kafka/kafka-ready"))
        .args([host, port])
        .output()
        .expect("run deploy/kafka/kafka-ready")
}

/// Kafka's health check answers for a real broker only: the stack's broker passes; a port
/// with nothing behind it, and an HTTP server (ClickHouse's), fail; both quietly.
#[test]
fn the_kafka_health_check_passes_for_a_broker_only() {
    let brokers = clickstream_testkit::kafka_brokers();
    let (host, port) = brokers
        .split(',')
        .next()
        .and_then(|b| b.rsplit_once(':'))
        .expect("host:port");
    let output = kafka_ready(host, port);
    assert_eq!(output.status.code(), Some(0), "{output:?}");

    let nothing = clickstream_testkit::free_port().to_string();
    let clickhouse = clickstream_testkit::clickhouse_url();
    let http_port = clickhouse.rsplit(':').next().unwrap().trim_end_matches('/');
    for port in [nothing.as_str(), http_port] {
        let output = kafka_ready("127.0.0.1", port);
        assert_eq!(output.status.code(), Some(1), "port {port}: {output:?}");
        assert!(output.stderr.is_empty(), "{output:?}");
    }
}

/// Runs Grafana's entrypoint with `data` as Grafana's data dir and a fake /run.sh that
/// records the admin password it is given (or `<unset>`).
fn grafana_first_start(data: &std::path::Path, password: Option<&str>) -> (Output, String) {
    let fake = data.join("run.sh");
    let seen = data.join("seen");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"${{GF_SECURITY_ADMIN_PASSWORD-<unset>}}\" > '{}'\n",
            seen.display()
        ),
    )
    .expect("fake run.sh");
    let _ = std::fs::remove_file(&seen);
    let mut command = Command::new("sh");
    command
        .arg(repo_root().join("deploy/grafana/first-start.sh"))
        .env("GF_PATHS_DATA", data)
        .env("GRAFANA_RUN", &fake);
    match password {
        Some(password) => command.env("GF_SECURITY_ADMIN_PASSWORD", password),
        None => command.env("GF_SECURITY_ADMIN_PASSWORD", ""),
    };
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let output = command.output().expect("run first-start.sh");
    let given = std::fs::read_to_string(&seen).unwrap_or_default();
    (output, given.trim().to_owned())
}

#[test]
fn grafana_never_starts_with_a_well_known_admin_password() {
    let data = TempDir::new("grafana_data");
    // First start, no password in .env: one is generated, printed once, and given to Grafana.
    let (output, first) = grafana_first_start(data.path(), None);
    assert!(output.status.success(), "{output:?}");
    let log = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(first.len() >= 20, "generated password: {first:?}");
    assert!(log.contains(&first), "printed once: {log}");
    // Grafana made its database: later starts leave the password alone and print nothing.
    std::fs::write(data.path().join("grafana.db"), b"").unwrap();
    let (output, given) = grafana_first_start(data.path(), None);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(given, "<unset>");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("password"));
    // A second fresh volume gets another password.
    let other = TempDir::new("grafana_data");
    let (_, another) = grafana_first_start(other.path(), None);
    assert!(
        another.len() >= 20 && another != first,
        "{another:?} vs {first:?}"
    );
    // One set in .env is used as it is, and never printed; `admin` is refused with a reason.
    let fresh = TempDir::new("grafana_data");
    let (output, given) = grafana_first_start(fresh.path(), Some("chosen-by-me"));
    assert!(output.status.success());
    assert_eq!(given, "chosen-by-me");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("chosen-by-me"));
    let (output, given) = grafana_first_start(fresh.path(), Some("admin"));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(given, "", "Grafana did not start");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("GRAFANA_ADMIN_PASSWORD"),
        "{output:?}"
    );
}
