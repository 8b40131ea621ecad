//! The click event contract shared by `clickstream-producer` and `clickstream-sink` (no I/O).
//!
//! ```text
//! producer ──JSON──▶ Kafka ──bytes──▶ decode() ──▶ ClickEvent ──▶ sink row
//!                                        │
//!                                        └──▶ Rejection { reason, detail } ──▶ dead-letter topic
//! ```
//!
//! [`ClickEvent`] is the JSON the producer writes; [`decode`] is the only way the sink turns a
//! Kafka payload into an event: it parses *and* validates, and every way a payload can be bad
//! has its own [`RejectReason`], which becomes the dead-letter header.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

mod fast;

/// What a visitor did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    PageView,
    Click,
    Search,
    AddToCart,
    Purchase,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::PageView,
        EventType::Click,
        EventType::Search,
        EventType::AddToCart,
        EventType::Purchase,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PageView => "page_view",
            EventType::Click => "click",
            EventType::Search => "search",
            EventType::AddToCart => "add_to_cart",
            EventType::Purchase => "purchase",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A price in cents; in JSON a number with at most two decimals (`19.99`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price {
    cents: i64,
}

impl Price {
    pub fn from_cents(cents: i64) -> Price {
        Price { cents }
    }

    pub fn cents(self) -> i64 {
        self.cents
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.cents < 0 { "-" } else { "" };
        let abs = self.cents.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

impl Serialize for Price {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // cents / 100 as f64 prints as the shortest decimal, e.g. 19.99.
        serializer.serialize_f64(self.cents as f64 / 100.0)
    }
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Price, D::Error> {
        let value = f64::deserialize(deserializer)?;
        let cents = (value * 100.0).round();
        if !value.is_finite() || cents.abs() > 9.0e15 || (value * 100.0 - cents).abs() > 1e-6 {
            return Err(serde::de::Error::custom(format!(
                "invalid price {value}: expected a number with at most two decimals"
            )));
        }
        Ok(Price {
            cents: cents as i64,
        })
    }
}

/// One click event, as JSON on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClickEvent {
    pub event_id: Uuid,
    /// RFC 3339, UTC, milliseconds: `2026-11-23T12:00:00.123Z`.
    #[serde(with = "rfc3339_millis")]
    pub timestamp: DateTime<Utc>,
    pub user_id: String,
    pub session_id: Uuid,
    pub event_type: EventType,
    pub page_url: String,
    pub page_category: String,
    pub referrer: String,
    pub device_type: String,
    pub browser: String,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: String,
    /// Time spent on the page before this event.
    pub duration_ms: u32,
    pub product_id: Option<String>,
    pub price: Option<Price>,
    pub quantity: Option<u16>,
}

/// The fields of an event in the order it is written; the first [`REQUIRED_FIELDS`] are
/// required (the rest are `Option`s).
pub const FIELDS: [&str; 15] = [
    "event_id",
    "timestamp",
    "user_id",
    "session_id",
    "event_type",
    "page_url",
    "page_category",
    "referrer",
    "device_type",
    "browser",
    "country",
    "duration_ms",
    "product_id",
    "price",
    "quantity",
];

/// How many of [`FIELDS`], from the first, no event decodes without.
pub const REQUIRED_FIELDS: usize = 12;

/// A decoded event that borrows its text from the payload: what the sink encodes from, with
/// no copy of any string unless the JSON escapes it. [`decode_ref`] makes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClickEventRef<'a> {
    pub event_id: Uuid,
    #[serde(with = "rfc3339_millis")]
    pub timestamp: DateTime<Utc>,
    #[serde(borrow)]
    pub user_id: Cow<'a, str>,
    pub session_id: Uuid,
    pub event_type: EventType,
    #[serde(borrow)]
    pub page_url: Cow<'a, str>,
    #[serde(borrow)]
    pub page_category: Cow<'a, str>,
    #[serde(borrow)]
    pub referrer: Cow<'a, str>,
    #[serde(borrow)]
    pub device_type: Cow<'a, str>,
    #[serde(borrow)]
    pub browser: Cow<'a, str>,
    #[serde(borrow)]
    pub country: Cow<'a, str>,
    pub duration_ms: u32,
    #[serde(borrow)]
    pub product_id: Option<Cow<'a, str>>,
    pub price: Option<Price>,
    pub quantity: Option<u16>,
}

