//! Typed, validated settings. Layers, lowest first: defaults < `--config FILE` (TOML) <
//! environment (`CLICKSTREAM_SINK_<KEY>`, plus `KAFKA_BROKERS` / `CLICKHOUSE_URL`) < flags.
//! A bad value stops start-up with the key named.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SinkError;

/// Whether a replay after a crash or rebalance may add duplicate rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Every event exactly once in the table and in the rollups (deduplication tokens plus a
    /// check of what ClickHouse already stores when a partition is assigned).
    ExactlyOnce,
    /// Nothing lost, but a replay may insert rows again.
    AtLeastOnce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Human,
    Json,
}

/// All settings of the sink, with their defaults. `Debug` leaves secrets out (see
/// [`is_secret_kafka_property`]).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Kafka bootstrap servers.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Topic to consume.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Consumer group; sinks in one group share the partitions.
    #[serde(default = "default_group")]
    pub group: String,
    /// Dead-letter topic for messages that are not valid events.
    #[serde(default = "default_dlq_topic")]
    pub dlq_topic: String,
    /// ClickHouse HTTP(S) URL, without credentials.
    #[serde(default = "default_clickhouse_url")]
    pub clickhouse_url: String,
    #[serde(default = "default_clickhouse_user")]
    pub clickhouse_user: String,
    #[serde(default)]
    pub clickhouse_password: String,
    /// A file holding the password (a Docker or Kubernetes secret); its trailing newline is
    /// ignored. Exclusive with `clickhouse_password`.
    #[serde(default)]
    pub clickhouse_password_file: String,
    /// PEM file of the CA to trust for an https:// URL instead of the system's CAs.
    #[serde(default)]
    pub clickhouse_ca_file: String,
    /// PEM client certificate for mutual TLS (with `clickhouse_client_key_file`).
    #[serde(default)]
    pub clickhouse_client_cert_file: String,
    /// PEM private key of `clickhouse_client_cert_file`.
    #[serde(default)]
    pub clickhouse_client_key_file: String,
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default = "default_table")]
    pub table: String,
    /// A batch is flushed when it has this many rows ...
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// ... or when its oldest row has waited this long.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Upper bound of buffered bytes; consumption pauses above it.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// At most about this many flushes a second; batches grow instead.
    #[serde(default = "default_max_inserts_per_second")]
    pub max_inserts_per_second: f64,
    /// INSERTs in flight at once, across partitions (at most one per partition).
    #[serde(default = "default_max_parallel_inserts")]
    pub max_parallel_inserts: usize,
    #[serde(default = "default_delivery")]
    pub delivery: Delivery,
    /// Larger messages are dead-lettered as `oversized`.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Events older than this (against the message's Kafka timestamp) are dead-lettered.
    #[serde(default = "default_max_event_age_s")]
    pub max_event_age_s: u64,
    /// Events further than this in the future are dead-lettered.
    #[serde(default = "default_max_clock_skew_s")]
    pub max_clock_skew_s: u64,
    /// First retry delay for transient failures; doubles up to `retry_max_ms`, with jitter.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Time allowed for one insert request before it counts as a transient failure.
    #[serde(default = "default_insert_timeout_ms")]
    pub insert_timeout_ms: u64,
    /// On SIGTERM, how long to try to flush and commit before giving up (nothing is lost:
    /// what is not committed is replayed).
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// With work waiting but no progress for this long, the sink reports itself stalled
    /// (`/ready` 503, `clickstream_sink_stalled` 1, an ERROR naming the cause).
    #[serde(default = "default_stall_timeout_ms")]
    pub stall_timeout_ms: u64,
    /// An event id seen again within this many events of its partition is dead-lettered as
    /// `duplicate_event_id` (a producer retry without idempotence); 0 turns that off.
    #[serde(default = "default_dedup_window_events")]
    pub dedup_window_events: usize,
    /// Address of the `/metrics`, `/health` and `/ready` endpoint ("off" to disable).
    #[serde(default = "default_http_addr")]
    pub http_addr: String,
    #[serde(default = "default_log_format")]
    pub log_format: LogFormat,
    /// Extra librdkafka properties (TLS, SASL, tuning) for the consumer and the dead-letter producer.
    #[serde(default)]
    pub kafka: BTreeMap<String, String>,
}

