//! docker-compose.yml and .env: structure, pins, files, health checks and start order, and the
//! environment each program gets, checked against the programs' own settings parsing.

use std::collections::{BTreeMap, BTreeSet};

use clap::{CommandFactory, Parser};
use clickstream_deploy::compose::{Compose, scalar, variables};
use clickstream_producer::settings::Args;
use clickstream_sink::settings::{Delivery, Overrides, Settings};
use clickstream_testkit::repo_root;

use crate::{compose, read};

const SERVICES: [&str; 9] = [
    "kafka",
    "kafka-init",
    "clickhouse",
    "producer",
    "sink",
    "windows",
    "kafka-ui",
    "prometheus",
    "grafana",
];

/// Services that run once and exit (no health check; dependents wait for their success).
const ONE_SHOT: [&str; 1] = ["kafka-init"];

/// The topics kafka-init creates: name → partitions.
fn created_topics(compose: &Compose) -> BTreeMap<String, u32> {
    let script: String = compose.service("kafka-init")["command"]
        .as_sequence()
        .expect("kafka-init command list")
        .iter()
        .filter_map(scalar)
        .collect::<Vec<_>>()
        .join("\n");
    let mut topics = BTreeMap::new();
    for line in script.lines().filter(|l| l.contains("--create")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1))
                .unwrap_or_else(|| panic!("{flag} missing in: {line}"))
                .to_string()
        };
        assert!(line.contains("--if-not-exists"), "not idempotent: {line}");
        assert!(line.contains("--bootstrap-server kafka:9092"), "{line}");
        topics.insert(
            after("--topic"),
            after("--partitions").parse().expect("partitions"),
        );
    }
    topics
}

#[test]
fn the_product_is_these_services_on_pinned_official_images() {
    let compose = compose();
    let names = compose.service_names();
    assert_eq!(
        names.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        SERVICES.into_iter().collect::<BTreeSet<_>>()
    );
    let official = [
        ("kafka", "apache/kafka"),
        ("kafka-init", "apache/kafka"),
        ("clickhouse", "clickhouse/clickhouse-server"),
        ("prometheus", "prom/prometheus"),
        ("grafana", "grafana/grafana"),
        // The maintained fork of provectus/kafka-ui.
        ("kafka-ui", "kafbat/kafka-ui"),
    ];
    for (service, repository) in official {
        let image = compose.service(service)["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{service}: no image"));
        let (name, tag) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{service}: image {image} has no tag"));
        assert_eq!(name, repository, "{service}");
        // Pinned: a version number, never a moving tag.
        let version = tag.trim_start_matches('v');
        assert!(
            version.split('.').count() >= 2 && version.split('.').all(|p| p.parse::<u32>().is_ok()),
            "{service}: {image} is not pinned to a version"
        );
    }
    // ClickHouse: an LTS line (the .3 and .8 releases of each year).
    let clickhouse = compose.service("clickhouse")["image"].as_str().unwrap();
    let minor: u32 = clickhouse
        .split(':')
        .nth(1)
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(matches!(minor, 3 | 8), "{clickhouse} is not an LTS");
    // Kafka and its init job share the broker's image (same CLI version).
    assert_eq!(
        compose.service("kafka")["image"],
        compose.service("kafka-init")["image"]
    );
    // Producer and sink are built here, from the one Dockerfile.
    for (service, target) in [
        ("producer", "producer"),
        ("sink", "sink"),
        ("windows", "windows"),
    ] {
        let build = &compose.service(service)["build"];
        assert_eq!(build["context"].as_str(), Some("."), "{service}");
        assert_eq!(
            build["dockerfile"].as_str(),
            Some("Dockerfile"),
            "{service}"
        );
        assert_eq!(build["target"].as_str(), Some(target), "{service}");
    }
}

