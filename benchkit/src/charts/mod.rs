//! The benchmark report's charts: SVG files drawn from a `scripts/bench` results file.
//!
//! ```text
//! results.json (+ an earlier one) ─▶ results ─▶ figures (what to plot) ─▶ draw (plotters SVG)
//! ```
//!
//! | file              | shows                                                                   |
//! |-------------------|-------------------------------------------------------------------------|
//! | `throughput.svg`  | rows queryable and events/s over time: one sink, the scale-out runs, one sink before |
//! | `latency.svg`     | p50 and p99 event-to-queryable latency per producer rate, per flush setting |
//! | `rss.svg`         | sink RSS over time in the pre-loaded runs                               |
//! | `cpu.svg`         | sink CPU µs per event, before and after                                  |
//! | `bulk.svg`        | the 10M-event run: rows, events/s and RSS against the reference's pace    |
//! | `soak.svg`        | `scripts/soak`: memory, lag and rows/s over a long run with operations     |
//!
//! A chart whose data is not in the results is left out (see [`figures`]); [`run`] returns the
//! ones it wrote, so the report links only those.

pub mod draw;
pub mod figures;
pub mod results;
pub mod series;

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use results::Results;

/// What to draw from and where (`bench-charts` flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The results file to chart (`bench/results/latest.json`).
    pub results: PathBuf,
    /// An earlier results file: the "before" of the before/after figures.
    pub before: Option<PathBuf>,
    /// The directory the SVG files are written to (created if missing).
    pub out: PathBuf,
}

/// A chart written: its file name in the output directory and its title.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    pub file: String,
    pub title: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("reading the results file {path}")]
    ReadResults {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the results file {path} (a scripts/bench results JSON?)")]
    ParseResults {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("creating the output directory {path}")]
    CreateOut {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("drawing {path}")]
    Draw {
        path: PathBuf,
        #[source]
        source: draw::DrawError,
    },
}

impl Results {
    /// Reads a results file.
    pub fn load(path: &Path) -> Result<Self, ChartError> {
        let text = fs::read_to_string(path).map_err(|source| ChartError::ReadResults {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ChartError::ParseResults {
            path: path.to_owned(),
            source,
        })
    }
}

/// Draws the soak's chart (`soak.svg`) into `out` from a `scripts/soak` results file; `None`
/// when it has too few samples.
pub fn soak(results: &Path, out: &Path) -> Result<Option<Written>, ChartError> {
    let text = fs::read_to_string(results).map_err(|source| ChartError::ReadResults {
        path: results.to_owned(),
        source,
    })?;
    let file: results::SoakFile =
        serde_json::from_str(&text).map_err(|source| ChartError::ParseResults {
            path: results.to_owned(),
            source,
        })?;
    let Some(figure) = file.soak.as_ref().and_then(figures::soak) else {
        return Ok(None);
    };
    fs::create_dir_all(out).map_err(|source| ChartError::CreateOut {
        path: out.to_owned(),
        source,
    })?;
    let path = out.join(figure.file);
    draw::render(&figure, &path).map_err(|source| ChartError::Draw {
        path: path.clone(),
        source,
    })?;
    Ok(Some(Written {
        file: figure.file.to_owned(),
        title: figure.title,
    }))
}

/// Draws every chart the results have data for; returns them in report order.
pub fn run(settings: &Settings) -> Result<Vec<Written>, ChartError> {
    let after = Results::load(&settings.results)?;
    let before = settings.before.as_deref().map(Results::load).transpose()?;
    fs::create_dir_all(&settings.out).map_err(|source| ChartError::CreateOut {
        path: settings.out.clone(),
        source,
    })?;
    let mut written = Vec::new();
    for figure in figures::all(&after, before.as_ref()) {
        let path = settings.out.join(figure.file);
        draw::render(&figure, &path).map_err(|source| ChartError::Draw {
            path: path.clone(),
            source,
        })?;
        written.push(Written {
            file: figure.file.to_owned(),
            title: figure.title,
        });
    }
    Ok(written)
}
