//! Secure connections against the real engine and broker: the sink over HTTPS with the stack's
//! private CA, a client certificate and a password file; and what a wrong CA, a client
//! certificate the server does not trust, a wrong password and a refused Kafka login do: stop
//! at start with an error that says what to change (each next to its positive control).

use std::time::Duration;

use crate::common::{Harness, messages, spawn_sink, stops_with_error};
use clickstream_sink::writer::ClickHouseWriter;
use clickstream_sink::{Settings, SinkError};
use clickstream_testkit::{
    Broker, CHECKED_USER, TempDir, clickhouse_ca_file, clickhouse_sink_password_file,
    clickhouse_tls_url, make_certificates,
};

/// The harness's settings, pointed at the HTTPS endpoint with the stack's CA, client
/// certificate and checked user.
fn over_https(h: &Harness) -> Settings {
    let ca = clickhouse_ca_file();
    let dir = ca.parent().expect("the CA's directory").to_path_buf();
    Settings {
        clickhouse_url: clickhouse_tls_url(),
        clickhouse_ca_file: ca.display().to_string(),
        clickhouse_client_cert_file: dir.join("client.pem").display().to_string(),
        clickhouse_client_key_file: dir.join("client-key.pem").display().to_string(),
        clickhouse_user: CHECKED_USER.to_owned(),
        clickhouse_password_file: clickhouse_sink_password_file().display().to_string(),
        ..h.settings()
    }
}

/// Runs the sink until it returns, which these settings must make it do by themselves.
async fn run_to_error(settings: Settings) -> SinkError {
    let (_stop, sink) = spawn_sink(settings);
    // A guard against a hang, not a measurement: the failures here end start-up at once
    // (ClickHouse) or after librdkafka's two 10 s metadata waits (Kafka).
    stops_with_error(sink, Duration::from_secs(120), "the sink must not start").await
}

