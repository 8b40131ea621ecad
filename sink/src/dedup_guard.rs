//! The deduplication-window guard: warns before exactly-once could silently degrade.
//!
//! A replayed INSERT (a retry after a timeout, or the re-read after a crash of rows written but
//! not yet committed to Kafka) is dropped by ClickHouse only while its
//! `insert_deduplication_token` is among the last N blocks the table kept: N is the table's
//! `non_replicated_deduplication_window` (MergeTree) or `replicated_deduplication_window`
//! (ReplicatedMergeTree), and each materialized view's target table has its own. Once more
//! inserts than that went into a table after the oldest insert a replay could re-send, the
//! token is forgotten and the replay would be stored twice.
//!
//! So the guard compares:
//! - the **reach**: this sink's INSERTs since the first insert of the oldest segment that is
//!   not committed yet (in flight, or written and waiting for its commit), across partitions;
//! - the **window**: the smallest window of the events table and of the tables its
//!   materialized views write to, read from ClickHouse at start.
//!
//! and sets `clickstream_sink_dedup_window_at_risk` (with a warning in the log) when the reach
//! passes half the window: the other half is headroom for the inserts of other sinks into the
//! same tables, which this process cannot count. A window of 0 disables deduplication: that is
//! logged at start and the guard is at risk as soon as anything is uncommitted.
//!
//! (The sink's stored-offsets lookup still skips what ClickHouse holds on a re-read after a
//! crash; the window is what protects an insert that is retried without an answer.)

use std::collections::HashMap;

use crate::metrics::Metrics;

/// One table the sink's inserts reach, with its deduplication window (in blocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableWindow {
    pub table: String,
    pub window: u64,
}

/// A table as `system.tables` reports it.
#[derive(Debug, Clone, clickhouse::Row, serde::Deserialize)]
struct TableRow {
    name: String,
    engine: String,
    engine_full: String,
    create_table_query: String,
}

/// The server's defaults for the two settings, from `system.merge_tree_settings`.
#[derive(Debug, Clone, clickhouse::Row, serde::Deserialize)]
struct SettingRow {
    name: String,
    value: String,
}

const NON_REPLICATED: &str = "non_replicated_deduplication_window";
const REPLICATED: &str = "replicated_deduplication_window";

/// Reads the windows of `database.table` and of the tables its materialized views write to.
pub async fn read_windows(
    client: &clickhouse::Client,
    database: &str,
    table: &str,
) -> Result<Vec<TableWindow>, clickhouse::error::Error> {
    let tables: Vec<TableRow> = client
        .query(
            "SELECT name, engine, engine_full, create_table_query FROM system.tables \
             WHERE database = ?",
        )
        .bind(database)
        .fetch_all()
        .await?;
    let defaults: Vec<SettingRow> = client
        .query("SELECT name, value FROM system.merge_tree_settings WHERE name IN (?, ?)")
        .bind(NON_REPLICATED)
        .bind(REPLICATED)
        .fetch_all()
        .await?;
    let default = |name: &str| {
        defaults
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.value.parse().ok())
            .unwrap_or(0)
    };
    Ok(windows(
        database,
        table,
        &tables,
        default(NON_REPLICATED),
        default(REPLICATED),
    ))
}

/// The tables a row of `database.table` is written to (itself and its views' targets), each
/// with its window: the table's own setting, else the server default for its engine.
fn windows(
    database: &str,
    table: &str,
    tables: &[TableRow],
    non_replicated_default: u64,
    replicated_default: u64,
) -> Vec<TableWindow> {
    let mut reached = vec![table.to_owned()];
    let views: Vec<&TableRow> = tables
        .iter()
        .filter(|t| t.engine == "MaterializedView")
        .collect();
    for view in &views {
        let query = view.create_table_query.replace('`', "");
        // `FROM db.events`, not `FROM db.events_1m`.
        if crate::rollups::mentions(&query, database, table).is_empty() {
            continue;
        }
        if let Some(target) = query
            .split_once(&format!(" TO {database}."))
            .and_then(|(_, rest)| rest.split_whitespace().next())
        {
            reached.push(target.trim_end_matches(['(', ';']).to_owned());
        }
    }
    if views.is_empty() {
        // A user without grants on the views does not see them in system.tables (the sink's
        // user of clickhouse/users.sql): it sees the tables it may write, which are the views'
        // targets. Take them all.
        reached.extend(
            tables
                .iter()
                .filter(|t| t.name != table)
                .map(|t| t.name.clone()),
        );
    }
    reached
        .iter()
        .filter_map(|name| tables.iter().find(|t| &t.name == name))
        .filter(|t| t.engine.contains("MergeTree"))
        .map(|t| {
            let replicated = t.engine.starts_with("Replicated");
            let (setting, default) = if replicated {
                (REPLICATED, replicated_default)
            } else {
                (NON_REPLICATED, non_replicated_default)
            };
            TableWindow {
                table: format!("{database}.{}", t.name),
                window: setting_in(&t.engine_full, setting).unwrap_or(default),
            }
        })
        .collect()
}

