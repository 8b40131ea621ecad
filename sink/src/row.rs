//! The row written to `clickstream.events`: the event's fields plus where it came from in Kafka.
//! `inserted_at` is left to the table's `DEFAULT now64(3)`, so it is the time the insert ran.

use chrono::{DateTime, Utc};
use clickhouse::Row;
use clickstream_event::ClickEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One row of `clickstream.events` (all columns but `inserted_at`).
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct EventRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: Uuid,
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    pub event_time: DateTime<Utc>,
    pub user_id: String,
    #[serde(with = "clickhouse::serde::uuid")]
    pub session_id: Uuid,
    pub event_type: String,
    pub page_url: String,
    pub page_category: String,
    pub referrer: String,
    pub device_type: String,
    pub browser: String,
    pub country: String,
    pub duration_ms: u32,
    pub product_id: Option<String>,
    /// `Decimal(12, 2)`: cents.
    pub price: Option<i64>,
    pub quantity: Option<u16>,
    pub kafka_topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
}

impl EventRow {
    pub fn new(
        event: ClickEvent,
        kafka_topic: &str,
        kafka_partition: i32,
        kafka_offset: i64,
    ) -> EventRow {
        EventRow {
            event_id: event.event_id,
            event_time: event.timestamp,
            user_id: event.user_id,
            session_id: event.session_id,
            event_type: event.event_type.as_str().to_owned(),
            page_url: event.page_url,
            page_category: event.page_category,
            referrer: event.referrer,
            device_type: event.device_type,
            browser: event.browser,
            country: event.country,
            duration_ms: event.duration_ms,
            product_id: event.product_id,
            price: event.price.map(|p| p.cents()),
            quantity: event.quantity,
            kafka_topic: kafka_topic.to_owned(),
            kafka_partition,
            kafka_offset,
        }
    }

    /// Approximate bytes the row takes in a RowBinary insert (for batch size limits).
    pub fn encoded_len(&self) -> usize {
        let strings = self.user_id.len()
            + self.event_type.len()
            + self.page_url.len()
            + self.page_category.len()
            + self.referrer.len()
            + self.device_type.len()
            + self.browser.len()
            + self.country.len()
            + self.product_id.as_ref().map_or(0, String::len)
            + self.kafka_topic.len();
        // fixed-width columns + one length byte per string
        strings + 16 + 8 + 16 + 4 + 9 + 3 + 4 + 8 + 11
    }
}
