//! Typed settings, and the command line that fills them. Every value is checked when the flags
//! are parsed, and a bad one fails at start with its flag named.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::Error;
use crate::pacer::Rate;
use crate::simulator::SimulatorConfig;

/// Everything `run` needs. `Debug` shows secret librdkafka properties as `<redacted>`.
#[derive(Clone, PartialEq)]
pub struct Settings {
    /// Kafka bootstrap servers, comma-separated.
    pub brokers: String,
    pub topic: String,
    /// Partitions of the topic if the producer creates it (an existing topic is used as it is).
    pub partitions: i32,
    /// Replication factor of the topic if the producer creates it.
    pub replication_factor: i32,
    pub rate: Rate,
    /// Stop after this many messages (events and poison).
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    pub simulator: SimulatorConfig,
    /// librdkafka properties for the producer and the admin client; they override the
    /// producer defaults ([`crate::kafka::PRODUCER_DEFAULTS`]).
    pub kafka_properties: Vec<(String, String)>,
    /// How often the progress line is logged.
    pub progress_interval: Duration,
    /// How long to wait for outstanding deliveries at the end.
    pub flush_timeout: Duration,
    /// Where to serve `/metrics` and `/health`; `None`: no endpoint.
    pub metrics_addr: Option<SocketAddr>,
}

/// librdkafka properties whose values are secrets: the sink's and the windows' rule.
pub use clickstream_settings::is_secret_kafka_property;

impl std::fmt::Debug for Settings {
    /// Every field (destructured: a new one cannot be forgotten), secrets redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Settings {
            brokers,
            topic,
            partitions,
            replication_factor,
            rate,
            count,
            duration,
            simulator,
            kafka_properties,
            progress_interval,
            flush_timeout,
            metrics_addr,
        } = self;
        let properties: Vec<(&str, &str)> = kafka_properties
            .iter()
            .map(|(key, value)| {
                let shown = if is_secret_kafka_property(key) {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                (key.as_str(), shown)
            })
            .collect();
        f.debug_struct("Settings")
            .field("brokers", brokers)
            .field("topic", topic)
            .field("partitions", partitions)
            .field("replication_factor", replication_factor)
            .field("rate", rate)
            .field("count", count)
            .field("duration", duration)
            .field("simulator", simulator)
            .field("kafka_properties", &properties)
            .field("progress_interval", progress_interval)
            .field("flush_timeout", flush_timeout)
            .field("metrics_addr", metrics_addr)
            .finish()
    }
}

pub fn default_topic() -> String {
    "clickstream-events".to_owned()
}
pub fn default_partitions() -> i32 {
    3
}
pub fn default_rate() -> Rate {
    Rate::PerSecond(100.0)
}
pub fn default_progress_interval() -> Duration {
    Duration::from_secs(5)
}
pub fn default_flush_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Settings {
    /// The defaults, for `brokers`.
    pub fn new(brokers: impl Into<String>) -> Settings {
        Settings {
            brokers: brokers.into(),
            topic: default_topic(),
            partitions: default_partitions(),
            replication_factor: 1,
            rate: default_rate(),
            count: None,
            duration: None,
            simulator: SimulatorConfig::default(),
            kafka_properties: Vec::new(),
            progress_interval: default_progress_interval(),
            flush_timeout: default_flush_timeout(),
            metrics_addr: None,
        }
    }
}

/// Simulates the users of an online shop and publishes their click events to Kafka as JSON,
/// keyed by user id.
///
/// Runs until --count or --duration is reached, or until Ctrl-C / SIGTERM; then waits for
/// outstanding deliveries, prints a JSON summary on stdout, and exits with 1 if any message
/// could not be delivered.
///
/// Every flag but -X can also be set in the environment (shown as [env: ...]); a flag wins
/// over it. Another CLICKSTREAM_PRODUCER_* variable (a typo) stops start-up.
#[derive(Debug, Parser)]
#[command(name = "clickstream-producer", version, max_term_width = 100)]
pub struct Args {
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,