/// The start-up check of the writer alone (the positive controls).
async fn startup_check(settings: &Settings) -> Result<(), String> {
    let writer = ClickHouseWriter::new(settings).map_err(|e| e.to_string())?;
    writer.check_startup().await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivers_over_https_with_a_private_ca_a_client_certificate_and_a_password_file() {
    let h = Harness::new("it_tls").await;
    let mut input = messages(0..3_000);
    input.push(("user_0001".to_owned(), b"{not json".to_vec()));
    h.produce(&input).await;

    let settings = over_https(&h);
    assert!(settings.clickhouse_url.starts_with("https://"));
    assert_ne!(settings.clickhouse_url, h.clickhouse_url);
    let (stop, sink) = spawn_sink(settings);
    // Checked through the plain-HTTP port: an independent path.
    h.wait_rows(3_000, Duration::from_secs(180)).await;
    stop.cancel();
    sink.await.unwrap().expect("clean shutdown");
    h.assert_exactly_once(3_000).await;
    let letters = h.dead_letters(1).await;
    assert_eq!(letters[0].header("reason"), "invalid_json");
}

#[tokio::test]
async fn a_server_certificate_of_another_ca_stops_the_sink_saying_which_setting_to_fix() {
    let h = Harness::new("it_tls_ca").await;
    let right = over_https(&h);
    startup_check(&right)
        .await
        .expect("the stack's CA is trusted");

    let other = TempDir::new("other_ca");
    let wrong = Settings {
        clickhouse_ca_file: make_certificates(other.path(), "other")
            .display()
            .to_string(),
        ..right
    };
    let error = run_to_error(wrong).await;
    let text = error.to_string();
    assert!(
        matches!(
            error,
            SinkError::ClickHouse {
                operation: "start-up check",
                ..
            }
        ),
        "{text}"
    );
    for expected in ["not trusted", "UnknownIssuer", "clickhouse_ca_file"] {
        assert!(text.contains(expected), "{expected:?} missing: {text}");
    }
}

#[tokio::test]
async fn a_client_certificate_the_server_does_not_trust_stops_the_sink() {
    let h = Harness::new("it_tls_client").await;
    let right = over_https(&h);
    let other = TempDir::new("other_client");
    make_certificates(other.path(), "other");
    let wrong = Settings {
        clickhouse_client_cert_file: other.path().join("client.pem").display().to_string(),
        clickhouse_client_key_file: other.path().join("client-key.pem").display().to_string(),
        ..right.clone()
    };
    let error = run_to_error(wrong).await.to_string();
    for expected in [
        "refused the client certificate",
        "clickhouse_client_cert_file",
    ] {
        assert!(error.contains(expected), "{expected:?} missing: {error}");
    }
    startup_check(&right)
        .await
        .expect("the stack's own client certificate is accepted");
}

#[tokio::test]
async fn a_wrong_password_stops_the_sink_at_start_with_code_516_and_never_shows_it() {
    let h = Harness::new("it_tls_password").await;
    let right = over_https(&h);
    startup_check(&right)
        .await
        .expect("the password file's password is accepted");
    for url in [clickhouse_tls_url(), h.clickhouse_url.clone()] {
        let wrong = Settings {
            clickhouse_url: url.clone(),
            clickhouse_password_file: String::new(),
            clickhouse_password: "not-the-password-7f3a".to_owned(),
            ..right.clone()
        };
        let error = run_to_error(wrong).await;
        let text = error.to_string();
        assert!(
            matches!(
                error,
                SinkError::ClickHouse {
                    operation: "start-up check",
                    ..
                }
            ),
            "{url}: {text}"
        );
        for expected in [
            "Code: 516",
            "AUTHENTICATION_FAILED",
            "clickhouse_password_file",
        ] {
            assert!(
                text.contains(expected),
                "{url}: {expected:?} missing: {text}"
            );
        }
        assert!(
            !text.contains("not-the-password-7f3a"),
            "the error shows the password: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_kafka_login_stops_the_sink_with_the_brokers_reason() {
    let h = Harness::new("it_kafka_auth").await;
    // A broker that requires SCRAM logins (and has no such user), and the stack's broker,
    // which speaks no SASL at all: both refuse the login.
    let authenticating = Broker::start(&["--authentication"]);
    let sasl = |brokers: String, mechanism: &str| {
        let mut settings = Settings {
            brokers,
            ..h.settings()
        };
        for (key, value) in [
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", mechanism),
            ("sasl.username", "clickstream-sink"),
            ("sasl.password", "kafka-secret-5b1e"),
        ] {
            settings.kafka.insert(key.to_owned(), value.to_owned());
        }
        settings
    };
    let (unknown_user, no_sasl) = tokio::join!(
        run_to_error(sasl(authenticating.brokers(), "SCRAM-SHA-512")),
        run_to_error(sasl(h.settings().brokers, "PLAIN")),
    );
    for (case, error, reason) in [
        ("unknown user", unknown_user, "SCRAM authentication failed"),
        ("no SASL", no_sasl, "mechanism handshake failed"),
    ] {
        let text = error.to_string();
        assert!(matches!(error, SinkError::KafkaAuth(_)), "{case}: {text}");
        for expected in [reason, "kafka.sasl.username", "kafka.security.protocol"] {
            assert!(
                text.contains(expected),
                "{case}: {expected:?} missing: {text}"
            );
        }
        assert!(!text.contains("kafka-secret-5b1e"), "{case}: {text}");
    }
}

/// The statements the stack's endpoint saw from `user` with default database `database`.
fn statements_seen(user: &str, database: &str) -> Vec<String> {
    use std::io::{Read, Write};
    let url = clickstream_testkit::clickhouse_url();
    let address = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the endpoint");
    write!(
        stream,
        "GET /_queries?user={user}&database={database} HTTP/1.0\r\nHost: x\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let body = response.split_once("\r\n\r\n").expect("a body").1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// (privilege, table) pairs a statement needs; names without a database are in `database`,
/// and the test's database stands for `clickstream`.
fn privileges(statement: &str, database: &str) -> Vec<(String, String)> {
    let words: Vec<&str> = statement
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    let qualify = |name: &str| {
        let name = name.replace('`', "");
        let name = name.as_str();
        let name = match name.split_once('.') {
            Some((db, table)) if db == database => format!("clickstream.{table}"),
            Some(_) => name.to_owned(),
            None => format!("clickstream.{name}"),
        };
        name.replace('`', "")
    };
    let after = |keyword: &str| -> Vec<String> {
        words
            .windows(3)
            // `FROM (SELECT ...)`: the subquery's own FROM names the table; `ARRAY JOIN`
            // joins an array, no table.
            .filter(|w| {
                w[1].eq_ignore_ascii_case(keyword)
                    && !w[0].eq_ignore_ascii_case("ARRAY")
                    && !w[2].eq_ignore_ascii_case("SELECT")
                    && !w[2].starts_with('[')
            })
            .map(|w| qualify(w[2]))
            .collect()
    };
    let first = words
        .first()
        .map(|w| w.to_ascii_uppercase())
        .unwrap_or_default();
    match first.as_str() {
        "INSERT" => after("INTO")
            .into_iter()
            .map(|t| ("INSERT".into(), t))
            .collect(),
        "DELETE" => after("FROM")
            .into_iter()
            .map(|t| ("ALTER DELETE".into(), t))
            .collect(),
        "SELECT" | "WITH" => after("FROM")
            .into_iter()
            .chain(after("JOIN"))
            .map(|t| ("SELECT".into(), t))
            .collect(),
        // The start-up check of the repair's grants needs none itself.
        "CHECK" => Vec::new(),
        other => panic!("a statement the test does not know: {other}: {statement}"),
    }
}

/// Least privilege, checked: the sink's grants in clickhouse/users.sql are exactly the
/// privileges of every statement it sent in a real run (inserts, the start-up check, the
/// stored-offset lookups) and of the repair (DELETE, rollup keys rebuilt), plus INSERT on the targets of the
/// materialized views the engine says `events` feeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sink_users_grants_are_exactly_what_it_runs_and_what_its_views_write() {
    let h = Harness::new("it_grants").await;
    h.produce(&messages(0..1_000)).await;
    let settings = over_https(&h);
    let (stop, sink) = spawn_sink(settings.clone());
    h.wait_rows(1_000, Duration::from_secs(120)).await;
    stop.cancel();
    sink.await.unwrap().expect("clean shutdown");
    // The repair of a partly written insert (a view failing after the table was written):
    // the writer's own statements: the rollup keys of some rows, their DELETE (offsets that
    // are not there), and the rebuild of those keys (which leaves the rollups as they are).
    use clickstream_sink::writer::Writer;
    let writer = ClickHouseWriter::new(&settings).expect("writer");
    let keys = writer
        .touched_keys(&h.topic, 0, &[0, 1])
        .await
        .expect("rollup keys as the sink user");
    assert!(keys.keys() >= 6, "{keys:?}");
    writer
        .delete_offsets(&h.topic, 0, &[1_000_000, 1_000_001])
        .await
        .expect("DELETE as the sink user");
    writer
        .rebuild_rollups(&keys)
        .await
        .expect("rollups rebuilt as the sink user");
    // Finding the rows a view refuses: the view's SELECT over some stored rows.
    assert!(
        !writer
            .view_refuses(&h.topic, 0, "events_1m_mv", 395, &[0, 1])
            .await
            .expect("a view's SELECT as the sink user")
    );
    // Its record of the keys owed: written, read back by the next owner, deleted once done.
    // One record of two partitions, taken over whole by the owner of one of them.
    let mut others = keys.clone();
    for (_, keys) in &mut others.rollups {
        for key in keys.iter_mut() {
            key.push_str(" (another partition)");
        }
    }
    for (partition, keys) in [(0, &keys), (1, &others)] {
        writer
            .note_rebuild(&h.topic, partition, 7, keys)
            .await
            .expect("keys recorded as the sink user");
    }
    let (ids, owed) = writer
        .pending_rebuilds(&h.topic, &[0])
        .await
        .expect("records read as the sink user");
    assert_eq!(ids, vec![7]);
    assert_eq!(
        owed.rollups.iter().map(|(_, k)| k.len()).sum::<usize>(),
        2 * keys.keys(),
        "both partitions' keys"
    );
    writer
        .forget_rebuilds(&h.topic, &[7])
        .await
        .expect("records deleted as the sink user");

    let statements = statements_seen(CHECKED_USER, &h.database);
    assert!(
        statements.iter().any(|s| s.starts_with("INSERT")),
        "{statements:?}"
    );
    let mut needed = std::collections::BTreeSet::new();
    for statement in &statements {
        needed.extend(privileges(statement, &h.database));
    }
    // What the views fed by `events` write, from the engine.
    let views: Vec<String> = h
        .client
        .query(
            "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() \
             AND engine = 'MaterializedView' AND has(\
               (SELECT dependencies_table FROM system.tables \
                WHERE database = currentDatabase() AND name = 'events'), name)",
        )
        .fetch_all()
        .await
        .expect("views");
    assert!(views.len() >= 5, "{views:?}");
    for view in &views {
        let target = view
            .split(" TO ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("a view without TO: {view}"));
        needed.insert((
            "INSERT".to_owned(),
            target.replace(&format!("{}.", h.database), "clickstream."),
        ));
    }

    // Seeing the views `events` feeds (the local engine shows everything; a server shows a
    // user only what it has a privilege on), and the columns of those it rebuilds.
    for view in &views {
        let name = view
            .strip_prefix("CREATE MATERIALIZED VIEW ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("a view's CREATE: {view}"));
        let name = name.replace(&format!("{}.", h.database), "clickstream.");
        for privilege in ["SHOW TABLES", "SHOW COLUMNS"] {
            needed.insert((privilege.to_owned(), name.clone()));
        }
    }

    let users =
        std::fs::read_to_string(clickstream_testkit::repo_root().join("clickhouse/users.sql"))
            .expect("users.sql");
    let mut granted = std::collections::BTreeSet::new();
    for statement in clickstream_testkit::sql_statements(&users) {
        let statement = statement.split_whitespace().collect::<Vec<_>>().join(" ");
        let Some(rest) = statement.strip_prefix("GRANT ") else {
            continue;
        };
        let (privileges, target) = rest.split_once(" ON ").expect("GRANT ... ON");
        let (object, grantee) = target.split_once(" TO ").expect("GRANT ... TO");
        if grantee != CHECKED_USER {
            continue;
        }
        for privilege in privileges.split(", ") {
            granted.insert((privilege.to_owned(), object.to_owned()));
        }
    }
    assert_eq!(
        granted, needed,
        "users.sql's grants to {CHECKED_USER} (left) against what the sink needs (right)"
    );
    // What the start-up check demands (CHECK GRANT) is granted too, and covers the repair:
    // DELETE on the table and on the record of keys owed, INSERT and DELETE on every rollup.
    let mut checked = std::collections::BTreeSet::new();
    for statement in &statements {
        let Some(rest) = statement.strip_prefix("CHECK GRANT ") else {
            continue;
        };
        let (privileges, object) = rest.split_once(" ON ").expect("CHECK GRANT ... ON");
        for privilege in privileges.split(", ") {
            checked.insert((
                privilege.to_owned(),
                object
                    .replace('`', "")
                    .replace(&format!("{}.", h.database), "clickstream."),
            ));
        }
    }
    assert!(
        checked.is_subset(&granted),
        "checked at start but not granted: {:?}",
        checked.difference(&granted).collect::<Vec<_>>()
    );
    let deletes: std::collections::BTreeSet<_> = needed
        .iter()
        .filter(|(privilege, _)| privilege == "ALTER DELETE")
        .cloned()
        .collect();
    assert!(
        deletes.is_subset(&checked) && views.len() + 2 <= deletes.len(),
        "the repair's deletes not all checked at start: {:?}",
        deletes.difference(&checked).collect::<Vec<_>>()
    );
}
