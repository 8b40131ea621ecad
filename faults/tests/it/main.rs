//! The fast fault scenarios, run by `scripts/test` (so CI guards them) against the stack in
//! KAFKA_BROKERS / CLICKHOUSE_URL, two at a time, with the workspace's debug sink binary.
//! Each is judged by the same offset oracle as `scripts/faults` (which runs all of them,
//! at full size, and writes the report).

use clickstream_faults::run::Stack;
use clickstream_faults::scenarios;
use clickstream_testkit::{clickhouse_url, kafka_brokers, repo_root, workspace_binary};

/// Two scenarios at a time. Each has its own topic, group, database and injected faults, and
/// mostly waits (group joins, session and stall timeouts: the machine's two cores were ~90 %
/// idle running them one at a time), so two at once halve the wall time without starving either.
static AT_ONCE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

async fn scenario(name: &str) {
    let _slot = AT_ONCE
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let stack = Stack {
        brokers: kafka_brokers(),
        clickhouse_url: clickhouse_url(),
        sink_bin: workspace_binary("clickstream-sink"),
        log_dir: repo_root().join("target/faults-logs"),
        durable_broker: false,
        full: false,
    };
    let outcome = scenarios::run(name, &stack).await;
    eprintln!(
        "{name}: {}",
        serde_json::to_string(&outcome).unwrap_or_default()
    );
    assert!(
        outcome.passed,
        "{name} failed (sink logs in target/faults-logs/{name}): {}",
        serde_json::to_string_pretty(&outcome).unwrap_or_default()
    );
}

#[test]
fn the_fast_list_names_known_scenarios() {
    for name in scenarios::FAST {
        assert!(scenarios::ALL.contains(name), "{name}");
    }
    assert!(
        scenarios::ALL.len() >= 20,
        "{} scenarios",
        scenarios::ALL.len()
    );
}

macro_rules! fast {
    ($($test:ident => $name:literal,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                scenario($name).await;
            }
        )*
        #[test]
        fn every_fast_scenario_has_a_test() {
            let tested = [$($name),*];
            assert_eq!(tested.as_slice(), scenarios::FAST);
        }
    };
}

fast! {
    oversized_poison => "oversized-poison",
    backfill_150_days => "backfill-150-days",
    alter_modify_column => "alter-modify-column",
    add_column_restart => "add-column-restart",
    incompatible_alter => "incompatible-alter",
    group_reset => "group-reset",
    clickhouse_hang_on_assignment => "clickhouse-hang-on-assignment",
    rebalance_mid_lookup => "rebalance-mid-lookup",
    memory_limit => "memory-limit",
    view_refuses_rows => "view-refuses-rows",
    killed_before_rebuild => "killed-before-rebuild",
    sigterm_mid_isolation => "sigterm-mid-isolation",
    disk_full => "disk-full",
    unknown_error => "unknown-error",
    source_duplicates => "source-duplicates",
    zombie => "zombie",
}
