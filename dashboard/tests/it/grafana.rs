//! The Grafana provisioning (Grafana itself cannot run here): the files parse, every panel names
//! a provisioned datasource, and every ClickHouse panel's SQL, expanded the way the plugin
//! expands its macros, runs on seeded data and returns the columns the panel expects.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clickstream_dashboard::dashboards::{CLICKHOUSE_PLUGIN, Dashboard, Panel};
use clickstream_dashboard::macros::{QueryWindow, Variables, expand};
use clickstream_dashboard::table::Table;
use clickstream_testkit::repo_root;
use serde_norway::Value;

use crate::seed::seeded_client;

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join(path)).expect(path);
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dashboards() -> Vec<Dashboard> {
    let dir = repo_root().join("grafana/provisioning/dashboards");
    let mut boards: Vec<Dashboard> = std::fs::read_dir(&dir)
        .expect("dashboards dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read dashboard");
            Dashboard::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect();
    boards.sort_by(|a, b| a.title.cmp(&b.title));
    boards
}

/// uid → plugin type of the provisioned datasources.
fn datasources() -> BTreeMap<String, String> {
    let file = yaml("grafana/provisioning/datasources/datasources.yaml");
    file["datasources"]
        .as_sequence()
        .expect("datasources list")
        .iter()
        .map(|ds| {
            (
                ds["uid"].as_str().expect("uid").to_owned(),
                ds["type"].as_str().expect("type").to_owned(),
            )
        })
        .collect()
}

#[test]
fn provisioning_files_parse() {
    let file = yaml("grafana/provisioning/datasources/datasources.yaml");
    assert_eq!(file["apiVersion"].as_u64(), Some(1));
    let list = file["datasources"].as_sequence().expect("datasources");
    let clickhouse = list
        .iter()
        .find(|d| d["type"].as_str() == Some(CLICKHOUSE_PLUGIN))
        .expect("a ClickHouse datasource");
    assert_eq!(clickhouse["jsonData"]["host"].as_str(), Some("clickhouse"));
    assert_eq!(clickhouse["jsonData"]["port"].as_u64(), Some(8123));
    assert_eq!(clickhouse["jsonData"]["protocol"].as_str(), Some("http"));
    assert_eq!(
        clickhouse["jsonData"]["username"].as_str(),
        Some("clickstream_reader")
    );
    assert_eq!(
        clickhouse["jsonData"]["defaultDatabase"].as_str(),
        Some("clickstream")
    );
    let prometheus = list
        .iter()
        .find(|d| d["type"].as_str() == Some("prometheus"))
        .expect("a Prometheus datasource");
    assert_eq!(prometheus["url"].as_str(), Some("http://prometheus:9090"));

    let providers = yaml("grafana/provisioning/dashboards/dashboards.yaml");
    assert_eq!(
        providers["providers"][0]["options"]["path"].as_str(),
        Some("/etc/grafana/provisioning/dashboards")
    );

    let boards = dashboards();
    let titles: Vec<&str> = boards.iter().map(|b| b.title.as_str()).collect();
    assert_eq!(
        titles,
        ["Clickstream — live", "Pipeline health", "User behaviour"]
    );
    for board in &boards {
        assert_eq!(board.refresh, "5s", "{}", board.title);
        assert_eq!(
            (board.time.from.as_str(), board.time.to.as_str()),
            ("now-15m", "now")
        );
        let mut ids: Vec<u32> = board.all_panels().iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids.len(),
            board.all_panels().len(),
            "{}: duplicate panel ids",
            board.title
        );
    }
    // The live dashboard opens with the three panels users look for first.
    let live = &boards[0];
    let first: Vec<&str> = live
        .panels
        .iter()
        .take(3)
        .map(|p| p.title.as_str())
        .collect();
    assert_eq!(
        first,
        [
            "Events per second",
            "Events by type",
            "Revenue (last 5 minutes)"
        ]
    );
}

