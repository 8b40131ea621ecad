//! `clickstream-sink verify`: is everything there?
//!
//! Per partition of the topic, the offsets Kafka holds are compared with the offsets stored
//! in ClickHouse and the source offsets in the dead-letter topic:
//! - **missing**: below the group's committed offset, neither stored nor dead-lettered (and
//!   still a message in Kafka: an offset with no message, such as a transaction marker, is
//!   not missing);
//! - **stored twice**: one offset in more than one row;
//! - **stored and dead-lettered**: both at once;
//! - **in flight**: at or after the committed offset, what a running sink has not committed
//!   yet (stored or not): reported, never a problem.
//!
//! And every rollup against an aggregate of the raw table ([`ROLLUP_CHECKS`]), window by
//! window. The fault suite's oracle calls [`check_rollups`] too.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};
use rdkafka::message::Message;
use serde::Serialize;

use super::dlq::{self, Letter};
use super::kafka::OpsKafka;
use super::{ch, ranges, show_ranges};
use crate::SinkError;
use crate::settings::Settings;

/// Missing ranges this long or shorter are confirmed by reading them from Kafka.
const CONFIRM_LIMIT: i64 = 100_000;

/// What `verify` found in one partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub partition: i32,
    /// Kafka's first offset (older ones were deleted by retention).
    pub earliest: i64,
    /// One past Kafka's last offset (read, not only as the broker reports it).
    pub latest: i64,
    /// The group's committed offset (`None`: the group never committed).
    pub committed: Option<i64>,
    /// Where the check starts (`--since`, or `earliest`).
    pub checked_from: i64,
    /// Distinct offsets stored in ClickHouse at or after `checked_from`.
    pub stored: u64,
    /// Of them, at or after the committed offset (written, not committed yet).
    pub stored_uncommitted: u64,
    /// Offsets stored in ClickHouse that Kafka no longer holds (retention): not checkable.
    pub stored_before_earliest: u64,
    /// Distinct source offsets in the dead-letter topic at or after `checked_from`.
    pub dead_lettered: u64,
    /// Of them, inserted since by `dlq replay` (stored, not a problem).
    pub replayed_from_dead_letters: u64,
    /// Below the committed offset, in Kafka, neither stored nor dead-lettered.
    pub missing: Vec<(i64, i64)>,
    pub missing_count: u64,
    /// Below the committed offset, not stored, and in Kafka an event older than the raw
    /// table's TTL (deleted by it, as a backfill of old events is): not missing.
    pub expired: u64,
    /// Missing offsets not read back from Kafka to confirm (too many).
    pub missing_unconfirmed: u64,
    /// Offsets stored more than once (offset, rows), the first 100.
    pub stored_twice: Vec<(i64, u64)>,
    pub stored_twice_count: u64,
    /// Offsets both stored and dead-lettered.
    pub stored_and_dead_lettered: Vec<(i64, i64)>,
    pub stored_and_dead_lettered_count: u64,
    /// From the committed offset to the end, not stored yet (the group's lag).
    pub in_flight: u64,
}

/// One rollup compared with the raw table.
#[derive(Debug, Clone, Serialize)]
pub struct RollupReport {
    pub rollup: String,
    /// What is compared (e.g. `sum(events) per window_start`).
    pub measure: String,
    /// The total of the measure in the rollup and in the raw table.
    pub rollup_total: i128,
    pub raw_total: i128,
    /// Keys (windows, sessions, partitions) whose values differ, and a few of them.
    pub differing_keys: u64,
    pub samples: Vec<String>,
    /// Keys older than the raw table's TTL where the raw table holds less than the rollup
    /// (its rows expired while the rollup keeps its longer TTL): not a difference.
    pub expired_keys: u64,
}

impl RollupReport {
    pub fn equal(&self) -> bool {
        self.differing_keys == 0
    }
}

/// How often `verify` reads the rollup checks while offsets are in flight, until they agree.
const ROLLUP_READS: u32 = 5;

/// Everything `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub topic: String,
    pub dead_letter_topic: String,
    pub table: String,
    pub group: String,
    pub since: Option<DateTime<Utc>>,
    pub partitions: Vec<PartitionReport>,
    /// Dead letters of this topic written more than once (same source offset): counted
    /// once, not a problem (a replay after a crash may write a letter again).
    pub dead_letter_repeats: u64,
    pub rollups: Vec<RollupReport>,
    /// Every problem, one line each (empty: all is well).
    pub problems: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A rollup and the raw aggregate it must equal, key by key. `{db}`, `{table}` and
