//! EventRow matches clickstream.events from clickhouse/schema.sql.

use chrono::{TimeZone, Utc};
use clickstream_sink::row::EventRow;
use clickstream_testkit::{apply_schema, clickhouse, unique_name};

#[tokio::test]
async fn event_rows_round_trip_through_the_schema_table() {
    let client = apply_schema(&clickhouse(), &unique_name("it_row")).await;
    // Event 49 of the shared test events is a purchase: product, quantity, price 1.48.
    let event = crate::common::event(49, Utc.timestamp_millis_opt(1_790_000_000_123).unwrap());
    assert!(event.price.is_some() && event.quantity.is_some());
    let row = EventRow::new(event, "clickstream-events", 2, 77)
        .with_kafka_timestamp(Utc.timestamp_millis_opt(1_790_000_004_567).unwrap());
    let mut insert = client.insert::<EventRow>("events").await.unwrap();
    insert.write(&row).await.unwrap();
    insert.end().await.unwrap();
    let back: Vec<EventRow> = client
        .query("SELECT ?fields FROM events")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(back, vec![row]);
    let price: Option<String> = client
        .query("SELECT toString(price) FROM events")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(price.as_deref(), Some("1.48"));
    let lateness: i64 = client
        .query("SELECT dateDiff('millisecond', event_time, kafka_timestamp) FROM events")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(lateness, 4_444);
}

/// Produces valid events `ids` whose Kafka timestamp is `event time + lag_ms`.
async fn produce_timestamped(
    h: &crate::common::Harness,
    ids: std::ops::Range<u64>,
    event_time: i64,
    lag_ms: i64,
) {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", clickstream_testkit::kafka_brokers())
        .create()
        .expect("producer");
    for i in ids {
        let at = Utc.timestamp_millis_opt(event_time + i as i64).unwrap();
        let event = crate::common::event(i, at);
        let payload = event.to_json();
        producer
            .send(
                FutureRecord::to(&h.topic)
                    .key(&event.user_id)
                    .payload(&payload)
                    .timestamp(event_time + i as i64 + lag_ms),
                std::time::Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sink_stores_each_messages_kafka_timestamp() {
    let h = crate::common::Harness::new("it_kafka_ts").await;
    // Events that happened 90 s before they were produced (late), into a fast pipeline.
    let event_time = Utc::now().timestamp_millis() - 120_000;
    produce_timestamped(&h, 0..50, event_time, 90_000).await;
    let (stop, sink) = crate::common::spawn_sink(h.settings());
    h.wait_rows(50, std::time::Duration::from_secs(120)).await;
    stop.cancel();
    sink.await.unwrap().expect("clean shutdown");
    assert_eq!(
        h.count(
            "SELECT countIf(dateDiff('millisecond', event_time, kafka_timestamp) = 90000) FROM events"
        )
        .await,
        50,
        "kafka_timestamp is the message's timestamp, not the event time"
    );
    // Pipeline latency is small (under 100 s even on a loaded machine: the timestamps are
    // 30 s old at the start); the event time would be 120 s or more.
    assert_eq!(
        h.count("SELECT countIf(inserted_at >= kafka_timestamp AND inserted_at - kafka_timestamp < 100) FROM events")
            .await,
        50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_without_kafka_timestamp_is_still_written() {
    let h = crate::common::Harness::new("it_old_table").await;
    h.client
        .query("ALTER TABLE events DROP COLUMN kafka_timestamp")
        .execute()
        .await
        .expect("drop the column: a table made before it existed");
    produce_timestamped(&h, 0..40, Utc::now().timestamp_millis(), 5).await;
    let (stop, sink) = crate::common::spawn_sink(h.settings());
    h.wait_rows(40, std::time::Duration::from_secs(120)).await;
    stop.cancel();
    sink.await.unwrap().expect("clean shutdown");
    h.assert_exactly_once(40).await;
    // The schema's idempotent ALTER adds it; the next start writes it.
    let alter =
        std::fs::read_to_string(clickstream_testkit::repo_root().join("clickhouse/schema.sql"))
            .unwrap()
            .split(';')
            .find(|s| s.contains("ADD COLUMN IF NOT EXISTS kafka_timestamp"))
            .expect("the ALTER in schema.sql")
            .replace("clickstream.", &format!("{}.", h.database));
    h.client
        .query(alter.trim())
        .execute()
        .await
        .expect("ALTER from schema.sql");
    produce_timestamped(&h, 40..50, Utc::now().timestamp_millis() - 30_000, 20_000).await;
    let (stop, sink) = crate::common::spawn_sink(h.settings());
    h.wait_rows(50, std::time::Duration::from_secs(120)).await;
    stop.cancel();
    sink.await.unwrap().expect("clean shutdown");
    h.assert_exactly_once(50).await;
    assert_eq!(
        h.count("SELECT countIf(dateDiff('millisecond', event_time, kafka_timestamp) = 20000) FROM events")
            .await,
        10,
        "rows after the ALTER carry the message time"
    );
    assert_eq!(
        h.count("SELECT countIf(kafka_timestamp = toDateTime64(0, 3)) FROM events")
            .await,
        40,
        "rows from before it read 1970 (left out of the latency queries)"
    );
}