/// `name = N` in an engine's SETTINGS clause.
fn setting_in(engine_full: &str, name: &str) -> Option<u64> {
    let settings = engine_full.split_once("SETTINGS ")?.1;
    settings.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().parse().ok())?
    })
}

/// What the guard found at one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// Inserts a replay could reach back over.
    pub reach: u64,
    /// The smallest window of the tables written (`None`: not known).
    pub window: Option<u64>,
    pub at_risk: bool,
}

/// Per-partition marks of the oldest uncommitted segment, against the sink's insert count.
#[derive(Debug, Default)]
pub struct DedupGuard {
    window: Option<TableWindow>,
    /// Partition → the insert count when its oldest uncommitted segment started.
    marks: HashMap<i32, u64>,
    at_risk: bool,
}

impl DedupGuard {
    /// A guard over these tables (the smallest window counts). Logs a window of 0.
    pub fn new(tables: &[TableWindow]) -> DedupGuard {
        for table in tables.iter().filter(|t| t.window == 0) {
            tracing::warn!(
                table = %table.table,
                "deduplication window is 0: a retried INSERT can be stored twice. Set \
                 non_replicated_deduplication_window (or replicated_deduplication_window) on \
                 the table as clickhouse/schema.sql does"
            );
        }
        DedupGuard {
            window: tables.iter().min_by_key(|t| t.window).cloned(),
            ..DedupGuard::default()
        }
    }

    /// A segment of `partition` starts writing; `inserts` is the sink's insert count now.
    pub fn started(&mut self, partition: i32, inserts: u64) {
        self.marks.entry(partition).or_insert(inserts);
    }

    /// A segment of `partition` finished: committed (nothing of it can be replayed any more)
    /// or not (a failed commit: the range stays replayable until a later commit covers it).
    pub fn finished(&mut self, partition: i32, committed: bool) {
        if committed {
            self.marks.remove(&partition);
        }
    }

    /// A partition was revoked: its replay is the next owner's.
    pub fn forget(&mut self, partition: i32) {
        self.marks.remove(&partition);
    }

    /// Keeps the marks of the partitions still `owned`.
    pub fn retain(&mut self, owned: &[i32]) {
        self.marks.retain(|p, _| owned.contains(p));
    }

