//! `clickstream-sink`: loads settings, installs tracing, runs the sink until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use clickstream_sink::settings::{Delivery, LogFormat, Overrides, Settings};
use tokio_util::sync::CancellationToken;

/// Consumes click events from Kafka and writes them exactly once into ClickHouse.
///
/// Settings come from (lowest first) defaults, --config FILE (TOML, keys as below with `_`),
/// environment CLICKSTREAM_SINK_<KEY> (plus KAFKA_BROKERS, CLICKHOUSE_URL; librdkafka
/// properties as CLICKSTREAM_SINK_KAFKA__SECURITY_PROTOCOL=...), then flags.
#[derive(Debug, Parser)]
#[command(name = "clickstream-sink", version)]
struct Cli {
    /// TOML settings file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers [default: localhost:9092].
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: Option<String>,
    /// Topic to consume [default: clickstream-events].
    #[arg(long)]
    topic: Option<String>,
    /// Consumer group [default: clickstream-sink].
    #[arg(long)]
    group: Option<String>,
    /// Dead-letter topic [default: clickstream-dlq].
    #[arg(long)]
    dlq_topic: Option<String>,
    /// ClickHouse HTTP URL [default: http://localhost:8123].
    #[arg(long, env = "CLICKHOUSE_URL")]
    clickhouse_url: Option<String>,
    /// ClickHouse user [default: default].
    #[arg(long, env = "CLICKHOUSE_USER")]
    clickhouse_user: Option<String>,
    /// ClickHouse password [default: empty].
    #[arg(long, env = "CLICKHOUSE_PASSWORD", hide_env_values = true)]
    clickhouse_password: Option<String>,
    /// File holding the ClickHouse password, e.g. a Docker or Kubernetes secret [default: none].
    #[arg(long, env = "CLICKHOUSE_PASSWORD_FILE", value_name = "FILE")]
    clickhouse_password_file: Option<String>,
    /// PEM CA certificate to trust for https:// instead of the system's CAs [default: none].
    #[arg(long, env = "CLICKHOUSE_CA_FILE", value_name = "FILE")]
    clickhouse_ca_file: Option<String>,
    /// PEM client certificate for mutual TLS with ClickHouse [default: none].
    #[arg(long, value_name = "FILE")]
    clickhouse_client_cert_file: Option<String>,
    /// PEM private key of the client certificate [default: none].
    #[arg(long, value_name = "FILE")]
    clickhouse_client_key_file: Option<String>,
    /// Database [default: clickstream].
    #[arg(long)]
    database: Option<String>,
    /// Table [default: events].
    #[arg(long)]
    table: Option<String>,
    /// Flush when a batch has this many rows [default: 1000].
    #[arg(long)]
    max_rows: Option<usize>,
    /// Flush when the oldest buffered row is this old [default: 5000].
    #[arg(long)]
    flush_interval_ms: Option<u64>,
    /// Pause consuming above this many buffered bytes [default: 67108864].
    #[arg(long)]
    max_batch_bytes: Option<usize>,
    /// At most about this many flushes per second; batches grow instead [default: 2].
    #[arg(long)]
    max_inserts_per_second: Option<f64>,
    /// Delivery guarantee [default: exactly-once].
    #[arg(long, value_enum)]
    delivery: Option<Delivery>,
    /// Dead-letter messages larger than this [default: 65536].
    #[arg(long)]
    max_message_bytes: Option<usize>,
    /// Address for /metrics, /health, /ready, or "off" [default: 0.0.0.0:9100].
    #[arg(long)]
    http_addr: Option<String>,
    /// Log format [default: human].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// librdkafka property for consumer and dead-letter producer (TLS, SASL, ...), repeatable.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    kafka: Vec<String>,
}

impl Cli {
    fn overrides(&self) -> anyhow::Result<Overrides> {
        let mut values: Vec<(String, String)> = Vec::new();
        let mut put = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                values.push((key.to_owned(), value));
            }
        };
        put("brokers", self.brokers.clone());
        put("topic", self.topic.clone());
        put("group", self.group.clone());
        put("dlq_topic", self.dlq_topic.clone());
        put("clickhouse_url", self.clickhouse_url.clone());
        put("clickhouse_user", self.clickhouse_user.clone());
        put("clickhouse_password", self.clickhouse_password.clone());
        put(
            "clickhouse_password_file",
            self.clickhouse_password_file.clone(),
        );
        put("clickhouse_ca_file", self.clickhouse_ca_file.clone());
        put(
            "clickhouse_client_cert_file",
            self.clickhouse_client_cert_file.clone(),
        );
        put(
            "clickhouse_client_key_file",
            self.clickhouse_client_key_file.clone(),
        );
        put("database", self.database.clone());
        put("table", self.table.clone());
        put("max_rows", self.max_rows.map(|v| v.to_string()));
        put(
            "flush_interval_ms",
            self.flush_interval_ms.map(|v| v.to_string()),
        );
        put(
            "max_batch_bytes",
            self.max_batch_bytes.map(|v| v.to_string()),
        );
        put(
            "max_inserts_per_second",
            self.max_inserts_per_second.map(|v| v.to_string()),
        );
        put("delivery", self.delivery.map(|v| enum_name(&v)));
        put(
            "max_message_bytes",
            self.max_message_bytes.map(|v| v.to_string()),
        );
        put("http_addr", self.http_addr.clone());
        put("log_format", self.log_format.map(|v| enum_name(&v)));
        let kafka = self
            .kafka
            .iter()
            .map(|pair| {
                pair.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .with_context(|| format!("-X {pair}: expected KEY=VALUE"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Overrides {
            config_file: self.config.clone(),
            values,
            kafka,
        })
    }
}

fn enum_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(&cli.overrides()?)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    match settings.log_format {
        LogFormat::Human => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The rebalance callback may block one worker while a flush finishes on another.
        .worker_threads(
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .max(2),
        )
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("install SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("signal received: stopping consumption, flushing, committing");
            signals.cancel();
        });
        clickstream_sink::run(settings, shutdown).await
    })?;
    Ok(())
}
