//! The producer against the stack's real broker: what it reports is checked by consuming the
//! topic with a consumer group (an independent path).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use clickstream_event::{Limits, decode};
use clickstream_producer::pacer::Rate;
use clickstream_producer::simulator::SimulatorConfig;
use clickstream_producer::{Error, Settings, run};
use clickstream_testkit::{create_topic, kafka_brokers, unique_name};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message};

/// One consumed message.
struct Consumed {
    partition: i32,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

/// Consumes `topic` from the start with a fresh group until `expected` messages arrived and
/// then every partition reported its end (so extra messages would be seen too).
async fn consume_all(topic: &str, expected: usize) -> Vec<Consumed> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique_name("it_producer_group"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut messages = Vec::new();
    let mut at_end: HashSet<i32> = HashSet::new();
    let mut partitions: HashSet<i32> = HashSet::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {expected} messages within 60 s (partitions at end: {at_end:?})",
                    messages.len()
                )
            });
        match next {
            Ok(message) => {
                partitions.insert(message.partition());
                at_end.remove(&message.partition());
                messages.push(Consumed {
                    partition: message.partition(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                });
            }
            Err(KafkaError::PartitionEOF(partition)) => {
                partitions.insert(partition);
                at_end.insert(partition);
            }
            Err(error) => panic!("consume: {error}"),
        }
        if messages.len() >= expected && !partitions.is_empty() && at_end == partitions {
            return messages;
        }
    }
}

fn settings(topic: &str) -> Settings {
    Settings {
        topic: topic.to_owned(),
        simulator: SimulatorConfig {
            seed: 42,
            ..Default::default()
        },
        flush_timeout: Duration::from_secs(60),
        ..Settings::new(kafka_brokers())
    }
}

fn is_user_id(key: &[u8]) -> bool {
    key.len() == 9
        && key.starts_with(b"user_")
        && key[5..].iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(&key[5..])
            .ok()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n < 500)
}

