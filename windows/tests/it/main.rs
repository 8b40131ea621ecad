//! clickstream-windows against the real broker and the real ClickHouse engine: events in
//! already-closed windows give exactly one message per window with the numbers of the raw
//! events; a SIGKILL and a restart repeat none; a late event gives one correction.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, Utc};
use clickstream_producer::simulator::{Generated, Simulator, SimulatorConfig};
use clickstream_sink::row::EventRow;
use clickstream_testkit::{
    apply_schema, clickhouse, clickhouse_url, free_port, kafka_brokers, scrape_metrics, unique_name,
};
use clickstream_windows::window::WindowMessage;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;

const WINDOW_MINUTES: i64 = 5;

/// `count` simulated events, one every `step_ms` from `start`, at offsets from `first_offset`.
fn simulate(start: DateTime<Utc>, count: usize, step_ms: i64, first_offset: i64) -> Vec<EventRow> {
    let mut simulator = Simulator::new(SimulatorConfig {
        seed: 7,
        late_ratio: 0.0,
        bad_ratio: 0.0,
        ..Default::default()
    });
    (0..count)
        .map(|i| {
            let now = start + chrono::Duration::milliseconds(i as i64 * step_ms);
            match simulator.next(now) {
                Generated::Event(event) => EventRow::new(event, "t", 0, first_offset + i as i64),
                Generated::Poison { .. } => unreachable!("bad_ratio is 0"),
            }
        })
        .collect()
}

async fn insert(client: &clickhouse::Client, rows: &[EventRow], token: &str) {
    let client = client
        .clone()
        .with_setting("insert_deduplication_token", token)
        .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1");
    let mut insert = client.insert::<EventRow>("events").await.expect("insert");
    for row in rows {
        insert.write(row).await.expect("write");
    }
    insert.end().await.expect("end insert");
}

/// Every message of `topic` (partition 0), in offset order, read by a consumer of our own.
fn read_topic(topic: &str) -> Vec<(String, WindowMessage)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique_name("it_windows_reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&list).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut eof_at: Option<Instant> = None;
    // Past the end, keep polling 2 s more: the broker's high watermark is approximate.
    while eof_at.is_none_or(|t| t.elapsed() < Duration::from_secs(2)) {
        assert!(Instant::now() < deadline, "no end of {topic} within 60 s");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let key = String::from_utf8(message.key().expect("key").to_vec()).expect("utf8");
                let value: WindowMessage =
                    serde_json::from_slice(message.payload().expect("payload")).expect("json");
                out.push((key, value));
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {
                eof_at.get_or_insert_with(Instant::now);
            }
            Some(Err(error)) => panic!("{error}"),
            None => {}
        }
    }
    out
}

struct Windows {
    child: Child,
    port: u16,
}

impl Windows {
    fn start(topic: &str, database: &str, since: DateTime<Utc>) -> Windows {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_clickstream-windows"))
            .args(["--brokers", &kafka_brokers()])
            .args(["--clickhouse-url", &clickhouse_url()])
            .args(["--topic", topic, "--database", database])
            .args(["--since", &since.to_rfc3339()])
            .args(["--poll-interval-ms", "300"])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start clickstream-windows");
        Windows { child, port }
    }

