//! clickstream-top: the live dashboard's key numbers in a terminal, redrawn every few seconds.
//!
//! Every number comes from a Grafana panel's SQL ([`crate::dashboards`]), expanded for the
//! window "the last N minutes up to now", so the terminal and Grafana agree.

use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clickstream_connect::Tls;

use crate::Error;
use crate::dashboards::Dashboard;
use crate::macros::{QueryWindow, Variables, expand};
use crate::table::Table;

/// The panels clickstream-top shows, by title.
pub mod panels {
    pub const TOTALS: &str = "Totals in range";
    pub const REVENUE_5M: &str = "Revenue (last 5 minutes)";
    pub const EVENT_MIX: &str = "Event mix";
    pub const DEVICES: &str = "Devices";
    pub const REFERRERS: &str = "Referrers";
    pub const TOP_PAGES: &str = "Top pages";
    pub const LATENCY: &str = "Latency in range";
    /// From "User behaviour".
    pub const NEW_RETURNING: &str = "New vs returning users";
    pub const TOP_USERS_BY_REVENUE: &str = "Top users by revenue";
}

/// Where to read and how often; see `clickstream-top --help` for the defaults.
#[derive(Clone)]
pub struct Settings {
    pub clickhouse_url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// A file holding the password instead (read when the client is made).
    pub password_file: Option<PathBuf>,
    /// The CA and client certificate for an `https://` URL.
    pub tls: Tls,
    /// The database holding the schema; the panels' `clickstream.` is renamed to it.
    pub database: String,
    /// The window the totals cover: the last `window` up to now.
    pub window: Duration,
    /// Time between redraws.
    pub refresh: Duration,
}

impl std::fmt::Debug for Settings {
    /// Without the password, and the URL without credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("clickhouse_url", &self.url())
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .field("database", &self.database)
            .field("window", &self.window)
            .field("refresh", &self.refresh)
            .finish()
    }
}

impl Settings {
    /// The client; a TLS or password file that cannot be used fails here, with its flag named.
    pub fn client(&self) -> Result<clickhouse::Client, Error> {
        // A URL with credentials would be used without them (the client sends only a user
        // header): refused, as by the sink, with the flag named.
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
        let (cert, key, password_file) = (
            path(&self.tls.client_cert_file),
            path(&self.tls.client_key_file),
            path(&self.password_file),
        );
        let connection = clickstream_connect::Connection {
            url: &self.clickhouse_url,
            database: &self.database,
            user: self.user.as_deref().unwrap_or_default(),
            password: self.password.as_deref().unwrap_or_default(),
            password_file: password_file.as_deref().unwrap_or_default(),
            // (Checked only for the URL and the pairs; the client below reads the files.)
            ca_file: "",
            client_cert_file: cert.as_deref().unwrap_or_default(),
            client_key_file: key.as_deref().unwrap_or_default(),
        };
        if let Err((key, reason)) = connection.check() {
            let (flag, reason) = match key {
                "clickhouse_password_file" => ("--password-file", reason),
                "clickhouse_client_cert_file" => ("--client-cert-file", reason),
                "clickhouse_client_key_file" => ("--client-key-file", reason),
                _ if reason.contains("credentials") => (
                    "--url",
                    "must not carry credentials (user:password@ or ?password=), which would \
                     be shown and not used: give --user and --password-file",
                ),
                _ => ("--url", reason),
            };
            return Err(Error::Setting { flag, reason });
        }
        let mut client = clickstream_connect::client(&self.clickhouse_url, &self.tls)
            .map_err(Error::connect)?
            .with_database(&self.database);
        if let Some(user) = &self.user {
            client = client.with_user(user);
        }
        let password = match &self.password_file {
            Some(path) => {
                Some(clickstream_connect::read_secret_file(path).map_err(Error::connect)?)
            }
            None => self.password.clone(),
        };
        if let Some(password) = password {
            client = client.with_password(password);
        }
        Ok(client)
    }

    /// The URL as shown: without credentials.
    pub fn url(&self) -> String {
        clickstream_connect::redact_url(&self.clickhouse_url)
    }
}

