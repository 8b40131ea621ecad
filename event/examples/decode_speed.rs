//! How long decoding one event takes, and its parts (cache-warm: 2,000 payloads, best of 20):
//! `decode_ref` (its fast path, serde for anything else) next to serde's derive alone.
//!
//! cargo run --release -p clickstream-event --example decode_speed
use chrono::{DateTime, Duration, Utc};
use clickstream_event::*;
use std::time::Instant;
use uuid::Uuid;

fn best(label: &str, count: usize, mut f: impl FnMut() -> usize) {
    let mut best = f64::MAX;
    let mut sink = 0;
    for _ in 0..20 {
        let t = Instant::now();
        sink += f();
        best = best.min(t.elapsed().as_nanos() as f64 / count as f64);
    }
    println!("{label:>18} {best:6.0} ns  ({})", sink % 7);
}

fn main() {
    let now = Utc::now();
    let payloads: Vec<Vec<u8>> = (0..2_000u128)
        .map(|i| {
            ClickEvent {
                event_id: Uuid::from_u128(i * 7_919 + 0x1234_5678_9abc_def0_1234_5678),
                timestamp: now - Duration::milliseconds(i as i64),
                user_id: format!("user_{:04}", i % 500),
                session_id: Uuid::from_u128(i * 31 + 99),
                event_type: EventType::ALL[(i % 5) as usize],
                page_url: "/products/electronics/p-0105".into(),
                page_category: "electronics".into(),
                referrer: "https://www.google.com/".into(),
                device_type: "mobile".into(),
                browser: "safari".into(),
                country: "DE".into(),
                duration_ms: 4_200 + i as u32,
                product_id: Some("p-0105".into()),
                price: Some(Price::from_cents(1_999 + i as i64 % 1000)),
                quantity: Some(2),
            }
            .to_json()
        })
        .collect();
    let n = payloads.len();
    let limits = Limits::default();
    best("decode_ref", n, || {
        payloads
            .iter()
            .map(|p| {
                decode_ref(Some(p), &limits, now)
                    .expect("valid")
                    .user_id
                    .len()
            })
            .sum()
    });
    best("serde derive", n, || {
        payloads
            .iter()
            .map(|p| {
                serde_json::from_str::<ClickEventRef>(std::str::from_utf8(p).expect("valid"))
                    .expect("valid")
                    .user_id
                    .len()
            })
            .sum()
    });
    let events: Vec<ClickEventRef> = payloads
        .iter()
        .map(|p| serde_json::from_slice(p).expect("valid"))
        .collect();
    best("validate", n, || {
        events
            .iter()
            .map(|e| e.validate(&limits, now).is_ok() as usize)
            .sum()
    });
    best("from_utf8", n, || {
        payloads
            .iter()
            .map(|p| std::str::from_utf8(p).expect("valid").len())
            .sum()
    });
    best("json skim", n, || {
        payloads
            .iter()
            .map(|p| {
                serde_json::from_slice::<serde::de::IgnoredAny>(p).expect("valid");
                1
            })
            .sum()
    });
    let stamps: Vec<String> = (0..2_000)
        .map(|i| {
            (now - Duration::milliseconds(i)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
        .collect();
    best("rfc3339", n, || {
        stamps
            .iter()
            .map(|s| {
                DateTime::parse_from_rfc3339(s)
                    .expect("valid")
                    .timestamp_subsec_millis() as usize
            })
            .sum()
    });
    let ids: Vec<String> = (0..2_000u128)
        .map(|i| Uuid::from_u128(i * 7919).to_string())
        .collect();
    best("uuid", n, || {
        ids.iter()
            .map(|s| Uuid::parse_str(s).expect("valid").as_bytes()[0] as usize)
            .sum()
    });
    println!("payload bytes: {}", payloads[3].len());
}
