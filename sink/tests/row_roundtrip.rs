//! EventRow matches clickstream.events from clickhouse/schema.sql.

use chrono::{TimeZone, Utc};
use clickstream_event::{ClickEvent, EventType, Price};
use clickstream_sink::row::EventRow;
use clickstream_testkit::{apply_schema, clickhouse, unique_name};
use uuid::Uuid;

#[tokio::test]
async fn event_rows_round_trip_through_the_schema_table() {
    let client = apply_schema(&clickhouse(), &unique_name("it_row")).await;
    let event = ClickEvent {
        event_id: Uuid::from_u128(1),
        timestamp: Utc.timestamp_millis_opt(1_790_000_000_123).unwrap(),
        user_id: "user_0001".into(),
        session_id: Uuid::from_u128(2),
        event_type: EventType::Purchase,
        page_url: "/checkout".into(),
        page_category: "checkout".into(),
        referrer: "google.com".into(),
        device_type: "mobile".into(),
        browser: "safari".into(),
        country: "DE".into(),
        duration_ms: 1200,
        product_id: Some("p-0001".into()),
        price: Some(Price::from_cents(1999)),
        quantity: Some(2),
    };
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
    assert_eq!(price.as_deref(), Some("19.99"));
}