fn default_brokers() -> String {
    "localhost:9092".into()
}
fn default_topic() -> String {
    "clickstream-events".into()
}
fn default_group() -> String {
    "clickstream-sink".into()
}
fn default_dlq_topic() -> String {
    "clickstream-dlq".into()
}
fn default_clickhouse_url() -> String {
    "http://localhost:8123".into()
}
fn default_clickhouse_user() -> String {
    "default".into()
}
fn default_database() -> String {
    "clickstream".into()
}
fn default_table() -> String {
    "events".into()
}
fn default_max_rows() -> usize {
    1_000
}
fn default_flush_interval_ms() -> u64 {
    5_000
}
fn default_max_batch_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_max_inserts_per_second() -> f64 {
    2.0
}
fn default_max_parallel_inserts() -> usize {
    4
}
fn default_delivery() -> Delivery {
    Delivery::ExactlyOnce
}
fn default_max_message_bytes() -> usize {
    64 * 1024
}
fn default_max_event_age_s() -> u64 {
    7 * 24 * 3_600
}
fn default_max_clock_skew_s() -> u64 {
    300
}
fn default_retry_initial_ms() -> u64 {
    100
}
fn default_retry_max_ms() -> u64 {
    10_000
}
fn default_insert_timeout_ms() -> u64 {
    30_000
}
fn default_shutdown_timeout_ms() -> u64 {
    30_000
}
fn default_stall_timeout_ms() -> u64 {
    60_000
}
fn default_dedup_window_events() -> usize {
    10_000
}
fn default_http_addr() -> String {
    "0.0.0.0:9100".into()
}
fn default_log_format() -> LogFormat {
    LogFormat::Human
}

/// What `Debug` and logs show instead of a secret.
pub const REDACTED: &str = "<redacted>";

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

