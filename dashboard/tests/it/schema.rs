//! clickhouse/schema.sql applies (twice), users.sql and cluster.sql parse, and cluster.sql stays
//! in step with schema.sql.

use clickstream_testkit::{apply_schema, clickhouse, repo_root, sql_statements, unique_name};

const OBJECTS: [&str; 14] = [
    "events",
    "events_1m",
    "events_1m_mv",
    "pages_5m",
    "pages_5m_mv",
    "sessions",
    "sessions_mv",
    "funnel_5m",
    "funnel_5m_mv",
    "events_10m_hop",
    "kafka_progress",
    "kafka_progress_mv",
    "users_daily",
    "users_daily_mv",
];

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn schema_applies_twice_and_creates_every_object() {
    let database = unique_name("it_dash_schema");
    apply_schema(&clickhouse(), &database).await;
    let client = apply_schema(&clickhouse(), &database).await;
    let names: Vec<String> = client
        .query("SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name")
        .fetch_all()
        .await
        .unwrap();
    for object in OBJECTS {
        assert!(
            names.iter().any(|n| n == object),
            "{object} missing: {names:?}"
        );
    }
    // Every rollup target deduplicates replayed inserts on its own (see the replay test).
    let windows: Vec<(String, String)> = client
        .query(
            "SELECT name, engine_full FROM system.tables
             WHERE database = currentDatabase() AND engine LIKE '%MergeTree'
               AND name IN ('events', 'events_1m', 'pages_5m', 'sessions', 'funnel_5m',
                            'users_daily')",
        )
        .fetch_all()
        .await
        .unwrap();
    for (name, engine) in windows {
        assert!(
            engine.contains("non_replicated_deduplication_window = 1000"),
            "{name} has no deduplication window: {engine}"
        );
    }
}

async fn assert_parses(path: &str) -> Vec<String> {
    let statements = sql_statements(&read(path));
    assert!(!statements.is_empty(), "{path} is empty");
    for statement in &statements {
        clickhouse()
            .query(&format!("EXPLAIN AST {statement}"))
            .execute()
            .await
            .unwrap_or_else(|e| panic!("{path}: does not parse: {e}\n{statement}"));
    }
    statements
}

#[tokio::test]
async fn users_sql_parses_and_bounds_the_reader() {
    // CREATE USER / GRANT are refused by chDB: parse only (docker compose applies the file).
    // The sink's grants are checked against what it runs in the sink's tests (security.rs).
    let statements = assert_parses("clickhouse/users.sql").await;
    let joined = statements
        .iter()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n");
    for expected in [
        "CREATE USER IF NOT EXISTS clickstream_sink",
        "CREATE USER IF NOT EXISTS clickstream_reader",
        "SETTINGS PROFILE 'clickstream_reader_profile'",
        "GRANT SELECT ON clickstream.* TO clickstream_reader",
        "TO clickstream_reader;",
    ] {
        let expected = expected.trim_end_matches(';');
        assert!(joined.contains(expected), "users.sql lacks {expected:?}");
    }
    // The reader reads, and nothing else.
    for grant in joined
        .lines()
        .filter(|l| l.ends_with("TO clickstream_reader"))
    {
        if grant.starts_with("GRANT ") {
            assert!(grant.starts_with("GRANT SELECT ON "), "{grant}");
        }
    }
    assert!(
        !joined.contains("ON clickstream.* TO clickstream_sink"),
        "no wildcard for the sink"
    );

    // The reader's profile: read-only, and limits it cannot raise (MAX) or lift (MIN 1: 0
    // would mean no limit), each a setting the engine knows.
    let profile = statements
        .iter()
        .find(|s| s.contains("CREATE SETTINGS PROFILE IF NOT EXISTS clickstream_reader_profile"))
        .expect("the reader's settings profile");
    let settings = profile.split_once("SETTINGS").expect("SETTINGS").1;
    let settings = settings
        .split_once("SETTINGS")
        .map_or(settings, |(_, rest)| rest);
    let mut constrained = Vec::new();
    for item in settings.split(',') {
        let words: Vec<&str> = item.split_whitespace().collect();
        let name = words[0];
        let known: u64 = clickhouse()
            .query("SELECT count() FROM system.settings WHERE name = ?")
            .bind(name)
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(known, 1, "{name} is not a ClickHouse setting");
        if name == "readonly" {
            assert_eq!(words, ["readonly", "=", "2"]);
            continue;
        }
        let value = words[2];
        assert_eq!(
            words[3..],
            ["MIN", "1", "MAX", value],
            "{name}: the default is the most a query may ask for, and 0 (no limit) is refused"
        );
        constrained.push(name);
    }
    for name in ["max_execution_time", "max_memory_usage", "max_result_rows"] {
        assert!(constrained.contains(&name), "{name} is not constrained");
    }
    // And a quota on the reader, per minute.
    let quota = statements
        .iter()
        .find(|s| s.contains("CREATE QUOTA"))
        .expect("a quota");
    assert!(
        quota.contains("FOR INTERVAL 1 minute MAX queries ="),
        "{quota}"
    );
    assert!(
        quota.trim_end().ends_with("TO clickstream_reader"),
        "{quota}"
    );
}