    /// Topic to publish to; created when missing.
    #[arg(long, env = "CLICKSTREAM_PRODUCER_TOPIC", default_value = "clickstream-events", value_parser = topic_name)]
    pub topic: String,

    /// Partitions of the topic when it is created (an existing topic is used as it is, with a
    /// warning when its number differs).
    #[arg(long, env = "CLICKSTREAM_PRODUCER_PARTITIONS", allow_negative_numbers = true, default_value_t = default_partitions(), value_parser = clap::value_parser!(i32).range(1..=100_000))]
    pub partitions: i32,

    /// Replication factor of the topic when it is created.
    #[arg(long, env = "CLICKSTREAM_PRODUCER_REPLICATION_FACTOR", allow_negative_numbers = true, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=32))]
    pub replication_factor: i32,

    /// Events per second (fractions allowed, e.g. 0.5), or `max` for as fast as possible.
    #[arg(long, env = "CLICKSTREAM_PRODUCER_RATE", default_value = "100")]
    pub rate: Rate,

    /// Stop after this many messages.
    #[arg(long, env = "CLICKSTREAM_PRODUCER_COUNT", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Stop after this long, e.g. 90s, 10m, 1h30m.
    #[arg(long, env = "CLICKSTREAM_PRODUCER_DURATION", value_parser = positive_duration)]
    pub duration: Option<Duration>,

    /// Number of simulated users (user_0000, user_0001, ...).
    #[arg(long, env = "CLICKSTREAM_PRODUCER_USERS", allow_negative_numbers = true, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub users: u32,

    /// Seed of the simulated content; the same seed replays the same clicks (with new event
    /// ids and the current time). Default: a random seed, logged at start.
    #[arg(long, env = "CLICKSTREAM_PRODUCER_SEED")]
    pub seed: Option<u64>,

    /// Share of messages replaced by poison of every kind (invalid JSON, invalid UTF-8, empty,
    /// missing fields, wrong types, unknown event type, out-of-range values, future timestamps,
    /// oversized), 0 to 1.
    #[arg(long, env = "CLICKSTREAM_PRODUCER_BAD_RATIO", allow_negative_numbers = true, default_value_t = 0.0, value_parser = ratio)]
    pub bad_ratio: f64,

    /// Share of messages that are valid events with a timestamp 2 minutes to 6 hours in the
    /// past, 0 to 1.
    #[arg(long, env = "CLICKSTREAM_PRODUCER_LATE_RATIO", allow_negative_numbers = true, default_value_t = 0.0, value_parser = ratio)]
    pub late_ratio: f64,

    /// A session without events for this long ends.
    #[arg(long, env = "CLICKSTREAM_PRODUCER_SESSION_TIMEOUT", default_value = "30m", value_parser = positive_duration)]
    pub session_timeout: Duration,

    /// A librdkafka property for the producer and the admin client, repeatable:
    /// -X security.protocol=SASL_SSL -X sasl.mechanism=PLAIN -X sasl.username=...
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = property)]
    pub properties: Vec<(String, String)>,

    /// How often to log a progress line.
    #[arg(long, env = "CLICKSTREAM_PRODUCER_PROGRESS_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub progress_interval: Duration,

    /// How long to wait for outstanding deliveries before giving up at the end.
    #[arg(long, env = "CLICKSTREAM_PRODUCER_FLUSH_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub flush_timeout: Duration,

    /// Serve Prometheus /metrics and /health on this address (IP:PORT, e.g. 0.0.0.0:9101).
    /// Default: no endpoint.
    #[arg(
        long,
        env = "CLICKSTREAM_PRODUCER_METRICS_ADDR",
        value_name = "IP:PORT"
    )]
    pub metrics_addr: Option<SocketAddr>,
}

