//! The operations commands, run with the sink's own settings while (verify, dlq inspect) or
//! instead of (replay, dlq replay) the sinks run:
//!
//! - [`verify`]: is everything there? Kafka's offsets against ClickHouse's rows and the
//!   dead-letter topic, and every rollup against the raw table.
//! - [`replay`]: re-read a range exactly once (after a decoder fix, a schema change, a bad
//!   rollup): delete it, rebuild the rollups it touched, reset the group.
//! - [`dlq`]: what the dead-letter topic holds, and its letters inserted once they are valid.
//!
//! [`kafka`] holds what they ask the broker; [`lease`] lets one `replay` or `dlq replay` run at
//! a time. Each command returns a report that prints for people ([`std::fmt::Display`]) or as
//! JSON, and says whether it found a problem.

pub mod dlq;
pub mod kafka;
pub mod lease;
pub mod replay;
pub mod verify;

use std::future::Future;

use chrono::{DateTime, Utc};

use crate::SinkError;
use crate::writer::{Failure, classify};

/// Runs one ClickHouse request of an operations command; any failure is returned as it is
/// (the commands do not retry: they are run by a person, or again by a job).
pub(crate) async fn ch<T>(
    operation: &'static str,
    request: impl Future<Output = Result<T, clickhouse::error::Error>>,
) -> Result<T, SinkError> {
    request.await.map_err(|error| ch_error(operation, &error))
}

/// A ClickHouse failure of an operations command.
pub(crate) fn ch_error(operation: &'static str, error: &clickhouse::error::Error) -> SinkError {
    let denied = match error {
        clickhouse::error::Error::BadResponse(message) => {
            matches!(crate::writer::error_code(message), Some(497 | 164))
        }
        _ => false,
    };
    let text = if denied {
        // Not the sink's grants (the writer's hint): these commands need more than the sink.
        format!(
            "{}: the operations commands read every rollup and `replay` rewrites them, which the \
             sink's own user may not: run them as the administrator (README: \"Operating it\")",
            clickstream_connect::describe(error)
        )
    } else {
        classify(error).1
    };
    SinkError::ClickHouse {
        operation,
        source: Failure::Fatal(text),
    }
}

/// A time given on the command line: RFC 3339 (`2026-11-30T10:00:00Z`), a date and time in
/// UTC (`2026-11-30 10:00`), a date (`2026-11-30`), or an age (`90m`, `6h`, `3d` ago).
pub fn parse_time(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    let last = text.char_indices().last().map_or(0, |(at, _)| at);
    let (number, unit) = text.split_at(last);
    let seconds: i64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => 0,
    };
    let age = number
        .parse::<i64>()
        .ok()
        .filter(|&n| seconds > 0 && n >= 0)
        .and_then(|n| n.checked_mul(seconds))
        .and_then(chrono::Duration::try_seconds)
        .and_then(|age| now.checked_sub_signed(age));
    match age {
        Some(at) => Ok(at),
        None => Err(format!(
            "`{text}` is not a time: use RFC 3339 (2026-11-30T10:00:00Z), `2026-11-30 10:00` \
             (UTC), a date, or an age such as 90m, 6h, 3d"
        )),
    }
}

/// Offsets as ranges of consecutive values (`[(first, last)]`, both included).
pub fn ranges(offsets: impl IntoIterator<Item = i64>) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for o in offsets {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == o => *last = o,
            Some((_, last)) if *last >= o => {}
            _ => out.push((o, o)),
        }
    }
    out
}

/// Ranges written short: `5`, `7-9`, joined with `, `, at most `limit` of them.
pub fn show_ranges(ranges: &[(i64, i64)], limit: usize) -> String {
    let mut parts: Vec<String> = ranges
        .iter()
        .take(limit)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if ranges.len() > limit {
        parts.push(format!("… ({} ranges in all)", ranges.len()));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_in_every_documented_form() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s| parse_time(s, now).unwrap().to_rfc3339();
        assert_eq!(at("2026-11-30T10:00:00Z"), "2026-11-30T10:00:00+00:00");
        assert_eq!(at("2026-11-30T11:00:00+01:00"), "2026-11-30T10:00:00+00:00");
        assert_eq!(at("2026-11-30 10:00"), "2026-11-30T10:00:00+00:00");
        assert_eq!(at("2026-11-29"), "2026-11-29T00:00:00+00:00");
        assert_eq!(at("90m"), "2026-11-30T10:30:00+00:00");
        assert_eq!(at("2d"), "2026-11-28T12:00:00+00:00");
        assert!(
            parse_time("yesterday", now)
                .unwrap_err()
                .contains("RFC 3339")
        );
        assert!(parse_time("-3h", now).is_err());
        // Not a panic: a last letter of more than one byte, an age beyond any date.
        assert!(parse_time("6ч", now).is_err());
        assert!(parse_time("ч", now).is_err());
        assert!(parse_time("9223372036854775807d", now).is_err());
        assert!(parse_time("99999999999d", now).is_err());
    }

    #[test]
    fn offsets_become_ranges() {
        assert_eq!(ranges([1, 2, 3, 5, 7, 8, 8]), vec![(1, 3), (5, 5), (7, 8)]);
        assert_eq!(
            show_ranges(&[(1, 3), (5, 5), (7, 8)], 2),
            "1-3, 5, … (3 ranges in all)"
        );
    }
}
