//! Typed, validated settings, defined once (the sink's pattern: `sink/src/settings.rs`).
//! Layers, lowest first: defaults < `--config FILE` (TOML) < environment
//! (`CLICKSTREAM_WINDOWS_<KEY>`, plus `KAFKA_BROKERS` / `CLICKHOUSE_URL` / ...) < flags.
//! A bad value stops start-up with the key named.

use chrono::{DateTime, Utc};

use crate::Error;

pub use clickstream_settings::LogFormat;

use clickstream_settings::settings_with_clickhouse;
/// One setting, as defined once in [`settings!`].
pub use clickstream_settings::{Key, Overrides, REDACTED, is_secret_kafka_property};

settings_with_clickhouse! {
    /// All settings of clickstream-windows, with their defaults (`Debug` leaves secrets out).
    before: {
        brokers: String = "localhost:9092".into(), flag: true, env: ["KAFKA_BROKERS"], secret: false,
            help: "Kafka bootstrap servers";
        topic: String = "clickstream-metrics".into(), flag: true, env: [], secret: false,
            help: "topic the window messages are published on (created if missing, with `topic_retention_ms`)";
        topic_retention_ms: u64 = 7 * 24 * 3_600_000, flag: true, env: [], secret: false,
            help: "retention.ms of the topic when this program creates it (7 days); windows older than this are neither read back nor corrected";
        window: String = "5m".into(), flag: true, env: [], secret: false,
            help: "window length, `1m` or `5m` (tumbling, aligned to the epoch)";
        allowed_lateness_ms: u64 = 60_000, flag: true, env: [], secret: false,
            help: "a window is closed, and published, once its end plus this has passed";
        since: String = String::new(), flag: true, env: [], secret: false,
            help: "RFC 3339 time: publish (backfill) the windows from this one on; empty: from where the topic stops, or from the last closed window";
        poll_interval_ms: u64 = 5_000, flag: true, env: [], secret: false,
            help: "how often ClickHouse is asked for closed windows and late rows";
        top_n: usize = 10, flag: true, env: [], secret: false,
            help: "entries in `top_referrers` and `top_pages`";
    }
    user: "ClickHouse user (compose: `clickstream_reader`; it only reads)",
    after: {
        database: String = "clickstream".into(), flag: true, env: [], secret: false,
            help: "database of the rollups (`events_1m`) and of `events` (late rows are found by `inserted_at`)";
        http_addr: String = "0.0.0.0:9102".into(), flag: true, env: [], secret: false,
            help: "address of `/metrics` and `/health`, or `off`";
        log_format: LogFormat = LogFormat::Human, flag: true, env: [], secret: false,
            help: "`human` or `json`";
    }
}

pub const ENV_PREFIX: &str = "CLICKSTREAM_WINDOWS";

/// Where the README's settings table starts and ends.
pub const README_BEGIN: &str = "<!-- windows-settings:begin (generated from windows/src/settings.rs; UPDATE_README=1 cargo test -p clickstream-windows --lib readme rewrites it) -->";
pub const README_END: &str = "<!-- windows-settings:end -->";

/// The README's table of settings, generated from [`KEYS`].
pub fn markdown_table() -> String {
    let mut out = String::from("| environment | flag | default | meaning |\n|---|---|---|---|\n");
    for key in KEYS {
        let mut vars = format!("`{ENV_PREFIX}_{}`", key.name.to_ascii_uppercase());
        if !key.env.is_empty() {
            let aliases: Vec<String> = key.env.iter().map(|v| format!("`{v}`")).collect();
            vars = format!("{vars} (or {})", aliases.join(", "));
        }
        let default = match default_shown(key.name) {
            empty if empty == "empty" => empty,
            value => format!("`{value}`"),
        };
        out.push_str(&format!(
            "| {vars} | `--{}` | {default} | {} |\n",
            key.flag_name(),
            key.help
        ));
    }
    out.push_str(&format!(
        "| `{ENV_PREFIX}_KAFKA__<KEY>` | `-X KEY=VALUE` | none | librdkafka properties (TLS, \
         SASL) for the producer and the read-back consumer; what it sets itself is refused with \
         the key named (`bootstrap.servers`, {}, and their other names) |\n",
        [
            crate::topic::READ_BACK_PROPERTIES,
            crate::topic::PUBLISHER_PROPERTIES
        ]
        .concat()
        .iter()
        .map(|(key, _)| format!("`{key}`"))
        .collect::<Vec<_>>()
        .join(", ")
    ));
    out
}

impl Settings {
    pub fn load(overrides: &Overrides) -> Result<Settings, Error> {
        Settings::load_from(overrides, std::env::vars())
    }