impl Args {
    /// Checks what single flags cannot; `seed` fills in a missing --seed.
    pub fn into_settings(self, seed: impl FnOnce() -> u64) -> Result<Settings, Error> {
        if self.bad_ratio + self.late_ratio > 1.0 {
            return Err(Error::InvalidSetting {
                flag: "--bad-ratio, --late-ratio",
                reason: format!(
                    "{} + {} is more than 1: at most all messages can be bad or late",
                    self.bad_ratio, self.late_ratio
                ),
            });
        }
        let session_timeout = chrono::Duration::from_std(self.session_timeout).map_err(|_| {
            Error::InvalidSetting {
                flag: "--session-timeout",
                reason: "too long".to_owned(),
            }
        })?;
        Ok(Settings {
            brokers: self.brokers,
            topic: self.topic,
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            rate: self.rate,
            count: self.count,
            duration: self.duration,
            simulator: SimulatorConfig {
                users: self.users,
                seed: self.seed.unwrap_or_else(seed),
                bad_ratio: self.bad_ratio,
                late_ratio: self.late_ratio,
                session_timeout,
            },
            kafka_properties: self.properties,
            progress_interval: self.progress_interval,
            flush_timeout: self.flush_timeout,
            metrics_addr: self.metrics_addr,
        })
    }
}

fn topic_name(text: &str) -> Result<String, String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if text.is_empty()
        || text.len() > 249
        || !text.chars().all(legal)
        || text == "."
        || text == ".."
    {
        return Err(format!(
            "{text:?} is not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)"
        ));
    }
    Ok(text.to_owned())
}

fn ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{text:?} is not a share from 0 to 1 (e.g. 0.01)")),
    }
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err("must be more than 0".to_owned()),
        Err(error) => Err(format!("{error} (examples: 500ms, 90s, 10m, 1h30m)")),
    }
}

/// The `CLICKSTREAM_PRODUCER_*` variables among `vars` that no flag reads (a misspelt one was
/// ignored without a word).
pub fn unknown_variables(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let command = <Args as clap::CommandFactory>::command();
    let known: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    vars.into_iter()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("CLICKSTREAM_PRODUCER_") && !known.contains(name))
        .collect()
}

