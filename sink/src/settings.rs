//! Typed, validated settings. Layers, lowest first: defaults < `--config FILE` (TOML) <
//! environment (`CLICKSTREAM_SINK_<KEY>`, plus `KAFKA_BROKERS` / `CLICKHOUSE_URL`) < flags.
//! A bad value stops start-up with the key named.

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

pub use clickstream_settings::LogFormat;

use clickstream_settings::settings_with_clickhouse;
pub use clickstream_settings::{Key, Overrides, REDACTED, is_secret_kafka_property};

settings_with_clickhouse! {
    /// All settings of the sink, with their defaults. `Debug` leaves secrets out (see
    /// [`is_secret_kafka_property`]); `kafka`: librdkafka properties for the consumer and the
    /// dead-letter producer.
    before: {
        brokers: String = "localhost:9092".into(), flag: true, env: ["KAFKA_BROKERS"], secret: false,
            help: "Kafka bootstrap servers";
        topic: String = "clickstream-events".into(), flag: true, env: [], secret: false,
            help: "topic to consume";
        group: String = "clickstream-sink".into(), flag: true, env: [], secret: false,
            help: "consumer group; sinks in one group share the partitions";
        dlq_topic: String = "clickstream-dlq".into(), flag: true, env: [], secret: false,
            help: "dead-letter topic; must differ from `topic`";
    }
    user: "ClickHouse user (compose: `clickstream_sink`)",
    after: {
        database: String = "clickstream".into(), flag: true, env: [], secret: false,
            help: "database";
        table: String = "events".into(), flag: true, env: [], secret: false,
            help: "table";
        max_rows: usize = 1_000, flag: true, env: [], secret: false,
            help: "the buffered rows (all partitions) are inserted once there are this many ...";
        flush_interval_ms: u64 = 5_000, flag: true, env: [], secret: false,
            help: "... or when its oldest row has waited this long";
        max_batch_bytes: usize = 64 * 1024 * 1024, flag: true, env: [], secret: false,
            help: "memory the rows may take, buffered and being inserted (counted as held, not as payload); consumption pauses at it";
        max_inserts_per_second: f64 = 2.0, flag: true, env: [], secret: false,
            help: "at most about this many inserts a second for the whole sink; batches grow instead";
        max_parallel_inserts: usize = 4, flag: true, env: [], secret: false,
            help: "INSERTs in flight at once across partitions (never more than one per partition: each partition commits in offset order)";
        partitions_per_insert: usize = 64, flag: true, env: [], secret: false,
            help: "partitions whose rows one INSERT carries at most: a flush writes the partitions it takes together, so a sink makes max_inserts_per_second inserts however many partitions it reads (1: an INSERT per partition)";
        delivery: Delivery = Delivery::ExactlyOnce, flag: true, env: [], secret: false,
            help: "`exactly-once` or `at-least-once` (see below)";
        max_message_bytes: usize = 64 * 1024, flag: true, env: [], secret: false,
            help: "larger messages are dead-lettered as `oversized`";
        max_event_age_s: u64 = 7 * 24 * 3_600, flag: false, env: [], secret: false,
            help: "events older than this (7 days, against the message's Kafka timestamp) are dead-lettered";
        max_clock_skew_s: u64 = 300, flag: false, env: [], secret: false,
            help: "events further in the future are dead-lettered";
        retry_initial_ms: u64 = 100, flag: false, env: [], secret: false,
            help: "first retry delay after a transient failure; doubles, with jitter ...";
        retry_max_ms: u64 = 10_000, flag: false, env: [], secret: false,
            help: "... up to this";
        insert_timeout_ms: u64 = 30_000, flag: false, env: [], secret: false,
            help: "one insert taking longer counts as a transient failure";
        shutdown_timeout_ms: u64 = 30_000, flag: false, env: [], secret: false,
            help: "on SIGTERM, time to flush and commit before giving up (nothing is lost: the rest is replayed)";
        stall_timeout_ms: u64 = 60_000, flag: false, env: [], secret: false,
            help: "with work waiting but nothing written for this long, the sink reports itself stalled (`/ready` 503, `clickstream_sink_stalled` 1, an ERROR naming the partition and the cause); at or below `insert_timeout_ms` a start-up warning says a slow insert will count as a stall";
        dedup_window_events: usize = 10_000, flag: false, env: [], secret: false,
            help: "per partition, how many recent event ids are remembered to count an event id seen again at another offset (`clickstream_sink_duplicate_event_ids_total`); 0 turns it off";
        http_addr: String = "0.0.0.0:9100".into(), flag: true, env: [], secret: false,
            help: "address of `/metrics`, `/health`, `/ready`, or `off`";
        log_format: LogFormat = LogFormat::Human, flag: true, env: [], secret: false,
            help: "`human` or `json`";
    }
}

