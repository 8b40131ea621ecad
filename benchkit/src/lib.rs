//! Benchmark helpers for `scripts/bench`.
//!
//! - `bench-consume` (`src/main.rs`): the consume-only upper bound of the sink.
//! - `bench-charts` (`src/bin/bench_charts.rs`, [`charts`]): the report's SVG charts, drawn from a
//!   results file of `scripts/bench` (and optionally an earlier one, for before/after figures).

pub mod charts;
