//! Secure connections against the real engine and broker: the sink over HTTPS with the stack's
//! private CA, a client certificate and a password file; and what a wrong CA, a client
//! certificate the server does not trust, a wrong password and a refused Kafka login do: stop
//! at start with an error that says what to change (each next to its positive control).

mod common;

use std::time::Duration;

use clickstream_sink::writer::ClickHouseWriter;
use clickstream_sink::{Settings, SinkError};
use clickstream_testkit::{
    Broker, CHECKED_USER, TempDir, clickhouse_ca_file, clickhouse_sink_password_file,
    clickhouse_tls_url, make_certificates,
};
use common::{Harness, messages, spawn_sink};

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
    tokio::time::timeout(Duration::from_secs(120), sink)
        .await
        .expect("the sink stops by itself")
        .expect("sink task")
        .expect_err("the sink must not start")
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
