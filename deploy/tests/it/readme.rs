//! The README: the set-up commands come first, every command it shows exists (and `--help`
//! runs), every setting, flag and metric is documented with its default, the SQL examples run and
//! the example event is a valid one.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use clap::CommandFactory;
use clickstream_deploy::markdown::{CodeBlock, code_blocks, shell_commands, table_rows};
use clickstream_producer::settings::Args;
use clickstream_testkit::repo_root;

use crate::{BINARIES, binary, compose, read};

fn readme() -> String {
    read("README.md")
}

fn shell_blocks(text: &str) -> Vec<CodeBlock> {
    code_blocks(text)
        .into_iter()
        .filter(|b| matches!(b.lang.as_str(), "sh" | "bash" | "shell" | "console"))
        .collect()
}

#[test]
fn the_two_set_up_commands_come_first() {
    let text = readme();
    let first = shell_blocks(&text)
        .into_iter()
        .next()
        .expect("a shell block");
    assert_eq!(
        shell_commands(&first),
        ["docker compose up", "scripts/demo", "scripts/test"],
        "the first commands a reader sees"
    );
    let block_at = text.find("docker compose up").unwrap();
    let first_section = text.find("\n## ").unwrap();
    let second_section = text[first_section + 1..].find("\n## ").unwrap() + first_section + 1;
    assert!(
        first_section < block_at && block_at < second_section,
        "in the first section"
    );
}