#[tokio::test]
async fn count_5000_at_max_rate_gives_exactly_5000_messages_over_3_partitions() {
    let topic = unique_name("it_producer_count");
    let summary = run(
        Settings {
            rate: Rate::Max,
            count: Some(5_000),
            ..settings(&topic)
        },
        std::future::pending(),
    )
    .await
    .expect("all delivered");
    assert_eq!((summary.sent, summary.delivered), (5_000, 5_000));

    let messages = consume_all(&topic, 5_000).await;
    assert_eq!(
        messages.len(),
        5_000,
        "exactly 5000 messages, no duplicates"
    );

    let mut per_partition: BTreeMap<i32, u64> = BTreeMap::new();
    let mut partition_of_key: HashMap<Vec<u8>, i32> = HashMap::new();
    let mut event_ids = HashSet::new();
    for message in &messages {
        *per_partition.entry(message.partition).or_default() += 1;
        let key = message.key.clone().expect("every message has a key");
        assert!(is_user_id(&key), "{}", String::from_utf8_lossy(&key));
        assert_eq!(
            *partition_of_key
                .entry(key.clone())
                .or_insert(message.partition),
            message.partition,
            "a user stays on one partition"
        );
        let payload = message.payload.as_deref().expect("payload");
        let json: serde_json::Value = serde_json::from_slice(payload).expect("valid JSON");
        assert_eq!(json["user_id"].as_str().map(str::as_bytes), Some(&key[..]));
        let event = decode(Some(payload), &Limits::default(), Utc::now()).expect("valid event");
        assert!(event_ids.insert(event.event_id), "event ids are unique");
    }
    assert_eq!(per_partition.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    assert!(
        per_partition.values().all(|&n| n > 1_000),
        "keys spread over the partitions: {per_partition:?}"
    );
    assert_eq!(
        per_partition, summary.per_partition,
        "the producer's delivery reports match what the topic holds"
    );
}

#[tokio::test]
async fn an_existing_topic_is_used_as_it_is() {
    let topic = unique_name("it_producer_existing");
    create_topic(&topic, 2).await;
    let summary = run(
        Settings {
            rate: Rate::Max,
            count: Some(300),
            partitions: 3,
            ..settings(&topic)
        },
        std::future::pending(),
    )
    .await
    .expect("all delivered");
    assert_eq!(
        summary.per_partition.keys().copied().collect::<Vec<_>>(),
        [0, 1]
    );
    let messages = consume_all(&topic, 300).await;
    assert_eq!(messages.len(), 300);
}

#[tokio::test]
async fn poison_and_late_events_reach_the_topic_intact() {
    let topic = unique_name("it_producer_poison");
    let summary = run(
        Settings {
            rate: Rate::Max,
            count: Some(2_000),
            simulator: SimulatorConfig {
                seed: 3,
                bad_ratio: 0.2,
                late_ratio: 0.2,
                ..Default::default()
            },
            ..settings(&topic)
        },
        std::future::pending(),
    )
    .await
    .expect("all delivered");
    let messages = consume_all(&topic, 2_000).await;
    assert_eq!(messages.len(), 2_000);
    let now = Utc::now();
    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    let mut late = 0;
    for message in &messages {
        assert!(is_user_id(message.key.as_deref().expect("key")));
        match decode(message.payload.as_deref(), &Limits::default(), now) {
            Ok(event) if event.timestamp < now - chrono::Duration::minutes(2) => late += 1,
            Ok(_) => {}
            Err(rejection) => *rejected.entry(rejection.reason.to_string()).or_default() += 1,
        }
    }
    assert_eq!(
        rejected.values().sum::<u64>(),
        summary.poison,
        "{rejected:?}"
    );
    assert_eq!(late, summary.late);
    assert_eq!(
        rejected.len(),
        9,
        "every reason, empty and oversized included: {rejected:?}"
    );
}

#[tokio::test]
async fn refused_messages_make_the_run_fail() {
    let topic = unique_name("it_producer_refused");
    // A producer that refuses messages over 64 KiB: the oversized poison cannot be sent.
    let error = run(
        Settings {
            rate: Rate::Max,
            count: Some(500),
            simulator: SimulatorConfig {
                seed: 5,
                bad_ratio: 0.5,
                ..Default::default()
            },
            kafka_properties: vec![("message.max.bytes".into(), "65536".into())],
            ..settings(&topic)
        },
        std::future::pending(),
    )
    .await
    .expect_err("oversized messages cannot be delivered");
    let Error::Undelivered { summary } = error else {
        panic!("expected Undelivered, got {error:?}");
    };
    assert!(summary.failed > 0, "{summary:?}");
    assert_eq!(summary.delivered + summary.failed, 500);
    let messages = consume_all(&topic, summary.delivered as usize).await;
    assert_eq!(messages.len() as u64, summary.delivered);
}

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clickstream-producer"));
    command
        .env("KAFKA_BROKERS", kafka_brokers())
        .env("RUST_LOG", "info");
    command
}

#[tokio::test]
async fn the_binary_prints_a_summary_and_exits_0() {
    let topic = unique_name("it_producer_bin");
    let output = binary()
        .args([
            "--topic", &topic, "--count", "400", "--rate", "2000", "--seed", "9",
        ])
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON summary");
    assert_eq!(summary["sent"], 400);
    assert_eq!(summary["delivered"], 400);
    assert_eq!(summary["seed"], 9);
    assert_eq!(consume_all(&topic, 400).await.len(), 400);
}

