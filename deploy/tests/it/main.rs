//! Checks of the deployment that run without Docker or Kubernetes: docker-compose.yml and
//! .env, the Dockerfile, the Kubernetes manifests (deploy/k8s), the init and probe scripts, the
//! README, and scripts/demo (which starts a private local stack on free ports).

mod compose;
mod demo;
mod dockerfile;
mod k8s;
mod readme;
mod scripts;

use clickstream_deploy::compose::Compose;
use clickstream_testkit::repo_root;

pub fn compose() -> Compose {
    Compose::load(&repo_root()).unwrap_or_else(|e| panic!("docker-compose.yml / .env: {e:?}"))
}

pub fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub use clickstream_testkit::{
    WORKSPACE_BINARIES as BINARIES, workspace_bin_dir as bin_dir, workspace_binary as binary,
};
