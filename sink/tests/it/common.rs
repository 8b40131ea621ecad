//! Shared harness of the sink's integration tests: a topic, a dead-letter topic, a group and a
//! database per test, the real broker and engine, and an independent read path (SQL queries
//! and a separate consumer) to check outcomes.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clickstream_event::{ClickEvent, EventType, Price};
use clickstream_sink::Settings;
use clickstream_testkit::{apply_schema, clickhouse_url, create_topic, kafka_brokers, unique_name};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct Harness {
    pub topic: String,
    pub dlq: String,
    pub group: String,
    pub database: String,
    pub clickhouse_url: String,
    pub client: clickhouse::Client,
    /// The database goes when the test ends (and stays when it fails).
    _drop: clickstream_testkit::DropDatabase,
}

impl Harness {
    pub async fn new(name: &str) -> Harness {
        Harness::with_clickhouse(name, &clickhouse_url()).await
    }

    /// A harness whose ClickHouse is `url` (e.g. a private endpoint a test stops).
    pub async fn with_clickhouse(name: &str, url: &str) -> Harness {
        let topic = unique_name(name);
        let dlq = format!("{topic}_dlq");
        create_topic(&topic, 3).await;
        create_topic(&dlq, 1).await;
        let database = unique_name(name);
        let base = clickhouse::Client::default().with_url(url);
        let client = apply_schema(&base, &database).await;
        Harness {
            group: format!("{topic}_group"),
            topic,
            dlq,
            _drop: clickstream_testkit::DropDatabase {
                url: url.to_owned(),
                database: database.clone(),
            },
            database,
            clickhouse_url: url.to_owned(),
            client,
        }
    }

    /// Sink settings for this test: short flush interval and session timeout, no HTTP port.
    pub fn settings(&self) -> Settings {
        let mut kafka = BTreeMap::new();
        kafka.insert("session.timeout.ms".to_owned(), "6000".to_owned());
        kafka.insert("heartbeat.interval.ms".to_owned(), "500".to_owned());
        Settings {
            brokers: kafka_brokers(),
            topic: self.topic.clone(),
            group: self.group.clone(),
            dlq_topic: self.dlq.clone(),
            clickhouse_url: self.clickhouse_url.clone(),
            database: self.database.clone(),
            flush_interval_ms: 500,
            retry_max_ms: 1_000,
            http_addr: "off".to_owned(),
            kafka,
            ..Settings::default()
        }
    }

    /// The same settings as environment variables, for running the binary.
    pub fn env(&self) -> Vec<(String, String)> {
        let s = self.settings();
        vec![
            ("KAFKA_BROKERS".into(), s.brokers),
            ("CLICKHOUSE_URL".into(), s.clickhouse_url),
            ("CLICKSTREAM_SINK_TOPIC".into(), s.topic),
            ("CLICKSTREAM_SINK_GROUP".into(), s.group),
            ("CLICKSTREAM_SINK_DLQ_TOPIC".into(), s.dlq_topic),
            ("CLICKSTREAM_SINK_DATABASE".into(), s.database),
            ("CLICKSTREAM_SINK_FLUSH_INTERVAL_MS".into(), "300".into()),
            ("CLICKSTREAM_SINK_MAX_ROWS".into(), "700".into()),
            ("CLICKSTREAM_SINK_RETRY_MAX_MS".into(), "1000".into()),
            ("CLICKSTREAM_SINK_HTTP_ADDR".into(), "off".into()),
            (
                "CLICKSTREAM_SINK_KAFKA__SESSION.TIMEOUT.MS".into(),
                "6000".into(),
            ),
            ("RUST_LOG".into(), "warn".into()),
        ]
    }