/// Where the README's settings table starts and ends.
pub const README_BEGIN: &str = "<!-- sink-settings:begin (generated from sink/src/settings.rs; UPDATE_README=1 cargo test -p clickstream-sink --lib readme rewrites it) -->";
pub const README_END: &str = "<!-- sink-settings:end -->";

/// The README's table of settings, generated from [`KEYS`] (a test keeps the README equal).
pub fn markdown_table() -> String {
    let mut out = String::from("| setting | flag | default | meaning |\n|---|---|---|---|\n");
    for key in KEYS {
        let mut flag = if key.flag {
            format!("`--{}`", key.flag_name())
        } else {
            String::new()
        };
        if !key.env.is_empty() {
            let vars: Vec<String> = key.env.iter().map(|v| format!("`{v}`")).collect();
            flag = format!("{flag} (env {})", vars.join(", "))
                .trim()
                .to_owned();
        }
        let default = match default_shown(key.name) {
            empty if empty == "empty" => empty,
            value => format!("`{value}`"),
        };
        let flag = if flag.is_empty() {
            " ".to_owned()
        } else {
            format!(" {flag} ")
        };
        out.push_str(&format!(
            "| `{}` |{flag}| {default} | {} |\n",
            key.name, key.help
        ));
    }
    out.push_str(
        "| `kafka` | `-X KEY=VALUE` | none | librdkafka properties (TLS, SASL, tuning) for the \
         consumer and the dead-letter producer (a property of one is ignored by the other, said \
         at debug only); the properties the sink sets itself are refused \
         with the key named (`bootstrap.servers`, `group.id`, the commit settings, an \
         `auto.offset.reset` other than `earliest`, the dead-letter producer's `acks`, ...: see \
         below); rebalancing is eager (a cooperative `partition.assignment.strategy` or \
         `group.protocol=consumer` is refused) |\n",
    );
    out
}

pub const ENV_PREFIX: &str = "CLICKSTREAM_SINK";