/// What must agree between the two files: a table's column list, a view's SELECT (local names
/// renamed back), whitespace-normalized.
fn body(statement: &str) -> String {
    let text = match statement.find(" AS\n") {
        Some(at) if statement.contains(" VIEW ") => &statement[at + 4..],
        _ => {
            let from = statement.find("\n(").expect("a column list");
            let to = statement.find("ENGINE").expect("an engine");
            &statement[from..to]
        }
    };
    text.replace("_local", "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn cluster_sql_parses_and_matches_schema_sql() {
    let cluster = assert_parses("clickhouse/cluster.sql").await;
    let schema = sql_statements(&read("clickhouse/schema.sql"));
    let named = |statements: &[String], name: &str| -> Option<String> {
        statements
            .iter()
            .find(|s| s.starts_with("CREATE") && s.split_whitespace().any(|w| w == name))
            .cloned()
    };
    for object in OBJECTS {
        let single = named(&schema, &format!("clickstream.{object}"))
            .unwrap_or_else(|| panic!("{object} not in schema.sql"));
        if single.starts_with("CREATE TABLE") {
            let local = named(&cluster, &format!("clickstream.{object}_local"))
                .unwrap_or_else(|| panic!("{object}_local not in cluster.sql"));
            assert!(
                local.contains("ENGINE = Replicated"),
                "{object}_local is not replicated"
            );
            assert_eq!(
                body(&local),
                body(&single),
                "{object}: columns differ from schema.sql"
            );
            let distributed = cluster
                .iter()
                .find(|s| {
                    s.contains(&format!("clickstream.{object} ON CLUSTER"))
                        && s.contains("Distributed(")
                })
                .unwrap_or_else(|| panic!("no Distributed table {object} in cluster.sql"));
            assert!(
                distributed.contains(&format!("{object}_local")),
                "{distributed}"
            );
        } else {
            let view = named(&cluster, &format!("clickstream.{object}"))
                .unwrap_or_else(|| panic!("{object} not in cluster.sql"));
            assert!(view.contains("ON CLUSTER"), "{object}");
            assert_eq!(
                body(&view),
                body(&single),
                "{object}: SELECT differs from schema.sql"
            );
        }
    }
    // Every table of schema.sql is a rollup/events table above or the sink's bookkeeping.
    for statement in schema.iter().filter(|s| s.starts_with("CREATE TABLE")) {
        assert!(
            OBJECTS.iter().chain(BOOKKEEPING.iter()).any(|o| statement
                .split_whitespace()
                .any(|w| w == format!("clickstream.{o}"))),
            "a table of schema.sql that cluster.sql's test does not know: {statement}"
        );
    }
    // The sink's bookkeeping: one replica set across the cluster (a replica name unique
    // across shards), under the same name (the start-up check stops a sink without
    // kafka_pending_rebuilds).
    for table in BOOKKEEPING {
        let single = named(&schema, &format!("clickstream.{table}"))
            .unwrap_or_else(|| panic!("{table} not in schema.sql"));
        let replicated = named(&cluster, &format!("clickstream.{table}"))
            .unwrap_or_else(|| panic!("{table} not in cluster.sql"));
        assert!(
            replicated.contains("ON CLUSTER")
                && replicated.contains(&format!("ENGINE = Replicated{}", engine(&single)))
                && replicated.contains(&format!(
                    "('/clickhouse/tables/all/clickstream/{table}', '{{shard}}-{{replica}}')"
                )),
            "{table} is not one replica set across the cluster: {replicated}"
        );
        assert_eq!(
            body(&replicated),
            body(&single),
            "{table}: columns differ from schema.sql"
        );
        assert_eq!(
            tail(&replicated),
            tail(&single),
            "{table}: ORDER BY or TTL differs from schema.sql"
        );
    }
}

/// The sink's own tables (schema.sql's last sections).
const BOOKKEEPING: [&str; 6] = [
    "kafka_pending_rebuilds",
    "kafka_replays",
    "kafka_replay_steps",
    "kafka_replay_keys",
    "ops_leases",
    "dead_letter_replays",
];

/// A table's engine name (`MergeTree`, `ReplacingMergeTree`, ...).
fn engine(statement: &str) -> &str {
    let after = &statement[statement.find("ENGINE = ").expect("an engine") + 9..];
    after
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default()
}

/// What follows a table's engine (ORDER BY, TTL, SETTINGS), whitespace collapsed.
fn tail(statement: &str) -> String {
    let after = &statement[statement.find("ENGINE = ").expect("an engine")..];
    let from = after.find('\n').unwrap_or(after.len());
    after[from..]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
