//! clickstream-settings: settings defined once, for the sink and `clickstream-windows`; and
//! their Kafka clients' properties and log ([`kafka_log`]), and a producer that serves its
//! delivery reports on a thread of its own ([`PolledProducer`]).
//!
//! A program lists its keys once with [`settings!`] (name, type, default, flag, other
//! environment variables, secret, help). That gives its `Settings` struct (with `Default`,
//! serde, and a `Debug` that shows no secret and no URL credentials), its [`Key`]s (what its
//! command line, `--help` and its README table are made from) and `default_shown`. [`load`]
//! reads the layers, lowest first: the defaults < a TOML file < the environment
//! (`<PREFIX>_<KEY>`, the key's other variables, `<PREFIX>_KAFKA__<PROPERTY>` for librdkafka
//! properties) < flags. The program keeps its own validation (the error names the key).

use std::collections::BTreeMap;
use std::path::PathBuf;

use rdkafka::config::RDKafkaLogLevel;
use serde::Serialize;

#[doc(hidden)]
pub use clickstream_connect;
use serde::de::DeserializeOwned;

/// One setting, as defined once in [`settings!`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The TOML key; `<PREFIX>_<NAME>` in the environment.
    pub name: &'static str,
    /// Whether it has a flag, `--name-with-dashes`.
    pub flag: bool,
    /// Other environment variables read for it (below `<PREFIX>_*`).
    pub env: &'static [&'static str],
    /// Shown as `<redacted>` by `Debug` when set.
    pub secret: bool,
    pub help: &'static str,
}

impl Key {
    /// `--name-with-dashes`, without the dashes.
    pub fn flag_name(&self) -> String {
        self.name.replace('_', "-")
    }

    pub fn value_name(&self) -> &'static str {
        if self.name.ends_with("_file") {
            "FILE"
        } else if self.name.ends_with("_ms") {
            "MS"
        } else {
            "VALUE"
        }
    }
}