/// `{since}` (a `DateTime64(3)` literal) are filled in; both queries return `(k String, v, t)`,
/// `t` the time of the key's data (a window's start, a session's first event; for a key with
/// no time, the oldest data of the rollups) to tell rows expired by the raw table's TTL.
/// A window is taken from `{since}` on when its start is, on both sides.
pub struct RollupCheck {
    pub rollup: &'static str,
    pub measure: &'static str,
    pub rollup_sql: &'static str,
    pub raw_sql: &'static str,
}

/// The checks of the rollups in clickhouse/schema.sql.
pub const ROLLUP_CHECKS: &[RollupCheck] = &[
    RollupCheck {
        rollup: "events_1m",
        measure: "sum(events) of dimension 'all' per window_start = count() per minute",
        rollup_sql: "SELECT toString(window_start) AS k, toInt128(sum(events)) AS v, min(window_start) AS t \
                     FROM {db}.events_1m WHERE dimension = 'all' AND window_start >= {since} GROUP BY k",
        raw_sql: "SELECT toString(toDateTime(toStartOfMinute(event_time))) AS k, toInt128(count()) AS v, \
                  min(toStartOfMinute(event_time)) AS t \
                  FROM {db}.{table} WHERE toStartOfMinute(event_time) >= {since} GROUP BY k",
    },
    RollupCheck {
        rollup: "events_1m",
        measure: "sum(events) per (window_start, event_type) = count() per minute and type",
        rollup_sql: "SELECT concat(toString(window_start), ' ', value) AS k, toInt128(sum(events)) AS v, \
                     min(window_start) AS t \
                     FROM {db}.events_1m WHERE dimension = 'event_type' AND window_start >= {since} GROUP BY k",
        raw_sql: "SELECT concat(toString(toDateTime(toStartOfMinute(event_time))), ' ', toString(event_type)) AS k, \
                  toInt128(count()) AS v, min(toStartOfMinute(event_time)) AS t FROM {db}.{table} \
                  WHERE toStartOfMinute(event_time) >= {since} GROUP BY k",
    },
    RollupCheck {
        rollup: "pages_5m",
        measure: "sum(views) per (window_start, page_url) = page views per 5 minutes and page",
        rollup_sql: "SELECT concat(toString(window_start), ' ', toString(page_url)) AS k, toInt128(sum(views)) AS v, \
                     min(window_start) AS t FROM {db}.pages_5m WHERE window_start >= {since} GROUP BY k",
        raw_sql: "SELECT concat(toString(toDateTime(toStartOfFiveMinutes(event_time))), ' ', toString(page_url)) AS k, \
                  toInt128(count()) AS v, min(toStartOfFiveMinutes(event_time)) AS t FROM {db}.{table} \
                  WHERE event_type = 'page_view' AND toStartOfFiveMinutes(event_time) >= {since} GROUP BY k",
    },
    RollupCheck {
        rollup: "sessions",
        measure: "sum(events) per session_id = count() per session",
        rollup_sql: "SELECT toString(session_id) AS k, toInt128(sum(events)) AS v, min(first_event) AS t \
                     FROM {db}.sessions \
                     WHERE session_id IN (SELECT session_id FROM {db}.{table} WHERE event_time >= {since}) \
                     GROUP BY k",
        raw_sql: "SELECT toString(session_id) AS k, toInt128(count()) AS v, min(event_time) AS t FROM {db}.{table} \
                  WHERE session_id IN (SELECT session_id FROM {db}.{table} WHERE event_time >= {since}) \
                  GROUP BY k",
    },
    RollupCheck {
        rollup: "funnel_5m",
        measure: "uniqExactMerge(sessions) per window_start = distinct sessions per 5 minutes",
        rollup_sql: "SELECT toString(window_start) AS k, toInt128(uniqExactMerge(sessions)) AS v, \
                     min(window_start) AS t FROM {db}.funnel_5m WHERE window_start >= {since} GROUP BY k",
        raw_sql: "SELECT toString(toDateTime(toStartOfFiveMinutes(event_time))) AS k, \
                  toInt128(uniqExact(session_id)) AS v, min(toStartOfFiveMinutes(event_time)) AS t \
                  FROM {db}.{table} WHERE toStartOfFiveMinutes(event_time) >= {since} GROUP BY k",
    },
    RollupCheck {
        rollup: "users_daily",
        measure: "sum(events) per (day, user_id) = count() per day and user",
        rollup_sql: "SELECT concat(toString(day), ' ', user_id) AS k, toInt128(sum(events)) AS v, min(day) AS t \
                     FROM {db}.users_daily WHERE day >= toDate({since}) GROUP BY k",
        raw_sql: "SELECT concat(toString(toDate(event_time)), ' ', user_id) AS k, toInt128(count()) AS v, \
                  min(toDate(event_time)) AS t \
                  FROM {db}.{table} WHERE toDate(event_time) >= toDate({since}) GROUP BY k",
    },
    RollupCheck {
        rollup: "kafka_progress",
        measure: "sum(rows) per (topic, partition) = count() per partition",
        rollup_sql: "SELECT concat(kafka_topic, ':', toString(kafka_partition)) AS k, toInt128(sum(rows)) AS v, \
                     {oldest} AS t FROM {db}.kafka_progress GROUP BY k",
        raw_sql: "SELECT concat(kafka_topic, ':', toString(kafka_partition)) AS k, toInt128(count()) AS v, \
                  {oldest} AS t FROM {db}.{table} GROUP BY k",
    },
    RollupCheck {
        rollup: "kafka_progress",
        measure: "max(max_offset) per (topic, partition) = max(kafka_offset) per partition",
        rollup_sql: "SELECT concat(kafka_topic, ':', toString(kafka_partition)) AS k, toInt128(max(max_offset)) AS v, \
                     {oldest} AS t FROM {db}.kafka_progress GROUP BY k",
        raw_sql: "SELECT concat(kafka_topic, ':', toString(kafka_partition)) AS k, toInt128(max(kafka_offset)) AS v, \
                  {oldest} AS t FROM {db}.{table} GROUP BY k",
    },
];

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Comparison {
    differing: u64,
    expired: u64,
    rollup_total: i128,
    raw_total: i128,
    samples: Vec<String>,
}