    /// Like [`Settings::load`], with the environment given (for tests).
    pub fn load_from(
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, Error> {
        let loaded =
            clickstream_settings::load(&Settings::default(), KEYS, ENV_PREFIX, overrides, env)
                .map_err(Error::Settings)?;
        let mut settings = loaded.settings;
        settings.kafka = clickstream_settings::merged_kafka(settings.kafka, loaded.kafka)
            .map_err(Error::Settings)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types alone cannot; the error names the key.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |key: &str, why: &str| {
            Err(Error::Settings(format!("invalid value for `{key}`: {why}")))
        };
        for (key, value) in [("brokers", &self.brokers), ("topic", &self.topic)] {
            if value.trim().is_empty() {
                return bad(key, "must not be empty");
            }
        }
        if self.window_minutes().is_none() {
            return bad("window", "must be `1m` or `5m`");
        }
        if !self.since.is_empty() && DateTime::parse_from_rfc3339(&self.since).is_err() {
            return bad(
                "since",
                "must be an RFC 3339 time, e.g. 2026-11-30T10:00:00Z",
            );
        }
        if let Err((key, why)) = self.connection().check() {
            return bad(key, why);
        }
        if self.database.is_empty()
            || !self
                .database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return bad(
                "database",
                "must be a plain identifier (letters, digits, _)",
            );
        }
        if self.poll_interval_ms < 100 {
            return bad("poll_interval_ms", "must be at least 100");
        }
        if self.top_n == 0 {
            return bad("top_n", "must be at least 1");
        }
        if self.topic_retention_ms < 3_600_000 {
            return bad("topic_retention_ms", "must be at least 3600000 (1 hour)");
        }
        if self.http_addr != "off" && self.http_addr.parse::<std::net::SocketAddr>().is_err() {
            return bad("http_addr", "must be HOST:PORT (an IP address) or \"off\"");
        }
        // What the program sets on its clients itself was overwritten without a word before.
        for key in self.kafka.keys() {
            let owned = |list| clickstream_settings::owned_kafka_property(key, list);
            if owned(&[("bootstrap.servers", "")]).is_some() {
                return bad(&format!("kafka.{key}"), "is set by `brokers`");
            }
            for (client, list) in [
                ("read-back consumer", crate::topic::READ_BACK_PROPERTIES),
                ("publisher", crate::topic::PUBLISHER_PROPERTIES),
            ] {
                if owned(list).is_some() {
                    return bad(
                        &format!("kafka.{key}"),
                        &format!(
                            "is set by clickstream-windows itself on its {client} ({})",
                            clickstream_settings::shown_properties(list)
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// 1 or 5 for `window`.
    pub fn window_minutes(&self) -> Option<i64> {
        match self.window.as_str() {
            "1m" => Some(1),
            "5m" => Some(5),
            _ => None,
        }
    }

    pub fn since_time(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.since)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    pub fn kafka_client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.kafka {
            config.set(key, value);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(values: &[(&str, &str)], env: &[(&str, &str)]) -> Result<Settings, Error> {
        let overrides = Overrides {
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Overrides::default()
        };
        Settings::load_from(
            &overrides,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn the_readme_table_of_settings_is_made_from_their_definitions() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let start = readme
            .find(README_BEGIN)
            .expect("the README marks the table")
            + README_BEGIN.len();
        let stop = readme.find(README_END).expect("the README marks its end");
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
            "UPDATE_README=1 cargo test -p clickstream-windows --lib readme"
        );
    }

    #[test]
    fn defaults_are_the_documented_ones_and_layers_apply_in_order() {
        let settings = load(&[], &[]).unwrap();
        assert_eq!(settings, Settings::default());
        assert_eq!(settings.topic, "clickstream-metrics");
        assert_eq!(settings.window_minutes(), Some(5));
        assert_eq!(settings.allowed_lateness_ms, 60_000);
        assert_eq!(settings.topic_retention_ms, 604_800_000);
        let env = [
            ("KAFKA_BROKERS", "k1:9092"),
            ("CLICKHOUSE_URL", "http://ch:8123"),
            ("CLICKSTREAM_WINDOWS_WINDOW", "1m"),
            ("CLICKSTREAM_WINDOWS_TOP_N", "3"),
            ("CLICKSTREAM_WINDOWS_KAFKA__SECURITY_PROTOCOL", "SSL"),
        ];
        let settings = load(&[("top_n", "4")], &env).unwrap();
        assert_eq!(settings.brokers, "k1:9092");
        assert_eq!(settings.clickhouse_url, "http://ch:8123");
        assert_eq!(settings.window_minutes(), Some(1));
        assert_eq!(settings.top_n, 4, "flag beats env");
        assert_eq!(
            settings.kafka.get("security.protocol").map(String::as_str),
            Some("SSL")
        );
    }

    #[test]
    fn bad_values_name_the_key_and_debug_shows_no_secret() {
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Pairs, Pairs, &str)] = &[
            (&[("window", "10m")], &[], "window"),
            (&[("since", "yesterday")], &[], "since"),
            (&[], &[("CLICKSTREAM_WINDOWS_TOP_N", "many")], "top_n"),
            (
                &[("clickhouse_url", "https://u:pw@ch:8443")],
                &[],
                "clickhouse_url",
            ),
            (&[("database", "x; DROP")], &[], "database"),
            (&[("http_addr", "nowhere")], &[], "http_addr"),
            (&[], &[("CLICKSTREAM_WINDOWS_WINDOWZ", "5m")], "windowz"),
            (
                &[],
                &[("CLICKSTREAM_WINDOWS_KAFKA__AUTO_OFFSET_RESET", "latest")],
                "kafka.auto.offset.reset",
            ),
            (
                &[],
                &[("CLICKSTREAM_WINDOWS_KAFKA__CLIENT_ID", "w")],
                "kafka.client.id",
            ),
            (
                &[],
                &[("CLICKSTREAM_WINDOWS_KAFKA__REQUEST_REQUIRED_ACKS", "1")],
                "kafka.request.required.acks",
            ),
            (
                &[],
                &[("CLICKSTREAM_WINDOWS_KAFKA__METADATA_BROKER_LIST", "b:9092")],
                "kafka.metadata.broker.list",
            ),
        ];
        for (values, env, key) in cases {
            let error = load(values, env).expect_err(key).to_string();
            assert!(
                error.contains(key),
                "error for {key} does not name it: {error}"
            );
            assert!(!error.contains("pw@"), "{error}");
        }
        let settings = load(
            &[("clickhouse_password", "ch-secret-1")],
            &[("CLICKSTREAM_WINDOWS_KAFKA__SASL_PASSWORD", "kafka-secret-2")],
        )
        .unwrap();
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("ch-secret-1") && !shown.contains("kafka-secret-2"),
            "{shown}"
        );
        assert!(shown.contains(REDACTED));
    }
}
