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
    let row = EventRow::new(event, "clickstream-events", 2, 77);
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
}
