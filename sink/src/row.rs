//! The row written to `clickstream.events`: the event's fields plus where it came from in Kafka.
//! `inserted_at` is left to the table's `DEFAULT now64(3)`, so it is the time the insert ran.
//! `kafka_timestamp` is the message's timestamp (CreateTime or LogAppendTime); a message
//! without one (the pre-0.10 message format) gets the time the sink read it.

use chrono::{DateTime, Utc};
use clickhouse::Row;
use clickstream_event::{ClickEvent, ClickEventRef};
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
    /// The Kafka message's timestamp ([`EventRow::new`] takes the event time).
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    pub kafka_timestamp: DateTime<Utc>,
}

impl EventRow {
    /// The row of `event` at this Kafka position; its `kafka_timestamp` is the event time until
    /// [`EventRow::with_kafka_timestamp`] says otherwise.
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
            kafka_timestamp: event.timestamp,
        }
    }

    /// The same row with the Kafka message's timestamp.
    pub fn with_kafka_timestamp(self, kafka_timestamp: DateTime<Utc>) -> EventRow {
        EventRow {
            kafka_timestamp,
            ..self
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
        strings + 16 + 8 + 16 + 4 + 9 + 3 + 4 + 8 + 8 + 11
    }
}

/// One row as the encoder reads it: borrowed from the decoded payload (or from an
/// [`EventRow`]), so that intake copies no string on its way to the insert buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowRef<'a> {
    pub event_id: Uuid,
    pub event_time_ms: i64,
    pub user_id: &'a str,
    pub session_id: Uuid,
    pub event_type: &'a str,
    pub page_url: &'a str,
    pub page_category: &'a str,
    pub referrer: &'a str,
    pub device_type: &'a str,
    pub browser: &'a str,
    pub country: &'a str,
    pub duration_ms: u32,
    pub product_id: Option<&'a str>,
    /// Cents.
    pub price: Option<i64>,
    pub quantity: Option<u16>,
    pub kafka_topic: &'a str,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    /// The message's timestamp in ms; `None` (a message without one) is written as the time
    /// the row is encoded, which is when the sink read the message.
    pub kafka_timestamp_ms: Option<i64>,
}

impl<'a> RowRef<'a> {
    /// The same row with the message's timestamp (ms), if it has one.
    #[inline]
    pub fn with_kafka_timestamp(self, kafka_timestamp_ms: Option<i64>) -> RowRef<'a> {
        RowRef {
            kafka_timestamp_ms,
            ..self
        }
    }

    #[inline]
    pub fn of_event(
        event: &'a ClickEventRef<'_>,
        kafka_topic: &'a str,
        kafka_partition: i32,
        kafka_offset: i64,
    ) -> RowRef<'a> {
        RowRef {
            event_id: event.event_id,
            event_time_ms: event.timestamp.timestamp_millis(),
            user_id: &event.user_id,
            session_id: event.session_id,
            event_type: event.event_type.as_str(),
            page_url: &event.page_url,
            page_category: &event.page_category,
            referrer: &event.referrer,
            device_type: &event.device_type,
            browser: &event.browser,
            country: &event.country,
            duration_ms: event.duration_ms,
            product_id: event.product_id.as_deref(),
            price: event.price.map(|p| p.cents()),
            quantity: event.quantity,
            kafka_topic,
            kafka_partition,
            kafka_offset,
            kafka_timestamp_ms: None,
        }
    }
}

impl EventRow {
    pub fn as_row_ref(&self) -> RowRef<'_> {
        RowRef {
            event_id: self.event_id,
            event_time_ms: self.event_time.timestamp_millis(),
            user_id: &self.user_id,
            session_id: self.session_id,
            event_type: &self.event_type,
            page_url: &self.page_url,
            page_category: &self.page_category,
            referrer: &self.referrer,
            device_type: &self.device_type,
            browser: &self.browser,
            country: &self.country,
            duration_ms: self.duration_ms,
            product_id: self.product_id.as_deref(),
            price: self.price,
            quantity: self.quantity,
            kafka_topic: &self.kafka_topic,
            kafka_partition: self.kafka_partition,
            kafka_offset: self.kafka_offset,
            kafka_timestamp_ms: Some(self.kafka_timestamp.timestamp_millis()),
        }
    }
}
