//! The provisioned Grafana alert rules (`grafana/provisioning/alerting/`): every rule's query runs
//! against seeded data that makes it fire and data that keeps it quiet.
//!
//! - ClickHouse rules: the rule's SQL, as written in the file, on the real engine, each case in
//!   a database of its own seeded relative to the engine's `now()`; the rule's threshold is
//!   applied to the value column of every row (what Grafana's reduce/threshold does per series).
//! - Prometheus rules (the sink's /metrics): the rule's PromQL with its threshold and `for`
//!   becomes a Prometheus alerting rule, and `promtool test rules` (Debian's prometheus 2.42,
//!   installed by `scripts/stack install`) evaluates it over seeded series: the same query
//!   engine Prometheus runs, with no server and no waiting.

use std::process::Command;

use clickstream_testkit::{TempDir, apply_schema, clickhouse, promtool, repo_root, unique_name};
use serde_json::json;
use serde_norway::Value;

const ALERTS: &str = "grafana/provisioning/alerting/clickstream-alerts.yaml";
/// The popular-page threshold docker compose gives Grafana by default.
const POPULAR_PAGE_VIEWS: &str = "500";

/// One provisioned rule, as the tests need it.
struct Rule {
    uid: String,
    datasource: String,
    /// SQL or PromQL.
    query: String,
    threshold: f64,
    for_: String,
}

fn rules() -> Vec<Rule> {
    let text = std::fs::read_to_string(repo_root().join(ALERTS)).expect(ALERTS);
    // Grafana fills in environment variables in provisioning files; nothing else may look like one.
    let dollars: Vec<&str> = text.match_indices('$').map(|(i, _)| &text[i..]).collect();
    assert!(
        dollars
            .iter()
            .all(|rest| rest.starts_with("$POPULAR_PAGE_VIEWS")),
        "a `$` other than $POPULAR_PAGE_VIEWS would be replaced by Grafana"
    );
    let text = text.replace("$POPULAR_PAGE_VIEWS", POPULAR_PAGE_VIEWS);
    let file: Value = serde_norway::from_str(&text).expect("alert rules parse");
    assert_eq!(file["apiVersion"].as_u64(), Some(1));
    let group = &file["groups"][0];
    assert_eq!(group["folder"].as_str(), Some("Clickstream"));
    group["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .map(|rule| {
            let data = rule["data"].as_sequence().expect("data");
            let by_ref = |r: &str| {
                data.iter()
                    .find(|d| d["refId"].as_str() == Some(r))
                    .unwrap_or_else(|| panic!("{:?}: no {r}", rule["uid"]))
            };
            let (a, b, c) = (by_ref("A"), by_ref("B"), by_ref("C"));
            assert_eq!(rule["condition"].as_str(), Some("C"));
            assert_eq!(b["model"]["type"].as_str(), Some("reduce"));
            assert_eq!(b["model"]["expression"].as_str(), Some("A"));
            assert_eq!(c["model"]["type"].as_str(), Some("threshold"));
            assert_eq!(c["model"]["expression"].as_str(), Some("B"));
            let evaluator = &c["model"]["conditions"][0]["evaluator"];
            assert_eq!(
                evaluator["type"].as_str(),
                Some("gt"),
                "thresholds are `above`"
            );
            let model = &a["model"];
            Rule {
                uid: rule["uid"].as_str().expect("uid").to_owned(),
                datasource: a["datasourceUid"].as_str().expect("datasource").to_owned(),
                query: model["rawSql"]
                    .as_str()
                    .or(model["expr"].as_str())
                    .expect("a query")
                    .to_owned(),
                threshold: evaluator["params"][0].as_f64().expect("threshold"),
                for_: rule["for"].as_str().expect("for").to_owned(),
            }
        })
        .collect()
}

fn rule(uid: &str) -> Rule {
    rules()
        .into_iter()
        .find(|r| r.uid == uid)
        .unwrap_or_else(|| panic!("no rule {uid}"))
}