#[test]
fn every_panel_names_a_provisioned_datasource() {
    let datasources = datasources();
    for board in dashboards() {
        for panel in board.all_panels() {
            if panel.kind == "row" {
                continue;
            }
            assert!(!panel.targets.is_empty(), "{}: no query", panel.title);
            for target in &panel.targets {
                let ds = panel
                    .datasource_of(target)
                    .unwrap_or_else(|| panic!("{}: no datasource", panel.title));
                assert_eq!(
                    datasources.get(&ds.uid),
                    Some(&ds.kind),
                    "{} uses datasource {ds:?}, which is not provisioned",
                    panel.title
                );
                match ds.kind.as_str() {
                    CLICKHOUSE_PLUGIN => assert!(target.raw_sql.is_some(), "{}", panel.title),
                    "prometheus" => assert!(target.expr.is_some(), "{}", panel.title),
                    other => panic!("{}: unexpected datasource type {other}", panel.title),
                }
            }
        }
    }
}

/// The metrics the sink exposes (the sink issue's contract).
const SINK_METRICS: [&str; 8] = [
    "clickstream_sink_dead_lettered_total",
    "clickstream_sink_seconds_since_insert",
    "clickstream_sink_newest_event_time_seconds",
    "clickstream_sink_consumer_lag",
    "clickstream_sink_buffered_rows",
    "clickstream_sink_inserted_rows_total",
    "clickstream_sink_insert_duration_seconds_bucket",
    "clickstream_sink_batch_rows_bucket",
];

#[test]
fn prometheus_panels_use_the_sinks_metrics() {
    let mut used = Vec::new();
    for board in dashboards() {
        for panel in board.all_panels() {
            for expr in panel.targets.iter().filter_map(|t| t.expr.as_deref()) {
                let names: Vec<&str> = expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("clickstream_"))
                    .collect();
                assert!(!names.is_empty(), "{}: {expr}", panel.title);
                for name in names {
                    assert!(
                        SINK_METRICS.contains(&name),
                        "{}: unknown metric {name}",
                        panel.title
                    );
                    used.push(name.to_owned());
                }
            }
        }
    }
    for metric in [
        "clickstream_sink_dead_lettered_total",
        "clickstream_sink_consumer_lag",
        "clickstream_sink_buffered_rows",
    ] {
        assert!(used.iter().any(|u| u == metric), "no panel shows {metric}");
    }
}

/// The columns each ClickHouse panel must return, in order (what its visualization and
/// clickstream-top read). A new panel must be added here.
const EXPECTED_COLUMNS: &[(&str, &[&str])] = &[
    ("Events per second", &["time", "events_per_second"]),
    ("Events by type", &["time", "event_type", "events"]),
    ("Revenue (last 5 minutes)", &["revenue"]),
    (
        "Totals in range",
        &["events", "users", "sessions", "revenue", "avg_duration_s"],
    ),
    ("Unique users", &["time", "users", "sessions"]),
    ("Event mix", &["event_type", "events"]),
    ("Devices", &["device_type", "events"]),
    ("Referrers", &["referrer", "events"]),
    ("Countries", &["country", "events"]),
    (
        "Top pages",
        &["page_url", "views", "users", "avg_duration_s"],
    ),
    (
        "Trending pages (10-minute hopping window)",
        &["page_url", "views_now", "views_before", "change_pct"],
    ),
    (
        "Funnel",
        &["sessions", "viewed", "added_to_cart", "purchased"],
    ),
    (
        "Funnel conversion",
        &["time", "cart_rate_pct", "conversion_pct"],
    ),
    ("Bounce rate", &["bounce_rate_pct"]),
    ("Sessions", &["time", "sessions_started"]),
    (
        "Session length",
        &[
            "sessions",
            "p50_length_s",
            "p90_length_s",
            "events_per_session",
        ],
    ),
    (
        "Pipeline latency (Kafka to queryable)",
        &["time", "p50_s", "p99_s"],
    ),
    (
        "Latency in range",
        &[
            "p50_s",
            "p99_s",
            "max_s",
            "lateness_p50_s",
            "lateness_p99_s",
        ],
    ),
    (
        "Event lateness (event time to Kafka)",
        &["time", "p50_s", "p99_s"],
    ),
    // User behaviour (issue 13).
    (
        "Top users by events",
        &["user_id", "events", "sessions", "revenue"],
    ),
    (
        "Top users by revenue",
        &["user_id", "revenue", "purchases", "events"],
    ),
    ("New vs returning users", &["new_users", "returning_users"]),
    (
        "Sessions per user",
        &[
            "users",
            "avg_sessions",
            "p50_sessions",
            "p90_sessions",
            "max_sessions",
        ],
    ),
    (
        "Converting sessions",
        &["converting_sessions", "conversion_pct", "revenue"],
    ),
    (
        "Daily retention cohorts",
        &[
            "cohort",
            "users",
            "active_day_1",
            "day_1_pct",
            "active_day_7",
            "day_7_pct",
        ],
    ),
    (
        "Landing → exit of converting sessions",
        &["landing_page", "exit_page", "sessions", "revenue"],
    ),
    (
        "Inserts per minute and rows per insert",
        &["time", "inserts_per_minute", "rows_per_insert"],
    ),
    (
        "Parts per table",
        &[
            "table",
            "active_parts",
            "rows",
            "bytes_on_disk",
            "last_part_written",
        ],
    ),
];

