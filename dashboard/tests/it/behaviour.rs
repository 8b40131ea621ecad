//! The "User behaviour" panels (users_daily and sessions rollups) against the same questions
//! asked of the raw events, over events spread on several days so that cohorts, returning
//! users and D+1 / D+7 retention are not empty.

use chrono::{Duration, DurationRound, Utc};
use clickstream_dashboard::dashboards::Dashboard;
use clickstream_dashboard::macros::{QueryWindow, Variables, expand};
use clickstream_dashboard::table::Table;
use clickstream_testkit::{apply_schema, clickhouse, unique_name};

use crate::rollups::{assert_same, check_users_daily};
use crate::seed::{insert, simulate};

async fn panel(
    client: &clickhouse::Client,
    database: &str,
    title: &str,
    window: &QueryWindow,
) -> Table {
    let board = Dashboard::user_behaviour();
    let sql = expand(board.sql(title).expect(title), window, &Variables::new())
        .expect("expand")
        .replace("clickstream.", &format!("{database}."));
    Table::fetch(client, title, &sql)
        .await
        .unwrap_or_else(|e| panic!("{title}: {e}\n{sql}"))
}

#[tokio::test]
async fn user_behaviour_panels_equal_the_raw_events_over_several_days() {
    let database = unique_name("it_dash_behaviour");
    let client = apply_schema(&clickhouse(), &database).await;
    let day0 = (Utc::now() - Duration::days(10))
        .duration_trunc(Duration::days(1))
        .expect("day");
    // The simulator draws users from one pool: the same users come back on later days.
    for (i, day) in [0, 1, 2, 7, 8].into_iter().enumerate() {
        let start = day0 + Duration::days(day) + Duration::hours(12);
        let rows = simulate(100 + i as u64, 0.0, start, 3_000, i as i64 * 3_000);
        insert(&client, &rows, &format!("behaviour:{i}")).await;
    }
    assert!(check_users_daily(&client).await > 1_000);

    // Days 7 and 8: returning users (seen on days 0-2) and new ones.
    let window = QueryWindow {
        from: day0 + Duration::days(7),
        to: day0 + Duration::days(8) + Duration::hours(23),
        interval: std::time::Duration::from_secs(60),
    };
    let raw_query = |sql: String| {
        let client = client.clone();
        let (from, to) = (window.from.timestamp(), window.to.timestamp());
        async move {
            let sql = sql
                .replace("{from}", &from.to_string())
                .replace("{to}", &to.to_string());
            Table::fetch(&client, "raw", &sql)
                .await
                .unwrap_or_else(|e| panic!("{e}\n{sql}"))
        }
    };

    let new_returning = panel(&client, &database, "New vs returning users", &window).await;
    let raw = raw_query(
        "SELECT countIf(first_day >= toDate(toDateTime({from}))) AS new_users,
                countIf(first_day < toDate(toDateTime({from}))) AS returning_users
         FROM (SELECT user_id, min(toDate(event_time)) AS first_day,
                      max(toDate(event_time) BETWEEN toDate(toDateTime({from})) AND toDate(toDateTime({to}))) AS active
               FROM events GROUP BY user_id HAVING active)"
            .to_owned(),
    )
    .await;
    assert_same("new vs returning", &new_returning, &raw, 0, &[]);
    assert!(
        raw.number(0, "returning_users").unwrap_or(0.0) > 0.0,
        "{raw:?}"
    );

    let cohorts = panel(&client, &database, "Daily retention cohorts", &window).await;
    let raw = raw_query(
        "SELECT toString(first_day) AS cohort, count() AS users,
                countIf(has(days, first_day + 1)) AS active_day_1,
                round(100 * active_day_1 / users, 1) AS day_1_pct,
                countIf(has(days, first_day + 7)) AS active_day_7,
                round(100 * active_day_7 / users, 1) AS day_7_pct
         FROM (SELECT user_id, min(toDate(event_time)) AS first_day,
                      groupUniqArray(toDate(event_time)) AS days
               FROM events GROUP BY user_id)
         WHERE first_day >= toDate(toDateTime({to})) - 30 AND first_day <= toDate(toDateTime({to}))
         GROUP BY first_day ORDER BY first_day DESC"
            .to_owned(),
    )
    .await;
    assert_same("cohorts", &cohorts, &raw, 1, &[]);
    let day0_cohort = raw.rows.len() - 1;
    assert!(
        raw.number(day0_cohort, "active_day_1").unwrap_or(0.0) > 0.0,
        "{raw:?}"
    );
    assert!(
        raw.number(day0_cohort, "active_day_7").unwrap_or(0.0) > 0.0,
        "{raw:?}"
    );

    for (title, order) in [
        ("Top users by revenue", "revenue"),
        ("Top users by events", "events"),
    ] {
        let top = panel(&client, &database, title, &window).await;
        let columns = if order == "revenue" {
            "revenue, purchases, events"
        } else {
            "events, sessions, revenue"
        };
        let raw = raw_query(format!(
            "SELECT user_id, {columns} FROM (
                 SELECT user_id, count() AS events, uniqExact(session_id) AS sessions,
                        countIf(event_type = 'purchase') AS purchases,
                        toDecimal128(sumIf(coalesce(price, 0) * coalesce(quantity, 1), event_type = 'purchase'), 2) AS revenue
                 FROM events
                 WHERE toDate(event_time) BETWEEN toDate(toDateTime({{from}})) AND toDate(toDateTime({{to}}))
                 GROUP BY user_id)
             ORDER BY {order} DESC, user_id LIMIT 10"
        ))
        .await;
        assert_eq!(top.rows.len(), 10, "{title}");
        assert_same(title, &top, &raw, 1, &[]);
    }

    let paths = panel(
        &client,
        &database,
        "Landing → exit of converting sessions",
        &window,
    )
    .await;
    let raw = raw_query(
        "SELECT landing_page, exit_page, count() AS sessions, sum(session_revenue) AS revenue FROM (
             SELECT session_id, min(event_time) AS started,
                    arraySort(groupArray((event_time, event_id, toString(page_url))))[1].3 AS landing_page,
                    arrayReverseSort(groupArray((event_time, event_id, toString(page_url))))[1].3 AS exit_page,
                    countIf(event_type = 'purchase') > 0 AS converted,
                    toDecimal128(sumIf(coalesce(price, 0) * coalesce(quantity, 1), event_type = 'purchase'), 2) AS session_revenue
             FROM events GROUP BY session_id
             HAVING started >= toDateTime64({from}, 3) AND started <= toDateTime64({to}, 3) AND converted)
         GROUP BY landing_page, exit_page ORDER BY sessions DESC, landing_page, exit_page LIMIT 10"
            .to_owned(),
    )
    .await;
    assert!(!raw.rows.is_empty(), "converting sessions in the range");
    assert_same("landing → exit", &paths, &raw, 2, &[]);
    clickhouse()
        .query(&format!("DROP DATABASE {database}"))
        .execute()
        .await
        .expect("drop");
}