impl std::fmt::Debug for Settings {
    /// Every field, with the password and secret Kafka properties replaced by `<redacted>`.
    /// (Destructured, so that a new field cannot be left out without a compile error.)
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Settings {
            brokers,
            topic,
            group,
            dlq_topic,
            clickhouse_url,
            clickhouse_user,
            clickhouse_password,
            clickhouse_password_file,
            clickhouse_ca_file,
            clickhouse_client_cert_file,
            clickhouse_client_key_file,
            database,
            table,
            max_rows,
            flush_interval_ms,
            max_batch_bytes,
            max_inserts_per_second,
            max_parallel_inserts,
            delivery,
            max_message_bytes,
            max_event_age_s,
            max_clock_skew_s,
            retry_initial_ms,
            retry_max_ms,
            insert_timeout_ms,
            shutdown_timeout_ms,
            stall_timeout_ms,
            dedup_window_events,
            http_addr,
            log_format,
            kafka: _,
        } = self;
        let password = if clickhouse_password.is_empty() {
            ""
        } else {
            REDACTED
        };
        f.debug_struct("Settings")
            .field("brokers", brokers)
            .field("topic", topic)
            .field("group", group)
            .field("dlq_topic", dlq_topic)
            .field(
                "clickhouse_url",
                &clickstream_connect::redact_url(clickhouse_url),
            )
            .field("clickhouse_user", clickhouse_user)
            .field("clickhouse_password", &password)
            .field("clickhouse_password_file", clickhouse_password_file)
            .field("clickhouse_ca_file", clickhouse_ca_file)
            .field("clickhouse_client_cert_file", clickhouse_client_cert_file)
            .field("clickhouse_client_key_file", clickhouse_client_key_file)
            .field("database", database)
            .field("table", table)
            .field("max_rows", max_rows)
            .field("flush_interval_ms", flush_interval_ms)
            .field("max_batch_bytes", max_batch_bytes)
            .field("max_inserts_per_second", max_inserts_per_second)
            .field("max_parallel_inserts", max_parallel_inserts)
            .field("delivery", delivery)
            .field("max_message_bytes", max_message_bytes)
            .field("max_event_age_s", max_event_age_s)
            .field("max_clock_skew_s", max_clock_skew_s)
            .field("retry_initial_ms", retry_initial_ms)
            .field("retry_max_ms", retry_max_ms)
            .field("insert_timeout_ms", insert_timeout_ms)
            .field("shutdown_timeout_ms", shutdown_timeout_ms)
            .field("stall_timeout_ms", stall_timeout_ms)
            .field("dedup_window_events", dedup_window_events)
            .field("http_addr", http_addr)
            .field("log_format", log_format)
            .field("kafka", &self.kafka_redacted())
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            brokers: default_brokers(),
            topic: default_topic(),
            group: default_group(),
            dlq_topic: default_dlq_topic(),
            clickhouse_url: default_clickhouse_url(),
            clickhouse_user: default_clickhouse_user(),
            clickhouse_password: String::new(),
            clickhouse_password_file: String::new(),
            clickhouse_ca_file: String::new(),
            clickhouse_client_cert_file: String::new(),
            clickhouse_client_key_file: String::new(),
            database: default_database(),
            table: default_table(),
            max_rows: default_max_rows(),
            flush_interval_ms: default_flush_interval_ms(),
            max_batch_bytes: default_max_batch_bytes(),
            max_inserts_per_second: default_max_inserts_per_second(),
            max_parallel_inserts: default_max_parallel_inserts(),
            delivery: default_delivery(),
            max_message_bytes: default_max_message_bytes(),
            max_event_age_s: default_max_event_age_s(),
            max_clock_skew_s: default_max_clock_skew_s(),
            retry_initial_ms: default_retry_initial_ms(),
            retry_max_ms: default_retry_max_ms(),
            insert_timeout_ms: default_insert_timeout_ms(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
            stall_timeout_ms: default_stall_timeout_ms(),
            dedup_window_events: default_dedup_window_events(),
            http_addr: default_http_addr(),
            log_format: default_log_format(),
            kafka: BTreeMap::new(),
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    /// (key, value) pairs, keys as in [`Settings`].
    pub values: Vec<(String, String)>,
    /// librdkafka properties (`-X key=value`), applied over the other layers' `kafka` table.
    pub kafka: Vec<(String, String)>,
}

/// The environment variables the sink reads besides `CLICKSTREAM_SINK_*`.
const ENV_ALIASES: [(&str, &str); 2] = [
    ("KAFKA_BROKERS", "brokers"),
    ("CLICKHOUSE_URL", "clickhouse_url"),
];
pub const ENV_PREFIX: &str = "CLICKSTREAM_SINK";

impl Settings {
    /// Loads all layers from the process environment and validates the result.
    pub fn load(overrides: &Overrides) -> Result<Settings, SinkError> {
        Settings::load_from(overrides, std::env::vars())
    }