fn is_numeric(type_name: &str) -> bool {
    let t = type_name.trim_start_matches("Nullable(");
    ["UInt", "Int", "Float", "Decimal"]
        .iter()
        .any(|p| t.starts_with(p))
}

/// The window a panel is tested with: event time for the live dashboard, insert time for the
/// pipeline-health one (its panels select by inserted_at, the wall clock of the seeding).
fn window_for(
    board: &Dashboard,
    event_from: DateTime<Utc>,
    event_to: DateTime<Utc>,
    inserted_from: DateTime<Utc>,
    inserted_to: DateTime<Utc>,
) -> QueryWindow {
    let (from, to) = if board.uid == "clickstream-pipeline-health" {
        (
            inserted_from - chrono::Duration::minutes(1),
            inserted_to + chrono::Duration::minutes(1),
        )
    } else {
        (event_from, event_to)
    };
    // Grafana's interval for a full-width panel of ~1000 px: range / 1000 points.
    QueryWindow {
        from,
        to,
        interval: (to - from).to_std().expect("positive range") / 1000,
    }
}

#[tokio::test]
async fn every_clickhouse_panel_runs_on_seeded_data_and_returns_its_columns() {
    let (client, seeded) = seeded_client();
    let mut checked = 0;
    for board in dashboards() {
        let window = window_for(
            &board,
            seeded.start,
            seeded.end + chrono::Duration::seconds(1),
            seeded.inserted_from,
            seeded.inserted_to,
        );
        for panel in board.all_panels() {
            for target in &panel.targets {
                let Some(sql) = &target.raw_sql else { continue };
                let expected = EXPECTED_COLUMNS
                    .iter()
                    .find(|(title, _)| *title == panel.title)
                    .unwrap_or_else(|| panic!("add {:?} to EXPECTED_COLUMNS", panel.title))
                    .1;
                let expanded = expand(sql, &window, &Variables::new())
                    .unwrap_or_else(|e| panic!("{}: {e}", panel.title))
                    .replace("clickstream.", &format!("{}.", seeded.database));
                assert!(
                    !expanded.contains("$__"),
                    "{}: unexpanded macro",
                    panel.title
                );
                let table = Table::fetch(&client, &panel.title, &expanded)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}\n{expanded}", panel.title));
                assert_eq!(&table.column_names(), expected, "{}", panel.title);
                assert!(
                    !table.rows.is_empty(),
                    "{}: no rows on seeded data",
                    panel.title
                );
                check_shape(panel, target.format, &table);
                checked += 1;
            }
        }
    }
    assert_eq!(
        checked,
        EXPECTED_COLUMNS.len(),
        "every expected panel was run"
    );
}