#[test]
fn every_mounted_or_built_file_exists() {
    let compose = compose();
    let root = repo_root();
    let mut checked = 0;
    for service in compose.service_names() {
        for (source, target) in compose.bind_mounts(&service) {
            let path = root.join(&source);
            assert!(
                path.exists(),
                "{service}: {source} (mounted at {target}) is missing"
            );
            checked += 1;
        }
        for (volume, _) in compose.named_volumes(&service) {
            assert!(
                compose.doc["volumes"].get(&volume).is_some(),
                "{service}: volume {volume} is not declared under volumes:"
            );
        }
        let build = &compose.service(&service)["build"];
        if let Some(context) = build["context"].as_str() {
            let dockerfile = root
                .join(context)
                .join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            assert!(dockerfile.exists(), "{service}: {}", dockerfile.display());
            let file = clickstream_deploy::dockerfile::Dockerfile::parse(
                &std::fs::read_to_string(&dockerfile).unwrap(),
            );
            let target = build["target"].as_str().expect("build target");
            assert!(file.stage(target).is_some(), "{service}: no stage {target}");
        }
    }
    assert!(checked >= 5, "only {checked} bind mounts found");
    // Data survives `docker compose down`: Kafka's and ClickHouse's together.
    for (service, path) in [
        ("kafka", "/var/lib/kafka/data"),
        ("clickhouse", "/var/lib/clickhouse"),
    ] {
        assert!(
            compose
                .named_volumes(service)
                .iter()
                .any(|(_, target)| target == path),
            "{service}: no named volume at {path}"
        );
    }
    assert_eq!(
        compose.environment("kafka").unwrap()["KAFKA_LOG_DIRS"],
        "/var/lib/kafka/data"
    );
}

#[test]
fn every_service_has_a_health_check_and_waits_for_what_it_needs() {
    let compose = compose();
    for service in compose.service_names() {
        let spec = compose.service(&service);
        if ONE_SHOT.contains(&service.as_str()) {
            assert_eq!(spec["restart"].as_str(), Some("no"), "{service}");
            continue;
        }
        let test = &spec["healthcheck"]["test"];
        let words: Vec<String> = test
            .as_sequence()
            .map(|s| s.iter().filter_map(scalar).collect())
            .unwrap_or_default();
        assert!(
            matches!(words.first().map(String::as_str), Some("CMD" | "CMD-SHELL"))
                && words.len() > 1,
            "{service}: no health check test ({test:?})"
        );
        for key in ["interval", "timeout", "retries", "start_period"] {
            assert!(
                !spec["healthcheck"][key].is_null(),
                "{service}: healthcheck.{key} missing"
            );
        }
        assert_eq!(
            spec["restart"].as_str(),
            Some("unless-stopped"),
            "{service}"
        );
    }

    // Start order: nothing starts before what it needs is healthy (or has completed).
    let expected: &[(&str, &[(&str, &str)])] = &[
        ("kafka", &[]),
        ("kafka-init", &[("kafka", "service_healthy")]),
        ("clickhouse", &[]),
        (
            "producer",
            &[("kafka-init", "service_completed_successfully")],
        ),
        (
            "sink",
            &[
                ("clickhouse", "service_healthy"),
                ("kafka-init", "service_completed_successfully"),
            ],
        ),
        (
            "windows",
            &[
                ("clickhouse", "service_healthy"),
                ("kafka-init", "service_completed_successfully"),
            ],
        ),
        ("kafka-ui", &[("kafka", "service_healthy")]),
        ("prometheus", &[]),
        (
            "grafana",
            &[
                ("clickhouse", "service_healthy"),
                ("prometheus", "service_healthy"),
            ],
        ),
    ];
    for (service, needs) in expected {
        let actual = compose.depends_on(service);
        let wanted: BTreeMap<String, String> = needs
            .iter()
            .map(|(s, c)| (s.to_string(), c.to_string()))
            .collect();
        assert_eq!(actual, wanted, "{service}: depends_on");
        for (dependency, condition) in &actual {
            let one_shot = ONE_SHOT.contains(&dependency.as_str());
            let required = if one_shot {
                "service_completed_successfully"
            } else {
                "service_healthy"
            };
            assert_eq!(condition, required, "{service} → {dependency}");
        }
    }
}

