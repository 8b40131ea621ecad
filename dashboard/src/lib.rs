//! Dashboards over the clickstream rollups: the SQL of the provisioned Grafana dashboards, the
//! Grafana ClickHouse plugin's macros, and `clickstream-top`, a terminal dashboard that runs the
//! same SQL.
//!
//! ```text
//! grafana/provisioning/dashboards/*.json ──▶ dashboards ──▶ macros::expand ──▶ Table::fetch
//!                 (the only copy of the SQL)       (panel SQL)   (Grafana's way)      │
//!                                                                                     ▼
//!                                                        top::collect ──▶ top::render ──▶ terminal
//! ```
//!
//! - [`dashboards`]: reads the dashboard JSON models (embedded at build time).
//! - [`macros`]: `$__timeFilter(...)` and friends, expanded like the plugin (v4) does.
//! - [`table`]: runs SQL whose columns are only known at run time.
//! - [`top`]: settings, one snapshot of numbers, rendering, the redraw loop.
//!
//! The schema these queries read is `clickhouse/schema.sql`; the panels and rollups are
//! described in the top-level `README.md`.

pub mod dashboards;
pub mod macros;
pub mod table;
pub mod top;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("query {label:?} failed: {source}")]
    Query {
        label: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("query {label:?} returned JSON we cannot read: {source}")]
    Decode {
        label: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid dashboard JSON: {0}")]
    Dashboard(#[source] serde_json::Error),
    #[error("no ClickHouse panel titled {0:?} in the dashboards")]
    MissingPanel(String),
    #[error("panel {panel:?}: {source}")]
    Macro {
        panel: String,
        #[source]
        source: macros::MacroError,
    },
    #[error("panel {panel:?} returned no column {column:?}")]
    MissingColumn { panel: String, column: String },
    #[error("{flag}: {reason}")]
    Setting {
        flag: &'static str,
        reason: &'static str,
    },
    #[error("{flag}: {source}")]
    Connect {
        flag: &'static str,
        #[source]
        source: clickstream_connect::ConnectError,
    },
}

impl Error {
    /// A TLS or password file that could not be used, with the flag that gave it.
    pub fn connect(source: clickstream_connect::ConnectError) -> Error {
        use clickstream_connect::SecretFile;
        let flag = match source.file() {
            Some(SecretFile::Ca) => "--ca-file",
            Some(SecretFile::ClientCert) => "--client-cert-file",
            Some(SecretFile::ClientKey) => "--client-key-file",
            Some(SecretFile::Password) => "--password-file",
            None => "--url",
        };
        Error::Connect { flag, source }
    }

    /// The TLS failure behind a failed query, if that is what failed.
    pub fn tls_failure(&self) -> Option<clickstream_connect::TlsFailure> {
        match self {
            Error::Query { source, .. } => clickstream_connect::tls_failure(source),
            _ => None,
        }
    }

    /// The error with its sources (a network error alone says only "client error (Connect)").
    pub fn describe(&self) -> String {
        clickstream_connect::describe(self)
    }

    /// True when ClickHouse could not be reached at all (connection refused, DNS, timeout).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Error::Query {
                source: clickhouse::error::Error::Network(_) | clickhouse::error::Error::TimedOut,
                ..
            }
        )
    }
}