    /// Compares the reach with the window; sets the metrics, logs when the risk starts and
    /// ends.
    pub fn check(&mut self, inserts: u64, metrics: &Metrics) -> Check {
        let reach = self
            .marks
            .values()
            .min()
            .map_or(0, |&oldest| inserts.saturating_sub(oldest));
        let window = self.window.as_ref().map(|t| t.window);
        let at_risk = window.is_some_and(|w| reach > 0 && reach * 2 > w);
        metrics.dedup_window_reach.set(reach as i64);
        metrics
            .dedup_window
            .set(window.map_or(-1, |w| w.min(i64::MAX as u64) as i64));
        metrics.dedup_window_at_risk.set(i64::from(at_risk));
        if at_risk != self.at_risk {
            let table = self.window.as_ref().map_or("", |t| t.table.as_str());
            if at_risk {
                tracing::warn!(
                    reach,
                    window = window.unwrap_or_default(),
                    table,
                    "exactly-once at risk: a replay could reach back over more than half of \
                     the deduplication window (inserts are not being committed). Find why \
                     commits lag, or raise the table's deduplication window"
                );
            } else {
                tracing::info!(reach, table, "deduplication window has room again");
            }
            self.at_risk = at_risk;
        }
        Check {
            reach,
            window,
            at_risk,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, engine: &str, engine_full: &str, query: &str) -> TableRow {
        TableRow {
            name: name.into(),
            engine: engine.into(),
            engine_full: engine_full.into(),
            create_table_query: query.into(),
        }
    }

    #[test]
    fn windows_of_the_table_and_its_views_targets() {
        let tables = [
            table(
                "events",
                "MergeTree",
                "MergeTree PARTITION BY toDate(event_time) ORDER BY (event_type, event_time) \
                 SETTINGS non_replicated_deduplication_window = 1000, index_granularity = 8192",
                "",
            ),
            table(
                "events_1m",
                "AggregatingMergeTree",
                "AggregatingMergeTree ORDER BY x SETTINGS non_replicated_deduplication_window = 50",
                "",
            ),
            table(
                "kafka_progress",
                "AggregatingMergeTree",
                "AggregatingMergeTree ORDER BY x",
                "",
            ),
            table("unrelated", "MergeTree", "MergeTree ORDER BY x", ""),
            table(
                "events_1m_mv",
                "MaterializedView",
                "",
                "CREATE MATERIALIZED VIEW db.events_1m_mv TO db.events_1m (`a` UInt8) AS SELECT 1 FROM db.events",
            ),
            table(
                "kafka_progress_mv",
                "MaterializedView",
                "",
                "CREATE MATERIALIZED VIEW db.kafka_progress_mv TO db.kafka_progress AS SELECT 1 FROM `db`.`events`",
            ),
            table(
                "other_mv",
                "MaterializedView",
                "",
                "CREATE MATERIALIZED VIEW db.other_mv TO db.unrelated AS SELECT 1 FROM db.elsewhere",
            ),
            table(
                "hourly_mv",
                "MaterializedView",
                "",
                "CREATE MATERIALIZED VIEW db.hourly_mv TO db.unrelated AS SELECT 1 FROM db.events_1m",
            ),
        ];
        let found = windows("db", "events", &tables, 0, 100);
        let pairs: Vec<(&str, u64)> = found.iter().map(|t| (t.table.as_str(), t.window)).collect();
        assert_eq!(
            pairs,
            vec![
                ("db.events", 1000),
                ("db.events_1m", 50),
                ("db.kafka_progress", 0)
            ]
        );
        let replicated = [table(
            "events",
            "ReplicatedMergeTree",
            "ReplicatedMergeTree('/p', '{replica}') ORDER BY x",
            "",
        )];
        assert_eq!(windows("db", "events", &replicated, 0, 100)[0].window, 100);
        // Views not visible (no grant on them): every visible MergeTree table counts.
        let visible: Vec<TableRow> = tables
            .iter()
            .filter(|t| t.engine != "MaterializedView")
            .cloned()
            .collect();
        let found = windows("db", "events", &visible, 7, 100);
        let names: Vec<&str> = found.iter().map(|t| t.table.as_str()).collect();
        assert_eq!(
            names,
            [
                "db.events",
                "db.events_1m",
                "db.kafka_progress",
                "db.unrelated"
            ]
        );
        assert_eq!(found[3].window, 7, "the server default");
    }

    #[test]
    fn the_guard_warns_when_uncommitted_inserts_pass_half_the_window() {
        let metrics = Metrics::new();
        let mut guard = DedupGuard::new(&[
            TableWindow {
                table: "db.events".into(),
                window: 1000,
            },
            TableWindow {
                table: "db.events_1m".into(),
                window: 10,
            },
        ]);
        assert_eq!(guard.check(7, &metrics).reach, 0, "nothing uncommitted");
        guard.started(0, 7);
        guard.started(1, 8);
        let check = guard.check(12, &metrics);
        assert_eq!(
            (check.reach, check.window, check.at_risk),
            (5, Some(10), false)
        );
        // Partition 0's commit fails: its range stays replayable, its mark stays.
        guard.finished(0, false);
        guard.started(0, 13);
        let check = guard.check(13, &metrics);
        assert_eq!((check.reach, check.at_risk), (6, true));
        assert!(
            metrics
                .render()
                .contains("clickstream_sink_dedup_window_at_risk 1")
        );
        guard.finished(0, true);
        let check = guard.check(13, &metrics);
        assert_eq!(
            (check.reach, check.at_risk),
            (5, false),
            "partition 1 is left"
        );
        guard.forget(1);
        assert_eq!(guard.check(40, &metrics).reach, 0);
        assert!(
            metrics
                .render()
                .contains("clickstream_sink_dedup_window 10")
        );
    }

    #[test]
    fn an_unknown_window_never_warns() {
        let metrics = Metrics::new();
        let mut guard = DedupGuard::new(&[]);
        guard.started(0, 0);
        let check = guard.check(1_000_000, &metrics);
        assert_eq!((check.window, check.at_risk), (None, false));
        assert!(
            metrics
                .render()
                .contains("clickstream_sink_dedup_window -1")
        );
    }
}