    /// Waits until `n` checks completed (each looks at every window that is due).
    async fn checks(&mut self, n: f64) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(
                self.child.try_wait().expect("try_wait").is_none(),
                "clickstream-windows exited"
            );
            if let Ok(metrics) = scrape_metrics(self.port).await
                && metrics
                    .get("clickstream_windows_checks_total")
                    .copied()
                    .unwrap_or(0.0)
                    >= n
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} checks not done within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILL: no shutdown path runs.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Windows {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Raw {
    window: u32,
    events: u64,
    users: u64,
    sessions: u64,
    duration: u64,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct RawCount {
    window: u32,
    value: String,
    events: u64,
}

/// The numbers of each window with events, computed from the raw events (not the rollups).
async fn raw_windows(client: &clickhouse::Client) -> BTreeMap<String, WindowMessage> {
    let start = format!("toStartOfInterval(event_time, INTERVAL {WINDOW_MINUTES} MINUTE)");
    let totals = client
        .query(&format!(
            "SELECT toUInt32({start}) AS window, count() AS events, uniqExact(user_id) AS users,
                    uniqExact(session_id) AS sessions, sum(toUInt64(duration_ms)) AS duration
             FROM events GROUP BY window"
        ))
        .fetch_all::<Raw>()
        .await
        .expect("totals");
    let counts = |expression: &str, filter: &str| {
        format!(
            "SELECT toUInt32({start}) AS window, toString({expression}) AS value, count() AS events
             FROM events WHERE {filter} GROUP BY window, value"
        )
    };
    let mut out = BTreeMap::new();
    for total in totals {
        let window_start = DateTime::from_timestamp(i64::from(total.window), 0).expect("time");
        let message = WindowMessage {
            window_start,
            window_end: window_start + chrono::Duration::minutes(WINDOW_MINUTES),
            revision: 0,
            total_events: total.events,
            unique_users: total.users,
            unique_sessions: total.sessions,
            event_types: BTreeMap::new(),
            devices: BTreeMap::new(),
            top_referrers: BTreeMap::new(),
            top_pages: BTreeMap::new(),
            avg_duration_ms: ((total.duration as f64 / total.events as f64) * 1000.0).round()
                / 1000.0,
        };
        out.insert(message.key(), message);
    }
    for (expression, filter, field) in [
        ("event_type", "1", 0),
        ("device_type", "1", 1),
        ("referrer", "1", 2),
        ("page_url", "event_type = 'page_view'", 3),
    ] {
        let rows = client
            .query(&counts(expression, filter))
            .fetch_all::<RawCount>()
            .await
            .expect("counts");
        let mut per_window: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for row in rows {
            let key = DateTime::from_timestamp(i64::from(row.window), 0)
                .expect("time")
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            per_window
                .entry(key)
                .or_default()
                .push((row.value, row.events));
        }
        for (key, mut values) in per_window {
            let message = out.get_mut(&key).expect("window with events");
            values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let target = match field {
                0 => &mut message.event_types,
                1 => &mut message.devices,
                2 => {
                    values.truncate(10);
                    &mut message.top_referrers
                }
                _ => {
                    values.truncate(10);
                    &mut message.top_pages
                }
            };
            target.extend(values);
        }
    }
    out
}

/// Per key, the messages in offset order.
fn by_key(messages: &[(String, WindowMessage)]) -> BTreeMap<String, Vec<WindowMessage>> {
    let mut out: BTreeMap<String, Vec<WindowMessage>> = BTreeMap::new();
    for (key, message) in messages {
        assert_eq!(*key, message.key(), "the key is the window start");
        out.entry(key.clone()).or_default().push(message.clone());
    }
    out
}

#[tokio::test]
async fn one_message_per_closed_window_no_repeat_after_a_crash_one_correction_per_late_event() {
    let database = unique_name("it_windows");
    let client = apply_schema(&clickhouse(), &database).await;
    let topic = unique_name("it_windows_metrics");
    // Three windows an hour back (closed long ago): 900 events, one a second.
    let start = (Utc::now() - chrono::Duration::hours(1))
        .duration_trunc(chrono::Duration::minutes(WINDOW_MINUTES))
        .expect("truncate");
    let rows = simulate(start, 900, 1_000, 0);
    insert(&client, &rows, "t:0:0-899").await;
    let expected = raw_windows(&client).await;
    assert_eq!(expected.len(), 3, "{:?}", expected.keys());

    let mut windows = Windows::start(&topic, &database, start);
    windows.checks(1.0).await;
    let first = read_topic(&topic);
    let keyed = by_key(&first);
    for (key, messages) in &keyed {
        assert_eq!(messages.len(), 1, "{key}: {messages:?}");
        assert_eq!(messages[0].revision, 1, "{key}");
        match expected.get(key) {
            Some(want) => assert!(
                messages[0].same_numbers(want),
                "{key}:\n{:?}\n{want:?}",
                messages[0]
            ),
            None => assert_eq!(messages[0].total_events, 0, "{key} has no events"),
        }
    }
    for key in expected.keys() {
        assert!(keyed.contains_key(key), "{key} was not published");
    }
    // The closed windows after the data, up to now, are published too (with zeros).
    assert!(keyed.len() >= 10, "{} windows", keyed.len());

    // A crash and a restart: the topic is read back, nothing is repeated.
    windows.kill();
    let mut windows = Windows::start(&topic, &database, start);
    windows.checks(3.0).await;
    let after_restart = by_key(&read_topic(&topic));
    for (key, messages) in &after_restart {
        assert_eq!(
            messages.len(),
            1,
            "{key} repeated after the restart: {messages:?}"
        );
    }

    // A late event in the second window: one correction, revision 2, with the new numbers.
    let second = start + chrono::Duration::minutes(WINDOW_MINUTES);
    let mut late = rows[400].clone();
    late.event_id = uuid::Uuid::new_v4();
    late.event_time = second + chrono::Duration::seconds(30);
    late.kafka_offset = 900;
    insert(&client, &[late], "t:0:900-900").await;
    let key = second.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let messages = by_key(&read_topic(&topic));
        if messages[&key].len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no correction of {key} within 60 s"
        );
    }
    // More checks must not correct again.
    let metrics = scrape_metrics(windows.port).await.expect("metrics");
    let done = metrics["clickstream_windows_checks_total"];
    windows.checks(done + 3.0).await;
    let expected = raw_windows(&client).await;
    let messages = by_key(&read_topic(&topic));
    for (k, list) in &messages {
        let wanted = if *k == key { 2 } else { 1 };
        assert_eq!(list.len(), wanted, "{k}: {list:?}");
    }
    let correction = &messages[&key][1];
    assert_eq!(correction.revision, 2);
    assert_eq!(correction.total_events, messages[&key][0].total_events + 1);
    assert!(
        correction.same_numbers(&expected[&key]),
        "{correction:?}\n{:?}",
        expected[&key]
    );
    windows.kill();

    // The same topic with 1-minute windows: refused at start, naming the setting, rather than
    // mixing 1-minute corrections into the 5-minute windows.
    let mut other = Command::new(env!("CARGO_BIN_EXE_clickstream-windows"))
        .args(["--brokers", &kafka_brokers()])
        .args(["--clickhouse-url", &clickhouse_url()])
        .args(["--topic", &topic, "--database", &database, "--window", "1m"])
        .args(["--http-addr", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run clickstream-windows");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = other.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = other.kill();
            panic!("clickstream-windows with 1-minute windows still runs on a 5-minute topic");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut other.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(
        !status.success() && stderr.contains("`window`") && stderr.contains("5 minutes"),
        "{status:?}: {stderr}"
    );
    clickhouse()
        .query(&format!("DROP DATABASE {database}"))
        .execute()
        .await
        .expect("drop database");
}
