//! Every rollup equals the same aggregate computed from the raw events (exact for counts and
//! sums, within uniq's error for unique users/sessions); late events update past windows; a
//! replayed deduplicated insert changes no rollup.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, DurationRound, Utc};
use clickstream_dashboard::table::Table;
use clickstream_testkit::{apply_schema, clickhouse, unique_name};
use serde_json::Value;

use crate::seed::{self, EVENTS, insert, seeded_client, simulate};

/// The relative error we accept from `uniq` against `uniqExact`. ClickHouse documents uniq as
/// exact up to 65536 distinct values per state (adaptive sampling above, ~1 % error); with our
/// sizes only 32-bit hash collisions can make it differ.
pub const UNIQ_TOLERANCE: f64 = 0.01;

pub async fn table(client: &clickhouse::Client, sql: &str) -> Table {
    Table::fetch(client, sql, sql)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{sql}"))
}

/// Compares two results with the same columns, keyed by their first `keys` columns: every
/// column equal, except `uniq` columns, which must agree within [`UNIQ_TOLERANCE`]. Returns
/// the number of rows and the largest relative uniq error seen.
pub fn assert_same(
    what: &str,
    rollup: &Table,
    raw: &Table,
    keys: usize,
    uniq: &[&str],
) -> (usize, f64) {
    assert_eq!(rollup.column_names(), raw.column_names(), "{what}: columns");
    let keyed = |t: &Table| -> BTreeMap<String, Vec<Value>> {
        t.rows
            .iter()
            .map(|r| {
                (
                    Value::from(r[..keys].to_vec()).to_string(),
                    r[keys..].to_vec(),
                )
            })
            .collect()
    };
    let (a, b) = (keyed(rollup), keyed(raw));
    assert_eq!(
        a.len(),
        rollup.rows.len(),
        "{what}: duplicate keys in the rollup result"
    );
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: different keys"
    );
    let names = &rollup.column_names()[keys..];
    let mut max_error = 0.0f64;
    for (key, values) in &a {
        let expected = &b[key];
        for (i, name) in names.iter().enumerate() {
            if uniq.contains(name) {
                let (got, want) = (
                    values[i].as_f64().expect("uniq is a number"),
                    expected[i].as_f64().expect("uniqExact is a number"),
                );
                let error = (got - want).abs() / want.max(1.0);
                max_error = max_error.max(error);
                assert!(
                    error <= UNIQ_TOLERANCE,
                    "{what} {key:?} {name}: uniq {got} vs exact {want}"
                );
            } else {
                assert_eq!(values[i], expected[i], "{what} {key:?} {name}");
            }
        }
    }
    (a.len(), max_error)
}

const DIMENSIONS: [(&str, &str); 6] = [
    ("all", "''"),
    ("event_type", "toString(event_type)"),
    ("device_type", "toString(device_type)"),
    ("country", "toString(country)"),
    ("referrer", "toString(referrer)"),
    ("page_url", "toString(page_url)"),
];

/// events_1m against the raw table, for every dimension; returns (rows, max uniq error).
pub async fn check_events_1m(client: &clickhouse::Client) -> (usize, f64) {
    let mut total = (0, 0.0f64);
    for (dimension, expression) in DIMENSIONS {
        let rollup = table(
            client,
            &format!(
                "SELECT window_start, toString(value) AS v, sum(events) AS events,
                        sum(page_views) AS page_views, sum(purchases) AS purchases,
                        toString(sum(revenue)) AS revenue, sum(duration_ms_sum) AS duration,
                        uniqMerge(users) AS users, uniqMerge(sessions) AS sessions
                 FROM events_1m WHERE dimension = '{dimension}'
                 GROUP BY window_start, v ORDER BY window_start, v"
            ),
        )
        .await;
        let raw = table(
            client,
            &format!(
                "SELECT toStartOfMinute(event_time) AS window_start, {expression} AS v,
                        count() AS events, countIf(event_type = 'page_view') AS page_views,
                        countIf(event_type = 'purchase') AS purchases,
                        toString(toDecimal128(sumIf(coalesce(price, 0) * coalesce(quantity, 1),
                            event_type = 'purchase'), 2)) AS revenue,
                        sum(toUInt64(duration_ms)) AS duration,
                        uniqExact(user_id) AS users, uniqExact(session_id) AS sessions
                 FROM events GROUP BY window_start, v ORDER BY window_start, v"
            ),
        )
        .await;
        let (rows, error) = assert_same(
            &format!("events_1m/{dimension}"),
            &rollup,
            &raw,
            2,
            &["users", "sessions"],
        );
        total = (total.0 + rows, total.1.max(error));
    }
    total
}