    pub async fn count(&self, sql: &str) -> u64 {
        self.client
            .query(sql)
            .fetch_one::<u64>()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Waits until `SELECT count() FROM events` reaches `rows` (panics after `limit`).
    pub async fn wait_rows(&self, rows: u64, limit: Duration) {
        self.wait_count("SELECT count() FROM events", rows, limit)
            .await;
    }

    /// Waits until the single number `sql` returns reaches `at_least` (panics after `limit`).
    pub async fn wait_count(&self, sql: &str, at_least: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let now = self.count(sql).await;
            if now >= at_least {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sql}: only {now} of {at_least} after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The exactly-once oracle on the table: `expected` rows, each event id and each
    /// (partition, offset) exactly once, and the progress rollup agreeing with the table.
    /// Runs a sink with `settings` until the table holds `rows` rows, then stops it cleanly.
    pub async fn sink_until(&self, settings: Settings, rows: u64) {
        let (stop, sink) = spawn_sink(settings);
        self.wait_rows(rows, Duration::from_secs(60)).await;
        stop.cancel();
        sink.await.expect("sink task").expect("clean shutdown");
    }

    /// Deletes every row of the topic from `events` as an operator would (`ALTER TABLE ...
    /// DELETE`): the rollups keep counting them, and ClickHouse keeps their inserts' tokens.
    pub async fn delete_all_rows_by_hand(&self) {
        self.client
            .query("ALTER TABLE events DELETE WHERE kafka_topic = ? SETTINGS mutations_sync = 2")
            .bind(&self.topic)
            .execute()
            .await
            .expect("ALTER TABLE events DELETE");
    }

    /// Every rollup equals the events table (`verify`'s rollup checks).
    pub async fn assert_rollups_equal(&self) {
        let reports = clickstream_sink::ops::verify::check_rollups(
            &self.client,
            &self.database,
            "events",
            None,
        )
        .await
        .expect("verify's rollup checks");
        assert!(!reports.is_empty(), "no rollup checked");
        for report in &reports {
            assert_eq!(
                (report.differing_keys, report.rollup_total),
                (0, report.raw_total),
                "{report:?}"
            );
        }
    }

    pub async fn assert_exactly_once(&self, expected: u64) {
        assert_eq!(
            self.count("SELECT count() FROM events").await,
            expected,
            "rows"
        );
        assert_eq!(
            self.count("SELECT uniqExact(event_id) FROM events").await,
            expected,
            "event ids"
        );
        assert_eq!(
            self.count("SELECT uniqExact(kafka_partition, kafka_offset) FROM events")
                .await,
            expected,
            "kafka offsets"
        );
        assert_eq!(
            self.count("SELECT sum(rows) FROM kafka_progress").await,
            expected,
            "the progress rollup counts every row once"
        );
        let page_views = self
            .count("SELECT count() FROM events WHERE event_type = 'page_view'")
            .await;
        for (rollup, sql, want) in [
            (
                "events_1m",
                "SELECT sum(events) FROM events_1m WHERE dimension = 'all'",
                expected,
            ),
            ("sessions", "SELECT sum(events) FROM sessions", expected),
            ("pages_5m", "SELECT sum(views) FROM pages_5m", page_views),
        ] {
            let got = self.count(sql).await;
            assert_eq!(got, want, "the {rollup} rollup counts every event once");
        }
    }

    /// Rows in the table per Kafka partition.
    pub async fn rows_per_partition(&self) -> BTreeMap<i32, i64> {
        #[derive(Debug, Deserialize, clickhouse::Row)]
        struct PerPartition {
            partition: i32,
            rows: u64,
        }
        self.client
            .query(
                "SELECT kafka_partition AS partition, count() AS rows FROM events \
                 GROUP BY partition ORDER BY partition",
            )
            .fetch_all::<PerPartition>()
            .await
            .expect("rows per partition")
            .into_iter()
            .map(|p| (p.partition, p.rows as i64))
            .collect()
    }

    /// The group's committed offset per partition of the topic (partitions without one left out).
    pub fn committed_offsets(&self) -> BTreeMap<i32, i64> {
        use rdkafka::consumer::BaseConsumer;
        use rdkafka::{Offset, TopicPartitionList};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut wanted = TopicPartitionList::new();
        for partition in 0..3 {
            wanted.add_partition(&self.topic, partition);
        }
        consumer
            .committed_offsets(wanted, Duration::from_secs(10))
            .expect("committed offsets")
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }

    /// Produces keyed payloads (key = user id) and waits for every delivery.
    pub async fn produce(&self, messages: &[(String, Vec<u8>)]) {
        produce_on(&kafka_brokers(), &self.topic, messages).await;
    }

    /// Reads `expected` dead letters (panics after 60 s).
    pub async fn dead_letters(&self, expected: usize) -> Vec<DeadLetterSeen> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .set("group.id", unique_name("dlq_reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .create()
            .expect("consumer");
        consumer.subscribe(&[&self.dlq]).expect("subscribe");
        let mut seen = Vec::new();
        while seen.len() < expected {
            let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {expected} dead letters", seen.len()))
                .expect("consume dead letter");
            let mut headers = HashMap::new();
            if let Some(hs) = message.headers() {
                for h in hs.iter() {
                    headers.insert(
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            seen.push(DeadLetterSeen {
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
        seen
    }
}

#[derive(Debug)]
pub struct DeadLetterSeen {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

impl DeadLetterSeen {
    pub fn header(&self, key: &str) -> &str {
        self.headers
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no header {key}: {:?}", self.headers))
    }
}

/// Produces keyed payloads (key = user id) to `topic` on `brokers`; waits for every delivery.
pub async fn produce_on(brokers: &str, topic: &str, messages: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("message.max.bytes", "2000000")
        .create()
        .expect("producer");
    let deliveries: Vec<_> = messages
        .iter()
        .map(|(key, payload)| {
            producer
                .send_result(FutureRecord::to(topic).key(key).payload(payload))
                .map_err(|(e, _)| e)
                .expect("enqueue")
        })
        .collect();
    for delivery in deliveries {
        delivery.await.expect("delivery future").expect("delivered");
    }
}

/// A valid event, deterministic in `i`; every 50th a purchase.
pub fn event(i: u64, at: DateTime<Utc>) -> ClickEvent {
    let purchase = i % 50 == 49;
    ClickEvent {
        event_id: Uuid::from_u128(0x5EED_0000_0000_0000_0000_0000_0000_0000 | u128::from(i)),
        timestamp: at,
        user_id: format!("user_{:04}", i % 500),
        session_id: Uuid::from_u128(u128::from(i / 20) + 1),
        event_type: if purchase {
            EventType::Purchase
        } else {
            EventType::PageView
        },
        page_url: format!("/products/p-{:04}", i % 200),
        page_category: "product".into(),
        referrer: ["google.com", "direct", "x.com"][(i % 3) as usize].into(),
        device_type: ["desktop", "mobile", "tablet"][(i % 3) as usize].into(),
        browser: "firefox".into(),
        country: "DE".into(),
        duration_ms: (i % 10_000) as u32,
        product_id: purchase.then(|| format!("p-{:04}", i % 200)),
        price: purchase.then(|| Price::from_cents((i % 20_000) as i64 + 99)),
        quantity: purchase.then_some(1),
    }
}

/// `count` valid events as keyed messages.
pub fn messages(range: std::ops::Range<u64>) -> Vec<(String, Vec<u8>)> {
    let now = Utc::now();
    range
        .map(|i| {
            let e = event(i, now);
            (e.user_id.clone(), e.to_json())
        })
        .collect()
}

/// Runs the sink in this process until the returned token is cancelled.
pub fn spawn_sink(
    settings: Settings,
) -> (
    CancellationToken,
    JoinHandle<Result<(), clickstream_sink::SinkError>>,
) {
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(clickstream_sink::run(settings, shutdown.clone()));
    (shutdown, handle)
}

/// Waits for a spawned sink to stop by itself, with an error: within `limit` (a guard against
/// a hang, not a measurement). `why`: why it must stop, for the failure message.
pub async fn stops_with_error(
    sink: JoinHandle<Result<(), clickstream_sink::SinkError>>,
    limit: Duration,
    why: &str,
) -> clickstream_sink::SinkError {
    let Ok(joined) = tokio::time::timeout(limit, sink).await else {
        panic!("the sink did not stop by itself within {limit:?} ({why})");
    };
    match joined.expect("sink task") {
        Ok(()) => panic!("the sink stopped without an error ({why})"),
        Err(error) => error,
    }
}

/// The sink's `/metrics` on `127.0.0.1:port`, each family summed over its labels.
pub async fn scrape(port: u16) -> BTreeMap<String, f64> {
    clickstream_testkit::scrape_metrics(port)
        .await
        .expect("GET the sink's /metrics")
}

/// One metric from a scrape (0 when the family has no sample yet).
pub fn metric(metrics: &BTreeMap<String, f64>, name: &str) -> f64 {
    metrics.get(name).copied().unwrap_or(0.0)
}