fn property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        // It would override --brokers (and the start line would name the wrong servers).
        Some((key, _))
            if clickstream_settings::owned_kafka_property(key, &[("bootstrap.servers", "")])
                .is_some() =>
        {
            Err(format!("{}: use --brokers (or KAFKA_BROKERS)", key.trim()))
        }
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((clickstream_settings::kafka_key(key), value.to_owned()))
        }
        _ => Err(format!(
            "{text:?} is not KEY=VALUE (e.g. security.protocol=SASL_SSL)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(["clickstream-producer"].iter().chain(args))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_issue() {
        let settings = parse(&["--brokers", "b:9092"])
            .unwrap()
            .into_settings(|| 77)
            .unwrap();
        let expected = Settings {
            simulator: SimulatorConfig {
                seed: 77,
                ..SimulatorConfig::default()
            },
            ..Settings::new("b:9092")
        };
        assert_eq!(settings, expected);
        assert_eq!(settings.topic, "clickstream-events");
        assert_eq!(settings.partitions, 3);
        assert_eq!(settings.rate, Rate::PerSecond(100.0));
        assert_eq!(settings.simulator.users, 500);
    }

    #[test]
    fn every_flag_reaches_the_settings() {
        let settings = parse(&[
            "--brokers=k1:9092,k2:9092",
            "--topic=clicks.v2",
            "--partitions=6",
            "--replication-factor=3",
            "--rate=max",
            "--count=5000",
            "--duration=1h30m",
            "--users=20000",
            "--seed=42",
            "--bad-ratio=0.01",
            "--late-ratio=0.1",
            "--session-timeout=10m",
            "-X",
            "security.protocol=SASL_SSL",
            "-Xsasl.password=a=b",
            "--progress-interval=1s",
            "--flush-timeout=2m",
            "--metrics-addr=0.0.0.0:9101",
        ])
        .unwrap()
        .into_settings(|| unreachable!("--seed given"))
        .unwrap();
        assert_eq!(
            settings,
            Settings {
                brokers: "k1:9092,k2:9092".into(),
                topic: "clicks.v2".into(),
                partitions: 6,
                replication_factor: 3,
                rate: Rate::Max,
                count: Some(5_000),
                duration: Some(Duration::from_secs(5_400)),
                simulator: SimulatorConfig {
                    users: 20_000,
                    seed: 42,
                    bad_ratio: 0.01,
                    late_ratio: 0.1,
                    session_timeout: chrono::Duration::minutes(10),
                },
                kafka_properties: vec![
                    ("security.protocol".into(), "SASL_SSL".into()),
                    ("sasl.password".into(), "a=b".into()),
                ],
                progress_interval: Duration::from_secs(1),
                flush_timeout: Duration::from_secs(120),
                metrics_addr: Some("0.0.0.0:9101".parse().unwrap()),
            }
        );
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("a=b"),
            "the SASL password in Debug: {shown}"
        );
        assert!(
            shown.contains("SASL_SSL") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn bad_values_fail_with_the_flag_named() {
        for (args, flag) in [
            (&["--rate", "fast"][..], "--rate"),
            (&["--rate", "0"], "--rate"),
            (&["--count", "0"], "--count"),
            (&["--count", "-3"], "--count"),
            (&["--users", "-1"], "--users"),
            (&["--duration", "10 parsecs"], "--duration"),
            (&["--duration", "0s"], "--duration"),
            (&["--users", "0"], "--users"),
            (&["--partitions", "0"], "--partitions"),
            (&["--bad-ratio", "1.5"], "--bad-ratio"),
            (&["--late-ratio", "-0.1"], "--late-ratio"),
            (&["--topic", "no spaces"], "--topic"),
            (&["-X", "novalue"], "-X"),
            (&["-X", "bootstrap.servers=b:9"], "--brokers"),
            (&["--seed", "x"], "--seed"),
            (&["--metrics-addr", "localhost"], "--metrics-addr"),
        ] {
            let error = parse(args).expect_err(&format!("{args:?} accepted"));
            let message = error.to_string();
            assert!(message.contains(flag), "{args:?}: {message}");
        }
        let error = parse(&["--bad-ratio", "0.6", "--late-ratio", "0.6"])
            .unwrap()
            .into_settings(|| 1)
            .expect_err("ratios above 1 in total");
        assert!(error.to_string().contains("--bad-ratio"), "{error}");
    }

    #[test]
    fn variables_no_flag_reads_are_found() {
        let vars = [
            ("CLICKSTREAM_PRODUCER_RATE", "5"),
            ("CLICKSTREAM_PRODUCER_RATES", "5"),
            ("CLICKSTREAM_PRODUCER_KAFKA__ACKS", "1"),
            ("KAFKA_BROKERS", "b:1"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(
            unknown_variables(vars),
            [
                "CLICKSTREAM_PRODUCER_RATES",
                "CLICKSTREAM_PRODUCER_KAFKA__ACKS"
            ]
        );
    }

    #[test]
    fn brokers_come_from_the_environment_variable_too() {
        // clap reads KAFKA_BROKERS; the flag wins over it.
        let command = Args::command();
        let brokers = command
            .get_arguments()
            .find(|a| a.get_id() == "brokers")
            .expect("--brokers");
        assert_eq!(
            brokers.get_env(),
            Some(std::ffi::OsStr::new("KAFKA_BROKERS"))
        );
        let settings = parse(&["--brokers", "flag:1"]).unwrap();
        assert_eq!(settings.brokers, "flag:1");
    }

    #[test]
    fn help_documents_every_flag() {
        let help = Args::command().render_long_help().to_string();
        for flag in [
            "--brokers",
            "KAFKA_BROKERS",
            "--topic",
            "--partitions",
            "--rate",
            "--count",
            "--duration",
            "--users",
            "--seed",
            "--bad-ratio",
            "--late-ratio",
            "-X",
            "--progress-interval",
            "--flush-timeout",
            "--metrics-addr",
            "CLICKSTREAM_PRODUCER_RATE",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
        }
    }
}