/// [`settings!`] with the settings of reaching ClickHouse that every program shares
/// (`clickhouse_url`, `clickhouse_user`, password and its file, TLS files) between the keys
/// `before` and `after`, defined here once; `user` is the help of `clickhouse_user` (which
/// user the program runs as). The struct also gets `connection()` (with its `database`).
#[macro_export]
macro_rules! settings_with_clickhouse {
    ($(#[$meta:meta])* before: { $($before:tt)* } user: $user:literal, after: { $($after:tt)* }) => {
        $crate::settings! {
            $(#[$meta])*
            $($before)*
            clickhouse_url: String = "http://localhost:8123".into(), flag: true, env: ["CLICKHOUSE_URL"], secret: false,
                help: "ClickHouse HTTP(S) URL (`https://host:8443` for TLS); credentials in it are refused";
            clickhouse_user: String = "default".into(), flag: true, env: ["CLICKHOUSE_USER"], secret: false,
                help: $user;
            clickhouse_password: String = String::new(), flag: true, env: ["CLICKHOUSE_PASSWORD"], secret: true,
                help: "its password (prefer the file below)";
            clickhouse_password_file: String = String::new(), flag: true, env: ["CLICKHOUSE_PASSWORD_FILE"], secret: false,
                help: "file holding the password (a Docker or Kubernetes secret), read at start, trailing newline ignored; not together with `clickhouse_password`";
            clickhouse_ca_file: String = String::new(), flag: true, env: ["CLICKHOUSE_CA_FILE"], secret: false,
                help: "for `https://`: PEM CA certificate(s) to trust instead of the system's (a private CA); empty: the system's CAs";
            clickhouse_client_cert_file: String = String::new(), flag: true, env: [], secret: false,
                help: "PEM client certificate for mutual TLS (with the key below)";
            clickhouse_client_key_file: String = String::new(), flag: true, env: [], secret: false,
                help: "its PEM private key";
            $($after)*
        }

        impl Settings {
            /// How these settings reach ClickHouse (checked with `check()`, a client with
            /// `client()`).
            pub fn connection(&self) -> $crate::clickstream_connect::Connection<'_> {
                $crate::clickstream_connect::Connection {
                    url: &self.clickhouse_url,
                    database: &self.database,
                    user: &self.clickhouse_user,
                    password: &self.clickhouse_password,
                    password_file: &self.clickhouse_password_file,
                    ca_file: &self.clickhouse_ca_file,
                    client_cert_file: &self.clickhouse_client_cert_file,
                    client_key_file: &self.clickhouse_client_key_file,
                }
            }
        }
    };
}

/// Defines `Settings` (the fields, `kafka` for librdkafka properties, `Default`, serde,
/// `Debug` without secrets), `KEYS` and `default_shown` from one list: key, type, default,
/// flag, extra environment variables, secret, help. Needs `serde` in scope.
#[macro_export]
macro_rules! settings {
    ($(#[$meta:meta])* $( $name:ident : $ty:ty = $default:expr, flag: $flag:literal, env: [$($env:literal),*], secret: $secret:literal, help: $help:literal; )*) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Settings {
            $( #[doc = $help] pub $name: $ty, )*
            /// Extra librdkafka properties (TLS, SASL, tuning).
            pub kafka: std::collections::BTreeMap<String, String>,
        }

        impl Default for Settings {
            fn default() -> Settings {
                Settings {
                    $( $name: $default, )*
                    kafka: std::collections::BTreeMap::new(),
                }
            }
        }

        /// Every setting but `kafka`, in the README's order.
        pub const KEYS: &[$crate::Key] = &[
            $( $crate::Key { name: stringify!($name), flag: $flag, env: &[$($env),*], secret: $secret, help: $help }, )*
        ];

        /// A setting's default as the README and `--help` show it.
        pub fn default_shown(name: &str) -> String {
            $crate::default_shown(&Settings::default(), name)
        }

        impl std::fmt::Debug for Settings {
            /// Every field, with secrets replaced by `<redacted>` and URLs without
            /// credentials.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut out = f.debug_struct("Settings");
                $( out.field(stringify!($name), &$crate::shown(stringify!($name), $secret, &self.$name)); )*
                out.field("kafka", &$crate::redacted_kafka(&self.kafka)).finish()
            }
        }
    };
}

/// What `Debug` and logs show instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// A value for `Debug`: secrets redacted when set, URLs without credentials.
pub fn shown<T: std::fmt::Debug>(name: &str, secret: bool, value: &T) -> String {
    let text = format!("{value:?}");
    if secret && text != "\"\"" {
        REDACTED.to_owned()
    } else if name.ends_with("_url") {
        clickstream_connect::redact_url(text.trim_matches('"'))
    } else {
        text
    }
}

/// librdkafka properties whose values are secrets (`sasl.password`, `ssl.key.password`,
/// `ssl.key.pem`, `sasl.oauthbearer.client.secret`, `sasl.oauthbearer.config`, ...).
pub fn is_secret_kafka_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "key.pem",
        "sasl.oauthbearer.config",
        "sasl.jaas.config",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// librdkafka properties with the secret values replaced by [`REDACTED`].
pub fn redacted_kafka(kafka: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    kafka
        .iter()
        .map(|(k, v)| {
            let v = if is_secret_kafka_property(k) {
                REDACTED
            } else {
                v.as_str()
            };
            (k.as_str(), v)
        })
        .collect()
}

/// How a program writes its log lines (on stderr): `human` or `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Human,
    Json,
}

/// Installs the log subscriber: lines on stderr in `format`, filtered by `RUST_LOG` or else
/// by `default_filter`; colours only on a terminal (not in files, containers, journald).
pub fn init_logging(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    match format {
        LogFormat::Human => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init(),
    }
}

