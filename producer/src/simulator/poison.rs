//! Poison: payloads that look like what broken clients and buggy producers send, each made from
//! a real event so that only the one defect of its kind is wrong.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use clickstream_event::{ClickEvent, EventType, FIELDS, REQUIRED_FIELDS};
use rand::{Rng, RngExt};
use serde_json::{Map, Value, json};

use super::PoisonKind;

/// Fields without which no event decodes (the `Option` ones may be absent).
const REQUIRED: &[&str] = FIELDS.split_at(REQUIRED_FIELDS).0;

pub(super) fn make<R: Rng>(
    kind: PoisonKind,
    event: &ClickEvent,
    now: DateTime<Utc>,
    rng: &mut R,
) -> Vec<u8> {
    match kind {
        PoisonKind::EmptyPayload => Vec::new(),
        PoisonKind::InvalidJson => invalid_json(event, rng),
        PoisonKind::InvalidUtf8 => invalid_utf8(event, rng),
        PoisonKind::MissingField => {
            let mut object = object(event);
            let needs_product =
                matches!(event.event_type, EventType::Purchase | EventType::AddToCart);
            if needs_product && rng.random_bool(0.5) {
                // A purchase / add-to-cart whose product fields were lost: null, not absent.
                let field = ["product_id", "quantity"][rng.random_range(0..2)];
                object.insert(field.into(), Value::Null);
            } else {
                object.remove(REQUIRED[rng.random_range(0..REQUIRED.len())]);
            }
            to_bytes(object)
        }
        PoisonKind::WrongType => {
            let mut object = object(event);
            let (field, value) = match rng.random_range(0..8) {
                0 => ("duration_ms", json!(event.duration_ms.to_string())),
                1 => ("event_id", json!(rng.random_range(1..1_000_000_u32))),
                2 => ("user_id", json!(rng.random_range(1..10_000_u32))),
                3 => ("quantity", json!("two")),
                4 => ("price", json!("19.99")),
                5 => ("timestamp", json!(event.timestamp.timestamp_millis())),
                6 => ("session_id", json!(true)),
                _ => ("country", json!([event.country])),
            };
            object.insert(field.into(), value);
            to_bytes(object)
        }
        PoisonKind::UnknownEventType => {
            let mut object = object(event);
            let name =
                ["hover", "scroll", "PageView", "page-view", "refund", ""][rng.random_range(0..6)];
            object.insert("event_type".into(), json!(name));
            to_bytes(object)
        }
        PoisonKind::OutOfRange => {
            let mut object = object(event);
            let (field, value) = match rng.random_range(0..9) {
                0 => ("price", json!(-19.99)),
                1 => ("price", json!(1e12)),
                2 => ("price", json!(12.345)),
                3 => ("quantity", json!(0)),
                4 => ("quantity", json!(50_000)),
                5 => ("duration_ms", json!(-1)),
                6 => ("duration_ms", json!(4_000_000_000_u32)),
                7 => ("user_id", json!("")),
                _ => ("country", json!("Germany")),
            };
            object.insert(field.into(), value);
            to_bytes(object)
        }
        PoisonKind::FutureTimestamp => {
            let mut object = object(event);
            let at = if rng.random_bool(0.8) {
                now + Duration::minutes(rng.random_range(60..=30 * 24 * 60))
            } else {
                DateTime::<Utc>::UNIX_EPOCH // a client without a clock
            };
            object.insert(
                "timestamp".into(),
                json!(at.to_rfc3339_opts(SecondsFormat::Millis, true)),
            );
            to_bytes(object)
        }
        PoisonKind::Oversized => {
            let mut object = object(event);
            let size = rng.random_range(96 * 1024..=160 * 1024);
            let padding = "/x".repeat(size / 2);
            object.insert("page_url".into(), json!(padding));
            to_bytes(object)
        }
    }
}

fn object(event: &ClickEvent) -> Map<String, Value> {
    match serde_json::to_value(event) {
        Ok(Value::Object(object)) => object,
        other => unreachable!("a ClickEvent serializes to an object, got {other:?}"),
    }
}

fn to_bytes(object: Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(&Value::Object(object)).expect("a JSON value always serializes")
}

fn invalid_json<R: Rng>(event: &ClickEvent, rng: &mut R) -> Vec<u8> {
    let json = event.to_json();
    match rng.random_range(0..4) {
        // Cut off mid-message (all content is ASCII, so any cut is valid UTF-8).
        0 => json[..rng.random_range(1..json.len())].to_vec(),
        // Two events glued together.
        1 => [json.as_slice(), json.as_slice()].concat(),
        // Single quotes, as from a hand-written client.
        2 => json
            .iter()
            .map(|&b| if b == b'"' { b'\'' } else { b })
            .collect(),
        _ => format!(
            "user_id={}&event={}&url={}",
            event.user_id, event.event_type, event.page_url
        )
        .into_bytes(),
    }
}

fn invalid_utf8<R: Rng>(event: &ClickEvent, rng: &mut R) -> Vec<u8> {
    let json = event.to_json();
    let marker = b"\"page_url\":\"";
    let at = json
        .windows(marker.len())
        .position(|window| window == marker)
        .expect("event JSON has a page_url")
        + marker.len();
    let bad: &[u8] = match rng.random_range(0..3) {
        0 => b"/c/m\xfcnchen-", // Latin-1 ü
        1 => b"\xc3",           // a cut two-byte sequence
        _ => b"\xff\xfe",       // bytes that never occur in UTF-8
    };
    [&json[..at], bad, &json[at..]].concat()
}