pub async fn check_pages_5m(client: &clickhouse::Client) -> (usize, f64) {
    let rollup = table(
        client,
        "SELECT window_start, toString(page_url) AS page, sum(views) AS views,
                sum(duration_ms_sum) AS duration, uniqMerge(users) AS users
         FROM pages_5m GROUP BY window_start, page ORDER BY window_start, page",
    )
    .await;
    let raw = table(
        client,
        "SELECT toStartOfFiveMinutes(event_time) AS window_start, toString(page_url) AS page,
                count() AS views, sum(toUInt64(duration_ms)) AS duration,
                uniqExact(user_id) AS users
         FROM events WHERE event_type = 'page_view'
         GROUP BY window_start, page ORDER BY window_start, page",
    )
    .await;
    assert_same("pages_5m", &rollup, &raw, 2, &["users"])
}

pub async fn check_sessions(client: &clickhouse::Client) -> usize {
    let one_user: u64 = client
        .query(
            "SELECT max(u) FROM (SELECT uniqExact(user_id) AS u FROM events GROUP BY session_id)",
        )
        .fetch_one()
        .await
        .expect("users per session");
    assert_eq!(one_user, 1, "a session belongs to one user");
    let rollup = table(
        client,
        "SELECT toString(session_id) AS s, any(user_id) AS user_id,
                toString(any(device_type)) AS device,
                toUnixTimestamp64Milli(min(first_event)) AS first_ms,
                toUnixTimestamp64Milli(max(last_event)) AS last_ms,
                sum(events) AS events, sum(page_views) AS page_views,
                uniqExactMerge(pages) AS pages,
                argMinMerge(landing_page) AS landing, argMaxMerge(exit_page) AS exit,
                toString(sum(revenue)) AS revenue, max(converted) AS converted
         FROM sessions GROUP BY s ORDER BY s",
    )
    .await;
    // Landing/exit page by sorting each session's events, not with argMin/argMax.
    let raw = table(
        client,
        "SELECT toString(session_id) AS s, any(user_id) AS user_id,
                toString(any(device_type)) AS device,
                toUnixTimestamp64Milli(min(event_time)) AS first_ms,
                toUnixTimestamp64Milli(max(event_time)) AS last_ms,
                count() AS events, countIf(event_type = 'page_view') AS page_views,
                length(groupUniqArray(toString(page_url))) AS pages,
                arraySort(groupArray((event_time, event_id, toString(page_url))))[1].3 AS landing,
                arrayReverseSort(groupArray((event_time, event_id, toString(page_url))))[1].3 AS exit,
                toString(toDecimal128(sumIf(coalesce(price, 0) * coalesce(quantity, 1),
                    event_type = 'purchase'), 2)) AS revenue,
                toUInt8(countIf(event_type = 'purchase') > 0) AS converted
         FROM events GROUP BY s ORDER BY s",
    )
    .await;
    assert_same("sessions", &rollup, &raw, 1, &[]).0
}

/// users_daily (issue 13) against the raw table, per (day, user).
pub async fn check_users_daily(client: &clickhouse::Client) -> usize {
    let rollup = table(
        client,
        "SELECT day, user_id, sum(events) AS events, sum(purchases) AS purchases,
                toString(sum(revenue)) AS revenue, uniqMerge(sessions) AS sessions,
                toUnixTimestamp64Milli(min(first_event)) AS first_ms
         FROM users_daily GROUP BY day, user_id ORDER BY day, user_id",
    )
    .await;
    let raw = table(
        client,
        "SELECT toDate(event_time) AS day, user_id, count() AS events,
                countIf(event_type = 'purchase') AS purchases,
                toString(toDecimal128(sumIf(coalesce(price, 0) * coalesce(quantity, 1),
                    event_type = 'purchase'), 2)) AS revenue,
                length(groupUniqArray(session_id)) AS sessions,
                toUnixTimestamp64Milli(min(event_time)) AS first_ms
         FROM events GROUP BY day, user_id ORDER BY day, user_id",
    )
    .await;
    assert_same("users_daily", &rollup, &raw, 2, &["sessions"]).0
}