/// librdkafka properties known under two names (CONFIGURATION.md: one is an alias of the
/// other): setting either sets the same thing. The first is the name the programs use.
pub const KAFKA_ALIASES: &[(&str, &str)] = &[
    ("bootstrap.servers", "metadata.broker.list"),
    ("acks", "request.required.acks"),
    ("linger.ms", "queue.buffering.max.ms"),
    ("compression.type", "compression.codec"),
    ("message.timeout.ms", "delivery.timeout.ms"),
    ("max.in.flight.requests.per.connection", "max.in.flight"),
];

/// The entry of `owned` (a program's `(property, value)` list for one of its clients) that a
/// user's `key` would set, by its name or another name of it ([`KAFKA_ALIASES`]). A program
/// builds its client from the same list, so what it refuses is exactly what it sets.
pub fn owned_kafka_property(
    key: &str,
    owned: &[(&'static str, &'static str)],
) -> Option<(&'static str, &'static str)> {
    let key = kafka_key(key);
    let canonical = KAFKA_ALIASES
        .iter()
        .find(|(_, alias)| *alias == key)
        .map_or(key.as_str(), |(name, _)| name);
    owned.iter().copied().find(|(name, _)| {
        *name == canonical
            || KAFKA_ALIASES
                .iter()
                .any(|(main, alias)| *alias == *name && *main == canonical)
    })
}

/// A librdkafka property name as a user wrote it, as librdkafka names it: trimmed, in lower
/// case (every property's name is). `Auto.Offset.Reset` would otherwise escape the programs'
/// checks of `auto.offset.reset`, and librdkafka refuses it anyway.
pub fn kafka_key(key: &str) -> String {
    key.trim().to_ascii_lowercase()
}

/// A program's `kafka` table (from the file) with the properties [`load`] read from the
/// environment and the flags over it, every name as [`kafka_key`] gives it. Two names of the
/// file's table that are one property (`Acks` and `acks`) are an error: which one wins would
/// depend on their order.
pub fn merged_kafka(
    table: BTreeMap<String, String>,
    loaded: Vec<(String, String)>,
) -> Result<BTreeMap<String, String>, String> {
    let mut merged = BTreeMap::new();
    for (key, value) in table {
        if merged.insert(kafka_key(&key), value).is_some() {
            return Err(format!(
                "invalid value for `kafka.{key}`: the kafka table names the property `{}` twice",
                kafka_key(&key)
            ));
        }
    }
    for (key, value) in loaded {
        merged.insert(kafka_key(&key), value);
    }
    Ok(merged)
}

/// The level a librdkafka log line is said at: its own, except for the warning that a
/// property of the other kind of client is ignored ("session.timeout.ms is a consumer
/// property and will be ignored by this producer instance"). A program's `kafka` settings go
/// to all its clients, consumers and producers, so that one is expected: it warned at every
/// start of a sink with a tuned consumer (the soak's logs). At debug it is still there.
pub fn kafka_log_level(level: RDKafkaLogLevel, fac: &str, message: &str) -> tracing::Level {
    use RDKafkaLogLevel::*;
    let other_kinds = fac == "CONFWARN"
        && (message.contains("is a consumer property and will be ignored by this producer")
            || message.contains("is a producer property and will be ignored by this consumer"));
    match level {
        _ if other_kinds => tracing::Level::DEBUG,
        Emerg | Alert | Critical | Error => tracing::Level::ERROR,
        Warning => tracing::Level::WARN,
        Notice | Info => tracing::Level::INFO,
        Debug => tracing::Level::DEBUG,
    }
}

/// librdkafka's log through `tracing` (target `librdkafka`, as rdkafka's own), at
/// [`kafka_log_level`]: what every client context of the programs logs with.
pub fn kafka_log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match kafka_log_level(level, fac, message) {
        tracing::Level::ERROR => {
            tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
        }
        tracing::Level::WARN => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
        tracing::Level::INFO => tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}"),
        _ => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
    }
}

