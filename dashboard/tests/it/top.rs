//! clickstream-top shows the Grafana panels' numbers, and they are the raw table's numbers.

use std::process::Command;
use std::time::Duration;

use clickstream_dashboard::dashboards::Dashboard;
use clickstream_dashboard::macros::{QueryWindow, Variables, expand};
use clickstream_dashboard::table::Table;
use clickstream_dashboard::top::{self, Queries, panels};
use clickstream_testkit::{
    CHECKED_USER, TempDir, clickhouse_ca_file, clickhouse_sink_password_file, clickhouse_tls_url,
    clickhouse_url, free_port, make_certificates,
};

use crate::seed::seeded_client;

#[tokio::test]
async fn top_shows_the_grafana_panels_numbers_which_match_the_raw_table() {
    let (client, seeded) = seeded_client();
    let window = QueryWindow::last(Duration::from_secs(300), seeded.end, 300);
    let queries = Queries::from_dashboards(&seeded.database).unwrap();
    let snapshot = top::collect(&client, &queries, window).await.unwrap();

    // Grafana's numbers: the live dashboard's panel SQL, expanded like the plugin does.
    let live = Dashboard::live();
    let grafana = |title: &'static str| {
        let sql = expand(live.sql(title).expect(title), &window, &Variables::new())
            .expect("expand")
            .replace("clickstream.", &format!("{}.", seeded.database));
        let client = client.clone();
        async move { Table::fetch(&client, title, &sql).await.expect(title) }
    };
    let totals = grafana(panels::TOTALS).await;
    assert_eq!(Some(snapshot.events as f64), totals.number(0, "events"));
    assert_eq!(Some(snapshot.users as f64), totals.number(0, "users"));
    assert_eq!(Some(snapshot.revenue), totals.number(0, "revenue"));
    let devices = grafana(panels::DEVICES).await;
    let labels: Vec<String> = (0..devices.rows.len())
        .map(|r| devices.text(r, 0))
        .collect();
    assert_eq!(
        snapshot
            .devices
            .iter()
            .map(|s| s.label.clone())
            .collect::<Vec<_>>(),
        labels
    );
    let pages = grafana(panels::TOP_PAGES).await;
    assert_eq!(snapshot.top_pages.len(), pages.rows.len());
    assert_eq!(snapshot.top_pages[0].page_url, pages.text(0, 0));

    // The raw table's numbers for the same window (whole minutes starting inside it).
    let (from, to) = (window.from.timestamp(), window.to.timestamp());
    // "User behaviour": new vs returning and the top user by revenue, on the window's days.
    let (new_users, returning_users, top_user): (u64, u64, String) = client
        .query(
            "SELECT countIf(first_day >= toDate(toDateTime(?))), countIf(first_day < toDate(toDateTime(?))),
                    assumeNotNull((SELECT user_id FROM events
                     WHERE toDate(event_time) BETWEEN toDate(toDateTime(?)) AND toDate(toDateTime(?))
                     GROUP BY user_id
                     ORDER BY sumIf(coalesce(price, 0) * coalesce(quantity, 1), event_type = 'purchase') DESC, user_id
                     LIMIT 1))
             FROM (SELECT user_id, min(toDate(event_time)) AS first_day,
                          max(toDate(event_time) BETWEEN toDate(toDateTime(?)) AND toDate(toDateTime(?))) AS active
                   FROM events GROUP BY user_id HAVING active)",
        )
        .bind(from)
        .bind(from)
        .bind(from)
        .bind(to)
        .bind(from)
        .bind(to)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (snapshot.new_users, snapshot.returning_users),
        (new_users, returning_users)
    );
    assert!(snapshot.new_users + snapshot.returning_users > 0);
    assert_eq!(snapshot.top_users[0].user_id, top_user);
    let (events, users, revenue): (u64, u64, String) = client
        .query(
            "SELECT count(), uniqExact(user_id),
                    toString(sumIf(coalesce(price, 0) * coalesce(quantity, 1), event_type = 'purchase'))
             FROM events
             WHERE toStartOfMinute(event_time) BETWEEN toDateTime(?) AND toDateTime(?)",
        )
        .bind(from)
        .bind(to)
        .fetch_one()
        .await
        .unwrap();
    assert!(events > 0);
    assert_eq!(snapshot.events, events);
    assert!((snapshot.users as f64 - users as f64).abs() <= users as f64 * 0.01);
    assert_eq!(Some(snapshot.revenue), revenue.parse().ok());
    let by_type: Vec<(String, u64)> = client
        .query(
            "SELECT toString(event_type) AS t, count() AS n FROM events
             WHERE toStartOfMinute(event_time) BETWEEN toDateTime(?) AND toDateTime(?)
             GROUP BY t ORDER BY n DESC, t",
        )
        .bind(from)
        .bind(to)
        .fetch_all()
        .await
        .unwrap();
    let shown: Vec<(String, u64)> = snapshot
        .event_types
        .iter()
        .map(|s| (s.label.clone(), s.events))
        .collect();
    assert_eq!(shown, by_type);
    let percent: f64 = snapshot.event_types.iter().map(|s| s.percent).sum();
    assert!((percent - 100.0).abs() < 1e-6);

    let screen = top::render(&snapshot, "test");
    assert!(screen.contains("page_view"), "{screen}");
}

#[test]
fn top_says_clearly_when_clickhouse_is_unreachable() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let output = Command::new(env!("CARGO_BIN_EXE_clickstream-top"))
        .args(["--once", "--url", &url])
        .env_remove("CLICKHOUSE_USER")
        .env_remove("CLICKHOUSE_PASSWORD")
        .output()
        .expect("run clickstream-top");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("ClickHouse at {url} is unreachable")),
        "{stderr}"
    );
}

#[test]
fn top_once_prints_a_screen() {
    let (_, seeded) = seeded_client();
    let output = Command::new(env!("CARGO_BIN_EXE_clickstream-top"))
        .args([
            "--once",
            "--url",
            &clickhouse_url(),
            "--database",
            &seeded.database,
        ])
        .output()
        .expect("run clickstream-top");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "clickstream-top",
        "unique users",
        "Event type",
        "Device",
        "Referrer",
        "Top pages",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
}

/// clickstream-top over HTTPS with the stack's CA, a client certificate and a password file;
/// the same with a CA that did not sign the server's certificate stops with what to change.
#[test]
fn top_reads_over_https_and_says_which_flag_to_fix_when_tls_fails() {
    let (_, seeded) = seeded_client();
    let ca = clickhouse_ca_file();
    let dir = ca.parent().expect("the CA's directory").to_path_buf();
    let top = |ca: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_clickstream-top"))
            .args(["--once", "--url", &clickhouse_tls_url()])
            .args(["--database", &seeded.database, "--user", CHECKED_USER])
            .arg("--password-file")
            .arg(clickhouse_sink_password_file())
            .arg("--ca-file")
            .arg(ca)
            .arg("--client-cert-file")
            .arg(dir.join("client.pem"))
            .arg("--client-key-file")
            .arg(dir.join("client-key.pem"))
            .env_remove("CLICKHOUSE_PASSWORD")
            .output()
            .expect("run clickstream-top")
    };
    let output = top(&ca);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Top pages"), "{stdout}");
    assert!(stdout.contains(&clickhouse_tls_url()), "{stdout}");

    let other = TempDir::new("top_other_ca");
    let output = top(&make_certificates(other.path(), "other"));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in ["TLS failed", "not trusted", "--ca-file"] {
        assert!(stderr.contains(expected), "{expected:?} missing: {stderr}");
    }
}