/// The words of a command with leading `VAR=value` assignments and `eval "$(...)"` removed.
fn words(command: &str) -> Vec<String> {
    let command = command
        .strip_prefix("eval \"$(")
        .map(|inner| inner.trim_end_matches(")\""))
        .unwrap_or(command);
    let command = command.split(" # ").next().unwrap_or(command);
    command
        .split_whitespace()
        .skip_while(|w| {
            w.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_command_exists_and_its_help_runs() {
    let text = readme();
    let compose = compose();
    let services = compose.service_names();
    let bin_names: Vec<&str> = BINARIES.iter().map(|(b, _)| *b).collect();
    // Flags the README passes to each binary.
    let mut flags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut scripts: BTreeSet<String> = BTreeSet::new();
    let mut count = 0;
    for block in shell_blocks(&text) {
        for command in shell_commands(&block) {
            count += 1;
            let words = words(&command);
            let first = words.first().map(String::as_str).unwrap_or_default();
            let flags_of = |bin: &str, args: &[String], flags: &mut BTreeMap<_, BTreeSet<_>>| {
                let set: &mut BTreeSet<String> = flags.entry(bin.to_owned()).or_default();
                for arg in args {
                    if arg.starts_with("--") || arg == "-X" {
                        set.insert(arg.split('=').next().unwrap().to_owned());
                    }
                }
            };
            match first {
                script if script.starts_with("scripts/") => {
                    scripts.insert(script.to_owned());
                }
                bin if bin_names.contains(&bin) => flags_of(bin, &words[1..], &mut flags),
                "cargo" => {
                    assert_eq!(words.get(1).map(String::as_str), Some("run"), "{command}");
                    let after = |flag: &str| {
                        words
                            .iter()
                            .position(|w| w == flag)
                            .and_then(|i| words.get(i + 1))
                    };
                    let rest = words
                        .iter()
                        .position(|w| w == "--")
                        .map(|i| &words[i + 1..])
                        .unwrap_or(&[]);
                    if let Some(example) = after("--example") {
                        let package = after("-p").expect("-p with --example");
                        let dir = package.trim_start_matches("clickstream-");
                        assert!(
                            repo_root()
                                .join(dir)
                                .join(format!("examples/{example}.rs"))
                                .exists(),
                            "{command}"
                        );
                    } else {
                        let bin = after("--bin").expect("--bin");
                        assert!(bin_names.contains(&bin.as_str()), "{command}");
                        if let Some(package) = after("-p") {
                            assert!(
                                BINARIES.contains(&(bin.as_str(), package.as_str())),
                                "{command}"
                            );
                        }
                        flags_of(bin, rest, &mut flags);
                    }
                }
                "docker" => {
                    assert_eq!(
                        words.get(1).map(String::as_str),
                        Some("compose"),
                        "{command}"
                    );
                    let sub = words.get(2).map(String::as_str).unwrap_or_default();
                    assert!(
                        [
                            "up", "down", "restart", "kill", "start", "stop", "logs", "exec", "ps"
                        ]
                        .contains(&sub),
                        "{command}"
                    );
                    // The first word after the subcommand that is not an option (or an
                    // option's value) names a service.
                    let mut rest = words[3..].iter();
                    while let Some(word) = rest.next() {
                        if word == "--tail" || word == "-s" {
                            rest.next();
                        } else if word == "--scale" {
                            let scaled = rest.next().expect("--scale value");
                            let service = scaled.split('=').next().unwrap();
                            assert!(services.iter().any(|s| s == service), "{command}");
                        } else if !word.starts_with('-') {
                            assert!(services.iter().any(|s| s == word), "{command}: {word}");
                            break;
                        }
                    }
                }
                "curl" => {}
                "kubectl" => {
                    // `apply -k DIR` builds a kustomization of this repository; every
                    // command works in the overlay's namespace.
                    if let Some(at) = words.iter().position(|w| w == "-k") {
                        let dir = repo_root().join(&words[at + 1]);
                        assert!(dir.join("kustomization.yaml").exists(), "{command}");
                        clickstream_deploy::kustomize::build(&dir)
                            .unwrap_or_else(|e| panic!("{command}: {e}"));
                    }
                    if let Some(at) = words.iter().position(|w| w == "-n") {
                        assert_eq!(words[at + 1], "clickstream", "{command}");
                    }
                }
                other => panic!("unknown command {other:?} in the README: {command}"),
            }
        }
    }
    assert!(count >= 25, "only {count} commands found");

    for script in &scripts {
        let path = repo_root().join(script);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|_| panic!("{script} is missing"))
            .permissions();
        assert!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o111 != 0,
            "{script} is not executable"
        );
    }
    // --help of the scripts that have one (scripts/test would run the tests).
    for script in ["scripts/demo", "scripts/stack"] {
        assert!(scripts.contains(script), "{script} not shown");
        let output = Command::new(repo_root().join(script))
            .arg("--help")
            .output()
            .unwrap();
        assert!(output.status.success(), "{script} --help: {output:?}");
        assert!(!output.stdout.is_empty());
    }
    for (bin, used) in &flags {
        let output = Command::new(binary(bin)).arg("--help").output().unwrap();
        assert!(output.status.success(), "{bin} --help: {output:?}");
        let help = String::from_utf8(output.stdout).unwrap();
        for flag in used {
            assert!(help.contains(flag.as_str()), "{bin} has no {flag}");
        }
    }
    assert_eq!(
        flags.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        bin_names.into_iter().collect::<BTreeSet<_>>(),
        "every binary is shown"
    );
}

/// The table rows (cells) whose first cell is exactly `first`.
fn rows_starting(text: &str, first: &str) -> Vec<Vec<String>> {
    table_rows(text)
        .into_iter()
        .filter(|cells| cells.first().is_some_and(|c| c == first))
        .collect()
}

#[test]
fn every_sink_setting_is_documented_with_its_default() {
    let text = readme();
    let defaults = serde_json::to_value(clickstream_sink::Settings::default()).unwrap();
    let defaults = defaults.as_object().expect("settings serialize as a map");
    assert!(defaults.len() >= 20);
    let mut flags_documented = BTreeSet::new();
    for (key, value) in defaults {
        let rows = rows_starting(&text, &format!("`{key}`"));
        let [row] = rows.as_slice() else {
            panic!("the sink setting {key} needs one README row, found {rows:?}");
        };
        let expected = match value {
            serde_json::Value::String(s) if s.is_empty() => "empty".to_owned(),
            serde_json::Value::String(s) => format!("`{s}`"),
            serde_json::Value::Object(m) if m.is_empty() => "none".to_owned(),
            other => format!("`{other}`"),
        };
        assert_eq!(row[2], expected, "default of {key}");
        if let Some(flag) = row[1].split('`').nth(1).filter(|f| f.starts_with('-')) {
            flags_documented.insert(flag.split(' ').next().unwrap().to_owned());
        }
    }
    // Every flag of the binary is in the table, and every flag in the table exists.
    let output = Command::new(binary("clickstream-sink"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    let flags_of_binary: BTreeSet<String> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") || *w == "-X")
        .map(|w| {
            w.trim_end_matches(',')
                .split('=')
                .next()
                .unwrap()
                .to_owned()
        })
        .filter(|w| !matches!(w.as_str(), "--help" | "--version" | "--config"))
        .collect();
    assert_eq!(flags_documented, flags_of_binary);
}

#[test]
fn every_producer_flag_is_documented_with_its_env_and_default() {
    let text = readme();
    let command = Args::command();
    let mut documented = 0;
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version") {
            continue;
        }
        let label = match (arg.get_long(), arg.get_short()) {
            (Some(long), _) => format!("`--{long}`"),
            (None, Some(short)) => format!(
                "`-{short} {}`",
                arg.get_value_names().unwrap_or_default().first().unwrap()
            ),
            _ => panic!("{id}: no flag"),
        };
        let rows: Vec<Vec<String>> = rows_starting(&text, &label)
            .into_iter()
            .filter(|r| r.len() == 4)
            .collect();
        let [row] = rows.as_slice() else {
            panic!("{label} needs one row in the producer's table, found {rows:?}");
        };
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        assert_eq!(row[1], env, "{label}: environment variable");
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if defaults.is_empty() {
            assert!(row[2].starts_with("none"), "{label}: default {:?}", row[2]);
        } else {
            assert_eq!(
                row[2],
                format!("`{}`", defaults.join(",")),
                "{label}: default"
            );
        }
        documented += 1;
    }
    assert!(documented >= 15);
}

/// Metric names registered in a metrics.rs: the registry's prefix joined to each name.
fn registered_metrics(source: &str) -> Vec<String> {
    let prefix = source
        .split("Registry::with_prefix(\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("Registry::with_prefix");
    source
        .split(".register(")
        .skip(1)
        .map(|call| {
            let name = call.split('"').nth(1).expect("metric name literal");
            format!("{prefix}_{name}")
        })
        .collect()
}

#[test]
fn every_metric_is_documented() {
    let text = readme();
    let mut all = Vec::new();
    for file in ["sink/src/metrics.rs", "producer/src/metrics.rs"] {
        let names = registered_metrics(&read(file));
        assert!(names.len() >= 3, "{file}: {names:?}");
        all.extend(names);
    }
    for name in &all {
        let documented = table_rows(&text).iter().any(|row| {
            row.first().is_some_and(|cell| {
                let cell = cell.trim_matches('`');
                cell == name
                    || cell.starts_with(&format!("{name}_total"))
                    || cell.starts_with(&format!("{name}{{"))
            })
        });
        assert!(
            documented,
            "metric {name} is not in the README's metrics table"
        );
    }
    // The producer's, rendered: the documented names are the real ones.
    let metrics = clickstream_producer::metrics::Metrics::new();
    metrics.delivered_to(0);
    let rendered = metrics.render();
    for documented in [
        "clickstream_producer_sent_total",
        "clickstream_producer_delivered_total{partition=\"0\"}",
        "clickstream_producer_failed_total",
    ] {
        assert!(rendered.contains(documented), "{documented}:\n{rendered}");
    }
}

#[tokio::test]
async fn the_sql_examples_run() {
    let text = readme();
    let statements: Vec<String> = code_blocks(&text)
        .iter()
        .filter(|b| b.lang == "sql")
        .flat_map(|b| clickstream_testkit::sql_statements(&b.lines.join("\n")))
        .collect();
    assert!(statements.len() >= 5, "{statements:?}");
    let client = clickstream_testkit::clickhouse();
    let (database, _) = clickstream_testkit::temp_database(&client, "it_readme").await;
    let scoped = clickstream_testkit::apply_schema(&client, &database).await;
    for statement in &statements {
        assert!(statement.contains("clickstream."), "{statement}");
        let sql = statement.replace("clickstream.", &format!("{database}."));
        scoped
            .query(&sql)
            .execute()
            .await
            .unwrap_or_else(|e| panic!("README SQL failed: {e}\n{statement}"));
    }
    client
        .query(&format!("DROP DATABASE {database}"))
        .execute()
        .await
        .unwrap();
}

#[test]
fn the_example_event_is_valid_and_every_field_is_described() {
    let text = readme();
    let example = code_blocks(&text)
        .into_iter()
        .find(|b| b.lang == "json" && b.lines.iter().any(|l| l.contains("\"event_id\"")))
        .expect("an example event");
    let json = example.lines.join("\n");
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let timestamp = value["timestamp"].as_str().unwrap().parse().unwrap();
    let event = clickstream_event::decode(
        Some(json.as_bytes()),
        &clickstream_event::Limits::default(),
        timestamp,
    )
    .unwrap_or_else(|r| panic!("the README's event is rejected: {r:?}"));
    let fields = serde_json::to_value(&event).unwrap();
    let described: String = table_rows(&text)
        .into_iter()
        .filter_map(|row| row.first().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    for field in fields.as_object().unwrap().keys() {
        assert!(
            described.contains(&format!("`{field}`")),
            "field {field} is not in the contract table"
        );
    }
    // The reject reasons are all listed.
    for reason in [
        "empty_payload",
        "oversized",
        "invalid_utf8",
        "invalid_json",
        "missing_field",
        "wrong_type",
        "unknown_event_type",
        "out_of_range",
        "timestamp_out_of_window",
        "rejected_by_clickhouse",
    ] {
        assert!(text.contains(&format!("`{reason}`")), "{reason}");
    }
}

/// The settings file of the README's secure-connections example is one the sink accepts, with
/// its Kafka properties in the `kafka` table.
#[test]
fn the_readmes_settings_file_is_accepted_by_the_sink() {
    let text = readme();
    let example = code_blocks(&text)
        .into_iter()
        .find(|b| b.lang == "toml" && b.lines.iter().any(|l| l.trim() == "[kafka]"))
        .expect("a TOML settings example with a [kafka] table");
    let dir = clickstream_testkit::TempDir::new("readme_toml");
    let file = dir.path().join("sink.toml");
    std::fs::write(&file, example.lines.join("\n")).unwrap();
    let overrides = clickstream_sink::settings::Overrides {
        config_file: Some(file),
        ..Default::default()
    };
    let settings = clickstream_sink::Settings::load_from(&overrides, Vec::new())
        .unwrap_or_else(|e| panic!("the README's sink.toml: {e}"));
    assert!(settings.clickhouse_url.starts_with("https://"));
    assert!(!settings.clickhouse_password_file.is_empty());
    assert!(!settings.clickhouse_ca_file.is_empty());
    for key in ["security.protocol", "sasl.mechanism", "sasl.username"] {
        assert!(settings.kafka.contains_key(key), "{key}");
    }
    assert!(
        !settings.kafka.contains_key("sasl.password"),
        "the password stays out of the file"
    );
}