#[test]
fn the_rules_the_issue_asks_for_are_provisioned() {
    let found: Vec<(String, String, f64, String)> = rules()
        .into_iter()
        .map(|r| (r.uid, r.datasource, r.threshold, r.for_))
        .collect();
    let want = [
        (
            "clickstream-pipeline-latency",
            "clickstream-clickhouse",
            10.0,
            "2m",
        ),
        (
            "clickstream-no-insert-while-lag",
            "clickstream-prometheus",
            60.0,
            "0s",
        ),
        (
            "clickstream-sink-stalled",
            "clickstream-prometheus",
            0.0,
            "1m",
        ),
        (
            "clickstream-dead-letter-rate",
            "clickstream-prometheus",
            0.01,
            "2m",
        ),
        (
            "clickstream-lag-growing",
            "clickstream-prometheus",
            0.0,
            "0s",
        ),
        (
            "clickstream-traffic-spike",
            "clickstream-clickhouse",
            3.0,
            "0s",
        ),
        (
            "clickstream-popular-page",
            "clickstream-clickhouse",
            0.0,
            "0s",
        ),
    ];
    let want: Vec<(String, String, f64, String)> = want
        .iter()
        .map(|(u, d, t, f)| (u.to_string(), d.to_string(), *t, f.to_string()))
        .collect();
    assert_eq!(found, want);
}

// --- ClickHouse rules -------------------------------------------------------------------------

/// Inserts `n` page views (`number` is 0..n in the expressions) the way the sink writes rows.
async fn insert(
    client: &clickhouse::Client,
    n: u64,
    page: &str,
    event_time: &str,
    kafka_timestamp: &str,
    inserted_at: &str,
) {
    let sql = format!(
        "INSERT INTO events (event_id, event_time, user_id, session_id, event_type, page_url, \
         page_category, referrer, device_type, browser, country, duration_ms, kafka_topic, \
         kafka_partition, kafka_offset, kafka_timestamp, inserted_at) \
         SELECT generateUUIDv4(), {event_time}, concat('u', toString(number % 7)), \
         generateUUIDv4(), 'page_view', '{page}', 'home', 'direct', 'desktop', 'firefox', 'DE', \
         100, 't', 0, number, {kafka_timestamp}, {inserted_at} FROM numbers({n})"
    );
    client
        .query(&sql)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The rule's SQL in `database`: the value column of each row (the last column).
async fn values(client: &clickhouse::Client, database: &str, rule: &Rule) -> Vec<f64> {
    let sql = rule.query.replace("clickstream.", &format!("{database}."));
    let table = clickstream_dashboard::table::Table::fetch(client, &rule.uid, &sql)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}\n{sql}", rule.uid));
    let value = table.columns.last().expect("a value column").name.clone();
    (0..table.rows.len())
        .map(|r| table.number(r, &value).unwrap_or(0.0))
        .collect()
}

/// Whether the rule fires on a database seeded by `seed`.
async fn fires<F, Fut>(uid: &str, case: &str, seed: F) -> (bool, Vec<f64>)
where
    F: FnOnce(clickhouse::Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rule = rule(uid);
    let database = unique_name(&format!("it_alert_{case}"));
    let client = apply_schema(&clickhouse(), &database).await;
    seed(client.clone()).await;
    let values = values(&client, &database, &rule).await;
    client
        .query(&format!("DROP DATABASE IF EXISTS {database}"))
        .execute()
        .await
        .expect("drop");
    (values.iter().any(|v| *v > rule.threshold), values)
}

#[tokio::test]
async fn pipeline_latency_fires_on_a_slow_pipeline_not_on_late_events() {
    let uid = "clickstream-pipeline-latency";
    // 20 s from Kafka to queryable for the rows inserted 30 s ago.
    let (slow, v) = fires(uid, "latency_slow", |c| async move {
        let at = "now64(3) - INTERVAL 30 SECOND";
        let kafka = "now64(3) - INTERVAL 50 SECOND";
        insert(&c, 200, "/a", kafka, kafka, at).await;
    })
    .await;
    assert!(slow, "fires: {v:?}");
    // A fast pipeline (0.5 s) carrying events up to 6 h late: the old measure
    // (inserted_at - event_time) would say hours; this rule stays quiet.
    let (late, v) = fires(uid, "latency_late", |c| async move {
        let at = "now64(3) - INTERVAL 30 SECOND";
        let kafka = "now64(3) - INTERVAL 30500 MILLISECOND";
        let event = "now64(3) - INTERVAL (number % 360) MINUTE";
        insert(&c, 200, "/a", event, kafka, at).await;
    })
    .await;
    assert!(!late, "quiet: {v:?}");
    // Rows inserted before the column existed (1970 in it) are not latency.
    let (old, v) = fires(uid, "latency_old", |c| async move {
        let at = "now64(3) - INTERVAL 10 SECOND";
        insert(&c, 50, "/a", at, "toDateTime64(0, 3)", at).await;
    })
    .await;
    assert!(!old, "quiet: {v:?}");
}