    /// Like [`Settings::load`], with the environment given (for tests).
    pub fn load_from(
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SinkError> {
        let defaults =
            config::Config::try_from(&Settings::default()).map_err(SinkError::settings)?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = &overrides.config_file {
            if !path.exists() {
                return Err(SinkError::Settings(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder
                .add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml));
        }
        let env: BTreeMap<String, String> = env.into_iter().collect();
        for (var, key) in ENV_ALIASES {
            if let Some(value) = env.get(var) {
                builder = builder
                    .set_override(key, value.as_str())
                    .map_err(SinkError::settings)?;
            }
        }
        // librdkafka keys contain dots, which `config` would read as nesting: take
        // CLICKSTREAM_SINK_KAFKA__SECURITY_PROTOCOL as `security.protocol` ourselves.
        let kafka_prefix = format!("{ENV_PREFIX}_KAFKA__");
        let env_kafka: Vec<(String, String)> = env
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(&kafka_prefix)
                    .map(|key| (key.to_ascii_lowercase().replace('_', "."), v.clone()))
            })
            .collect();
        let prefixed: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| !k.starts_with(&kafka_prefix))
            .filter_map(|(k, v)| {
                k.strip_prefix(ENV_PREFIX)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .map(|rest| (format!("{ENV_PREFIX}_{rest}"), v.clone()))
            })
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(prefixed)),
        );
        for (key, value) in &overrides.values {
            builder = builder
                .set_override(key.as_str(), value.as_str())
                .map_err(SinkError::settings)?;
        }
        let mut settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(SinkError::settings)?;
        settings.kafka.extend(env_kafka);
        settings.kafka.extend(overrides.kafka.iter().cloned());
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types alone cannot; the error names the key.
    pub fn validate(&self) -> Result<(), SinkError> {
        let bad = |key: &str, why: &str| {
            Err(SinkError::Settings(format!(
                "invalid value for `{key}`: {why}"
            )))
        };
        for (key, value) in [
            ("brokers", &self.brokers),
            ("topic", &self.topic),
            ("group", &self.group),
            ("dlq_topic", &self.dlq_topic),
        ] {
            if value.trim().is_empty() {
                return bad(key, "must not be empty");
            }
        }
        if self.dlq_topic == self.topic {
            return bad("dlq_topic", "must differ from `topic`");
        }
        if !(self.clickhouse_url.starts_with("http://")
            || self.clickhouse_url.starts_with("https://"))
        {
            return bad("clickhouse_url", "must start with http:// or https://");
        }
        if clickstream_connect::has_credentials(&self.clickhouse_url) {
            return bad(
                "clickhouse_url",
                "must not carry credentials (user:password@ or ?password=), which would show \
                 wherever the URL is logged: set clickhouse_user and clickhouse_password_file",
            );
        }
        if !self.clickhouse_password.is_empty() && !self.clickhouse_password_file.is_empty() {
            return bad(
                "clickhouse_password_file",
                "set either it or `clickhouse_password`, not both",
            );
        }
        match (
            self.clickhouse_client_cert_file.is_empty(),
            self.clickhouse_client_key_file.is_empty(),
        ) {
            (false, true) => {
                return bad(
                    "clickhouse_client_key_file",
                    "is needed with `clickhouse_client_cert_file`",
                );
            }
            (true, false) => {
                return bad(
                    "clickhouse_client_cert_file",
                    "is needed with `clickhouse_client_key_file`",
                );
            }
            _ => {}
        }
        for (key, value) in [("database", &self.database), ("table", &self.table)] {
            if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return bad(key, "must be a plain identifier (letters, digits, _)");
            }
        }
        if self.max_rows == 0 {
            return bad("max_rows", "must be at least 1");
        }
        if self.flush_interval_ms == 0 {
            return bad("flush_interval_ms", "must be at least 1");
        }
        if self.max_batch_bytes < 64 * 1024 {
            return bad("max_batch_bytes", "must be at least 65536");
        }
        if !(self.max_inserts_per_second.is_finite() && self.max_inserts_per_second > 0.0) {
            return bad("max_inserts_per_second", "must be a positive number");
        }
        if self.max_parallel_inserts == 0 {
            return bad("max_parallel_inserts", "must be at least 1");
        }
        if self.max_message_bytes == 0 {
            return bad("max_message_bytes", "must be at least 1");
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return bad("retry_max_ms", "needs 0 < retry_initial_ms <= retry_max_ms");
        }
        if self.insert_timeout_ms == 0 {
            return bad("insert_timeout_ms", "must be at least 1");
        }
        if self.stall_timeout_ms < 1_000 {
            return bad("stall_timeout_ms", "must be at least 1000");
        }
        if self.http_addr != "off" && self.http_addr.parse::<std::net::SocketAddr>().is_err() {
            return bad("http_addr", "must be HOST:PORT (an IP address) or \"off\"");
        }
        for key in self.kafka.keys() {
            if matches!(
                key.as_str(),
                "bootstrap.servers"
                    | "group.id"
                    | "enable.auto.commit"
                    | "enable.auto.offset.store"
            ) {
                return bad(&format!("kafka.{key}"), "is set by the sink itself");
            }
        }
        Ok(())
    }

    /// The `kafka` properties with the values of secret ones replaced, for logs and `Debug`.
    pub fn kafka_redacted(&self) -> BTreeMap<&str, &str> {
        self.kafka
            .iter()
            .map(|(key, value)| {
                let shown = if is_secret_kafka_property(key) {
                    REDACTED
                } else {
                    value.as_str()
                };
                (key.as_str(), shown)
            })
            .collect()
    }

    /// librdkafka config with the brokers and the `kafka` passthrough properties.
    pub fn kafka_client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.kafka {
            config.set(key, value);
        }
        config
    }

    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    /// Shortest time between two flushes, from `max_inserts_per_second`.
    pub fn min_flush_gap(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.max_inserts_per_second)
    }

    pub fn limits(&self) -> clickstream_event::Limits {
        clickstream_event::Limits {
            max_message_bytes: self.max_message_bytes,
            max_event_age: chrono::Duration::seconds(self.max_event_age_s as i64),
            max_clock_skew: chrono::Duration::seconds(self.max_clock_skew_s as i64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(values: &[(&str, &str)], env: &[(&str, &str)]) -> Result<Settings, SinkError> {
        let overrides = Overrides {
            config_file: None,
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            kafka: Vec::new(),
        };
        Settings::load_from(
            &overrides,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let settings = load(&[], &[]).unwrap();
        assert_eq!(settings, Settings::default());
        assert_eq!(settings.topic, "clickstream-events");
        assert_eq!(settings.group, "clickstream-sink");
        assert_eq!(settings.dlq_topic, "clickstream-dlq");
        assert_eq!(
            (settings.database.as_str(), settings.table.as_str()),
            ("clickstream", "events")
        );
        assert_eq!(
            (settings.max_rows, settings.flush_interval_ms),
            (1_000, 5_000)
        );
        assert_eq!(settings.delivery, Delivery::ExactlyOnce);
    }

    #[test]
    fn layers_apply_in_order_env_then_flags() {
        let env = [
            ("KAFKA_BROKERS", "k1:9092"),
            ("CLICKHOUSE_URL", "http://ch:8123"),
            ("CLICKSTREAM_SINK_MAX_ROWS", "50"),
            ("CLICKSTREAM_SINK_FLUSH_INTERVAL_MS", "700"),
            ("UNRELATED", "x"),
        ];
        let settings = load(&[("max_rows", "77"), ("delivery", "at-least-once")], &env).unwrap();
        assert_eq!(settings.brokers, "k1:9092");
        assert_eq!(settings.clickhouse_url, "http://ch:8123");
        assert_eq!(settings.max_rows, 77, "flag beats env");
        assert_eq!(settings.flush_interval_ms, 700, "env beats default");
        assert_eq!(settings.delivery, Delivery::AtLeastOnce);
    }

    #[test]
    fn config_file_layer_and_kafka_passthrough() {
        let dir = std::env::temp_dir().join(format!("sink-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sink.toml");
        std::fs::write(
            &file,
            "max_rows = 10\ntopic = \"t1\"\n[kafka]\n\"security.protocol\" = \"SASL_SSL\"\n",
        )
        .unwrap();
        let overrides = Overrides {
            config_file: Some(file),
            values: vec![("topic".into(), "t2".into())],
            kafka: vec![("sasl.mechanism".into(), "PLAIN".into())],
        };
        let env = vec![(
            "CLICKSTREAM_SINK_KAFKA__SESSION_TIMEOUT_MS".to_owned(),
            "6000".to_owned(),
        )];
        let settings = Settings::load_from(&overrides, env).unwrap();
        assert_eq!(
            settings.kafka.get("session.timeout.ms").map(String::as_str),
            Some("6000")
        );
        assert_eq!(
            settings.kafka.get("sasl.mechanism").map(String::as_str),
            Some("PLAIN")
        );
        assert_eq!(settings.max_rows, 10);
        assert_eq!(settings.topic, "t2", "flag beats file");
        assert_eq!(
            settings.kafka.get("security.protocol").map(String::as_str),
            Some("SASL_SSL")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_values_name_the_key() {
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Pairs, Pairs, &str)] = &[
            (&[("max_rows", "0")], &[], "max_rows"),
            (&[], &[("CLICKSTREAM_SINK_MAX_ROWS", "lots")], "max_rows"),
            (&[("clickhouse_url", "ch:8123")], &[], "clickhouse_url"),
            (&[("dlq_topic", "clickstream-events")], &[], "dlq_topic"),
            (&[("table", "events; DROP")], &[], "table"),
            (
                &[("max_inserts_per_second", "0")],
                &[],
                "max_inserts_per_second",
            ),
            (&[("http_addr", "nowhere")], &[], "http_addr"),
            (&[("stall_timeout_ms", "10")], &[], "stall_timeout_ms"),
            (&[("delivery", "maybe-once")], &[], "delivery"),
            (&[], &[("CLICKSTREAM_SINK_MAX_ROWZ", "5")], "max_rowz"),
            (
                &[("clickhouse_url", "https://sink:pw@ch:8443")],
                &[],
                "clickhouse_url",
            ),
            (
                &[("clickhouse_url", "https://ch:8443/?password=pw")],
                &[],
                "clickhouse_url",
            ),
            (
                &[
                    ("clickhouse_password", "pw"),
                    ("clickhouse_password_file", "/run/secrets/pw"),
                ],
                &[],
                "clickhouse_password_file",
            ),
            (
                &[("clickhouse_client_cert_file", "/tls/client.pem")],
                &[],
                "clickhouse_client_key_file",
            ),
            (
                &[],
                &[(
                    "CLICKSTREAM_SINK_CLICKHOUSE_CLIENT_KEY_FILE",
                    "/tls/key.pem",
                )],
                "clickhouse_client_cert_file",
            ),
        ];
        for (values, env, key) in cases {
            let error = load(values, env).expect_err(key).to_string();
            assert!(
                error.contains(key),
                "error for {key} does not name it: {error}"
            );
            assert!(!error.contains("pw@"), "the error shows a secret: {error}");
        }
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let env = [
            ("CLICKSTREAM_SINK_CLICKHOUSE_PASSWORD", "ch-pass-1"),
            ("CLICKSTREAM_SINK_KAFKA__SASL_PASSWORD", "kafka-pass-2"),
            ("CLICKSTREAM_SINK_KAFKA__SASL_USERNAME", "sink-user"),
            ("CLICKSTREAM_SINK_KAFKA__SSL_KEY_PASSWORD", "key-pass-3"),
            (
                "CLICKSTREAM_SINK_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET",
                "oauth-4",
            ),
        ];
        let settings = load(&[], &env).unwrap();
        assert_eq!(settings.clickhouse_password, "ch-pass-1");
        assert_eq!(
            settings.kafka.get("sasl.password").map(String::as_str),
            Some("kafka-pass-2")
        );
        for shown in [format!("{settings:?}"), format!("{settings:#?}")] {
            for secret in ["ch-pass-1", "kafka-pass-2", "key-pass-3", "oauth-4"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            assert!(shown.contains("sink-user"), "non-secrets stay: {shown}");
            assert!(shown.contains(REDACTED));
        }
        for (key, secret) in [
            ("sasl.password", true),
            ("ssl.key.password", true),
            ("ssl.keystore.password", true),
            ("ssl.key.pem", true),
            ("sasl.oauthbearer.client.secret", true),
            ("sasl.oauthbearer.config", true),
            ("sasl.username", false),
            ("ssl.ca.location", false),
            ("ssl.key.location", false),
            ("security.protocol", false),
        ] {
            assert_eq!(is_secret_kafka_property(key), secret, "{key}");
        }
    }
}
