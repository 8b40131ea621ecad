//! The sink benchmark, `scripts/bench`.
//!
//! - `bench-sink` (`src/bin/bench_sink.rs`, [`bench`]): the run on a private local stack, from
//!   the settings to the results file, the charts and the report section.
//! - `bench-consume` (`src/main.rs`): the consume-only upper bound of the sink.
//! - [`report`]: the report section (markdown) from a results file.
//! - `bench-sink --soak` (`scripts/soak`, [`bench::soak`]): the product for half an hour with
//!   operations on the way; [`soak_report`] renders its section of the report.
//! - `bench-charts` (`src/bin/bench_charts.rs`, [`charts`]): the report's SVG charts, drawn from a
//!   results file (and optionally an earlier one, for before/after figures).

// The results are built with `serde_json::json!`, whose macro recursion is deep for a drain.
#![recursion_limit = "512"]

pub mod bench;
pub mod charts;
pub mod report;
pub mod soak_report;