/// The sink's Kafka clients and the properties each sets itself (the settings refuse them in
/// `kafka`, under any of their names).
const OWN_CLIENTS: &[(&str, &[(&str, &str)])] = &[
    ("consumer", crate::consumer::CONSUMER_PROPERTIES),
    (
        "dead-letter producer",
        crate::dead_letter::PRODUCER_PROPERTIES,
    ),
    ("read-back consumer", crate::refetch::REFETCH_PROPERTIES),
    ("operations consumer", crate::ops::kafka::OPS_PROPERTIES),
];

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
        let loaded =
            clickstream_settings::load(&Settings::default(), KEYS, ENV_PREFIX, overrides, env)
                .map_err(SinkError::Settings)?;
        let mut settings = loaded.settings;
        settings.kafka = clickstream_settings::merged_kafka(settings.kafka, loaded.kafka)
            .map_err(SinkError::Settings)?;
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
        if let Err((key, why)) = self.connection().check() {
            return bad(key, why);
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
        if self.partitions_per_insert == 0 {
            return bad("partitions_per_insert", "must be at least 1");
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
        // A new group reads its partitions from the start: starting from the end would skip
        // what the topic holds, silently. (It was overridden without a word before.)
        if let Some(reset) = self.kafka.get("auto.offset.reset")
            && !matches!(
                reset.to_ascii_lowercase().as_str(),
                "earliest" | "smallest" | "beginning"
            )
        {
            return bad(
                "kafka.auto.offset.reset",
                "is `earliest`, set by the sink itself: a group without committed offsets reads \
                 everything the topic holds. To start a new group later in the topic, commit \
                 its offsets first (kafka-consumer-groups.sh --reset-offsets --to-datetime ...)",
            );
        }
        // What the sink sets on its clients itself was overwritten without a word before.
        for key in self.kafka.keys() {
            let owned = |list| clickstream_settings::owned_kafka_property(key, list);
            if let Some((_, setting)) = owned(crate::consumer::PROPERTIES_FROM_SETTINGS) {
                return bad(&format!("kafka.{key}"), &format!("is set by `{setting}`"));
            }
            // Every client that sets it, with its own value (they differ: the operations
            // consumer wants end-of-partition events, the main consumer does not).
            let setters: Vec<String> = OWN_CLIENTS
                .iter()
                .filter_map(|(client, list)| owned(list).map(|p| (client, p)))
                // `earliest` is accepted above: what the consumers set anyway.
                .filter(|(_, (name, _))| *name != "auto.offset.reset")
                .map(|(client, (name, value))| format!("on its {client} {name}={value}"))
                .collect();
            if !setters.is_empty() {
                return bad(
                    &format!("kafka.{key}"),
                    &format!("is set by the sink itself: {}", setters.join(", ")),
                );
            }
        }
        // An incremental (cooperative) rebalance keeps a partition across a rebalance without
        // giving it back in an assignment; a partition the sink let go on a refused commit would
        // then stay assigned and never be read again. The sink needs eager rebalances.
        if let Some(strategy) = self.kafka.get("partition.assignment.strategy")
            && strategy.to_ascii_lowercase().contains("cooperative")
        {
            return bad(
                "kafka.partition.assignment.strategy",
                "cooperative (incremental) rebalancing is not supported: the sink needs eager \
                 rebalances; use `range` or `roundrobin`, or leave it unset",
            );
        }
        if let Some(protocol) = self.kafka.get("group.protocol")
            && !protocol.eq_ignore_ascii_case("classic")
        {
            return bad(
                "kafka.group.protocol",
                "only `classic` is supported (the `consumer` protocol rebalances \
                 incrementally; the sink needs eager rebalances)",
            );
        }
        Ok(())
    }

    /// Settings that work but are likely not what was meant, said once at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.stall_timeout_ms <= self.insert_timeout_ms {
            warnings.push(format!(
                "stall_timeout_ms ({}) is not above insert_timeout_ms ({}): an insert that is \
                 slow but still within its timeout is reported as a stall (/ready 503, \
                 clickstream_sink_stalled 1); raise stall_timeout_ms unless that is meant",
                self.stall_timeout_ms, self.insert_timeout_ms
            ));
        }
        if let Some(value) = self.kafka.get("message.max.bytes") {
            warnings.push(format!(
                "kafka.message.max.bytes = {value} applies to the consumer only: the dead-letter \
                 producer sets its own from the dead-letter topic's max.message.bytes"
            ));
        }
        warnings
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

    #[test]
    fn the_readme_table_of_settings_is_made_from_their_definitions() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let start = readme
            .find(README_BEGIN)
            .expect("the README marks the table")
            + README_BEGIN.len();
        let stop = readme
            .find(README_END)
            .expect("the README marks the table's end");
        let expected = format!("\n{}", markdown_table());
        if std::env::var_os("UPDATE_README").is_some() {
            std::fs::write(
                path,
                format!("{}{expected}{}", &readme[..start], &readme[stop..]),
            )
            .unwrap();
            return;
        }
        assert_eq!(
            &readme[start..stop],
            expected,
            "the README's settings table is generated: UPDATE_README=1 cargo test -p clickstream-sink --lib readme"
        );
    }

    #[test]
    fn every_key_is_read_from_its_environment_variable_and_its_flag_layer() {
        for key in KEYS {
            let default = default_shown(key.name);
            let value = match key.name {
                "delivery" => "at-least-once".to_owned(),
                "log_format" => "json".to_owned(),
                "http_addr" => "127.0.0.1:9999".to_owned(),
                "clickhouse_url" => "https://ch.example:8443".to_owned(),
                // Valid only together with another key.
                "clickhouse_client_cert_file" | "clickhouse_client_key_file" => continue,
                // Numbers: one more than the default (valid wherever the default is).
                _ => match default.parse::<f64>() {
                    Ok(number) => format!("{}", number as u64 + 1),
                    Err(_) => "some_value".to_owned(),
                },
            };
            let value = value.as_str();
            let var = format!("{ENV_PREFIX}_{}", key.name.to_ascii_uppercase());
            let from_env =
                load(&[], &[(var.as_str(), value)]).unwrap_or_else(|e| panic!("{}: {e}", key.name));
            let from_flag = load(&[(key.name, value)], &[]).unwrap();
            let json = serde_json::to_value(&from_env).unwrap();
            let shown = match &json[key.name] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(
                shown.trim_end_matches(".0"),
                value,
                "{} from {var}",
                key.name
            );
            assert_eq!(from_env, from_flag, "{}", key.name);
            for alias in key.env {
                let from_alias = load(&[], &[(*alias, value)]).unwrap();
                assert_eq!(from_alias, from_env, "{} from {alias}", key.name);
            }
        }
    }

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
    fn a_stall_timeout_within_the_insert_timeout_is_warned_about() {
        assert!(load(&[], &[]).unwrap().warnings().is_empty());
        let settings = load(&[("stall_timeout_ms", "5000")], &[]).unwrap();
        let warnings = settings.warnings();
        assert!(
            warnings.len() == 1 && warnings[0].contains("stall_timeout_ms (5000)"),
            "{warnings:?}"
        );
    }

    /// Every property any of the sink's Kafka clients sets itself is refused in `kafka`, so
    /// none overwrites a user's value without a word.
    #[test]
    fn every_property_a_client_sets_itself_is_refused() {
        let lists = [
            crate::consumer::PROPERTIES_FROM_SETTINGS,
            crate::consumer::CONSUMER_PROPERTIES,
            crate::dead_letter::PRODUCER_PROPERTIES,
            crate::refetch::REFETCH_PROPERTIES,
            crate::ops::kafka::OPS_PROPERTIES,
        ];
        for (key, _) in lists.concat() {
            let variable = format!(
                "CLICKSTREAM_SINK_KAFKA__{}",
                key.replace('.', "_").to_ascii_uppercase()
            );
            let error = load(&[], &[(variable.as_str(), "x")])
                .expect_err(key)
                .to_string();
            assert!(error.contains(&format!("kafka.{key}")), "{key}: {error}");
        }
    }

    /// A property two clients set to different values is refused naming both.
    #[test]
    fn a_refusal_names_every_client_that_sets_the_property() {
        let env = [("CLICKSTREAM_SINK_KAFKA__ENABLE_PARTITION_EOF", "true")];
        let error = load(&[], &env).expect_err("refused").to_string();
        for expected in [
            "on its consumer enable.partition.eof=false",
            "on its read-back consumer enable.partition.eof=false",
            "on its operations consumer enable.partition.eof=true",
        ] {
            assert!(error.contains(expected), "{expected}: {error}");
        }
    }

    /// `-X` names are taken as librdkafka spells them: a mixed-case or padded name is
    /// checked (and set) as the property it names.
    #[test]
    fn a_kafka_property_name_is_trimmed_and_lowercased() {
        let with = |key: &str, value: &str| {
            let overrides = Overrides {
                kafka: vec![(key.to_owned(), value.to_owned())],
                ..Overrides::default()
            };
            Settings::load_from(&overrides, Vec::new())
        };
        let settings = with(" Auto.Offset.Reset", "earliest").expect("accepted");
        assert_eq!(settings.kafka["auto.offset.reset"], "earliest");
        assert_eq!(settings.kafka.len(), 1, "{:?}", settings.kafka);
        let error = with("Auto.Offset.Reset", "latest").expect_err("refused");
        assert!(
            error.to_string().contains("kafka.auto.offset.reset"),
            "{error}"
        );
    }

    #[test]
    fn an_auto_offset_reset_the_sink_sets_itself_is_accepted() {
        for value in ["earliest", "smallest", "beginning"] {
            let env = [("CLICKSTREAM_SINK_KAFKA__AUTO_OFFSET_RESET", value)];
            assert!(load(&[], &env).is_ok(), "{value} refused");
        }
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
            (
                &[],
                &[(
                    "CLICKSTREAM_SINK_KAFKA__PARTITION_ASSIGNMENT_STRATEGY",
                    "range,cooperative-sticky",
                )],
                "kafka.partition.assignment.strategy",
            ),
            (
                &[],
                &[("CLICKSTREAM_SINK_KAFKA__GROUP_PROTOCOL", "consumer")],
                "kafka.group.protocol",
            ),
            (
                &[],
                &[("CLICKSTREAM_SINK_KAFKA__AUTO_OFFSET_RESET", "latest")],
                "kafka.auto.offset.reset",
            ),
            (
                &[],
                &[("CLICKSTREAM_SINK_KAFKA__STATISTICS_INTERVAL_MS", "0")],
                "kafka.statistics.interval.ms",
            ),
            (&[], &[("CLICKSTREAM_SINK_KAFKA__ACKS", "1")], "kafka.acks"),
            // Other librdkafka names of what the sink sets.
            (
                &[],
                &[("CLICKSTREAM_SINK_KAFKA__REQUEST_REQUIRED_ACKS", "1")],
                "kafka.request.required.acks",
            ),
            (
                &[],
                &[("CLICKSTREAM_SINK_KAFKA__METADATA_BROKER_LIST", "b:9092")],
                "kafka.metadata.broker.list",
            ),
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
