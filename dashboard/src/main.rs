//! `clickstream-top`: the live dashboard's key numbers in the terminal.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clickstream_connect::Tls;
use clickstream_dashboard::top::{self, Settings};

/// Shows events, users, revenue, breakdowns, top pages and latency of the last few minutes,
/// read from ClickHouse with the same SQL as the Grafana dashboards, redrawn every few seconds.
#[derive(Debug, Parser)]
#[command(name = "clickstream-top", version)]
struct Args {
    /// ClickHouse HTTP URL.
    #[arg(long, env = "CLICKHOUSE_URL", default_value = "http://127.0.0.1:8123")]
    url: String,
    /// ClickHouse user (the read-only one is enough).
    #[arg(long, env = "CLICKHOUSE_USER")]
    user: Option<String>,
    /// ClickHouse password.
    #[arg(long, env = "CLICKHOUSE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A file holding the ClickHouse password (trailing newline ignored).
    #[arg(
        long,
        env = "CLICKHOUSE_PASSWORD_FILE",
        value_name = "FILE",
        conflicts_with = "password"
    )]
    password_file: Option<PathBuf>,
    /// For https://: PEM CA certificate to trust instead of the system's CAs.
    #[arg(long, env = "CLICKHOUSE_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --client-key-file).
    #[arg(long, value_name = "FILE", requires = "client_key_file")]
    client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long, value_name = "FILE", requires = "client_cert_file")]
    client_key_file: Option<PathBuf>,
    /// Database with the clickstream schema.
    #[arg(long, default_value = "clickstream")]
    database: String,
    /// The window the numbers cover: the last N minutes.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    window_minutes: u64,
    /// Seconds between redraws.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    refresh_secs: u64,
    /// Print one screen and exit (exit code 1 if ClickHouse cannot be read).
    #[arg(long)]
    once: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let settings = Settings {
        clickhouse_url: args.url,
        user: args.user,
        password: args.password,
        password_file: args.password_file,
        tls: Tls {
            ca_file: args.ca_file,
            client_cert_file: args.client_cert_file,
            client_key_file: args.client_key_file,
        },
        database: args.database,
        window: Duration::from_secs(args.window_minutes * 60),
        refresh: Duration::from_secs(args.refresh_secs),
    };
    if args.once {
        let queries = top::Queries::from_dashboards(&settings.database)?;
        let now = chrono::Utc::now();
        let client = settings.client()?;
        match top::frame(&client, &queries, &settings, now).await {
            Ok(screen) => print!("{screen}"),
            Err(error) => {
                eprintln!(
                    "clickstream-top: {}",
                    top::describe_error(&error, &settings)
                );
                std::process::exit(1);
            }
        }
        return Ok(());
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    top::run(settings, shutdown).await?;
    Ok(())
}
