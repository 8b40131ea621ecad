//! The part of a `scripts/bench` results file (`bench/results/latest.json`) the charts read.
//!
//! Lenient on purpose: every section is optional and unknown keys are ignored, so an older
//! results file (the "before" of a comparison) still loads; a chart whose data is missing is
//! left out rather than failing the run.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A whole results file.
#[derive(Debug, Default, Deserialize)]
pub struct Results {
    #[serde(default)]
    pub git: Git,
    #[serde(default)]
    pub settings: Settings,
    /// One sink draining the pre-loaded topic.
    pub throughput: Option<Drain>,
    /// One sink whose INSERTs the endpoint drops unread: the sink alone.
    pub ceiling: Option<Drain>,
    /// 1..k sinks in one group on the pre-loaded topic.
    #[serde(default)]
    pub scale_out: Vec<Drain>,
    /// Per flush setting (`flush_5000ms`), per rate (`"1000"`).
    #[serde(default)]
    pub latency: BTreeMap<String, BTreeMap<String, LatencyRun>>,
    /// The 10-million-event run.
    pub bulk: Option<Bulk>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Git {
    #[serde(default)]
    pub commit: String,
    /// Files of the measured code with uncommitted changes at the time of the run.
    #[serde(default)]
    pub dirty: Vec<String>,
}

impl Git {
    /// The commit the run measured, short, and whether the code had uncommitted changes.
    pub fn describe(&self) -> String {
        let short = self.commit.get(..7).unwrap_or(&self.commit);
        if self.dirty.is_empty() {
            short.to_owned()
        } else {
            format!("{short} + uncommitted changes")
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Settings {
    #[serde(default)]
    pub seconds_per_rate: Option<f64>,
}

/// Sinks from their start until every event is queryable (`Bench.drain` in scripts/bench).
#[derive(Debug, Deserialize)]
pub struct Drain {
    #[serde(default = "one")]
    pub instances: u32,
    pub events: u64,
    pub sink_cpu_us_per_event: Option<f64>,
    pub sink_peak_rss_mb: Option<f64>,
    /// `[seconds since the sinks started, rows queryable]`, downsampled.
    #[serde(default)]
    pub progress: Vec<(f64, f64)>,
    /// `[seconds since the sinks started, RSS MB of sink 0, of sink 1, ...]`, about once a second.
    #[serde(default)]
    pub rss_mb_samples: Vec<Vec<f64>>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
pub struct LatencyRun {
    pub rate: f64,
    pub flush_setting: String,
    pub flush_interval_ms: u64,
    pub latency_ms: Quantiles,
}

#[derive(Debug, Deserialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
}

/// The bulk run: a drain, plus the producer's run and the reference it is compared with.
#[derive(Debug, Deserialize)]
pub struct Bulk {
    #[serde(flatten)]
    pub drain: Drain,
    pub reference: Option<Reference>,
}

/// The reference projects' figure: `events` in `minutes` at about `events_per_s`.
#[derive(Debug, Deserialize)]
pub struct Reference {
    pub events: u64,
    pub events_per_s: f64,
    pub minutes: f64,
    pub pipeline: String,
}

/// A `scripts/soak` results file (`bench/results/soak.json`): the part its chart reads.
#[derive(Debug, Default, Deserialize)]
pub struct SoakFile {
    pub soak: Option<Soak>,
}

#[derive(Debug, Deserialize)]
pub struct Soak {
    pub rate: f64,
    pub minutes: f64,
    #[serde(default)]
    pub samples: Vec<SoakSample>,
    #[serde(default)]
    pub operations: Vec<SoakOperation>,
}

/// One look at the processes, `t_s` seconds after the producer started.
#[derive(Debug, Deserialize)]
pub struct SoakSample {
    pub t_s: f64,
    pub sink_rss_mb: Option<f64>,
    pub second_sink_rss_mb: Option<f64>,
    pub windows_rss_mb: Option<f64>,
    pub lag: Option<f64>,
    pub rows: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub struct SoakOperation {
    pub at_s: f64,
    pub operation: String,
}