/// The SQL of the panels clickstream-top shows, taken from the dashboards once.
#[derive(Debug, Clone)]
pub struct Queries {
    database: String,
    sql: Vec<(&'static str, String)>,
}

impl Queries {
    /// The panels' SQL, with `clickstream.` renamed to `database.`.
    pub fn from_dashboards(database: &str) -> Result<Queries, Error> {
        let live = Dashboard::live();
        let health = Dashboard::pipeline_health();
        let mut sql = Vec::new();
        for title in [
            panels::TOTALS,
            panels::REVENUE_5M,
            panels::EVENT_MIX,
            panels::DEVICES,
            panels::REFERRERS,
            panels::TOP_PAGES,
        ] {
            sql.push((title, live.sql(title)?.to_owned()));
        }
        sql.push((panels::LATENCY, health.sql(panels::LATENCY)?.to_owned()));
        let behaviour = Dashboard::user_behaviour();
        for title in [panels::NEW_RETURNING, panels::TOP_USERS_BY_REVENUE] {
            sql.push((title, behaviour.sql(title)?.to_owned()));
        }
        Ok(Queries {
            database: database.to_owned(),
            sql,
        })
    }

    /// The SQL to run for panel `title` over `window`.
    pub fn expanded(&self, title: &str, window: &QueryWindow) -> Result<String, Error> {
        let (_, sql) = self
            .sql
            .iter()
            .find(|(t, _)| *t == title)
            .ok_or_else(|| Error::MissingPanel(title.to_owned()))?;
        let sql = expand(sql, window, &Variables::new()).map_err(|source| Error::Macro {
            panel: title.to_owned(),
            source,
        })?;
        Ok(sql.replace("clickstream.", &format!("{}.", self.database)))
    }

    async fn fetch(
        &self,
        client: &clickhouse::Client,
        title: &str,
        window: &QueryWindow,
    ) -> Result<Table, Error> {
        Table::fetch(client, title, &self.expanded(title, window)?).await
    }
}

/// A label's count and its share of the total.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub label: String,
    pub events: u64,
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PageLine {
    pub page_url: String,
    pub views: u64,
    pub users: u64,
    pub avg_duration_s: f64,
}

/// A user of "Top users by revenue".
#[derive(Debug, Clone, PartialEq)]
pub struct UserLine {
    pub user_id: String,
    pub revenue: f64,
    pub purchases: u64,
    pub events: u64,
}

/// One screenful of numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub window: QueryWindow,
    pub events: u64,
    pub users: u64,
    pub sessions: u64,
    pub revenue: f64,
    pub avg_duration_s: f64,
    pub revenue_last_5m: f64,
    pub event_types: Vec<Share>,
    pub devices: Vec<Share>,
    pub referrers: Vec<Share>,
    pub top_pages: Vec<PageLine>,
    /// Pipeline latency: inserted_at − kafka_timestamp.
    pub latency_p50_s: f64,
    pub latency_p99_s: f64,
    /// Event lateness: kafka_timestamp − event_time.
    pub lateness_p50_s: f64,
    pub lateness_p99_s: f64,
    /// Users active on the days the window touches, first seen on one of them / earlier.
    pub new_users: u64,
    pub returning_users: u64,
    /// The top 5 of "Top users by revenue" (days the window touches).
    pub top_users: Vec<UserLine>,
}