/// How long one poll of a [`PolledProducer`] waits.
pub const PRODUCER_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// A librdkafka producer with a thread of its own serving its events (delivery reports), as
/// rust-rdkafka's `ThreadedProducer` (and the `FutureProducer` built on it), but polling
/// [`PRODUCER_POLL`] at a time instead of 100 ms. rust-rdkafka's poll waits in whole
/// milliseconds until its deadline and then spins through the last fraction of one; with
/// 100 ms that spin was two thirds of an idle sink's CPU (1.1 % of a core). Reports are served
/// as they come either way.
///
/// Dropping it closes the producer as `ThreadedProducer` does, on the dropping thread: it stops
/// the polling thread and waits for it (one poll at most), then the producer purges, flushes for
/// 500 ms and is destroyed, so that librdkafka's threads end before the process does. A polling
/// thread still waiting after [`STOP_WAIT`] (librdkafka's waits run on the wall clock: after a
/// step back it sleeps that much longer) is left behind, and the producer with it.
pub struct PolledProducer<C: rdkafka::producer::ProducerContext + 'static> {
    producer: std::sync::Arc<rdkafka::producer::BaseProducer<C>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long dropping a [`PolledProducer`] waits for its polling thread.
pub const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

impl<C: rdkafka::producer::ProducerContext + 'static> PolledProducer<C> {
    /// Starts the thread (named `name`) polling `producer`.
    pub fn start(
        producer: rdkafka::producer::BaseProducer<C>,
        name: &str,
    ) -> std::io::Result<PolledProducer<C>> {
        let producer = std::sync::Arc::new(producer);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (polled, stopped) = (producer.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    polled.poll(PRODUCER_POLL);
                }
            })?;
        Ok(PolledProducer {
            producer,
            stop,
            thread: Some(thread),
        })
    }

    /// The producer, shared (for a blocking call on another thread).
    pub fn shared(&self) -> std::sync::Arc<rdkafka::producer::BaseProducer<C>> {
        self.producer.clone()
    }
}

impl<C: rdkafka::producer::ProducerContext + 'static> std::ops::Deref for PolledProducer<C> {
    type Target = rdkafka::producer::BaseProducer<C>;

    fn deref(&self) -> &Self::Target {
        &self.producer
    }
}

impl<C: rdkafka::producer::ProducerContext + 'static> Drop for PolledProducer<C> {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + STOP_WAIT;
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

