//! deploy/k8s: the kustomize base and the example overlay, built as `kubectl apply -k` would
//! (deploy/src/kustomize.rs), and checked like the compose file: probes on the ports the
//! programs listen on, resources from the measured footprint, graceful termination longer than
//! the sink's shutdown timeout, settings from a ConfigMap that the programs' own parsing
//! accepts, the password from a Secret through the password file setting, disruption budgets,
//! Prometheus services, and no more sinks than partitions.

use std::collections::BTreeMap;

use clickstream_deploy::kustomize::{build, config_map_data, find, split_image};
use serde_norway::Value;

use crate::compose::{check_sink_environment, producer_settings_with};
use crate::read;

fn built(which: &str) -> Vec<Value> {
    let dir = clickstream_testkit::repo_root()
        .join("deploy/k8s")
        .join(which);
    build(&dir).unwrap_or_else(|e| panic!("deploy/k8s/{which}: {e}"))
}

fn seq(value: &Value) -> Vec<Value> {
    value.as_sequence().cloned().unwrap_or_default()
}

/// The one container of a Deployment's pods.
fn container(deployment: &Value) -> &Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container per pod");
    &containers[0]
}

/// The environment a container gets: its ConfigMaps (envFrom) and plain values; variables
/// from Secrets are left out (they are not in the repository), and returned by name.
fn environment(objects: &[Value], deployment: &Value) -> (BTreeMap<String, String>, Vec<String>) {
    let container = container(deployment);
    let mut env = BTreeMap::new();
    for source in seq(&container["envFrom"]) {
        let name = source["configMapRef"]["name"]
            .as_str()
            .expect("envFrom a ConfigMap");
        let map = find(objects, "ConfigMap", name)
            .unwrap_or_else(|| panic!("ConfigMap {name} is not part of the kustomization"));
        env.extend(config_map_data(map));
    }
    let mut from_secrets = Vec::new();
    for variable in seq(&container["env"]) {
        let name = variable["name"].as_str().expect("name").to_owned();
        if let Some(value) = variable["value"].as_str() {
            env.insert(name, value.to_owned());
        } else {
            assert!(
                variable["valueFrom"]["secretKeyRef"]["name"].is_string(),
                "{name}: from a Secret"
            );
            from_secrets.push(name);
        }
    }
    (env, from_secrets)
}

/// The named container port.
fn port(deployment: &Value, name: &str) -> u64 {
    seq(&container(deployment)["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no port {name}"))
}

/// Kubernetes quantities: `250m` cores, `512Mi` bytes.
fn quantity(value: &Value) -> f64 {
    let text = clickstream_deploy::compose::scalar(value)
        .unwrap_or_else(|| panic!("not a quantity: {value:?}"));
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((text.as_str(), ""), |i| text.split_at(i));
    let number: f64 = number.parse().unwrap_or_else(|_| panic!("quantity {text}"));
    number
        * match unit {
            "" => 1.0,
            "m" => 0.001,
            "Ki" => 1024.0,
            "Mi" => 1024.0 * 1024.0,
            "Gi" => 1024.0 * 1024.0 * 1024.0,
            other => panic!("unit {other} in {text}"),
        }
}

