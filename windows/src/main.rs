//! `clickstream-windows`: loads settings, installs tracing, publishes closed windows until
//! SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Arg, ArgAction, ArgMatches, Command};
use clickstream_windows::settings::{self, LogFormat, Overrides, Settings};
use tokio_util::sync::CancellationToken;

const ABOUT: &str = "Publishes each closed window of the ClickHouse rollups as one JSON message on a Kafka topic, exactly once per window and revision.

Settings come from (lowest first) defaults, --config FILE (TOML, keys as the flags with `_`),
environment CLICKSTREAM_WINDOWS_<KEY> (plus KAFKA_BROKERS, CLICKHOUSE_URL, CLICKHOUSE_USER,
CLICKHOUSE_PASSWORD, CLICKHOUSE_PASSWORD_FILE, CLICKHOUSE_CA_FILE; librdkafka properties as
CLICKSTREAM_WINDOWS_KAFKA__SECURITY_PROTOCOL=...), then flags.";

fn command() -> Command {
    let mut command = Command::new("clickstream-windows")
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .help("TOML settings file"),
        );
    for key in settings::KEYS {
        let help = if key.secret {
            key.help.to_owned()
        } else {
            format!(
                "{} [default: {}]",
                key.help,
                settings::default_shown(key.name)
            )
        };
        command = command.arg(Arg::new(key.name).long(key.flag_name()).help(help));
    }
    command.arg(
        Arg::new("kafka")
            .short('X')
            .value_name("KEY=VALUE")
            .action(ArgAction::Append)
            .help("librdkafka property (TLS, SASL, ...), repeatable"),
    )
}

fn overrides(matches: &ArgMatches) -> anyhow::Result<Overrides> {
    let values = settings::KEYS
        .iter()
        .filter_map(|key| {
            matches
                .get_one::<String>(key.name)
                .map(|value| (key.name.to_owned(), value.clone()))
        })
        .collect();
    let kafka = matches
        .get_many::<String>("kafka")
        .into_iter()
        .flatten()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("-X {pair}: expected KEY=VALUE"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Overrides {
        config_file: matches.get_one::<String>("config").map(PathBuf::from),
        values,
        kafka,
    })
}

fn main() -> anyhow::Result<()> {
    let matches = command().get_matches();
    let settings = Settings::load(&overrides(&matches)?)?;
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