impl ClickEventRef<'_> {
    pub fn into_owned(self) -> ClickEvent {
        ClickEvent {
            event_id: self.event_id,
            timestamp: self.timestamp,
            user_id: self.user_id.into_owned(),
            session_id: self.session_id,
            event_type: self.event_type,
            page_url: self.page_url.into_owned(),
            page_category: self.page_category.into_owned(),
            referrer: self.referrer.into_owned(),
            device_type: self.device_type.into_owned(),
            browser: self.browser.into_owned(),
            country: self.country.into_owned(),
            duration_ms: self.duration_ms,
            product_id: self.product_id.map(Cow::into_owned),
            price: self.price,
            quantity: self.quantity,
        }
    }
}

impl ClickEvent {
    /// The same event as a borrowed view.
    pub fn as_ref(&self) -> ClickEventRef<'_> {
        ClickEventRef {
            event_id: self.event_id,
            timestamp: self.timestamp,
            user_id: Cow::Borrowed(&self.user_id),
            session_id: self.session_id,
            event_type: self.event_type,
            page_url: Cow::Borrowed(&self.page_url),
            page_category: Cow::Borrowed(&self.page_category),
            referrer: Cow::Borrowed(&self.referrer),
            device_type: Cow::Borrowed(&self.device_type),
            browser: Cow::Borrowed(&self.browser),
            country: Cow::Borrowed(&self.country),
            duration_ms: self.duration_ms,
            product_id: self.product_id.as_deref().map(Cow::Borrowed),
            price: self.price,
            quantity: self.quantity,
        }
    }
}

mod rfc3339_millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = <&str>::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(text)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("invalid timestamp {text:?}: {e}")))
    }
}

impl ClickEvent {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ClickEvent always serializes")
    }
}

/// Why a payload is not a valid event; the dead-letter topic's `reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    EmptyPayload,
    Oversized,
    InvalidUtf8,
    InvalidJson,
    MissingField,
    WrongType,
    UnknownEventType,
    OutOfRange,
    TimestampOutOfWindow,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::EmptyPayload,
        RejectReason::Oversized,
        RejectReason::InvalidUtf8,
        RejectReason::InvalidJson,
        RejectReason::MissingField,
        RejectReason::WrongType,
        RejectReason::UnknownEventType,
        RejectReason::OutOfRange,
        RejectReason::TimestampOutOfWindow,
    ];

    /// Stable name, used as header value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::EmptyPayload => "empty_payload",
            RejectReason::Oversized => "oversized",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::UnknownEventType => "unknown_event_type",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::TimestampOutOfWindow => "timestamp_out_of_window",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A payload that is not a valid event: the reason and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// Limits applied by [`decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Larger payloads are rejected before parsing.
    pub max_message_bytes: usize,
    /// How far in the past an event time may be (late data within this is accepted).
    pub max_event_age: Duration,
    /// How far in the future an event time may be (clock skew).
    pub max_clock_skew: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_bytes: 64 * 1024,
            max_event_age: Duration::days(7),
            max_clock_skew: Duration::minutes(5),
        }
    }
}

/// Highest accepted values: anything above is a producer bug, not a real click.
pub const MAX_PRICE_CENTS: i64 = 10_000_000;
pub const MAX_QUANTITY: u16 = 1_000;
pub const MAX_DURATION_MS: u32 = 24 * 3_600 * 1_000;
pub const MAX_TEXT_LEN: usize = 2_048;