/// The highest sink RSS any benchmark run measured (bench/results/latest.json), in bytes.
fn measured_sink_peak_rss() -> f64 {
    let results: serde_json::Value =
        serde_json::from_str(&read("bench/results/latest.json")).expect("latest.json");
    let mut peaks = vec![results["throughput"]["sink_peak_rss_mb"].as_f64()];
    for run in results["scale_out"].as_array().into_iter().flatten() {
        peaks.push(run["sink_peak_rss_mb"].as_f64());
    }
    for runs in results["latency"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
    {
        for run in runs.as_object().into_iter().flat_map(|m| m.values()) {
            peaks.push(run["sink_peak_rss_mb"].as_f64());
        }
    }
    let peak = peaks.into_iter().flatten().fold(0.0, f64::max);
    assert!(peak > 100.0, "no sink RSS measurements in latest.json");
    peak * 1_000_000.0
}

/// The partitions of the events topic (what the producer creates, as compose's kafka-init).
fn partitions() -> u64 {
    clickstream_producer::Settings::new("x").partitions as u64
}

#[test]
fn base_and_overlay_build_into_the_sink_and_the_producer() {
    for which in ["base", "overlays/example"] {
        let objects = built(which);
        let mut kinds: Vec<(String, String)> = objects
            .iter()
            .map(|o| {
                (
                    o["kind"].as_str().unwrap_or_default().to_owned(),
                    o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        kinds.sort();
        let expected: Vec<(String, String)> = [
            ("ConfigMap", "clickstream-producer"),
            ("ConfigMap", "clickstream-sink"),
            ("ConfigMap", "clickstream-windows"),
            ("Deployment", "clickstream-producer"),
            ("Deployment", "clickstream-sink"),
            ("Deployment", "clickstream-windows"),
            ("PodDisruptionBudget", "clickstream-producer"),
            ("PodDisruptionBudget", "clickstream-sink"),
            ("PodDisruptionBudget", "clickstream-windows"),
            ("Service", "clickstream-producer-metrics"),
            ("Service", "clickstream-sink-metrics"),
            ("Service", "clickstream-windows-metrics"),
        ]
        .iter()
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect();
        assert_eq!(kinds, expected, "{which}");
        for object in &objects {
            assert!(object["apiVersion"].is_string(), "{which}: {object:?}");
        }
    }
    // The overlay runs in its namespace, on pinned images of a registry.
    let overlay = built("overlays/example");
    for object in &overlay {
        assert_eq!(
            object["metadata"]["namespace"].as_str(),
            Some("clickstream")
        );
    }
    for name in [
        "clickstream-sink",
        "clickstream-producer",
        "clickstream-windows",
    ] {
        let deployment = find(&overlay, "Deployment", name).unwrap();
        let image = container(deployment)["image"].as_str().unwrap();
        let (_, tag) = split_image(image);
        let tag = tag.unwrap_or_else(|| panic!("{image} has no tag"));
        assert!(
            tag != "latest" && tag.split('.').all(|p| p.parse::<u32>().is_ok()),
            "{image} is not pinned to a version"
        );
    }
}

#[test]
fn the_sink_deployment_is_probed_bounded_and_stops_gracefully() {
    for which in ["base", "overlays/example"] {
        let objects = built(which);
        let deployment = find(&objects, "Deployment", "clickstream-sink").unwrap();
        let spec = &deployment["spec"]["template"]["spec"];
        let (env, from_secrets) = environment(&objects, deployment);
        let settings = check_sink_environment(&env).unwrap_or_else(|e| panic!("{which}: {e}"));

        // No more sinks than partitions: the rest would be idle members.
        let replicas = deployment["spec"]["replicas"].as_u64().expect("replicas");
        assert!(
            (1..=partitions()).contains(&replicas),
            "{which}: {replicas} replicas"
        );
        assert_eq!(
            deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"].as_u64(),
            Some(0),
            "{which}: no surge member beyond the partitions"
        );

        // Probes on the port the sink serves /health and /ready on.
        let http_port: u64 = settings
            .http_addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("http_addr port");
        assert_eq!(port(deployment, "metrics"), http_port, "{which}");
        for (probe, path) in [("livenessProbe", "/health"), ("readinessProbe", "/ready")] {
            let get = &container(deployment)[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{which}: {probe}");
            assert_eq!(get["port"].as_str(), Some("metrics"), "{which}: {probe}");
        }

        // Graceful: longer than the drain (shutdown_timeout_ms), the writes' grace to stop
        // and closing the Kafka clients (sink/src/pipeline.rs RECORD_GRACE, CLOSE_LIMIT).
        let grace_ms = spec["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds")
            * 1_000;
        let after_drain = (clickstream_sink::pipeline::RECORD_GRACE
            + clickstream_sink::pipeline::CLOSE_LIMIT)
            .as_millis() as u64;
        assert!(
            grace_ms > settings.shutdown_timeout_ms + after_drain,
            "{which}: {grace_ms} ms to stop, the sink may need {} + {after_drain}",
            settings.shutdown_timeout_ms
        );

        // Resources from the measured footprint: the request covers the highest peak RSS
        // measured, the limit leaves at least half as much again.
        let resources = &container(deployment)["resources"];
        let peak = measured_sink_peak_rss();
        let request = quantity(&resources["requests"]["memory"]);
        let limit = quantity(&resources["limits"]["memory"]);
        assert!(
            request >= peak,
            "{which}: memory request {request} < peak {peak}"
        );
        assert!(
            limit >= 1.5 * peak,
            "{which}: memory limit {limit} vs peak {peak}"
        );
        assert!(quantity(&resources["requests"]["cpu"]) > 0.0);
        assert!(quantity(&resources["limits"]["cpu"]) >= quantity(&resources["requests"]["cpu"]));

        // The password: a file from the Secret, where clickhouse_password_file points.
        assert!(
            settings.clickhouse_password.is_empty(),
            "{which}: no password in a ConfigMap"
        );
        let file = std::path::Path::new(&settings.clickhouse_password_file);
        let (dir, key) = (file.parent().unwrap(), file.file_name().unwrap());
        let mount = seq(&container(deployment)["volumeMounts"])
            .into_iter()
            .find(|m| m["mountPath"].as_str() == dir.to_str())
            .unwrap_or_else(|| panic!("{which}: nothing mounted at {}", dir.display()));
        let volume = seq(&spec["volumes"])
            .into_iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mount's volume");
        assert_eq!(
            volume["secret"]["secretName"].as_str(),
            Some("clickstream-sink")
        );
        assert!(
            seq(&volume["secret"]["items"])
                .iter()
                .any(|i| i["path"].as_str() == key.to_str() && i["key"].is_string()),
            "{which}: the Secret's key lands at {}",
            file.display()
        );
        for variable in &from_secrets {
            assert!(
                variable.starts_with("CLICKSTREAM_SINK_KAFKA__"),
                "{which}: {variable}"
            );
        }
        // A CA file, if set, is inside the mounted CA volume.
        if !settings.clickhouse_ca_file.is_empty() {
            assert!(
                seq(&container(deployment)["volumeMounts"])
                    .iter()
                    .any(|m| m["mountPath"]
                        .as_str()
                        .is_some_and(|p| settings.clickhouse_ca_file.starts_with(p))),
                "{which}: {} is not mounted",
                settings.clickhouse_ca_file
            );
        }

        // Runs as the image's unprivileged user, read-only.
        assert_eq!(
            spec["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true)
        );
        let uid = spec["securityContext"]["runAsUser"]
            .as_u64()
            .expect("runAsUser");
        assert!(
            read("Dockerfile").contains(&format!("useradd --system --uid {uid} ")),
            "uid {uid} is the image's user"
        );
        assert_eq!(
            container(deployment)["securityContext"]["readOnlyRootFilesystem"].as_bool(),
            Some(true)
        );

        check_budget_and_metrics(
            &objects,
            "clickstream-sink",
            "clickstream-sink-metrics",
            which,
        );
    }
    // The example overlay speaks TLS to both: a secured Kafka and an https:// ClickHouse.
    let overlay = built("overlays/example");
    let (env, _) = environment(
        &overlay,
        find(&overlay, "Deployment", "clickstream-sink").unwrap(),
    );
    let settings = check_sink_environment(&env).unwrap();
    assert!(settings.clickhouse_url.starts_with("https://"));
    assert_eq!(
        settings.kafka.get("security.protocol").map(String::as_str),
        Some("SASL_SSL")
    );
}

#[test]
fn the_producer_deployment_is_probed_bounded_and_its_settings_parse() {
    for which in ["base", "overlays/example"] {
        let objects = built(which);
        let deployment = find(&objects, "Deployment", "clickstream-producer").unwrap();
        let (env, from_secrets) = environment(&objects, deployment);
        let args: Vec<String> = seq(&container(deployment)["args"])
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        // Secret variables reach the producer only through $(VAR) in its arguments.
        for variable in &from_secrets {
            assert!(
                args.iter().any(|a| a.contains(&format!("$({variable})"))),
                "{which}: {variable} is not used"
            );
        }
        let settings =
            producer_settings_with(&env, &args).unwrap_or_else(|e| panic!("{which}: {e}"));
        let addr = settings.metrics_addr.expect("a metrics address");
        assert!(addr.ip().is_unspecified(), "{which}: reachable: {addr}");
        assert_eq!(
            port(deployment, "metrics"),
            u64::from(addr.port()),
            "{which}"
        );
        let readiness = &container(deployment)["readinessProbe"]["httpGet"];
        assert_eq!(readiness["path"].as_str(), Some("/health"));
        assert_eq!(readiness["port"].as_str(), Some("metrics"));
        assert_eq!(
            container(deployment)["livenessProbe"]["tcpSocket"]["port"].as_str(),
            Some("metrics")
        );
        let resources = &container(deployment)["resources"];
        for kind in ["cpu", "memory"] {
            let (request, limit) = (
                quantity(&resources["requests"][kind]),
                quantity(&resources["limits"][kind]),
            );
            assert!(request > 0.0 && limit >= request, "{which}: {kind}");
        }
        // It waits for its deliveries (--flush-timeout) before it is killed.
        let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        assert!(grace > settings.flush_timeout.as_secs(), "{which}");
        check_budget_and_metrics(
            &objects,
            "clickstream-producer",
            "clickstream-producer-metrics",
            which,
        );
    }
}

/// The PodDisruptionBudget and the metrics Service select the Deployment's pods, the budget
/// lets one go at a time, and the Service carries the scrape annotations for its port.
#[test]
fn the_window_publisher_runs_once_probed_reading_as_the_reader() {
    for which in ["base", "overlays/example"] {
        let objects = built(which);
        let deployment = find(&objects, "Deployment", "clickstream-windows").expect("Deployment");
        // One instance per topic, and never two at once during a rollout.
        assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(1), "{which}");
        assert_eq!(
            deployment["spec"]["strategy"]["type"].as_str(),
            Some("Recreate"),
            "{which}"
        );
        let (env, from_secrets) = environment(&objects, deployment);
        let settings = clickstream_windows::settings::Settings::load_from(
            &clickstream_windows::settings::Overrides::default(),
            env.clone(),
        )
        .unwrap_or_else(|e| panic!("{which}: {e}"));
        assert_eq!(settings.clickhouse_user, "clickstream_reader", "{which}");
        assert_eq!(settings.topic, "clickstream-metrics");
        assert!(settings.clickhouse_url.starts_with("https://"), "{which}");
        assert_eq!(from_secrets, ["CLICKSTREAM_WINDOWS_KAFKA__SASL_PASSWORD"]);
        // The password file is the Secret's mounted key.
        let container = container(deployment);
        let mount = seq(&container["volumeMounts"])
            .into_iter()
            .find(|m| m["name"].as_str() == Some("secrets"))
            .expect("secrets mount");
        assert_eq!(
            format!(
                "{}/clickhouse-password",
                mount["mountPath"].as_str().unwrap()
            ),
            settings.clickhouse_password_file,
            "{which}"
        );
        let metrics = port(deployment, "metrics");
        assert_eq!(
            settings.http_addr.rsplit(':').next(),
            Some(metrics.to_string().as_str())
        );
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(
                container[probe]["httpGet"]["path"].as_str(),
                Some("/health"),
                "{which}: {probe}"
            );
            assert_eq!(
                container[probe]["httpGet"]["port"].as_str(),
                Some("metrics")
            );
        }
        assert!(quantity(&container["resources"]["limits"]["memory"]) > 0.0);
        check_budget_and_metrics(
            &objects,
            "clickstream-windows",
            "clickstream-windows-metrics",
            which,
        );
    }
}

fn check_budget_and_metrics(objects: &[Value], name: &str, service: &str, which: &str) {
    let deployment = find(objects, "Deployment", name).expect("the Deployment");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Value| {
        let selector = selector.as_mapping().expect("a selector");
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(selects(&deployment["spec"]["selector"]["matchLabels"]));
    let budget = find(objects, "PodDisruptionBudget", name)
        .unwrap_or_else(|| panic!("{which}: no PodDisruptionBudget {name}"));
    assert!(
        selects(&budget["spec"]["selector"]["matchLabels"]),
        "{which}: {name}"
    );
    assert_eq!(
        budget["spec"]["maxUnavailable"].as_u64(),
        Some(1),
        "{which}: {name}"
    );
    let service = find(objects, "Service", service).expect("metrics service");
    assert!(selects(&service["spec"]["selector"]), "{which}: {name}");
    let container_port = port(deployment, "metrics");
    let ports = seq(&service["spec"]["ports"]);
    assert!(
        ports
            .iter()
            .any(|p| p["port"].as_u64() == Some(container_port)
                && p["targetPort"].as_str() == Some("metrics")),
        "{which}: {name}"
    );
    let annotations = &service["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(container_port.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
}

#[test]
fn the_readme_says_how_to_apply_them() {
    let readme = read("README.md");
    for expected in [
        "kubectl apply -k deploy/k8s/overlays/example",
        "create secret generic clickstream-sink",
        "clickhouse-password",
    ] {
        assert!(readme.contains(expected), "README lacks {expected:?}");
    }
}