#[test]
fn kafkas_health_check_is_the_mounted_probe_on_the_internal_listener() {
    let compose = compose();
    let words: Vec<String> = compose.service("kafka")["healthcheck"]["test"]
        .as_sequence()
        .expect("kafka's health check")
        .iter()
        .filter_map(scalar)
        .collect();
    assert_eq!(
        words,
        [
            "CMD",
            "bash",
            "/opt/clickstream/kafka-ready",
            "localhost",
            "9092"
        ]
    );
    assert!(compose.bind_mounts("kafka").contains(&(
        "./deploy/kafka/kafka-ready".to_owned(),
        "/opt/clickstream/kafka-ready".to_owned()
    )));
    let listeners = &compose.environment("kafka").unwrap()["KAFKA_LISTENERS"];
    assert!(listeners.contains("INTERNAL://:9092"), "{listeners}");
    assert!(
        !words
            .iter()
            .any(|w| w.contains("kafka-broker-api-versions")),
        "no JVM per check"
    );
}

#[test]
fn kafka_is_a_single_kraft_node_and_init_creates_the_topics() {
    let compose = compose();
    let env = compose.environment("kafka").unwrap();
    assert_eq!(env["KAFKA_PROCESS_ROLES"], "broker,controller");
    assert!(
        env.keys().all(|k| !k.contains("ZOOKEEPER")),
        "KRaft mode needs no ZooKeeper"
    );
    assert_eq!(env["KAFKA_CONTROLLER_QUORUM_VOTERS"], "1@kafka:9093");
    assert_eq!(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"], "false");
    // The cluster id is a base64url UUID: 22 characters for 16 bytes.
    let cluster_id = &env["CLUSTER_ID"];
    assert_eq!(cluster_id.len(), 22, "{cluster_id}");
    assert!(
        cluster_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{cluster_id}"
    );
    // Containers reach the broker at kafka:9092, the host at localhost:KAFKA_PORT.
    let advertised = &env["KAFKA_ADVERTISED_LISTENERS"];
    assert!(advertised.contains("//kafka:9092"), "{advertised}");
    let host_port = &compose.env["KAFKA_PORT"];
    assert!(
        advertised.contains(&format!("//localhost:{host_port}")),
        "{advertised}"
    );
    let ports = compose.ports("kafka").unwrap();
    let host_listener = env["KAFKA_LISTENERS"]
        .split(',')
        .find(|l| l.starts_with("HOST://"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse::<u16>().ok())
        .expect("HOST listener");
    assert_eq!(ports, [(host_port.parse().unwrap(), host_listener)]);

    let topics = created_topics(&compose);
    let sink = Settings::default();
    let producer = clickstream_producer::Settings::new("x");
    assert_eq!(topics.get(&sink.topic), Some(&3), "{topics:?}");
    assert_eq!(sink.topic, producer.topic);
    assert_eq!(
        topics.get(&producer.topic),
        Some(&(producer.partitions as u32))
    );
    assert!(topics.contains_key(&sink.dlq_topic), "{topics:?}");
}

/// Loads the sink's settings from `env` alone, as the binary does from its environment.
fn sink_settings(env: &BTreeMap<String, String>) -> Result<Settings, String> {
    Settings::load_from(&Overrides::default(), env.clone()).map_err(|e| e.to_string())
}

/// Every variable is one the sink reads: `CLICKSTREAM_SINK_*` keys are checked by the
/// settings themselves (unknown keys are refused), any other variable must change a setting.
pub(crate) fn check_sink_environment(env: &BTreeMap<String, String>) -> Result<Settings, String> {
    let settings = sink_settings(env)?;
    let defaults = sink_settings(&BTreeMap::new())?;
    for (key, value) in env {
        if key.starts_with("CLICKSTREAM_SINK_") || key == "RUST_LOG" {
            continue;
        }
        let alone = BTreeMap::from([(key.clone(), value.clone())]);
        if sink_settings(&alone)? == defaults {
            return Err(format!("{key} is not read by the sink"));
        }
    }
    Ok(settings)
}

#[test]
fn the_sink_accepts_its_environment() {
    let compose = compose();
    let env = compose.environment("sink").unwrap();
    let settings = check_sink_environment(&env).unwrap_or_else(|e| panic!("{e}"));

    // Where it connects: the compose services, as the user users.sql creates.
    assert_eq!(settings.brokers, "kafka:9092");
    assert_eq!(settings.clickhouse_url, "http://clickhouse:8123");
    assert_eq!(settings.clickhouse_user, "clickstream_sink");
    assert!(read("clickhouse/users.sql").contains("CREATE USER IF NOT EXISTS clickstream_sink"));
    assert_eq!(
        settings.clickhouse_password,
        compose.env["CLICKHOUSE_SINK_PASSWORD"]
    );
    assert_eq!(
        compose.environment("clickhouse").unwrap()["CLICKHOUSE_SINK_PASSWORD"],
        settings.clickhouse_password,
        "the password ClickHouse sets for the sink's user"
    );
    assert_eq!(settings.delivery, Delivery::ExactlyOnce);
    assert!(created_topics(&compose).contains_key(&settings.topic));
    assert!(created_topics(&compose).contains_key(&settings.dlq_topic));
    // The metrics port is the one published, probed and scraped.
    let port: u16 = settings
        .http_addr
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        compose
            .ports("sink")
            .unwrap()
            .iter()
            .any(|(_, c)| *c == port)
    );
    assert_eq!(health_probe(&compose, "sink"), (port, "/ready".to_owned()));

    // The check catches what the sink would not read.
    let mut typo = env.clone();
    typo.insert("CLICKSTREAM_SINK_FLUSH_INTERVAL".into(), "1000".into());
    let error = check_sink_environment(&typo).expect_err("unknown key");
    assert!(error.contains("flush_interval"), "{error}");
    let mut foreign = env.clone();
    foreign.insert("CLICKHOUSE_DATABASE".into(), "x".into());
    let error = check_sink_environment(&foreign).expect_err("not a sink variable");
    assert!(error.contains("CLICKHOUSE_DATABASE"), "{error}");
}

/// The producer's command line from `env` the way clap reads it: each variable is the `env` of
/// one flag; the flags are parsed and turned into settings by the producer's own code.
fn producer_settings(
    env: &BTreeMap<String, String>,
) -> Result<clickstream_producer::Settings, String> {
    producer_settings_with(env, &[])
}

/// Like [`producer_settings`], with command-line `args` after the environment's flags.
pub(crate) fn producer_settings_with(
    env: &BTreeMap<String, String>,
    args: &[String],
) -> Result<clickstream_producer::Settings, String> {
    let command = Args::command();
    let mut argv = vec!["clickstream-producer".to_owned()];
    for (key, value) in env {
        if key == "RUST_LOG" {
            continue;
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == key.as_str()))
            .ok_or_else(|| format!("{key} is not read by the producer"))?;
        let long = arg
            .get_long()
            .ok_or_else(|| format!("{key}: flag without a long name"))?;
        argv.push(format!("--{long}={value}"));
    }
    argv.extend(args.iter().cloned());
    let args = Args::try_parse_from(&argv).map_err(|e| e.to_string())?;
    args.into_settings(|| 0).map_err(|e| e.to_string())
}

