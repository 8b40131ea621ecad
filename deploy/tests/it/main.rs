//! Checks of the deployment that run without Docker: docker-compose.yml and .env, the
//! Dockerfile, the init and probe scripts, the README, and scripts/demo (which starts a private
//! local stack on free ports).

mod compose;
mod demo;
mod dockerfile;
mod readme;
mod scripts;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

use clickstream_deploy::compose::Compose;
use clickstream_testkit::repo_root;

pub fn compose() -> Compose {
    Compose::load(&repo_root()).unwrap_or_else(|e| panic!("docker-compose.yml / .env: {e:?}"))
}

pub fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The workspace's binaries and the packages that build them.
pub const BINARIES: [(&str, &str); 3] = [
    ("clickstream-producer", "clickstream-producer"),
    ("clickstream-sink", "clickstream-sink"),
    ("clickstream-top", "clickstream-dashboard"),
];

static BUILD: Mutex<()> = Mutex::new(());

/// The directory with the workspace's debug binaries: `CLICKSTREAM_BIN_DIR`, or the target
/// directory these tests were built into. `cargo test --workspace` (what CI runs) builds the
/// binaries there already; when one is missing or older than its package's sources (e.g.
/// `cargo test -p clickstream-deploy` after an edit) it is built here with `cargo build`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CLICKSTREAM_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/it-<hash> → target/debug
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf();
    let _guard = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    for (binary, package) in BINARIES {
        let path = dir.join(binary);
        if !is_fresh(&path, package) {
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(repo_root())
                .args(["build", "--locked", "-p", package, "--bin", binary])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cargo build of {binary} failed");
        }
    }
    dir
}

pub fn binary(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The binary exists and is newer than every source file of its package and of the crates
/// it depends on in the workspace (event; testkit is test-only).
fn is_fresh(path: &Path, package: &str) -> bool {
    let Ok(built) = path.metadata().and_then(|m| m.modified()) else {
        return false;
    };
    let dir = match package {
        "clickstream-dashboard" => "dashboard",
        "clickstream-producer" => "producer",
        "clickstream-sink" => "sink",
        other => panic!("unknown package {other}"),
    };
    let root = repo_root();
    let mut sources = vec![
        root.join(dir).join("src"),
        root.join(dir).join("Cargo.toml"),
        root.join("event/src"),
    ];
    if package == "clickstream-dashboard" {
        // clickstream-top embeds the dashboards' SQL.
        sources.push(root.join("grafana/provisioning/dashboards"));
    }
    sources.iter().all(|source| newest(source) <= built)
}

fn newest(path: &Path) -> SystemTime {
    let own = path
        .metadata()
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    match std::fs::read_dir(path) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|entry| newest(&entry.path()))
            .fold(own, SystemTime::max),
        Err(_) => own,
    }
}