/// Per-minute traffic: `base` events in each of the 60 minutes before the last complete
/// one, `last` in the last complete minute and in the current one (so a minute that turns
/// between seeding and querying changes nothing).
async fn traffic(c: clickhouse::Client, base: u64, last: u64) {
    for minute in 2..=61 {
        let at = format!("toStartOfMinute(now()) - INTERVAL {minute} MINUTE + INTERVAL 1 SECOND");
        let at = format!("toDateTime64({at}, 3)");
        insert(&c, base, "/p", &at, &at, &at).await;
    }
    for minute in [0, 1] {
        let at = format!(
            "toDateTime64(toStartOfMinute(now()) - INTERVAL {minute} MINUTE + INTERVAL 1 SECOND, 3)"
        );
        insert(&c, last, "/p", &at, &at, &at).await;
    }
}

#[tokio::test]
async fn traffic_spike_fires_above_three_times_the_hours_median() {
    let uid = "clickstream-traffic-spike";
    let (spike, v) = fires(uid, "spike", |c| traffic(c, 100, 400)).await;
    assert!(spike, "4× the median fires: {v:?}");
    let (busy, v) = fires(uid, "busy", |c| traffic(c, 100, 250)).await;
    assert!(!busy, "2.5× stays quiet: {v:?}");
}

#[tokio::test]
async fn popular_page_fires_per_page_past_the_configured_views() {
    let uid = "clickstream-popular-page";
    let threshold: u64 = POPULAR_PAGE_VIEWS.parse().unwrap();
    let (popular, v) = fires(uid, "popular", move |c| async move {
        let at = "now64(3) - INTERVAL 2 MINUTE";
        insert(&c, threshold + 1, "/hot", at, at, at).await;
        insert(&c, threshold - 100, "/warm", at, at, at).await;
    })
    .await;
    assert!(popular, "fires: {v:?}");
    assert_eq!(
        v,
        vec![(threshold + 1) as f64],
        "only the page past the threshold"
    );
    let (quiet, v) = fires(uid, "popular_quiet", move |c| async move {
        let recent = "now64(3) - INTERVAL 2 MINUTE";
        insert(&c, threshold, "/warm", recent, recent, recent).await;
        // Many views, but more than 5 minutes ago.
        let old = "now64(3) - INTERVAL 7 MINUTE";
        insert(&c, threshold * 2, "/old", old, old, old).await;
    })
    .await;
    assert!(!quiet, "quiet: {v:?}");
}

// --- Prometheus rules (promtool) --------------------------------------------------------------

/// Runs `promtool test rules` for `rule` over `series` (name{labels} → promtool's expanding
/// notation, 15 s apart), evaluated at `at`: whether the rule's alert is firing then.
fn fires_in_prometheus(rule: &Rule, series: &[(&str, &str)], at: &str) -> bool {
    let dir = TempDir::new("promtool");
    let rules = json!({
        "groups": [{
            "name": "grafana",
            "rules": [{
                "alert": rule.uid,
                "expr": format!("({}) > {}", rule.query, rule.threshold),
                "for": rule.for_,
            }]
        }]
    });
    // YAML is a superset of JSON.
    std::fs::write(dir.path().join("rules.yaml"), rules.to_string()).expect("rules");
    let input: Vec<_> = series
        .iter()
        .map(|(name, values)| json!({ "series": name, "values": values }))
        .collect();
    // Two tests: exactly one alert without labels, and no alert; one of them passes.
    let test = |expected: serde_json::Value| {
        json!({
            "rule_files": ["rules.yaml"],
            "evaluation_interval": "15s",
            "tests": [{
                "interval": "15s",
                "input_series": input,
                "alert_rule_test": [{ "eval_time": at, "alertname": rule.uid, "exp_alerts": expected }]
            }]
        })
    };
    let run = |name: &str, file: serde_json::Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, file.to_string()).expect("test file");
        let output = Command::new(promtool())
            .current_dir(dir.path())
            .args(["test", "rules", name])
            .output()
            .expect("run promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !text.contains("could not") && !text.contains("parse error"),
            "{}: promtool could not evaluate the rule: {text}",
            rule.uid
        );
        (output.status.success(), text)
    };
    let (firing, firing_text) = run("firing.yaml", test(json!([{ "exp_labels": {} }])));
    let (quiet, quiet_text) = run("quiet.yaml", test(json!([])));
    assert!(
        firing != quiet,
        "{}: exactly one outcome must hold\n{firing_text}\n{quiet_text}",
        rule.uid
    );
    firing
}

