//! The provisioned Grafana dashboards, read from `grafana/provisioning/dashboards/`: the one
//! place the panels' SQL lives. clickstream-top runs the same SQL, with the plugin's macros
//! expanded by [`crate::macros`].

use serde::Deserialize;

use crate::Error;

/// `grafana/provisioning/dashboards/clickstream-live.json`.
pub const LIVE_JSON: &str =
    include_str!("../../grafana/provisioning/dashboards/clickstream-live.json");
/// `grafana/provisioning/dashboards/pipeline-health.json`.
pub const PIPELINE_HEALTH_JSON: &str =
    include_str!("../../grafana/provisioning/dashboards/pipeline-health.json");

/// `grafana/provisioning/dashboards/user-behaviour.json`.
pub const USER_BEHAVIOUR_JSON: &str =
    include_str!("../../grafana/provisioning/dashboards/user-behaviour.json");

/// The plugin id of the official ClickHouse datasource.
pub const CLICKHOUSE_PLUGIN: &str = "grafana-clickhouse-datasource";

/// The parts of a Grafana dashboard JSON model that we read.
#[derive(Debug, Clone, Deserialize)]
pub struct Dashboard {
    pub uid: String,
    pub title: String,
    pub refresh: String,
    pub time: TimeSetting,
    pub panels: Vec<Panel>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TimeSetting {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Panel {
    pub id: u32,
    pub title: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub datasource: Option<DataSourceRef>,
    #[serde(default)]
    pub targets: Vec<Target>,
    /// The panels of a collapsed row.
    #[serde(default)]
    pub panels: Vec<Panel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DataSourceRef {
    #[serde(rename = "type")]
    pub kind: String,
    pub uid: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub ref_id: String,
    pub datasource: Option<DataSourceRef>,
    /// ClickHouse panels: the SQL, with the plugin's macros.
    pub raw_sql: Option<String>,
    /// ClickHouse panels: 0 = time series, 1 = table.
    pub format: Option<u8>,
    /// Prometheus panels: the PromQL expression.
    pub expr: Option<String>,
}

impl Dashboard {
    pub fn parse(json: &str) -> Result<Dashboard, Error> {
        serde_json::from_str(json).map_err(Error::Dashboard)
    }

    /// "Clickstream — live".
    pub fn live() -> Dashboard {
        Dashboard::parse(LIVE_JSON).expect("the live dashboard is valid (tested)")
    }

    /// "Pipeline health".
    pub fn pipeline_health() -> Dashboard {
        Dashboard::parse(PIPELINE_HEALTH_JSON).expect("the health dashboard is valid (tested)")
    }

    /// "User behaviour".
    pub fn user_behaviour() -> Dashboard {
        Dashboard::parse(USER_BEHAVIOUR_JSON)
            .expect("the user-behaviour dashboard is valid (tested)")
    }

    /// Every panel, rows' panels included.
    pub fn all_panels(&self) -> Vec<&Panel> {
        fn walk<'a>(panels: &'a [Panel], out: &mut Vec<&'a Panel>) {
            for panel in panels {
                out.push(panel);
                walk(&panel.panels, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.panels, &mut out);
        out
    }

    /// The SQL of the ClickHouse panel titled `title` (its first target).
    pub fn sql(&self, title: &str) -> Result<&str, Error> {
        self.all_panels()
            .into_iter()
            .find(|p| p.title == title)
            .and_then(|p| p.targets.iter().find_map(|t| t.raw_sql.as_deref()))
            .ok_or_else(|| Error::MissingPanel(title.to_owned()))
    }
}

impl Panel {
    /// The datasource a target uses: its own, else the panel's.
    pub fn datasource_of<'a>(&'a self, target: &'a Target) -> Option<&'a DataSourceRef> {
        target.datasource.as_ref().or(self.datasource.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_dashboards_parse_and_have_sql_panels() {
        for dashboard in [
            Dashboard::live(),
            Dashboard::pipeline_health(),
            Dashboard::user_behaviour(),
        ] {
            assert!(!dashboard.all_panels().is_empty(), "{}", dashboard.title);
        }
        assert!(Dashboard::live().sql("Events per second").is_ok());
        assert!(matches!(
            Dashboard::live().sql("No such panel"),
            Err(Error::MissingPanel(_))
        ));
    }
}
