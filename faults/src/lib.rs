//! clickstream-faults: the fault-injection suite. Each scenario runs the real
//! `clickstream-sink` binary through crashes, outages, rebalances and operations (ALTERs,
//! backfills, group resets, huge messages) and judges the end state offset by offset; see
//! [`scenarios`]. `scripts/faults` runs all of them and writes `bench/results/faults.json`;
//! `scripts/test` runs the fast ones (`tests/it`).

pub mod proxy;
pub mod run;
pub mod scenarios;

use clickstream_testkit::repo_root;

/// The short commit the results were made on.
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(repo_root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
