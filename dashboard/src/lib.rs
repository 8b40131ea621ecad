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
}

impl Error {
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
