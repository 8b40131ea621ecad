//! `clickstream-sink`: loads settings, installs tracing, runs the sink until SIGINT/SIGTERM,
//! or runs one of the operations commands (verify, replay, dlq) with the same settings.

use clap::{ArgMatches, Command};
use clickstream_sink::settings::{self, Overrides, Settings};
use tokio_util::sync::CancellationToken;

mod commands;

const ABOUT: &str =
    "Consumes click events from Kafka and writes them exactly once into ClickHouse.";
const LONG_ABOUT: &str =
    "Consumes click events from Kafka and writes them exactly once into ClickHouse.

Settings come from (lowest first) defaults, --config FILE (TOML, keys as the flags with `_`),
environment CLICKSTREAM_SINK_<KEY> (plus KAFKA_BROKERS, CLICKHOUSE_URL, CLICKHOUSE_USER,
CLICKHOUSE_PASSWORD, CLICKHOUSE_PASSWORD_FILE, CLICKHOUSE_CA_FILE; librdkafka properties as
CLICKSTREAM_SINK_KAFKA__SECURITY_PROTOCOL=...), then flags. The README's settings table lists
every key, flags or not.

Without a command the sink runs. The commands take the same settings (flags before or after
the command) and exit 0 when all is well, 1 when they find a problem, 2 for bad usage.";

/// The command line, made from the settings' own definitions ([`settings::KEYS`]).
fn command() -> Command {
    Command::new("clickstream-sink")
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .long_about(LONG_ABOUT)
        .args(clickstream_settings::flags(
            settings::KEYS,
            settings::default_shown,
            "librdkafka property for consumer and dead-letter producer (TLS, SASL, ...), repeatable",
        ))
        .subcommands(commands::all())
}

fn overrides(matches: &ArgMatches) -> anyhow::Result<Overrides> {
    clickstream_settings::overrides(matches, settings::KEYS).map_err(anyhow::Error::msg)
}

fn main() -> anyhow::Result<()> {
    let matches = command().get_matches();
    let settings = match Settings::load(&overrides(&matches)?) {
        Ok(settings) => settings,
        Err(error) if matches.subcommand().is_some() => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
        Err(error) => return Err(error.into()),
    };
    if let Some((name, sub)) = matches.subcommand() {
        // The commands print their reports on stdout; their logs (warnings only) follow
        // `log_format` like the sink's.
        clickstream_settings::init_logging(settings.log_format, "warn,rdkafka=error");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let code = runtime.block_on(commands::run(name, sub, &settings));
        std::process::exit(code);
    }
    clickstream_settings::init_logging(settings.log_format, "info,rdkafka=warn");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The rebalance callback may block one worker while a flush finishes on another.
        .worker_threads(
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .max(2),
        )
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
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
    });
    if let Err(error) = result {
        // Once, as a log line (JSON too with `log_format = "json"`), the last thing it says.
        let text = clickstream_connect::describe(&error);
        tracing::error!("the sink stopped: {text}");
        if !tracing::enabled!(tracing::Level::ERROR) {
            // Filtered out (RUST_LOG): said anyway.
            eprintln!("error: the sink stopped: {text}");
        }
        std::process::exit(1);
    }
    Ok(())
}
