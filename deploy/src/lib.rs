//! The deployment: `docker-compose.yml`, `Dockerfile` and `.env` at the top of the repository,
//! and the files they use from here (`deploy/`):
//!
//! ```text
//! deploy/http-ok                    health probe of the producer and sink images (bash, no curl)
//! deploy/cargo-skeleton.sh          the Dockerfile's cached dependency layer: manifests + stubs
//! deploy/prometheus.yml             Prometheus scraping the sink and the producer
//! deploy/clickhouse/03-passwords.sh ClickHouse's third init step: users' passwords from .env
//! deploy/kafka/kafka-ready          Kafka's health check (bash, one ApiVersions request, no JVM)
//! deploy/grafana/first-start.sh     Grafana's entrypoint: no well-known admin password
//! deploy/k8s/                       Kubernetes: kustomize base (sink, producer) + example overlay
//! ```
//!
//! Docker cannot run in CI, so `tests/it` checks what can be checked without it: the files
//! parse, everything they mount or build from exists, images are pinned, every service has a
//! health check and waits for what it needs, the environment given to the producer and the sink
//! is accepted by their own settings parsing, the image builds like CI (same toolchain,
//! `--locked`) and links only what the runtime image installs, the README's commands exist, and
//! `scripts/demo` starts and stops cleanly.
//!
//! This library holds the small parsers those tests share: [`compose`] (with `.env`
//! interpolation), [`dockerfile`], [`markdown`] and [`kustomize`] (builds `deploy/k8s` as
//! `kubectl apply -k` would).

pub mod compose;
pub mod dockerfile;
pub mod kustomize;
pub mod markdown;

/// Why a deployment file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path} as YAML")]
    Yaml {
        path: String,
        #[source]
        source: serde_norway::Error,
    },
    #[error("{0}")]
    Invalid(String),
}