#[test]
fn no_insert_while_lag_fires_after_a_minute_without_insert() {
    let rule = rule("clickstream-no-insert-while-lag");
    let gauge = r#"clickstream_sink_seconds_since_insert{job="clickstream-sink",partition="0"}"#;
    let other = r#"clickstream_sink_seconds_since_insert{job="clickstream-sink",partition="1"}"#;
    // Partition 0 stopped being written 75 s ago with lag (the gauge grows 15 s a scrape).
    assert!(fires_in_prometheus(
        &rule,
        &[(gauge, "0x14 0+15x6"), (other, "0x20")],
        "5m"
    ));
    // Written every few seconds, or caught up (0): quiet.
    assert!(!fires_in_prometheus(
        &rule,
        &[
            (gauge, "2 4 1 3 5 2 4 1 3 5 2 4 1 3 5 2 4 1 3 5"),
            (other, "0x20")
        ],
        "4m45s"
    ));
}

#[test]
fn stalled_sink_fires_when_stalled_or_not_scraped() {
    let rule = rule("clickstream-sink-stalled");
    let stalled = r#"clickstream_sink_stalled{job="clickstream-sink",instance="sink:9100"}"#;
    let up = r#"up{job="clickstream-sink",instance="sink:9100"}"#;
    assert!(fires_in_prometheus(
        &rule,
        &[(stalled, "0x10 1x10"), (up, "1x20")],
        "5m"
    ));
    // Dead: Prometheus scrapes nothing (up 0, its series stop).
    assert!(fires_in_prometheus(
        &rule,
        &[(stalled, "0x5 stale"), (up, "1x5 0x15")],
        "5m"
    ));
    // Stalled for 30 s only (a short outage): shorter than `for`.
    assert!(!fires_in_prometheus(
        &rule,
        &[(stalled, "0x17 1x2"), (up, "1x20")],
        "4m45s"
    ));
    assert!(!fires_in_prometheus(
        &rule,
        &[(stalled, "0x20"), (up, "1x20")],
        "5m"
    ));
}

#[test]
fn dead_letter_rate_fires_above_one_percent_of_consumed() {
    let rule = rule("clickstream-dead-letter-rate");
    let consumed = r#"clickstream_sink_consumed_total{job="clickstream-sink"}"#;
    let bad =
        r#"clickstream_sink_dead_lettered_total{job="clickstream-sink",reason="invalid_json"}"#;
    let late = r#"clickstream_sink_dead_lettered_total{job="clickstream-sink",reason="too_late"}"#;
    // 1000 consumed per scrape, 12 + 8 dead-lettered: 2 %.
    assert!(fires_in_prometheus(
        &rule,
        &[(consumed, "0+1000x60"), (bad, "0+12x60"), (late, "0+8x60")],
        "14m"
    ));
    // 0.5 %: quiet; and no dead letter at all (no series yet): quiet, not "no data".
    assert!(!fires_in_prometheus(
        &rule,
        &[(consumed, "0+1000x60"), (bad, "0+5x60")],
        "14m"
    ));
    assert!(!fires_in_prometheus(
        &rule,
        &[(consumed, "0+1000x60")],
        "14m"
    ));
}

#[test]
fn lag_growing_fires_only_when_it_grew_for_five_minutes() {
    let rule = rule("clickstream-lag-growing");
    let p0 = r#"clickstream_sink_consumer_lag{job="clickstream-sink",partition="0"}"#;
    let p1 = r#"clickstream_sink_consumer_lag{job="clickstream-sink",partition="1"}"#;
    // 10 minutes of growth on partition 0 (+50 a scrape), partition 1 steady.
    assert!(fires_in_prometheus(
        &rule,
        &[(p0, "100+50x40"), (p1, "300x40")],
        "10m"
    ));
    // Growing for 3 minutes only, after a steady start.
    assert!(!fires_in_prometheus(
        &rule,
        &[(p0, "100x28 100+50x12"), (p1, "300x40")],
        "10m"
    ));
    // A saw-tooth (flushes) around a steady level, and a backlog being worked off.
    assert!(!fires_in_prometheus(
        &rule,
        &[
            (
                p0,
                "100 400 100 400 100 400 100 400 100 400 100 400 100 400 100 400 100 400 100 400 100 400 100 400 100 400 100 400 100 400 100 400 100 400 100 400 100 400 100 400 100"
            ),
            (p1, "5000-100x40")
        ],
        "10m"
    ));
}
