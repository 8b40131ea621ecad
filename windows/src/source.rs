//! ClickHouse: the windows' numbers from the 1-minute rollup (`events_1m`), and which windows
//! rows inserted lately fall into (`events.inserted_at`, served by its minmax index).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::Deserialize;

use crate::Error;
use crate::settings::Settings;
use crate::window::WindowMessage;

/// The ClickHouse client the settings describe (HTTPS, CA, client certificate and password
/// file as the sink has them, built by `clickstream-connect`).
pub fn client(settings: &Settings) -> Result<clickhouse::Client, Error> {
    settings.connection().client().map_err(Error::Settings)
}

/// Reads windows from the rollups.
pub struct Source {
    client: clickhouse::Client,
    minutes: i64,
    top_n: usize,
}

#[derive(clickhouse::Row, Deserialize)]
struct DimensionRow {
    window: u32,
    dimension: String,
    value: String,
    events: u64,
    page_views: u64,
    duration_ms: u64,
    users: u64,
    sessions: u64,
}

impl Source {
    pub fn new(client: clickhouse::Client, minutes: i64, top_n: usize) -> Source {
        Source {
            client,
            minutes,
            top_n,
        }
    }

    /// The server's clock, in milliseconds: `inserted_at` is the server's time, so the late-row
    /// scan never depends on this host's clock.
    pub async fn server_now_ms(&self) -> Result<i64, Error> {
        self.client
            .query("SELECT toInt64(toUnixTimestamp64Milli(now64(3)))")
            .fetch_one::<i64>()
            .await
            .map_err(Error::Query)
    }

    /// The windows of the rows inserted at or after `since_ms` (server time).
    pub async fn touched_since(&self, since_ms: i64) -> Result<Vec<DateTime<Utc>>, Error> {
        let starts = self
            .client
            .query(
                "SELECT DISTINCT toUInt32(toStartOfInterval(event_time, toIntervalMinute(?)))
                 FROM events WHERE inserted_at >= fromUnixTimestamp64Milli(toInt64(?))",
            )
            .bind(self.minutes)
            .bind(since_ms)
            .fetch_all::<u32>()
            .await
            .map_err(Error::Query)?;
        Ok(starts.into_iter().map(epoch).collect())
    }

    /// The numbers of each window in `starts` (revision 0: the tracker sets it), from the
    /// 1-minute rollup merged into windows; a window without events has zeros.
    pub async fn compute(&self, starts: &[DateTime<Utc>]) -> Result<Vec<WindowMessage>, Error> {
        let (Some(first), Some(last)) = (starts.iter().min(), starts.iter().max()) else {
            return Ok(Vec::new());
        };
        let size = Duration::minutes(self.minutes);
        let rows = self
            .client
            .query(
                "SELECT toUInt32(toStartOfInterval(window_start, toIntervalMinute(?))) AS window,
                        toString(dimension) AS dimension, toString(value) AS value,
                        toUInt64(sum(events)) AS events, toUInt64(sum(page_views)) AS page_views,
                        toUInt64(sum(duration_ms_sum)) AS duration_ms,
                        toUInt64(uniqMerge(users)) AS users, toUInt64(uniqMerge(sessions)) AS sessions
                 FROM events_1m
                 WHERE window_start >= toDateTime(?, 'UTC') AND window_start < toDateTime(?, 'UTC')
                   AND dimension IN ('all', 'event_type', 'device_type', 'referrer', 'page_url')
                 GROUP BY window, dimension, value",
            )
            .bind(self.minutes)
            .bind(first.timestamp())
            .bind((*last + size).timestamp())
            .fetch_all::<DimensionRow>()
            .await
            .map_err(Error::Query)?;
        let mut by_window: BTreeMap<i64, Vec<DimensionRow>> = BTreeMap::new();
        for row in rows {
            by_window
                .entry(i64::from(row.window))
                .or_default()
                .push(row);
        }
        Ok(starts
            .iter()
            .map(|start| {
                let rows = by_window.remove(&start.timestamp()).unwrap_or_default();
                self.message(*start, size, rows)
            })
            .collect())
    }

    fn message(
        &self,
        start: DateTime<Utc>,
        size: Duration,
        rows: Vec<DimensionRow>,
    ) -> WindowMessage {
        let mut message = WindowMessage {
            window_start: start,
            window_end: start + size,
            revision: 0,
            total_events: 0,
            unique_users: 0,
            unique_sessions: 0,
            event_types: BTreeMap::new(),
            devices: BTreeMap::new(),
            top_referrers: BTreeMap::new(),
            top_pages: BTreeMap::new(),
            avg_duration_ms: 0.0,
        };
        let mut referrers = Vec::new();
        let mut pages = Vec::new();
        for row in rows {
            match row.dimension.as_str() {
                "all" => {
                    message.total_events = row.events;
                    message.unique_users = row.users;
                    message.unique_sessions = row.sessions;
                    if row.events > 0 {
                        let mean = row.duration_ms as f64 / row.events as f64;
                        message.avg_duration_ms = (mean * 1000.0).round() / 1000.0;
                    }
                }
                "event_type" => {
                    message.event_types.insert(row.value, row.events);
                }
                "device_type" => {
                    message.devices.insert(row.value, row.events);
                }
                "referrer" => referrers.push((row.value, row.events)),
                "page_url" if row.page_views > 0 => pages.push((row.value, row.page_views)),
                _ => {}
            }
        }
        message.top_referrers = top(referrers, self.top_n);
        message.top_pages = top(pages, self.top_n);
        message
    }
}

/// The `n` largest counts, ties broken by name (so the same data gives the same message).
fn top(mut counts: Vec<(String, u64)>, n: usize) -> BTreeMap<String, u64> {
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts.into_iter().take(n).collect()
}

fn epoch(seconds: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(i64::from(seconds), 0)
        .single()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_keeps_the_largest_counts_with_ties_by_name() {
        let counts = vec![
            ("b".to_owned(), 5),
            ("a".to_owned(), 5),
            ("c".to_owned(), 9),
            ("d".to_owned(), 1),
        ];
        let top = top(counts, 3);
        assert_eq!(top.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    }
}