/// What the visualization needs: a time column first for time series (format 0), numbers for
/// stats and gauges, a label and numbers for pie charts and bar gauges with values.
fn check_shape(panel: &Panel, format: Option<u8>, table: &Table) {
    let types: Vec<&str> = table.columns.iter().map(|c| c.type_name.as_str()).collect();
    match panel.kind.as_str() {
        "timeseries" => {
            assert_eq!(format, Some(0), "{}: time series format", panel.title);
            assert!(
                types[0].starts_with("DateTime"),
                "{}: first column {}",
                panel.title,
                types[0]
            );
            assert!(types[1..].iter().any(|t| is_numeric(t)), "{}", panel.title);
            let times: Vec<String> = (0..table.rows.len()).map(|r| table.text(r, 0)).collect();
            let mut sorted = times.clone();
            sorted.sort();
            assert_eq!(times, sorted, "{}: time column not ascending", panel.title);
        }
        "stat" => {
            assert_eq!(table.rows.len(), 1, "{}: one row", panel.title);
            assert!(
                types.iter().all(|t| is_numeric(t)),
                "{}: {types:?}",
                panel.title
            );
        }
        "piechart" | "bargauge" if table.columns.len() == 2 => {
            assert!(types[0].contains("String"), "{}", panel.title);
            assert!(is_numeric(types[1]), "{}", panel.title);
        }
        "bargauge" => assert!(types.iter().all(|t| is_numeric(t)), "{}", panel.title),
        "table" => assert!(
            types.iter().skip(1).any(|t| is_numeric(t)),
            "{}",
            panel.title
        ),
        other => panic!("{}: unexpected panel type {other}", panel.title),
    }
}

#[tokio::test]
async fn panels_agree_with_the_raw_table() {
    // Spot checks that the panels compute what their titles say, against the raw events.
    let (client, seeded) = seeded_client();
    let window = QueryWindow {
        from: seeded.start,
        to: seeded.end + chrono::Duration::seconds(1),
        interval: Duration::from_secs(10),
    };
    let live = Dashboard::live();
    let run = |title: &'static str| {
        let sql = expand(live.sql(title).expect(title), &window, &Variables::new())
            .expect("expand")
            .replace("clickstream.", &format!("{}.", seeded.database));
        let client = client.clone();
        async move { Table::fetch(&client, title, &sql).await.expect(title) }
    };
    let (from, to) = (window.from.timestamp(), window.to.timestamp());

    let eps = run("Events per second").await;
    let total: f64 = (0..eps.rows.len())
        .map(|r| eps.number(r, "events_per_second").expect("eps") * 10.0)
        .sum();
    let raw: u64 = client
        .query("SELECT count() FROM events WHERE event_time >= toDateTime(?) AND event_time <= toDateTime(?)")
        .bind(from)
        .bind(to)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        total.round() as u64,
        raw,
        "events per second × interval = events"
    );

    let revenue = run("Revenue (last 5 minutes)").await;
    let raw: String = client
        .query(
            "SELECT toString(sum(coalesce(price, 0) * coalesce(quantity, 1))) FROM events
             WHERE event_type = 'purchase' AND event_time > toDateTime(?) - 300
               AND event_time <= toDateTime(?)",
        )
        .bind(to)
        .bind(to)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(revenue.number(0, "revenue"), raw.parse::<f64>().ok());

    let funnel = run("Funnel").await;
    let purchased = funnel.number(0, "purchased").expect("purchased");
    let viewed = funnel.number(0, "viewed").expect("viewed");
    assert!(
        purchased > 0.0 && purchased <= viewed,
        "funnel narrows: {funnel:?}"
    );

    let bounce = run("Bounce rate")
        .await
        .number(0, "bounce_rate_pct")
        .expect("bounce");
    assert!((0.0..=100.0).contains(&bounce), "bounce rate {bounce}");
}