pub async fn check_funnel_5m(client: &clickhouse::Client) -> usize {
    let rollup = table(
        client,
        "SELECT window_start, uniqExactMerge(sessions) AS sessions,
                uniqExactMerge(viewed) AS viewed, uniqExactMerge(carted) AS carted,
                uniqExactMerge(purchased) AS purchased
         FROM funnel_5m GROUP BY window_start ORDER BY window_start",
    )
    .await;
    let raw = table(
        client,
        "SELECT toStartOfFiveMinutes(event_time) AS window_start,
                length(groupUniqArray(session_id)) AS sessions,
                length(groupUniqArrayIf(session_id, event_type = 'page_view')) AS viewed,
                length(groupUniqArrayIf(session_id, event_type = 'add_to_cart')) AS carted,
                length(groupUniqArrayIf(session_id, event_type = 'purchase')) AS purchased
         FROM events GROUP BY window_start ORDER BY window_start",
    )
    .await;
    assert_same("funnel_5m", &rollup, &raw, 1, &[]).0
}

/// The hopping view's 'all' windows against raw counts of each 10-minute span, one query per
/// window; returns (windows, max uniq error).
pub async fn check_hopping(
    client: &clickhouse::Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (usize, f64) {
    let hop = table(
        client,
        &format!(
            "SELECT toUnixTimestamp(window_start) AS start, events, page_views,
                    toString(revenue) AS revenue, users, sessions
             FROM events_10m_hop(from = toDateTime({}), to = toDateTime({}))
             WHERE dimension = 'all' ORDER BY start",
            from.timestamp(),
            to.timestamp()
        ),
    )
    .await;
    assert!(!hop.rows.is_empty(), "no hopping windows in range");
    let mut max_error = 0.0f64;
    for row in 0..hop.rows.len() {
        let start = hop.number(row, "start").expect("start") as i64;
        assert_eq!(start % 300, 0, "hopping windows start every 5 minutes");
        let raw = table(
            client,
            &format!(
                "SELECT toUnixTimestamp(toDateTime({start})) AS start, count() AS events,
                        countIf(event_type = 'page_view') AS page_views,
                        toString(toDecimal128(sumIf(coalesce(price, 0) * coalesce(quantity, 1),
                            event_type = 'purchase'), 2)) AS revenue,
                        uniqExact(user_id) AS users, uniqExact(session_id) AS sessions
                 FROM events
                 WHERE event_time >= toDateTime({start})
                   AND event_time < toDateTime({start}) + INTERVAL 10 MINUTE"
            ),
        )
        .await;
        let one = Table {
            columns: hop.columns.clone(),
            rows: vec![hop.rows[row].clone()],
        };
        let (_, error) = assert_same(
            &format!("events_10m_hop@{start}"),
            &one,
            &raw,
            1,
            &["users", "sessions"],
        );
        max_error = max_error.max(error);
    }
    (hop.rows.len(), max_error)
}

#[tokio::test]
async fn every_rollup_equals_the_raw_aggregates_on_100k_simulated_events() {
    let (client, seeded) = seeded_client();
    let events: u64 = client
        .query("SELECT count() FROM events")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(events, EVENTS as u64);
    let late: u64 = client
        .query("SELECT countIf(event_time < toDateTime(?)) FROM events")
        .bind(seeded.start.timestamp())
        .fetch_one()
        .await
        .unwrap();
    assert!(late > 0, "the seed has late events before its clock start");

    let (rows_1m, error_1m) = check_events_1m(&client).await;
    let (rows_5m, error_5m) = check_pages_5m(&client).await;
    let sessions = check_sessions(&client).await;
    let funnel = check_funnel_5m(&client).await;
    let users_daily = check_users_daily(&client).await;
    assert!(users_daily > 100, "{users_daily} (day, user) rows");
    let (hops, error_hop) = check_hopping(
        &client,
        seeded.start - Duration::hours(7),
        seeded.end + Duration::minutes(5),
    )
    .await;
    eprintln!(
        "rollups vs raw over {EVENTS} events ({late} late): events_1m {rows_1m} rows (max uniq error \
         {error_1m:.5}), pages_5m {rows_5m} rows (max uniq error {error_5m:.5}), sessions \
         {sessions}, funnel_5m {funnel} windows, events_10m_hop {hops} windows (max uniq error \
         {error_hop:.5})"
    );
    assert!(sessions > 100 && funnel > 3 && rows_5m > 50);
}

#[tokio::test]
async fn late_events_update_their_past_windows() {
    let client = apply_schema(&clickhouse(), &unique_name("it_dash_late")).await;
    let start = seed::base_time();
    insert(&client, &simulate(7, 0.0, start, 20_000, 0), "late:0").await;

    // 500 events that happened in the first minute, arriving an hour of clock later.
    let window = start.duration_trunc(Duration::minutes(1)).unwrap();
    let mut late = simulate(8, 0.0, start + Duration::hours(1), 500, 20_000);
    for (i, row) in late.iter_mut().enumerate() {
        row.event_time = window + Duration::milliseconds(i as i64 * 100);
    }
    let minute_totals = |client: clickhouse::Client| async move {
        client
            .query(
                "SELECT sum(events), toString(sum(revenue)) FROM events_1m
                 WHERE dimension = 'all' AND window_start = toDateTime(?)",
            )
            .bind(window.timestamp())
            .fetch_one::<(u64, String)>()
            .await
            .unwrap()
    };
    let (before, _) = minute_totals(client.clone()).await;
    insert(&client, &late, "late:1").await;
    let (after, _) = minute_totals(client.clone()).await;
    assert_eq!(
        after,
        before + 500,
        "the late events are counted in their own minute"
    );

    // And every rollup still equals the raw aggregates, late events included.
    check_events_1m(&client).await;
    check_pages_5m(&client).await;
    check_sessions(&client).await;
    check_funnel_5m(&client).await;
    check_users_daily(&client).await;
    check_hopping(
        &client,
        window - Duration::minutes(10),
        start + Duration::minutes(10),
    )
    .await;
}

/// Index of funnel_5m in [`dump_rollups`].
const FUNNEL: usize = 4;

/// Every rollup, finalized, in a canonical order: equal dumps mean equal rollups.
async fn dump_rollups(client: &clickhouse::Client) -> Vec<Table> {
    let mut dump = Vec::new();
    for sql in [
        "SELECT count() FROM events",
        "SELECT window_start, dimension, value, sum(events), sum(page_views), sum(purchases),
                toString(sum(revenue)), sum(duration_ms_sum), uniqMerge(users), uniqMerge(sessions)
         FROM events_1m GROUP BY ALL ORDER BY ALL",
        "SELECT window_start, page_url, sum(views), sum(duration_ms_sum), uniqMerge(users)
         FROM pages_5m GROUP BY ALL ORDER BY ALL",
        "SELECT session_id, any(user_id), min(first_event), max(last_event), sum(events),
                sum(page_views), uniqExactMerge(pages), argMinMerge(landing_page),
                argMaxMerge(exit_page), toString(sum(revenue)), max(converted)
         FROM sessions GROUP BY session_id ORDER BY session_id",
        "SELECT window_start, uniqExactMerge(sessions), uniqExactMerge(viewed),
                uniqExactMerge(carted), uniqExactMerge(purchased)
         FROM funnel_5m GROUP BY ALL ORDER BY ALL",
        "SELECT * FROM events_10m_hop(from = toDateTime('2000-01-01 00:00:00'), to = toDateTime('2100-01-01 00:00:00'))
         ORDER BY window_start, dimension, value",
        "SELECT day, user_id, sum(events), sum(purchases), toString(sum(revenue)),
                uniqMerge(sessions), min(first_event)
         FROM users_daily GROUP BY day, user_id ORDER BY day, user_id",
    ] {
        dump.push(table(client, sql).await);
    }
    dump
}

#[tokio::test]
async fn replaying_a_deduplicated_insert_does_not_double_any_rollup() {
    let client = apply_schema(&clickhouse(), &unique_name("it_dash_replay")).await;
    let rows = simulate(11, 0.05, seed::base_time(), 10_000, 0);
    let (first, second) = rows.split_at(5_000);
    insert(&client, first, "replay:0:0-4999").await;
    insert(&client, second, "replay:0:5000-9999").await;
    let before = dump_rollups(&client).await;

    // The sink crashed after the insert, before committing: it inserts the same batch again.
    insert(&client, first, "replay:0:0-4999").await;
    let after = dump_rollups(&client).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a, "a replayed insert changed a rollup");
    }

    // Control: the same rows under a new token are a new insert, and every additive rollup
    // sees them (the funnel counts distinct sessions, which the same rows do not change).
    insert(&client, first, "replay:other").await;
    let doubled = dump_rollups(&client).await;
    for (i, (b, d)) in before.iter().zip(&doubled).enumerate() {
        if i == FUNNEL {
            assert_eq!(b, d, "the funnel counts distinct sessions");
        } else {
            assert_ne!(b, d, "rollup #{i} did not change on a genuine insert");
        }
    }
}