/// Runs the panels' SQL over `window` and gathers the results.
pub async fn collect(
    client: &clickhouse::Client,
    queries: &Queries,
    window: QueryWindow,
) -> Result<Snapshot, Error> {
    let totals = queries.fetch(client, panels::TOTALS, &window).await?;
    let revenue = queries.fetch(client, panels::REVENUE_5M, &window).await?;
    let latency = queries.fetch(client, panels::LATENCY, &window).await?;
    let pages = queries.fetch(client, panels::TOP_PAGES, &window).await?;
    let new_returning = queries
        .fetch(client, panels::NEW_RETURNING, &window)
        .await?;
    let users = queries
        .fetch(client, panels::TOP_USERS_BY_REVENUE, &window)
        .await?;
    let number = |table: &Table, panel: &str, column: &str| {
        if table.column(column).is_none() {
            return Err(Error::MissingColumn {
                panel: panel.to_owned(),
                column: column.to_owned(),
            });
        }
        Ok(table.number(0, column).unwrap_or(0.0))
    };
    let top_pages = (0..pages.rows.len())
        .map(|row| PageLine {
            page_url: pages.text(row, 0),
            views: pages.number(row, "views").unwrap_or(0.0) as u64,
            users: pages.number(row, "users").unwrap_or(0.0) as u64,
            avg_duration_s: pages.number(row, "avg_duration_s").unwrap_or(0.0),
        })
        .collect();
    let top_users = (0..users.rows.len().min(5))
        .map(|row| UserLine {
            user_id: users.text(row, 0),
            revenue: users.number(row, "revenue").unwrap_or(0.0),
            purchases: users.number(row, "purchases").unwrap_or(0.0) as u64,
            events: users.number(row, "events").unwrap_or(0.0) as u64,
        })
        .collect();
    Ok(Snapshot {
        window,
        events: number(&totals, panels::TOTALS, "events")? as u64,
        users: number(&totals, panels::TOTALS, "users")? as u64,
        sessions: number(&totals, panels::TOTALS, "sessions")? as u64,
        revenue: number(&totals, panels::TOTALS, "revenue")?,
        avg_duration_s: number(&totals, panels::TOTALS, "avg_duration_s")?,
        revenue_last_5m: number(&revenue, panels::REVENUE_5M, "revenue")?,
        event_types: shares(&queries.fetch(client, panels::EVENT_MIX, &window).await?),
        devices: shares(&queries.fetch(client, panels::DEVICES, &window).await?),
        referrers: shares(&queries.fetch(client, panels::REFERRERS, &window).await?),
        top_pages,
        latency_p50_s: number(&latency, panels::LATENCY, "p50_s")?,
        latency_p99_s: number(&latency, panels::LATENCY, "p99_s")?,
        lateness_p50_s: number(&latency, panels::LATENCY, "lateness_p50_s")?,
        lateness_p99_s: number(&latency, panels::LATENCY, "lateness_p99_s")?,
        new_users: number(&new_returning, panels::NEW_RETURNING, "new_users")? as u64,
        returning_users: number(&new_returning, panels::NEW_RETURNING, "returning_users")? as u64,
        top_users,
    })
}

/// A breakdown panel's rows (label, events) with each label's percentage of the total.
pub fn shares(table: &Table) -> Vec<Share> {
    let counts: Vec<(String, u64)> = (0..table.rows.len())
        .map(|row| {
            let events = table.number(row, "events").unwrap_or(0.0) as u64;
            (table.text(row, 0), events)
        })
        .collect();
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    counts
        .into_iter()
        .map(|(label, events)| Share {
            label,
            events,
            percent: if total == 0 {
                0.0
            } else {
                100.0 * events as f64 / total as f64
            },
        })
        .collect()
}