/// Compares every rollup with the raw table (`since`: only windows from then on).
pub async fn check_rollups(
    client: &clickhouse::Client,
    database: &str,
    table: &str,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<RollupReport>, SinkError> {
    let since = format!(
        "toDateTime64('{}', 3, 'UTC')",
        since
            .unwrap_or(DateTime::UNIX_EPOCH)
            .format("%Y-%m-%d %H:%M:%S%.3f")
    );
    // Rows older than this may have been deleted by the raw table's TTL (the rollups keep
    // theirs longer): a key of that age where the raw table holds less is expired, not a
    // difference.
    let horizon = format!(
        "fromUnixTimestamp64Milli(toInt64({}), 'UTC')",
        ttl_horizon_ms(client, database, table).await?.unwrap_or(0)
    );
    let fill = |sql: &str| {
        sql.replace(
            "{oldest}",
            "(SELECT toDateTime64(ifNull(minOrNull(window_start), now()), 3, 'UTC') FROM {db}.events_1m)",
        )
        .replace("{db}", &format!("`{database}`"))
        .replace("{table}", &format!("`{table}`"))
        .replace("{since}", &since)
    };
    let mut out = Vec::new();
    for check in ROLLUP_CHECKS {
        let sql = format!(
            "SELECT countIf(r != w AND NOT aged_out) AS differing, countIf(r != w AND aged_out) AS expired, \
             sum(r) AS rollup_total, sum(w) AS raw_total, \
             arraySlice(groupArrayIf(concat(k, ': rollup ', toString(r), ', raw ', toString(w)), r != w AND NOT aged_out), 1, 5) AS samples \
             FROM (SELECT k, sumIf(v, side = 0) AS r, sumIf(v, side = 1) AS w, min(t) < {horizon} AND w < r AS aged_out FROM ( \
               SELECT k, v, toDateTime64(t, 3, 'UTC') AS t, 0 AS side FROM ({}) \
               UNION ALL SELECT k, v, toDateTime64(t, 3, 'UTC') AS t, 1 AS side FROM ({}) \
             ) GROUP BY k)",
            fill(check.rollup_sql),
            fill(check.raw_sql)
        );
        let c: Comparison = ch("compare a rollup with the raw table", async {
            client.query(&sql).fetch_one::<Comparison>().await
        })
        .await?;
        out.push(RollupReport {
            rollup: check.rollup.to_owned(),
            measure: check.measure.to_owned(),
            rollup_total: c.rollup_total,
            raw_total: c.raw_total,
            differing_keys: c.differing,
            samples: c.samples,
            expired_keys: c.expired,
        });
    }
    Ok(out)
}

/// The time (ms) before which the raw table's TTL may have deleted rows, as the server's
/// clock says; none without a TTL.
pub async fn ttl_horizon_ms(
    client: &clickhouse::Client,
    database: &str,
    table: &str,
) -> Result<Option<i64>, SinkError> {
    let engine: Vec<String> = ch("read the raw table's TTL", async {
        client
            .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
            .bind(database)
            .bind(table)
            .fetch_all::<String>()
            .await
    })
    .await?;
    let Some(interval) = engine.first().and_then(|e| ttl_interval(e)) else {
        return Ok(None);
    };
    let sql = format!("SELECT toUnixTimestamp64Milli(now64(3, 'UTC') - {interval})");
    let horizon = ch("compute the raw table's TTL horizon", async {
        client.query(&sql).fetch_one::<i64>().await
    })
    .await?;
    Ok(Some(horizon))
}

/// The interval of a table's TTL (`toIntervalDay(90)`) in its `engine_full`, when the TTL is
/// one plain DELETE on `event_time` (`TTL toDateTime(event_time) + toIntervalDay(90)`, as in
/// clickhouse/schema.sql); none otherwise (no TTL, several, a move, a `WHERE`: their horizon
/// is not this one, and excusing younger keys would hide differences).
fn ttl_interval(engine_full: &str) -> Option<&str> {
    let (_, ttl) = engine_full.split_once(" TTL ")?;
    let ttl = ttl
        .split_once(" SETTINGS ")
        .map_or(ttl, |(ttl, _)| ttl)
        .trim();
    let ttl = ttl.strip_suffix(" DELETE").unwrap_or(ttl);
    let interval = ["toDateTime(event_time) + ", "event_time + "]
        .iter()
        .find_map(|column| ttl.strip_prefix(column))?;
    let (unit, amount) = interval.strip_prefix("toInterval")?.split_once('(')?;
    let amount = amount.strip_suffix(')')?;
    (!unit.is_empty()
        && unit.chars().all(|c| c.is_ascii_alphabetic())
        && !amount.is_empty()
        && amount.chars().all(|c| c.is_ascii_digit()))
    .then_some(interval)
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Island {
    first: i64,
    last: i64,
}

/// Whether `offset` lies in one of `islands` (ordered, disjoint): a binary search.
fn in_islands(islands: &[Island], offset: i64) -> bool {
    let at = islands.partition_point(|i| i.last < offset);
    islands.get(at).is_some_and(|i| i.first <= offset)
}

/// The offsets of `offsets` stored in `table` for the partition, as runs of consecutive ones.
async fn stored_islands(
    client: &clickhouse::Client,
    table: &str,
    topic: &str,
    partition: i32,
    offsets: std::ops::Range<i64>,
) -> Result<Vec<Island>, SinkError> {
    ch("read the stored offsets", async {
        client
            .query(&format!(
                "SELECT min(kafka_offset) AS first, max(kafka_offset) AS last FROM ( \
                   SELECT kafka_offset, kafka_offset - toInt64(row_number() OVER (ORDER BY kafka_offset)) AS island \
                   FROM (SELECT DISTINCT kafka_offset FROM {table} \
                         WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset >= ? AND kafka_offset < ?)) \
                 GROUP BY island ORDER BY first"
            ))
            .bind(topic)
            .bind(partition)
            .bind(offsets.start)
            .bind(offsets.end)
            .fetch_all::<Island>()
            .await
    })
    .await
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Twice {
    kafka_offset: i64,
    rows: u64,
}

/// Runs the whole check.
pub async fn verify(
    settings: &Settings,
    since: Option<DateTime<Utc>>,
) -> Result<Report, SinkError> {
    let client = crate::clickhouse_client::client(settings)?;
    let kafka = OpsKafka::new(settings)?;
    let topic = settings.topic.clone();
    let partitions = kafka.partitions(&topic)?;
    let committed = kafka.committed(&topic, &partitions)?;

    // The dead letters of this topic, once each.
    let letters = dlq::read_letters(&kafka, &settings.dlq_topic)?;
    let mut lettered: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
    let mut dead_letter_repeats = 0;
    for Letter { source, .. } in &letters {
        let Some(source) = source else { continue };
        if source.topic != topic {
            continue;
        }
        if !lettered
            .entry(source.partition)
            .or_default()
            .insert(source.offset)
        {
            dead_letter_repeats += 1;
        }
    }

    let replayed = dlq::replayed_offsets(settings).await?;
    let horizon_ms = ttl_horizon_ms(&client, &settings.database, &settings.table).await?;
    // To read an event's time, whatever its age (the sink's own limits would reject it).
    let limits = clickstream_event::Limits {
        max_event_age: chrono::Duration::days(1_000_000),
        max_clock_skew: chrono::Duration::days(1_000_000),
        ..settings.limits()
    };
    let table = format!("`{}`.`{}`", settings.database, settings.table);
    let mut reports = Vec::new();
    let mut problems = Vec::new();
    for &p in &partitions {
        let (earliest, reported_latest) = kafka.range(&topic, p)?;
        let latest = kafka.end_by_reading(&topic, p, reported_latest.max(earliest))?;
        let committed = committed.get(&p).copied().flatten();
        let checked_from = match since {
            Some(t) => kafka
                .offset_for_time(&topic, p, t.timestamp_millis())?
                .max(earliest),
            None => earliest,
        };
        let islands = stored_islands(&client, &table, &topic, p, checked_from..i64::MAX).await?;
        let stored_before_earliest: u64 = if since.is_none() {
            ch("count the stored offsets before Kafka's earliest", async {
                client
                    .query(&format!(
                        "SELECT uniqExact(kafka_offset) FROM {table} \
                         WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset < ?"
                    ))
                    .bind(&topic)
                    .bind(p)
                    .bind(earliest)
                    .fetch_one::<u64>()
                    .await
            })
            .await?
        } else {
            0
        };
        let twice: Vec<Twice> = ch("find offsets stored twice", async {
            client
                .query(&format!(
                    "SELECT kafka_offset, count() AS rows FROM {table} \
                     WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset >= ? \
                     GROUP BY kafka_offset HAVING rows > 1 ORDER BY kafka_offset"
                ))
                .bind(&topic)
                .bind(p)
                .bind(checked_from)
                .fetch_all::<Twice>()
                .await
        })
        .await?;

        let stored_ranges: Vec<(i64, i64)> = islands.iter().map(|i| (i.first, i.last)).collect();
        let is_stored = |o: i64| in_islands(&islands, o);
        let stored: u64 = stored_ranges.iter().map(|(a, b)| (b - a + 1) as u64).sum();
        let upto = committed.unwrap_or(checked_from).max(checked_from);
        let stored_uncommitted: u64 = stored_ranges
            .iter()
            .map(|&(a, b)| {
                let a = a.max(upto);
                if b >= a { (b - a + 1) as u64 } else { 0 }
            })
            .sum();
        let empty = BTreeSet::new();
        let letters_here: Vec<i64> = lettered
            .get(&p)
            .unwrap_or(&empty)
            .range(checked_from..)
            .copied()
            .collect();
        // Stored and lettered: a problem, unless `dlq replay` inserted it.
        let replayed_here = letters_here
            .iter()
            .filter(|&&o| replayed.contains(&(p, o)) && is_stored(o))
            .count() as u64;
        let both: Vec<i64> = letters_here
            .iter()
            .copied()
            .filter(|&o| is_stored(o) && !replayed.contains(&(p, o)))
            .collect();

        // Gaps of [checked_from, upto) not covered by stored ranges or letters.
        let letter_set: BTreeSet<i64> = letters_here.iter().copied().collect();
        let mut gaps: Vec<(i64, i64)> = Vec::new();
        let mut at = checked_from;
        for &(a, b) in stored_ranges.iter().chain(std::iter::once(&(upto, upto))) {
            let gap_end = a.min(upto);
            if gap_end > at {
                let offsets = (at..gap_end).filter(|o| !letter_set.contains(o));
                gaps.extend(ranges(offsets));
            }
            at = at.max(b + 1);
            if at >= upto {
                break;
            }
        }
        // Confirm with Kafka: an offset with no message there is not missing, nor one whose
        // event the raw table's TTL deleted.
        let mut missing: Vec<(i64, i64)> = Vec::new();
        let mut expired = 0u64;
        let mut unconfirmed = 0u64;
        let mut budget = CONFIRM_LIMIT;
        for (a, b) in gaps {
            let length = b - a + 1;
            if length > budget {
                unconfirmed += length as u64;
                missing.push((a, b));
                continue;
            }
            budget -= length;
            let mut present = Vec::new();
            kafka.read(&topic, &[(p, a)], |m| {
                if m.offset() > b {
                    return false;
                }
                if m.offset() >= a {
                    let at = m
                        .timestamp()
                        .to_millis()
                        .and_then(DateTime::from_timestamp_millis)
                        .unwrap_or_else(Utc::now);
                    let event_ms = clickstream_event::decode_ref(m.payload(), &limits, at)
                        .ok()
                        .map(|e| e.timestamp.timestamp_millis());
                    match (event_ms, horizon_ms) {
                        (Some(t), Some(h)) if t < h => expired += 1,
                        _ => present.push(m.offset()),
                    }
                }
                m.offset() < b
            })?;
            missing.extend(ranges(present));
        }
        let missing_count: u64 = missing.iter().map(|(a, b)| (b - a + 1) as u64).sum();
        let in_flight = ((latest - upto).max(0) as u64).saturating_sub(stored_uncommitted);

        let name = format!("{topic}[{p}]");
        // Retention overtook the group: offsets deleted before the sinks stored them.
        if let Some(c) = committed.filter(|&c| c < earliest && since.is_none()) {
            let there = stored_islands(&client, &table, &topic, p, c..earliest).await?;
            let stored_there: u64 = there.iter().map(|i| (i.last - i.first + 1) as u64).sum();
            // Letters of offsets not stored (a letter put back by `dlq replay` is stored too).
            let lettered_there = lettered.get(&p).map_or(0, |l| {
                l.range(c..earliest)
                    .filter(|&&o| !in_islands(&there, o))
                    .count()
            }) as u64;
            let lost = ((earliest - c) as u64).saturating_sub(stored_there + lettered_there);
            if lost > 0 {
                problems.push(format!(
                    "{name}: the group's committed offset {c} is below Kafka's earliest {earliest}: \
                     retention deleted offsets {c}..{} before the sinks stored them, and {lost} of \
                     them are neither in {table} nor in the dead-letter topic (lost, unless they \
                     held no message, such as transaction markers, or events past the raw table's \
                     TTL); keep the topic's retention.ms above the longest time the sinks may be \
                     stopped or stalled",
                    earliest - 1
                ));
            }
        }
        if missing_count > 0 {
            problems.push(format!(
                "{name}: {missing_count} offsets below the committed offset {upto} are neither in {table} nor in the dead-letter topic: {}{}",
                show_ranges(&missing, 10),
                if unconfirmed > 0 {
                    format!(" ({unconfirmed} of them not read back from Kafka to confirm)")
                } else {
                    String::new()
                }
            ));
        }
        if !twice.is_empty() {
            let extra: u64 = twice.iter().map(|t| t.rows - 1).sum();
            problems.push(format!(
                "{name}: {} offsets are stored more than once ({extra} extra rows), first: {}",
                twice.len(),
                twice
                    .iter()
                    .take(10)
                    .map(|t| format!("{} ×{}", t.kafka_offset, t.rows))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !both.is_empty() {
            problems.push(format!(
                "{name}: {} offsets are both stored and dead-lettered: {}",
                both.len(),
                show_ranges(&ranges(both.iter().copied()), 10)
            ));
        }
        reports.push(PartitionReport {
            partition: p,
            earliest,
            latest,
            committed,
            checked_from,
            stored,
            stored_uncommitted,
            stored_before_earliest,
            dead_lettered: letters_here.len() as u64,
            replayed_from_dead_letters: replayed_here,
            missing,
            missing_count,
            expired,
            missing_unconfirmed: unconfirmed,
            stored_twice_count: twice.len() as u64,
            stored_twice: twice
                .iter()
                .take(100)
                .map(|t| (t.kafka_offset, t.rows))
                .collect(),
            stored_and_dead_lettered_count: both.len() as u64,
            stored_and_dead_lettered: ranges(both),
            in_flight,
        });
    }

    // A group that committed nothing checks nothing: a wrong `--group`, or offsets that expired
    // while the sinks were stopped (offsets.retention.minutes).
    if reports.iter().all(|r| r.committed.is_none())
        && reports.iter().any(|r| r.latest > r.earliest)
    {
        problems.push(format!(
            "group {} has committed no offset of topic {}, which holds messages: no offset was \
             checked (all are counted in flight). Is --group right? A sink commits after its first \
             write; offsets also expire when a group is stopped longer than the brokers' \
             offsets.retention.minutes",
            settings.group, settings.topic
        ));
    }

    // While sinks write (offsets in flight), an insert can land between the reads of a rollup
    // and of the raw table, and a sink repairing a refused insert rebuilds the rollup keys it
    // touched only once that flush's rows are in: a difference is read again (5 times at
    // most, 3 s apart) before it is reported.
    let live = reports
        .iter()
        .any(|p| p.in_flight > 0 || p.stored_uncommitted > 0);
    let mut rollups = check_rollups(&client, &settings.database, &settings.table, since).await?;
    let mut reads = 1;
    while live && reads < ROLLUP_READS && rollups.iter().any(|r| !r.equal()) {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        rollups = check_rollups(&client, &settings.database, &settings.table, since).await?;
        reads += 1;
    }
    for r in rollups.iter().filter(|r| !r.equal()) {
        problems.push(format!(
            "rollup {}: {} keys differ from the raw table ({}; rollup total {}, raw {}), e.g. {}",
            r.rollup,
            r.differing_keys,
            r.measure,
            r.rollup_total,
            r.raw_total,
            r.samples.join("; ")
        ));
    }
    if rollups.iter().any(|r| !r.equal())
        && let Some(owed) = owed_rebuilds(&client, &settings.topic).await
    {
        problems.push(owed);
    }
    Ok(Report {
        topic,
        dead_letter_topic: settings.dlq_topic.clone(),
        table,
        group: settings.group.clone(),
        since,
        partitions: reports,
        dead_letter_repeats,
        rollups,
        problems,
    })
}

/// The rollup rebuilds a sink owes for `topic` (recorded after a refused insert, not done
/// yet: a sink stopped before it), said as what to do; none (or no table): `None`. A table
/// that cannot be read (no grant) is said too.
async fn owed_rebuilds(client: &clickhouse::Client, topic: &str) -> Option<String> {
    let owed: Result<Vec<(i32, u64)>, _> = client
        .query(&format!(
            "SELECT kafka_partition, count() FROM {} WHERE kafka_topic = ? \
             GROUP BY kafka_partition ORDER BY kafka_partition",
            crate::writer::PENDING_REBUILDS_TABLE
        ))
        .bind(topic)
        .fetch_all()
        .await;
    let owed = match owed {
        Ok(owed) => owed,
        // A schema from before the table: nothing can be recorded there.
        Err(e) if crate::writer::error_code(&e.to_string()) == Some(60) => return None,
        Err(e) => {
            return Some(format!(
                "could not read {} (the rollup rebuilds a stopped sink owes): {e}; the rollup \
                 checks above may differ because of them",
                crate::writer::PENDING_REBUILDS_TABLE
            ));
        }
    };
    if owed.is_empty() {
        return None;
    }
    let keys: u64 = owed.iter().map(|(_, n)| n).sum();
    let partitions: Vec<String> = owed.iter().map(|(p, _)| p.to_string()).collect();
    Some(format!(
        "{keys} rollup keys (or ranges of rows read again) of partition(s) {} are owed a rebuild \
         ({}: a sink stopped between a refused insert, or an insert of rows read again, and its \
         rebuild): the next sink that owns those partitions rebuilds them at its first write; \
         start the sink, let it write, and verify again",
        partitions.join(", "),
        crate::writer::PENDING_REBUILDS_TABLE
    ))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "verify: topic {} (group {}) against {} and dead-letter topic {}{}",
            self.topic,
            self.group,
            self.table,
            self.dead_letter_topic,
            self.since
                .map(|s| format!(", since {}", s.to_rfc3339()))
                .unwrap_or_default()
        )?;
        writeln!(
            f,
            "  {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>8} {:>7} {:>6} {:>9}",
            "partition",
            "from",
            "committed",
            "end",
            "stored",
            "lettered",
            "missing",
            "twice",
            "both",
            "in flight"
        )?;
        for p in &self.partitions {
            writeln!(
                f,
                "  {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>8} {:>7} {:>6} {:>9}",
                p.partition,
                p.checked_from,
                p.committed
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
                p.latest,
                p.stored,
                p.dead_lettered,
                p.missing_count,
                p.stored_twice_count,
                p.stored_and_dead_lettered_count,
                p.in_flight,
            )?;
        }
        let replayed: u64 = self
            .partitions
            .iter()
            .map(|p| p.replayed_from_dead_letters)
            .sum();
        if replayed > 0 {
            writeln!(
                f,
                "  {replayed} dead-lettered offsets were inserted since by `dlq replay` (stored)"
            )?;
        }
        let before: u64 = self
            .partitions
            .iter()
            .map(|p| p.stored_before_earliest)
            .sum();
        if before > 0 {
            writeln!(
                f,
                "  {before} stored offsets are older than what Kafka still holds (retention): not checked"
            )?;
        }
        let expired: u64 = self.partitions.iter().map(|p| p.expired).sum();
        if expired > 0 {
            writeln!(
                f,
                "  {expired} offsets are not stored because their events are older than the raw \
                 table's TTL, which deleted them (not missing; the rollups keep counting them)"
            )?;
        }
        if self.dead_letter_repeats > 0 {
            writeln!(
                f,
                "  {} dead letters were written more than once (counted once)",
                self.dead_letter_repeats
            )?;
        }
        writeln!(f, "  rollups:")?;
        for r in &self.rollups {
            writeln!(
                f,
                "    {:<15} {} ({}: rollup {}, raw {}){}",
                r.rollup,
                if r.equal() { "equal" } else { "DIFFERS" },
                r.measure,
                r.rollup_total,
                r.raw_total,
                if r.expired_keys > 0 {
                    format!(
                        "; {} keys older than the raw table's TTL, whose raw rows expired, not compared",
                        r.expired_keys
                    )
                } else {
                    String::new()
                }
            )?;
        }
        if self.ok() {
            writeln!(
                f,
                "OK: every offset is stored once or dead-lettered, every rollup equals the raw table"
            )
        } else {
            writeln!(f, "PROBLEMS ({}):", self.problems.len())?;
            for problem in &self.problems {
                writeln!(f, "  - {problem}")?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_is_in_the_islands_exactly_when_one_holds_it() {
        let islands = [
            Island { first: 0, last: 9 },
            Island {
                first: 20,
                last: 20,
            },
            Island {
                first: 30,
                last: 39,
            },
        ];
        let held: Vec<i64> = (-1..45).filter(|&o| in_islands(&islands, o)).collect();
        let expected: Vec<i64> = (0..=9).chain([20]).chain(30..=39).collect();
        assert_eq!(held, expected);
        assert!(!in_islands(&[], 0));
    }

    #[test]
    fn the_ttl_interval_is_read_from_the_engine() {
        let engine = "MergeTree PARTITION BY toDate(event_time) ORDER BY (event_type, event_time) \
                      TTL toDateTime(event_time) + toIntervalDay(90) SETTINGS index_granularity = 8192";
        assert_eq!(ttl_interval(engine), Some("toIntervalDay(90)"));
        assert_eq!(ttl_interval("MergeTree ORDER BY x SETTINGS a = 1"), None);
        assert_eq!(
            ttl_interval("MergeTree ORDER BY x TTL event_time + toIntervalMonth(1) SETTINGS a = 1"),
            Some("toIntervalMonth(1)")
        );
        assert_eq!(
            ttl_interval("MergeTree TTL event_time + toIntervalDay(1) DELETE"),
            Some("toIntervalDay(1)")
        );
        // Anything else is not a horizon of the raw rows: none.
        for other in [
            "MergeTree TTL t + toIntervalDay(x)",
            "MergeTree TTL other_time + toIntervalDay(1)",
            "MergeTree TTL event_time + toIntervalDay(30) TO VOLUME 'cold', event_time + toIntervalDay(90)",
            "MergeTree TTL event_time + toIntervalDay(30) DELETE WHERE event_type = 'click'",
            "MergeTree TTL event_time + toIntervalDay(30) RECOMPRESS CODEC(ZSTD(17))",
        ] {
            assert_eq!(ttl_interval(other), None, "{other}");
        }
    }
}