#[test]
fn the_producer_accepts_its_environment() {
    let compose = compose();
    let env = compose.environment("producer").unwrap();
    let settings = producer_settings(&env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(settings.brokers, "kafka:9092");
    assert!(created_topics(&compose).contains_key(&settings.topic));
    assert_eq!(
        settings.rate,
        compose.env["PRODUCER_RATE"].parse().expect("PRODUCER_RATE")
    );
    let addr = settings
        .metrics_addr
        .expect("a metrics endpoint in compose");
    assert!(
        addr.ip().is_unspecified(),
        "reachable from Prometheus: {addr}"
    );
    assert!(
        compose
            .ports("producer")
            .unwrap()
            .iter()
            .any(|(_, c)| *c == addr.port())
    );
    assert_eq!(
        health_probe(&compose, "producer"),
        (addr.port(), "/health".to_owned())
    );

    // The check catches a variable no flag reads, and a value the flag refuses.
    let mut typo = env.clone();
    typo.insert("CLICKSTREAM_PRODUCER_RATES".into(), "5".into());
    assert!(producer_settings(&typo).unwrap_err().contains("RATES"));
    let mut bad = env.clone();
    bad.insert("CLICKSTREAM_PRODUCER_BAD_RATIO".into(), "2".into());
    assert!(producer_settings(&bad).unwrap_err().contains("--bad-ratio"));
}

/// (port, path) of a service's `http-ok PORT PATH` health check.
fn health_probe(compose: &Compose, service: &str) -> (u16, String) {
    let words: Vec<String> = compose.service(service)["healthcheck"]["test"]
        .as_sequence()
        .expect("healthcheck test list")
        .iter()
        .filter_map(scalar)
        .collect();
    match words.as_slice() {
        [cmd, probe, port, path] if cmd == "CMD" && probe == "http-ok" => {
            (port.parse().expect("port"), path.clone())
        }
        other => panic!("{service}: expected CMD http-ok PORT PATH, got {other:?}"),
    }
}

#[test]
fn prometheus_scrapes_the_ports_the_programs_listen_on() {
    let compose = compose();
    let config: serde_norway::Value =
        serde_norway::from_str(&read("deploy/prometheus.yml")).expect("prometheus.yml");
    let targets: BTreeSet<String> = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .flat_map(|job| {
            job["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|c| c["targets"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    let sink = sink_settings(&compose.environment("sink").unwrap()).unwrap();
    let sink_port = sink.http_addr.rsplit(':').next().unwrap().to_owned();
    let producer = producer_settings(&compose.environment("producer").unwrap()).unwrap();
    let producer_port = producer.metrics_addr.unwrap().port();
    assert_eq!(
        targets,
        BTreeSet::from([
            format!("sink:{sink_port}"),
            format!("windows:{}", windows_port(&compose)),
            format!("producer:{producer_port}")
        ])
    );
    // The file Prometheus is told to read is the mounted one.
    let command: Vec<String> = compose.service("prometheus")["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(scalar)
        .collect();
    let config_file = command
        .iter()
        .find_map(|a| a.strip_prefix("--config.file="))
        .expect("--config.file");
    assert!(
        compose
            .bind_mounts("prometheus")
            .contains(&("./deploy/prometheus.yml".to_owned(), config_file.to_owned()))
    );
}

#[test]
fn grafana_gets_the_plugin_the_provisioning_and_its_passwords() {
    let compose = compose();
    let env = compose.environment("grafana").unwrap();
    assert_eq!(
        env["GF_PLUGINS_PREINSTALL_SYNC"],
        format!(
            "{}@4.20.0",
            clickstream_dashboard_plugin_id(&read(
                "grafana/provisioning/datasources/datasources.yaml"
            ))
        )
    );
    assert!(
        compose
            .bind_mounts("grafana")
            .iter()
            .any(|(s, t)| s == "./grafana/provisioning" && t == "/etc/grafana/provisioning")
    );
    // Every ${VAR} in the provisioning files is in Grafana's environment.
    for file in [
        "grafana/provisioning/datasources/datasources.yaml",
        "grafana/provisioning/dashboards/dashboards.yaml",
        "grafana/provisioning/alerting/clickstream-alerts.yaml",
    ] {
        let text = read(file);
        let text: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        for var in variables(&text) {
            assert!(
                env.contains_key(&var),
                "{file} needs {var} in grafana's environment"
            );
        }
    }
    assert_eq!(
        env["CLICKHOUSE_READER_PASSWORD"],
        compose.environment("clickhouse").unwrap()["CLICKHOUSE_READER_PASSWORD"]
    );
    // The home dashboard is a provisioned file.
    let home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].clone();
    let relative = home
        .strip_prefix("/etc/grafana/provisioning/")
        .expect("inside the mounted provisioning");
    assert!(
        repo_root()
            .join("grafana/provisioning")
            .join(relative)
            .exists(),
        "{home}"
    );
    assert_eq!(
        env["GF_SECURITY_ADMIN_PASSWORD"],
        compose.env["GRAFANA_ADMIN_PASSWORD"]
    );
    // Grafana starts through the script that refuses `admin` and generates a password.
    let entrypoint: Vec<String> = compose.service("grafana")["entrypoint"]
        .as_sequence()
        .expect("grafana's entrypoint")
        .iter()
        .filter_map(scalar)
        .collect();
    let script = entrypoint.last().expect("a script").clone();
    assert_eq!(entrypoint[0], "/bin/sh");
    assert!(
        compose
            .bind_mounts("grafana")
            .contains(&("./deploy/grafana/first-start.sh".to_owned(), script.clone())),
        "{script} is not the mounted deploy/grafana/first-start.sh"
    );
    assert!(read("deploy/grafana/first-start.sh").contains("exec \"${GRAFANA_RUN:-/run.sh}\""));

    // Dashboards and provider agree on whether UI edits can be saved, and every ClickHouse
    // target says which plugin version wrote it (4.20 migrates a target without one as v3).
    let pinned = env["GF_PLUGINS_PREINSTALL_SYNC"]
        .rsplit('@')
        .next()
        .unwrap()
        .to_owned();
    let provider: serde_norway::Value =
        serde_norway::from_str(&read("grafana/provisioning/dashboards/dashboards.yaml")).unwrap();
    let ui_updates = provider["providers"][0]["allowUiUpdates"]
        .as_bool()
        .expect("allowUiUpdates");
    let mut targets = 0;
    for file in ["clickstream-live.json", "pipeline-health.json"] {
        let dashboard: serde_json::Value =
            serde_json::from_str(&read(&format!("grafana/provisioning/dashboards/{file}")))
                .unwrap();
        assert_eq!(
            dashboard["editable"].as_bool(),
            Some(ui_updates),
            "{file}: editable vs the provider's allowUiUpdates"
        );
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if target["datasource"]["type"] == "grafana-clickhouse-datasource" {
                    assert_eq!(
                        target["pluginVersion"].as_str(),
                        Some(pinned.as_str()),
                        "{file}: {}",
                        panel["title"]
                    );
                    assert!(!matches!(
                        target["queryType"].as_str(),
                        Some("sql" | "builder")
                    ));
                    targets += 1;
                }
            }
        }
    }
    assert!(targets >= 15, "{targets}");
    assert_eq!(env["GF_AUTH_ANONYMOUS_ORG_ROLE"], "Viewer");
    assert!(matches!(
        env["GF_AUTH_ANONYMOUS_ENABLED"].as_str(),
        "true" | "false"
    ));
}

/// The plugin type of the provisioned ClickHouse datasource.
fn clickstream_dashboard_plugin_id(datasources: &str) -> String {
    let doc: serde_norway::Value = serde_norway::from_str(datasources).expect("datasources.yaml");
    doc["datasources"]
        .as_sequence()
        .expect("a datasources list")
        .iter()
        .find(|d| d["name"].as_str() == Some("ClickHouse"))
        .and_then(|d| d["type"].as_str())
        .expect("ClickHouse datasource")
        .to_owned()
}

#[test]
fn clickhouse_applies_schema_then_users_then_passwords_at_first_start() {
    let compose = compose();
    let init: Vec<(String, String)> = compose
        .bind_mounts("clickhouse")
        .into_iter()
        .filter(|(_, target)| target.starts_with("/docker-entrypoint-initdb.d/"))
        .collect();
    let mut by_name = init.clone();
    by_name.sort_by(|a, b| a.1.cmp(&b.1));
    let sources: Vec<&str> = by_name.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        sources,
        [
            "./clickhouse/schema.sql",
            "./clickhouse/users.sql",
            "./deploy/clickhouse/03-passwords.sh"
        ],
        "the entrypoint runs them in name order"
    );
    for (source, target) in &init {
        // The image runs *.sql and *.sh only.
        assert!(
            (source.ends_with(".sql") && target.ends_with(".sql"))
                || (source.ends_with(".sh") && target.ends_with(".sh")),
            "{source} → {target}"
        );
    }
    let env = compose.environment("clickhouse").unwrap();
    assert_eq!(env["CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT"], "1");
    assert!(!env["CLICKHOUSE_PASSWORD"].is_empty());
    // The health check passes only on the real server (not the entrypoint's init server on
    // 127.0.0.1) with the schema, users.sql and the passwords in place: it logs in as the sink.
    let test = scalar(&compose.service("clickhouse")["healthcheck"]["test"][1]).unwrap();
    // `$$`: compose passes `$` on, so the container's shell expands the variables.
    for expected in [
        "--host \"$$HOSTNAME\"",
        "--user clickstream_sink",
        "--password \"$$CLICKHOUSE_SINK_PASSWORD\"",
        "clickstream.kafka_progress",
    ] {
        assert!(test.contains(expected), "{expected:?} missing: {test}");
    }
    assert!(env.contains_key("CLICKHOUSE_SINK_PASSWORD"));
    assert!(
        read("clickhouse/users.sql")
            .contains("GRANT SELECT ON clickstream.kafka_progress TO clickstream_sink"),
        "the sink may run the health check's query"
    );
    assert!(
        read("clickhouse/schema.sql")
            .contains("CREATE TABLE IF NOT EXISTS clickstream.kafka_progress")
    );
}

#[test]
fn ports_and_credentials_come_from_the_env_file() {
    let compose = compose();
    let referenced = compose.referenced_variables();
    let defined: BTreeSet<&String> = compose.env.keys().collect();
    for var in &referenced {
        assert!(
            defined.contains(var),
            "{var} is used but not defined in .env"
        );
    }
    for var in &defined {
        assert!(referenced.contains(var), "{var} in .env is not used");
    }
    // Every published port is a .env setting, on 127.0.0.1.
    let raw = read("docker-compose.yml");
    let doc: serde_norway::Value = serde_norway::from_str(&raw).unwrap();
    for service in compose.service_names() {
        for port in doc["services"][&service]["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let port = scalar(port).unwrap();
            assert!(port.starts_with("127.0.0.1:${"), "{service}: {port}");
        }
    }
    // Every secret a program gets comes from .env, and the documented default is there;
    // Grafana's admin password is generated at its first start unless set (never `admin`).
    assert_ne!(compose.env["GRAFANA_ADMIN_PASSWORD"], "admin");
    for var in [
        "CLICKHOUSE_ADMIN_PASSWORD",
        "CLICKHOUSE_SINK_PASSWORD",
        "CLICKHOUSE_READER_PASSWORD",
        "GRAFANA_PORT",
    ] {
        assert!(!compose.env[var].is_empty(), "{var}");
    }
    assert_eq!(compose.env["GRAFANA_PORT"], "3000");
    // Interpolation fails loudly without .env rather than starting with empty passwords.
    let without = Compose {
        doc: compose.doc.clone(),
        env: BTreeMap::new(),
    };
    assert!(without.environment("sink").is_err());
}

/// The producer and the sink redact the same librdkafka properties.
#[test]
fn producer_and_sink_agree_on_which_kafka_properties_are_secret() {
    for key in [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.key.pem",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
        "sasl.jaas.config",
        "sasl.username",
        "security.protocol",
        "ssl.ca.location",
        "ssl.key.location",
        "bootstrap.servers",
    ] {
        assert_eq!(
            clickstream_producer::settings::is_secret_kafka_property(key),
            clickstream_sink::settings::is_secret_kafka_property(key),
            "{key}"
        );
    }
}

/// Loads clickstream-windows' settings from `env` alone, as the binary does.
fn windows_settings(
    env: &BTreeMap<String, String>,
) -> Result<clickstream_windows::settings::Settings, String> {
    clickstream_windows::settings::Settings::load_from(
        &clickstream_windows::settings::Overrides::default(),
        env.clone(),
    )
    .map_err(|e| e.to_string())
}

/// The port clickstream-windows serves /metrics and /health on in compose.
fn windows_port(compose: &Compose) -> u16 {
    let env = compose
        .environment("windows")
        .unwrap_or_else(|e| panic!("windows: {e:?}"));
    let settings = windows_settings(&env).unwrap_or_else(|e| panic!("{e}"));
    let port = settings.http_addr.rsplit(':').next().unwrap_or_default();
    port.parse()
        .unwrap_or_else(|e| panic!("http_addr {}: {e}", settings.http_addr))
}

#[test]
fn the_window_publisher_accepts_its_environment_and_reads_as_the_reader() {
    let compose = compose();
    let env = compose.environment("windows").unwrap();
    let settings = windows_settings(&env).unwrap_or_else(|e| panic!("{e}"));
    let defaults = windows_settings(&BTreeMap::new()).unwrap();
    for (key, value) in &env {
        if key.starts_with("CLICKSTREAM_WINDOWS_") {
            continue;
        }
        let alone = BTreeMap::from([(key.clone(), value.clone())]);
        assert_ne!(
            windows_settings(&alone).unwrap(),
            defaults,
            "{key} is not read by clickstream-windows"
        );
    }
    assert_eq!(settings.brokers, "kafka:9092");
    assert_eq!(settings.clickhouse_url, "http://clickhouse:8123");
    // It only reads: the read-only user, with the password ClickHouse sets for it.
    assert_eq!(settings.clickhouse_user, "clickstream_reader");
    assert_eq!(
        settings.clickhouse_password,
        compose.env["CLICKHOUSE_READER_PASSWORD"]
    );
    assert!(created_topics(&compose).contains_key(&settings.topic));
    assert_eq!(settings.topic, "clickstream-metrics");
    assert_eq!(
        settings.topic_retention_ms.to_string(),
        compose.env["KAFKA_METRICS_RETENTION_MS"]
    );
    assert_eq!(settings.window_minutes(), Some(5));
    let port = windows_port(&compose);
    assert!(
        compose
            .ports("windows")
            .unwrap()
            .iter()
            .any(|(_, c)| *c == port)
    );
    assert_eq!(
        health_probe(&compose, "windows"),
        (port, "/health".to_owned())
    );
}

#[test]
fn topics_get_their_retention_from_the_env_file_at_creation_and_after() {
    let compose = compose();
    let init = compose.environment("kafka-init").unwrap();
    let script: String = compose.service("kafka-init")["command"]
        .as_sequence()
        .expect("kafka-init command list")
        .iter()
        .filter_map(scalar)
        .collect::<Vec<_>>()
        .join("\n");
    // The retention each line sets, by topic: (at creation, applied to an existing topic).
    let retention_of = |line: &str| -> String {
        let value = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("retention.ms="))
            .unwrap_or_else(|| panic!("no retention.ms in: {line}"));
        let variable = value.trim_start_matches('$');
        init.get(variable)
            .unwrap_or_else(|| panic!("kafka-init has no {variable}"))
            .clone()
    };
    let mut created = BTreeMap::new();
    let mut altered = BTreeMap::new();
    for line in script.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .map(|i| words[i + 1].to_owned())
        };
        if line.contains("--create") {
            created.insert(after("--topic").unwrap(), retention_of(line));
        } else if line.contains("--alter") {
            altered.insert(after("--entity-name").unwrap(), retention_of(line));
        }
    }
    let hours = |ms: &str| ms.parse::<u64>().unwrap() / 3_600_000;
    let env = &compose.env;
    assert_eq!(created, altered, "the same retention at creation and after");
    assert_eq!(
        created["clickstream-events"],
        env["KAFKA_EVENTS_RETENTION_MS"]
    );
    assert_eq!(
        created["clickstream-metrics"],
        env["KAFKA_METRICS_RETENTION_MS"]
    );
    assert_eq!(created["clickstream-dlq"], env["KAFKA_DLQ_RETENTION_MS"]);
    // The documented defaults: raw events 24 h, window results 7 days, dead letters 14 days.
    assert_eq!(hours(&created["clickstream-events"]), 24);
    assert_eq!(hours(&created["clickstream-metrics"]), 7 * 24);
    assert_eq!(hours(&created["clickstream-dlq"]), 14 * 24);
}

#[test]
fn kafka_ui_is_read_only_preconfigured_and_on_localhost() {
    let compose = compose();
    let env = compose.environment("kafka-ui").unwrap();
    assert_eq!(env["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"], "kafka:9092");
    assert_eq!(env["KAFKA_CLUSTERS_0_READONLY"], "true");
    assert_eq!(env["DYNAMIC_CONFIG_ENABLED"], "false");
    let port: u16 = env["SERVER_PORT"].parse().unwrap();
    assert_eq!(
        compose.ports("kafka-ui").unwrap(),
        [(compose.env["KAFKA_UI_PORT"].parse().unwrap(), port)]
    );
    assert_eq!(compose.env["KAFKA_UI_PORT"], "8090");
    let doc = &compose.doc["services"]["kafka-ui"]["ports"][0];
    assert!(scalar(doc).unwrap().starts_with("127.0.0.1:"), "{doc:?}");
    let probe: Vec<String> = compose.service("kafka-ui")["healthcheck"]["test"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(scalar)
        .collect();
    assert!(
        probe
            .last()
            .is_some_and(|url| url == &format!("http://localhost:{port}/actuator/health")),
        "{probe:?}"
    );
}