/// The screen for `snapshot`, `source` naming where it came from.
pub fn render(snapshot: &Snapshot, source: &str) -> String {
    let s = snapshot;
    let mut out = String::new();
    let minutes = (s.window.to - s.window.from).num_seconds() as f64 / 60.0;
    let _ = writeln!(
        out,
        "clickstream-top · {source} · last {minutes} min ({} – {} UTC)",
        s.window.from.format("%H:%M:%S"),
        s.window.to.format("%H:%M:%S"),
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "events {}   unique users {}   sessions {}   avg time on page {:.2} s",
        thousands(s.events),
        thousands(s.users),
        thousands(s.sessions),
        s.avg_duration_s
    );
    let _ = writeln!(
        out,
        "revenue {}   revenue last 5 min {}",
        money(s.revenue),
        money(s.revenue_last_5m),
    );
    let _ = writeln!(
        out,
        "pipeline latency (Kafka to queryable) p50 {:.3} s  p99 {:.3} s   event lateness (event to Kafka) p50 {:.3} s  p99 {:.3} s",
        s.latency_p50_s, s.latency_p99_s, s.lateness_p50_s, s.lateness_p99_s
    );
    for (title, shares) in [
        ("Event type", &s.event_types),
        ("Device", &s.devices),
        ("Referrer", &s.referrers),
    ] {
        let _ = writeln!(out);
        let _ = writeln!(out, "{title:<24} {:>12} {:>7}", "events", "%");
        for share in shares {
            let _ = writeln!(
                out,
                "{:<24} {:>12} {:>6.1}%  {}",
                truncate(&share.label, 24),
                thousands(share.events),
                share.percent,
                bar(share.percent)
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<40} {:>10} {:>10} {:>10}",
        "Top pages", "views", "users", "avg s"
    );
    for page in &s.top_pages {
        let _ = writeln!(
            out,
            "{:<40} {:>10} {:>10} {:>10.2}",
            truncate(&page.page_url, 40),
            thousands(page.views),
            thousands(page.users),
            page.avg_duration_s
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "users today (UTC days of the window): new {}   returning {}",
        thousands(s.new_users),
        thousands(s.returning_users)
    );
    let _ = writeln!(
        out,
        "{:<40} {:>10} {:>10} {:>10}",
        "Top users by revenue", "revenue", "purchases", "events"
    );
    for user in &s.top_users {
        let _ = writeln!(
            out,
            "{:<40} {:>10} {:>10} {:>10}",
            truncate(&user.user_id, 40),
            money(user.revenue),
            thousands(user.purchases),
            thousands(user.events)
        );
    }
    out
}

/// What failed, for a person: unreachable ClickHouse gets its own message.
pub fn describe_error(error: &Error, settings: &Settings) -> String {
    if let Some(failure) = error.tls_failure() {
        let hint = match failure {
            clickstream_connect::TlsFailure::ServerCertificate(_) => {
                "Give the CA that signed the server's certificate with --ca-file (CLICKHOUSE_CA_FILE)."
            }
            clickstream_connect::TlsFailure::ClientCertificate(_) => {
                "Give a client certificate the server trusts with --client-cert-file and --client-key-file."
            }
            clickstream_connect::TlsFailure::Handshake(_) => {
                "Does the URL's port serve HTTPS (ClickHouse: 8443)?"
            }
        };
        format!(
            "ClickHouse at {}: TLS failed: {failure}\n\n{hint}",
            settings.url()
        )
    } else if error.is_unreachable() {
        format!(
            "ClickHouse at {} is unreachable: {}\n\nIs it running, and is the URL right \
             (--url / CLICKHOUSE_URL)?",
            settings.url(),
            error.describe()
        )
    } else {
        format!(
            "Reading from ClickHouse at {} failed: {}",
            settings.url(),
            error.describe()
        )
    }
}

/// The screen when a refresh failed: what failed, and that it keeps trying.
pub fn render_error(error: &Error, settings: &Settings, at: DateTime<Utc>) -> String {
    format!(
        "clickstream-top · {} UTC\n\n{}\n\nRetrying every {} s (Ctrl-C to quit).\n",
        at.format("%H:%M:%S"),
        describe_error(error, settings),
        settings.refresh.as_secs()
    )
}

/// One refresh: the screen's text, or the error.
pub async fn frame(
    client: &clickhouse::Client,
    queries: &Queries,
    settings: &Settings,
    now: DateTime<Utc>,
) -> Result<String, Error> {
    let window = QueryWindow::last(settings.window, now, 300);
    let snapshot = collect(client, queries, window).await?;
    Ok(render(
        &snapshot,
        &format!("{} ({})", settings.url(), settings.database),
    ))
}

/// Redraws every `settings.refresh` until `shutdown` completes.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let queries = Queries::from_dashboards(&settings.database)?;
    let client = settings.client()?;
    tokio::pin!(shutdown);
    loop {
        let now = Utc::now();
        let screen = match frame(&client, &queries, &settings, now).await {
            Ok(screen) => screen,
            Err(error) => render_error(&error, &settings, now),
        };
        // clear the screen, cursor home
        print!("\x1b[2J\x1b[H{screen}");
        tokio::select! {
            _ = tokio::time::sleep(settings.refresh) => {}
            _ = &mut shutdown => return Ok(()),
        }
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    out
}

fn money(amount: f64) -> String {
    let cents = (amount * 100.0).round() as u64;
    format!("{}.{:02}", thousands(cents / 100), cents % 100)
}

fn bar(percent: f64) -> String {
    "█".repeat((percent / 5.0).round().clamp(0.0, 20.0) as usize)
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(width - 1).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn table(json: &str) -> Table {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn shares_add_up_to_100_percent() {
        let t = table(
            r#"{"meta":[{"name":"device_type","type":"String"},{"name":"events","type":"UInt64"}],
                "data":[["mobile",600],["desktop",300],["tablet",100]]}"#,
        );
        let shares = shares(&t);
        assert_eq!(shares.len(), 3);
        assert_eq!(shares[0].label, "mobile");
        assert_eq!(shares[0].events, 600);
        assert!((shares[0].percent - 60.0).abs() < 1e-9);
        assert!((shares.iter().map(|s| s.percent).sum::<f64>() - 100.0).abs() < 1e-9);
    }

    #[test]
    fn a_url_with_credentials_or_another_scheme_is_refused_naming_the_flag() {
        for url in [
            "http://reader:pw@ch:8123",
            "http://ch:8123/?password=pw",
            "ftp://ch",
        ] {
            let settings = Settings {
                clickhouse_url: url.into(),
                user: None,
                password: None,
                password_file: None,
                tls: Tls::default(),
                database: "clickstream".into(),
                window: Duration::from_secs(300),
                refresh: Duration::from_secs(5),
            };
            let error = settings.client().map(|_| ()).unwrap_err().to_string();
            assert!(error.starts_with("--url: "), "{url}: {error}");
        }
    }

    #[test]
    fn no_events_means_zero_percent_not_nan() {
        let t = table(
            r#"{"meta":[{"name":"x","type":"String"},{"name":"events","type":"UInt64"}],"data":[["a",0]]}"#,
        );
        assert_eq!(shares(&t)[0].percent, 0.0);
    }

    #[test]
    fn render_shows_every_number() {
        let to = Utc.with_ymd_and_hms(2026, 11, 23, 12, 5, 0).unwrap();
        let snapshot = Snapshot {
            window: QueryWindow::last(Duration::from_secs(300), to, 300),
            events: 1_234_567,
            users: 4_321,
            sessions: 765,
            revenue: 98_765.4,
            avg_duration_s: 2.5,
            revenue_last_5m: 1_000.0,
            event_types: vec![Share {
                label: "page_view".into(),
                events: 1_000,
                percent: 40.0,
            }],
            devices: vec![],
            referrers: vec![],
            top_pages: vec![PageLine {
                page_url: "/checkout".into(),
                views: 42,
                users: 40,
                avg_duration_s: 3.25,
            }],
            latency_p50_s: 0.8,
            latency_p99_s: 2.5,
            lateness_p50_s: 0.1,
            lateness_p99_s: 3600.0,
            new_users: 12,
            returning_users: 34,
            top_users: vec![UserLine {
                user_id: "user_0042".into(),
                revenue: 512.5,
                purchases: 3,
                events: 77,
            }],
        };
        let screen = render(&snapshot, "http://ch:8123 (clickstream)");
        for expected in [
            "last 5 min (12:00:00 – 12:05:00 UTC)",
            "events 1 234 567",
            "unique users 4 321",
            "sessions 765",
            "revenue 98 765.40",
            "revenue last 5 min 1 000.00",
            "pipeline latency (Kafka to queryable) p50 0.800 s  p99 2.500 s",
            "event lateness (event to Kafka) p50 0.100 s  p99 3600.000 s",
            "page_view",
            "40.0%",
            "/checkout",
            "3.25",
            "new 12   returning 34",
            "user_0042",
            "512.50",
        ] {
            assert!(
                screen.contains(expected),
                "{expected:?} missing in\n{screen}"
            );
        }
    }

    #[test]
    fn queries_come_from_the_dashboards_renamed_and_expanded() {
        let queries = Queries::from_dashboards("it_db").unwrap();
        let to = Utc.with_ymd_and_hms(2026, 11, 23, 12, 5, 0).unwrap();
        let window = QueryWindow::last(Duration::from_secs(300), to, 300);
        let sql = queries.expanded(panels::EVENT_MIX, &window).unwrap();
        assert!(sql.contains("FROM it_db.events_1m"), "{sql}");
        assert!(!sql.contains("$__"), "{sql}");
        assert!(
            sql.contains(&format!("toDateTime({})", to.timestamp())),
            "{sql}"
        );
    }

    #[test]
    fn helpers_format_numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1 000");
        assert_eq!(money(12.3), "12.30");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(bar(50.0).chars().count(), 10);
    }
}