#[tokio::test]
async fn an_existing_topic_of_another_partition_count_is_warned_about() {
    let topic = unique_name("it_producer_other_count");
    create_topic(&topic, 2).await;
    // Another count is warned about, naming it; the topic's own count says nothing.
    for (partitions, warned) in [("3", true), ("2", false)] {
        let output = binary()
            .args([
                "--topic",
                &topic,
                "--count",
                "20",
                "--partitions",
                partitions,
            ])
            .output()
            .expect("run the binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        let warning = stderr.contains("another number of partitions")
            && stderr.contains(&format!("requested={partitions}"));
        assert_eq!(warning, warned, "--partitions {partitions}: {stderr}");
    }
}

#[tokio::test]
async fn the_binary_exits_1_when_messages_are_not_delivered() {
    let topic = unique_name("it_producer_bin_fail");
    let output = binary()
        .args(["--topic", &topic, "--count", "200", "--rate", "max"])
        .args(["--bad-ratio", "1", "-X", "message.max.bytes=65536"])
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(1));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON summary");
    assert!(summary["failed"].as_u64() > Some(0), "{summary}");
}

#[tokio::test]
async fn the_binary_rejects_bad_flags_naming_them() {
    let output = binary()
        .args(["--rate", "fast"])
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--rate"));
}

#[tokio::test]
async fn sigterm_stops_flushes_and_exits_cleanly() {
    let topic = unique_name("it_producer_sigterm");
    let mut child = binary()
        .args([
            "--topic",
            &topic,
            "--rate",
            "500",
            "--progress-interval",
            "300ms",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    // Wait for the first progress line: by then messages are flowing.
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut log = String::new();
    for line in lines.by_ref() {
        let line = line.expect("stderr line");
        log.push_str(&line);
        log.push('\n');
        if line.contains("progress") {
            break;
        }
    }
    assert!(log.contains("progress"), "no progress line:\n{log}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success(), "{log}{}", rest.join("\n"));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON summary");
    let sent = summary["sent"].as_u64().expect("sent");
    assert!(sent > 0);
    assert_eq!(summary["delivered"].as_u64(), Some(sent), "{summary}");
    assert_eq!(consume_all(&topic, sent as usize).await.len() as u64, sent);
}

/// `GET path` on `port` of 127.0.0.1: (status code, body), or `None` while nothing listens.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some((status, body.to_owned()))
}

/// The value of one sample line (`name{labels} value`) of a Prometheus text exposition.
fn sample(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn the_metrics_endpoint_counts_what_the_summary_reports() {
    let topic = unique_name("it_producer_metrics");
    let port = clickstream_testkit::free_port();
    let child = binary()
        .args(["--topic", &topic, "--rate", "1000", "--seed", "3"])
        .env(
            "CLICKSTREAM_PRODUCER_METRICS_ADDR",
            format!("127.0.0.1:{port}"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the binary");
    // Wait until the endpoint reports healthy and some messages were acknowledged.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let scraped = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no healthy endpoint with deliveries on port {port} within 60 s"
        );
        if let (Some((200, _)), Some((200, metrics))) =
            (http_get(port, "/health"), http_get(port, "/metrics"))
            && sample(&metrics, "clickstream_producer_sent_total").is_some_and(|n| n >= 300)
            && (0..3).any(|p| {
                let series = format!("clickstream_producer_delivered_total{{partition=\"{p}\"}}");
                sample(&metrics, &series).is_some_and(|n| n >= 50)
            })
        {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON summary");

    let sent = sample(&scraped, "clickstream_producer_sent_total").expect("sent");
    assert!(sent <= summary["sent"].as_u64().expect("sent"), "{scraped}");
    assert_eq!(
        sample(&scraped, "clickstream_producer_failed_total"),
        Some(0),
        "{scraped}"
    );
    let mut delivered = 0;
    for partition in 0..3 {
        let series = format!("clickstream_producer_delivered_total{{partition=\"{partition}\"}}");
        let count = sample(&scraped, &series).unwrap_or(0);
        let total = summary["per_partition"][partition.to_string()]
            .as_u64()
            .unwrap_or(0);
        assert!(
            count <= total,
            "{series} {count} > {total} delivered in the end"
        );
        delivered += count;
    }
    assert!(delivered > 0 && delivered <= sent, "{scraped}");
    // The endpoint is gone with the process.
    assert_eq!(http_get(port, "/health"), None);
}