/// `key=value, ...` of a list of properties, for an error message.
pub fn shown_properties(properties: &[(&str, &str)]) -> String {
    properties
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The default of `name` in `defaults` as the README and `--help` show it (`empty` for an
/// empty string).
pub fn default_shown<T: Serialize>(defaults: &T, name: &str) -> String {
    let defaults = serde_json::to_value(defaults).expect("settings serialize");
    match &defaults[name] {
        serde_json::Value::String(s) if s.is_empty() => "empty".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    /// (key, value) pairs, keys as in the settings.
    pub values: Vec<(String, String)>,
    /// librdkafka properties (`-X key=value`), applied over the other layers' `kafka` table.
    pub kafka: Vec<(String, String)>,
}

/// The command line's flags from the keys (those with `flag`): `--config FILE`, one
/// `--name-with-dashes VALUE` per key (its help with the default), and `-X KEY=VALUE` for
/// librdkafka properties (`kafka_help`). Global, so that subcommands take them too.
pub fn flags(
    keys: &[Key],
    default_shown: impl Fn(&str) -> String,
    kafka_help: &'static str,
) -> Vec<clap::Arg> {
    use clap::{Arg, ArgAction};
    let mut args = vec![
        Arg::new("config")
            .long("config")
            .value_name("FILE")
            .global(true)
            .help("TOML settings file"),
    ];
    for key in keys.iter().filter(|key| key.flag) {
        let help = if key.secret {
            key.help.to_owned()
        } else {
            format!("{} [default: {}]", key.help, default_shown(key.name))
        };
        args.push(
            Arg::new(key.name)
                .long(key.flag_name())
                .value_name(key.value_name())
                .global(true)
                .help(help),
        );
    }
    args.push(
        Arg::new("kafka")
            .short('X')
            .value_name("KEY=VALUE")
            .action(ArgAction::Append)
            .global(true)
            .help(kafka_help),
    );
    args
}

/// The [`Overrides`] the flags of [`flags`] gave; an `-X` without `=` is an error.
pub fn overrides(matches: &clap::ArgMatches, keys: &[Key]) -> Result<Overrides, String> {
    let values = keys
        .iter()
        .filter(|key| key.flag)
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
                .ok_or_else(|| format!("-X {pair}: expected KEY=VALUE"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Overrides {
        config_file: matches.get_one::<String>("config").map(PathBuf::from),
        values,
        kafka,
    })
}

/// What [`load`] read: the settings, and the librdkafka properties from the environment and
/// the flags, in that order (to add to the settings' `kafka` table).
pub struct Loaded<T> {
    pub settings: T,
    pub kafka: Vec<(String, String)>,
}

/// Reads the layers over `defaults`: the TOML file, the environment (`env`; `prefix` is
/// e.g. `CLICKSTREAM_SINK`), the flags. The error is a message for the user (a missing
/// file, a value of the wrong type, an unknown key, named).
pub fn load<T: Serialize + DeserializeOwned>(
    defaults: &T,
    keys: &[Key],
    prefix: &str,
    overrides: &Overrides,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded<T>, String> {
    let text = |error: config::ConfigError| error.to_string();
    let mut builder =
        config::Config::builder().add_source(config::Config::try_from(defaults).map_err(text)?);
    if let Some(path) = &overrides.config_file {
        if !path.exists() {
            return Err(format!("config file {} does not exist", path.display()));
        }
        builder =
            builder.add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml));
    }
    let env: BTreeMap<String, String> = env.into_iter().collect();
    // Other variables read for a key (KAFKA_BROKERS, CLICKHOUSE_URL, ...): above the file,
    // below flags, and below the program's own variable for the key (the more specific one;
    // an override here would also beat that variable, silently).
    for key in keys {
        let own = format!("{prefix}_{}", key.name);
        if env.keys().any(|var| var.eq_ignore_ascii_case(&own)) {
            continue;
        }
        for var in key.env {
            if let Some(value) = env.get(*var) {
                builder = builder
                    .set_override(key.name, value.as_str())
                    .map_err(text)?;
            }
        }
    }
    // librdkafka keys contain dots, which `config` would read as nesting: take
    // <PREFIX>_KAFKA__SECURITY_PROTOCOL as `security.protocol` ourselves.
    let kafka_prefix = format!("{prefix}_KAFKA__");
    let mut kafka: Vec<(String, String)> = env
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(&kafka_prefix)
                .map(|key| (key.to_ascii_lowercase().replace('_', "."), v.clone()))
        })
        .collect();
    let prefixed: config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| !k.starts_with(&kafka_prefix) && k.starts_with(&format!("{prefix}_")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix(prefix)
            .prefix_separator("_")
            .separator("__")
            // As text: the settings' own types parse it. Guessing types first turned a
            // password `0123` into `123`.
            .try_parsing(false)
            .source(Some(prefixed)),
    );
    for (key, value) in &overrides.values {
        builder = builder
            .set_override(key.as_str(), value.as_str())
            .map_err(text)?;
    }
    let settings: T = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(text)?;
    kafka.extend(overrides.kafka.iter().cloned());
    Ok(Loaded { settings, kafka })
}

#[cfg(test)]
mod tests {
    #[test]
    fn dropping_a_polled_producer_waits_for_its_thread_to_end() {
        use super::PolledProducer;
        // No broker is needed: the producer only has to exist.
        let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("log_level", "0")
            .create()
            .expect("a producer");
        let polled = PolledProducer::start(producer, "test poll").expect("its thread");
        let shared = polled.shared();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(
            std::sync::Arc::strong_count(&shared),
            3,
            "held here, by the handle and by the polling thread"
        );
        drop(polled);
        assert_eq!(
            std::sync::Arc::strong_count(&shared),
            1,
            "the polling thread has ended and let go of the producer when the drop returns"
        );
    }

    #[test]
    fn only_the_other_kinds_property_warning_is_demoted_to_debug() {
        use super::{RDKafkaLogLevel, kafka_log_level};
        use tracing::Level;
        let consumer_property = "Configuration property session.timeout.ms is a consumer \
                                 property and will be ignored by this producer instance";
        let producer_property = "Configuration property batch.num.messages is a producer \
                                 property and will be ignored by this consumer instance";
        for message in [consumer_property, producer_property] {
            assert_eq!(
                kafka_log_level(RDKafkaLogLevel::Warning, "CONFWARN", message),
                Level::DEBUG
            );
        }
        let deprecated = "Configuration property queuing.strategy is deprecated and \
                          experimental: Obsolete";
        assert_eq!(
            kafka_log_level(RDKafkaLogLevel::Warning, "CONFWARN", deprecated),
            Level::WARN,
            "other configuration warnings stay warnings"
        );
        assert_eq!(
            kafka_log_level(RDKafkaLogLevel::Warning, "FAIL", consumer_property),
            Level::WARN,
            "only the CONFWARN facility"
        );
        assert_eq!(
            kafka_log_level(RDKafkaLogLevel::Error, "FAIL", "Connection refused"),
            Level::ERROR
        );
        assert_eq!(
            kafka_log_level(RDKafkaLogLevel::Notice, "SASL", "x"),
            Level::INFO
        );
    }

    /// File, then environment, then flags; names as librdkafka spells them; one property
    /// named twice in the file is an error.
    #[test]
    fn kafka_properties_merge_in_layer_order_under_their_own_names() {
        use super::merged_kafka;
        let table = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let loaded = vec![
            ("Linger.Ms".to_owned(), "7".to_owned()),
            (" acks".to_owned(), "1".to_owned()),
        ];
        let merged = merged_kafka(table(&[("acks", "all"), ("Client.Id", "c")]), loaded).unwrap();
        assert_eq!(
            merged,
            table(&[("acks", "1"), ("client.id", "c"), ("linger.ms", "7")])
        );
        let error = merged_kafka(table(&[("Acks", "1"), ("acks", "all")]), Vec::new())
            .expect_err("one property twice");
        assert!(error.contains("`acks` twice"), "{error}");
    }

    #[test]
    fn a_property_is_owned_by_its_name_or_another_name_of_it() {
        const OWNED: &[(&str, &str)] = &[("acks", "all"), ("linger.ms", "5")];
        assert_eq!(owned_kafka_property("acks", OWNED), Some(("acks", "all")));
        assert_eq!(
            owned_kafka_property("request.required.acks", OWNED),
            Some(("acks", "all"))
        );
        assert_eq!(
            owned_kafka_property(" Queue.Buffering.Max.Ms", OWNED),
            Some(("linger.ms", "5"))
        );
        assert_eq!(owned_kafka_property("batch.size", OWNED), None);
        assert_eq!(owned_kafka_property("compression.codec", OWNED), None);
        // A list may name the alias; the main name is still caught.
        assert_eq!(
            owned_kafka_property("bootstrap.servers", &[("metadata.broker.list", "x")]),
            Some(("metadata.broker.list", "x"))
        );
        assert_eq!(shown_properties(OWNED), "acks=all, linger.ms=5".to_owned());
    }

    use std::collections::BTreeMap;

    use super::*;

    mod example {
        settings! {
            /// An example program's settings.
            brokers: String = "localhost:9092".into(), flag: true, env: ["KAFKA_BROKERS"], secret: false,
                help: "Kafka bootstrap servers";
            retries: u32 = 3, flag: false, env: [], secret: false,
                help: "how often";
            clickhouse_url: String = "http://localhost:8123".into(), flag: true, env: [], secret: false,
                help: "where";
            password: String = String::new(), flag: false, env: [], secret: true,
                help: "a secret";
        }
    }
    use example::{KEYS, Settings};

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_layers_apply_lowest_first_and_kafka_properties_keep_their_dots() {
        let overrides = Overrides {
            values: vec![("retries".into(), "9".into())],
            kafka: vec![("acks".into(), "all".into())],
            ..Overrides::default()
        };
        let loaded = load(
            &Settings::default(),
            KEYS,
            "EX",
            &overrides,
            env(&[
                ("KAFKA_BROKERS", "b:1"),
                ("EX_RETRIES", "5"),
                ("EX_KAFKA__SECURITY_PROTOCOL", "SSL"),
                ("OTHER_RETRIES", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(loaded.settings.brokers, "b:1");
        assert_eq!(
            loaded.settings.retries, 9,
            "the flag wins over the environment"
        );
        assert_eq!(
            loaded.kafka,
            vec![
                ("security.protocol".to_owned(), "SSL".to_owned()),
                ("acks".to_owned(), "all".to_owned())
            ]
        );
    }

    #[test]
    fn environment_values_stay_text_and_the_programs_own_variable_wins() {
        let loaded = load(
            &Settings::default(),
            KEYS,
            "EX",
            &Overrides::default(),
            env(&[
                ("EX_PASSWORD", "0123"),
                ("KAFKA_BROKERS", "shared:1"),
                ("EX_BROKERS", "own:2"),
                ("EX_RETRIES", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(loaded.settings.password, "0123", "digits stay text");
        assert_eq!(
            loaded.settings.brokers, "own:2",
            "the program's own variable wins"
        );
        assert_eq!(loaded.settings.retries, 5, "numbers still parse");
    }

    #[test]
    fn errors_name_the_key_or_the_file() {
        let bad = load(
            &Settings::default(),
            KEYS,
            "EX",
            &Overrides::default(),
            env(&[("EX_RETRIES", "many")]),
        )
        .err()
        .unwrap();
        assert!(bad.contains("retries"), "{bad}");
        let missing = Overrides {
            config_file: Some("/nonexistent/settings.toml".into()),
            ..Overrides::default()
        };
        let error = load(&Settings::default(), KEYS, "EX", &missing, Vec::new())
            .err()
            .unwrap();
        assert!(error.contains("/nonexistent/settings.toml"), "{error}");
    }

    #[test]
    fn flags_become_overrides() {
        let command = clap::Command::new("example").args(flags(
            KEYS,
            example::default_shown,
            "librdkafka property",
        ));
        let matches = command
            .clone()
            .try_get_matches_from(["example", "--brokers", "b:2", "-X", "acks=all"])
            .unwrap();
        let got = overrides(&matches, KEYS).unwrap();
        assert_eq!(got.values, vec![("brokers".to_owned(), "b:2".to_owned())]);
        assert_eq!(got.kafka, vec![("acks".to_owned(), "all".to_owned())]);
        assert!(
            command
                .clone()
                .try_get_matches_from(["example", "--retries", "2"])
                .is_err(),
            "a key without a flag has none"
        );
        let bad = command
            .try_get_matches_from(["example", "-X", "acks"])
            .unwrap();
        assert!(overrides(&bad, KEYS).unwrap_err().contains("KEY=VALUE"));
    }

    #[test]
    fn debug_shows_no_secret_and_no_url_credentials() {
        let mut settings = Settings {
            password: "hunter2".into(),
            clickhouse_url: "http://u:pw@host:8123".into(),
            ..Settings::default()
        };
        settings.kafka = BTreeMap::from([("sasl.password".to_owned(), "s3cret".to_owned())]);
        let shown = format!("{settings:?}");
        for secret in ["hunter2", "pw@", "s3cret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert_eq!(example::default_shown("password"), "empty");
        assert_eq!(example::default_shown("retries"), "3");
    }
}