/// Parses and validates one Kafka payload at time `now`.
pub fn decode(
    payload: Option<&[u8]>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<ClickEvent, Rejection> {
    decode_ref(payload, limits, now).map(ClickEventRef::into_owned)
}

/// [`decode`] without copying the event's text out of the payload.
pub fn decode_ref<'a>(
    payload: Option<&'a [u8]>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<ClickEventRef<'a>, Rejection> {
    let bytes = match payload {
        None | Some([]) => {
            return Err(Rejection::new(
                RejectReason::EmptyPayload,
                "message has no payload",
            ));
        }
        Some(bytes) => bytes,
    };
    if bytes.len() > limits.max_message_bytes {
        return Err(Rejection::new(
            RejectReason::Oversized,
            format!(
                "{} bytes, more than max_message_bytes = {}",
                bytes.len(),
                limits.max_message_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Rejection::new(RejectReason::InvalidUtf8, e.to_string()))?;
    let event: ClickEventRef<'a> = match fast::parse(text) {
        Some(event) => event,
        None => serde_json::from_str(text).map_err(classify_json_error)?,
    };
    event.validate(limits, now)?;
    Ok(event)
}

fn classify_json_error(error: serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    let detail = error.to_string();
    let reason = match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => RejectReason::InvalidJson,
        Category::Data if detail.starts_with("missing field") => RejectReason::MissingField,
        Category::Data if detail.starts_with("unknown variant") => RejectReason::UnknownEventType,
        Category::Data if detail.starts_with("invalid price") => RejectReason::OutOfRange,
        Category::Data if detail.starts_with("invalid value") => RejectReason::OutOfRange,
        Category::Data => RejectReason::WrongType,
    };
    Rejection::new(reason, detail)
}

impl ClickEvent {
    /// Checks what types alone cannot: ranges, required fields per event type, time window.
    pub fn validate(&self, limits: &Limits, now: DateTime<Utc>) -> Result<(), Rejection> {
        self.as_ref().validate(limits, now)
    }
}

impl ClickEventRef<'_> {
    /// Checks what types alone cannot: ranges, required fields per event type, time window.
    pub fn validate(&self, limits: &Limits, now: DateTime<Utc>) -> Result<(), Rejection> {
        let out_of_range = |detail: String| Err(Rejection::new(RejectReason::OutOfRange, detail));
        for (name, value) in [
            ("user_id", &self.user_id),
            ("page_url", &self.page_url),
            ("page_category", &self.page_category),
            ("referrer", &self.referrer),
            ("device_type", &self.device_type),
            ("browser", &self.browser),
        ] {
            if value.is_empty() || value.len() > MAX_TEXT_LEN {
                return out_of_range(format!(
                    "{name} must have 1 to {MAX_TEXT_LEN} bytes, has {}",
                    value.len()
                ));
            }
        }
        if self.country.len() != 2 || !self.country.bytes().all(|b| b.is_ascii_uppercase()) {
            return out_of_range(format!(
                "country {:?} is not an ISO 3166 alpha-2 code",
                self.country
            ));
        }
        if self.duration_ms > MAX_DURATION_MS {
            return out_of_range(format!(
                "duration_ms {} exceeds {MAX_DURATION_MS}",
                self.duration_ms
            ));
        }
        if let Some(price) = self.price
            && !(0..=MAX_PRICE_CENTS).contains(&price.cents())
        {
            return out_of_range(format!(
                "price {price} outside 0 to {}",
                Price::from_cents(MAX_PRICE_CENTS)
            ));
        }
        if let Some(quantity) = self.quantity
            && !(1..=MAX_QUANTITY).contains(&quantity)
        {
            return out_of_range(format!("quantity {quantity} outside 1 to {MAX_QUANTITY}"));
        }
        if let Some(product_id) = &self.product_id
            && (product_id.is_empty() || product_id.len() > MAX_TEXT_LEN)
        {
            return out_of_range(format!("product_id must have 1 to {MAX_TEXT_LEN} bytes"));
        }
        let needs: &[(&str, bool)] = match self.event_type {
            EventType::Purchase => &[
                ("product_id", self.product_id.is_some()),
                ("price", self.price.is_some()),
                ("quantity", self.quantity.is_some()),
            ],
            EventType::AddToCart => &[
                ("product_id", self.product_id.is_some()),
                ("quantity", self.quantity.is_some()),
            ],
            _ => &[],
        };
        if let Some((field, _)) = needs.iter().find(|(_, present)| !present) {
            return Err(Rejection::new(
                RejectReason::MissingField,
                format!("{} event without {field}", self.event_type),
            ));
        }
        if self.timestamp > now + limits.max_clock_skew
            || self.timestamp < now - limits.max_event_age
        {
            return Err(Rejection::new(
                RejectReason::TimestampOutOfWindow,
                format!(
                    "timestamp {} outside [now - {} s, now + {} s] at {}",
                    self.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true),
                    limits.max_event_age.num_seconds(),
                    limits.max_clock_skew.num_seconds(),
                    now.to_rfc3339_opts(SecondsFormat::Millis, true),
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
    }

    fn purchase() -> ClickEvent {
        ClickEvent {
            event_id: Uuid::from_u128(7),
            timestamp: now() - Duration::milliseconds(1_500),
            user_id: "user_0042".into(),
            session_id: Uuid::from_u128(9),
            event_type: EventType::Purchase,
            page_url: "/checkout".into(),
            page_category: "checkout".into(),
            referrer: "google.com".into(),
            device_type: "mobile".into(),
            browser: "safari".into(),
            country: "DE".into(),
            duration_ms: 4_200,
            product_id: Some("p-0105".into()),
            price: Some(Price::from_cents(1_999)),
            quantity: Some(2),
        }
    }

    fn decode_json(json: &str) -> Result<ClickEvent, Rejection> {
        decode(Some(json.as_bytes()), &Limits::default(), now())
    }

    fn with(field: &str, value: serde_json::Value) -> String {
        let mut json: serde_json::Value = serde_json::from_slice(&purchase().to_json()).unwrap();
        json[field] = value;
        json.to_string()
    }

    fn without(field: &str) -> String {
        let mut json: serde_json::Value = serde_json::from_slice(&purchase().to_json()).unwrap();
        json.as_object_mut().unwrap().remove(field);
        json.to_string()
    }

    #[test]
    fn fields_are_listed_in_the_order_written_the_required_first() {
        let json = String::from_utf8(purchase().to_json()).unwrap();
        let mut at = 0;
        for field in FIELDS {
            let found = json[at..]
                .find(&format!("\"{field}\":"))
                .unwrap_or_else(|| {
                    panic!("{field} is not the next field of {json}");
                });
            at += found;
        }
        for (i, field) in FIELDS.iter().enumerate() {
            // A page view: it needs none of the optional fields.
            let mut json: serde_json::Value =
                serde_json::from_slice(&purchase().to_json()).unwrap();
            json["event_type"] = "page_view".into();
            json.as_object_mut().unwrap().remove(*field);
            let decoded = decode_json(&json.to_string());
            if i < REQUIRED_FIELDS {
                assert_eq!(
                    decoded.unwrap_err().reason,
                    RejectReason::MissingField,
                    "{field}"
                );
            } else {
                assert!(decoded.is_ok(), "{field} may be absent: {decoded:?}");
            }
        }
    }

    #[test]
    fn round_trips_through_json_with_millisecond_timestamps() {
        let event = purchase();
        let json = String::from_utf8(event.to_json()).unwrap();
        assert!(
            json.contains(r#""timestamp":"2026-11-23T11:59:58.500Z""#),
            "{json}"
        );
        assert!(json.contains(r#""price":19.99"#), "{json}");
        assert!(json.contains(r#""event_type":"purchase""#), "{json}");
        assert_eq!(decode_json(&json), Ok(event));
    }

    #[test]
    fn nulls_for_fields_that_do_not_apply() {
        let mut view = purchase();
        view.event_type = EventType::PageView;
        view.product_id = None;
        view.price = None;
        view.quantity = None;
        let json = String::from_utf8(view.to_json()).unwrap();
        assert!(json.contains(r#""price":null"#), "{json}");
        assert_eq!(decode_json(&json), Ok(view));
    }

    #[test]
    fn every_bad_input_has_its_reason() {
        let late = (now() - Duration::days(8)).to_rfc3339();
        let future = (now() + Duration::hours(1)).to_rfc3339();
        let cases: Vec<(Option<Vec<u8>>, RejectReason)> = vec![
            (None, RejectReason::EmptyPayload),
            (Some(vec![]), RejectReason::EmptyPayload),
            (Some(vec![b'x'; 70_000]), RejectReason::Oversized),
            (
                Some(b"{\"user_id\":\"\xff\xfe\"}".to_vec()),
                RejectReason::InvalidUtf8,
            ),
            (Some(b"{\"event_id\": ".to_vec()), RejectReason::InvalidJson),
            (Some(b"not json".to_vec()), RejectReason::InvalidJson),
            (
                Some(without("user_id").into_bytes()),
                RejectReason::MissingField,
            ),
            (
                Some(with("quantity", serde_json::Value::Null).into_bytes()),
                RejectReason::MissingField,
            ),
            (
                Some(with("duration_ms", "slow".into()).into_bytes()),
                RejectReason::WrongType,
            ),
            (
                Some(with("event_id", 42.into()).into_bytes()),
                RejectReason::WrongType,
            ),
            (
                Some(with("event_type", "teleport".into()).into_bytes()),
                RejectReason::UnknownEventType,
            ),
            (
                Some(with("price", (-5.0).into()).into_bytes()),
                RejectReason::OutOfRange,
            ),
            (
                Some(with("price", 1e12.into()).into_bytes()),
                RejectReason::OutOfRange,
            ),
            (
                Some(with("price", 1.234.into()).into_bytes()),
                RejectReason::OutOfRange,
            ),
            (
                Some(with("duration_ms", (-1).into()).into_bytes()),
                RejectReason::OutOfRange,
            ),
            (
                Some(with("duration_ms", 999_999_999.into()).into_bytes()),
                RejectReason::OutOfRange,
            ),
            (
                Some(with("quantity", 0.into()).into_bytes()),
                RejectReason::OutOfRange,
            ),
            (
                Some(with("country", "germany".into()).into_bytes()),
                RejectReason::OutOfRange,
            ),
            (
                Some(with("user_id", "".into()).into_bytes()),
                RejectReason::OutOfRange,
            ),
            (
                Some(with("timestamp", "yesterday".into()).into_bytes()),
                RejectReason::WrongType,
            ),
            (
                Some(with("timestamp", late.into()).into_bytes()),
                RejectReason::TimestampOutOfWindow,
            ),
            (
                Some(with("timestamp", future.into()).into_bytes()),
                RejectReason::TimestampOutOfWindow,
            ),
        ];
        for (payload, reason) in cases {
            let rejection =
                decode(payload.as_deref(), &Limits::default(), now()).expect_err(&format!(
                    "{:?} must be rejected",
                    payload.as_deref().map(String::from_utf8_lossy)
                ));
            assert_eq!(rejection.reason, reason, "{rejection}");
        }
    }

    #[test]
    fn late_events_within_the_window_are_valid() {
        let mut event = purchase();
        event.timestamp = now() - Duration::hours(6);
        assert_eq!(
            decode_json(&String::from_utf8(event.to_json()).unwrap()),
            Ok(event)
        );
    }

    #[test]
    fn prices_print_with_two_decimals() {
        assert_eq!(Price::from_cents(1_999).to_string(), "19.99");
        assert_eq!(Price::from_cents(5).to_string(), "0.05");
        assert_eq!(Price::from_cents(-120).to_string(), "-1.20");
    }
}
