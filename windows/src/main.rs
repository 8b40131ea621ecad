//! `clickstream-windows`: loads settings, installs tracing, publishes closed windows until
//! SIGINT/SIGTERM.

use clap::{ArgMatches, Command};
use clickstream_windows::settings::{self, Overrides, Settings};
use tokio_util::sync::CancellationToken;

const ABOUT: &str = "Publishes each closed window of the ClickHouse rollups as one JSON message on a Kafka topic, exactly once per window and revision.

Settings come from (lowest first) defaults, --config FILE (TOML, keys as the flags with `_`),
environment CLICKSTREAM_WINDOWS_<KEY> (plus KAFKA_BROKERS, CLICKHOUSE_URL, CLICKHOUSE_USER,
CLICKHOUSE_PASSWORD, CLICKHOUSE_PASSWORD_FILE, CLICKHOUSE_CA_FILE; librdkafka properties as
CLICKSTREAM_WINDOWS_KAFKA__SECURITY_PROTOCOL=...), then flags.";

/// The command line, made from the settings' own definitions ([`settings::KEYS`]).
fn command() -> Command {
    Command::new("clickstream-windows")
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .args(clickstream_settings::flags(
            settings::KEYS,
            settings::default_shown,
            "librdkafka property (TLS, SASL, ...), repeatable",
        ))
}

fn overrides(matches: &ArgMatches) -> anyhow::Result<Overrides> {
    clickstream_settings::overrides(matches, settings::KEYS).map_err(anyhow::Error::msg)
}

fn main() -> anyhow::Result<()> {
    let matches = command().get_matches();
    let settings = Settings::load(&overrides(&matches)?)?;
    clickstream_settings::init_logging(settings.log_format, "info,rdkafka=warn");
    tracing::info!(settings = ?settings, "starting");
    let runtime = tokio::runtime::Runtime::new()?;
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
            signals.cancel();
        });
        clickstream_windows::run(settings, shutdown).await
    })?;
    Ok(())
}
