//! `bench-charts`: the benchmark report's SVG charts from a `scripts/bench` results file (see
//! `clickstream_benchkit::charts`). Prints one JSON line: `{"charts": [{"file", "title"}, ...]}`,
//! the charts written, in report order.

use std::path::PathBuf;

use clap::Parser;
use clickstream_benchkit::charts::{self, Settings};

/// Draws the benchmark charts (SVG) from a results file.
#[derive(Debug, Parser)]
#[command(name = "bench-charts", version)]
struct Args {
    /// The results file of scripts/bench.
    #[arg(long, default_value = "bench/results/latest.json")]
    results: PathBuf,
    /// Directory for the SVG files (created if missing).
    #[arg(long, default_value = "bench/charts")]
    out: PathBuf,
    /// An earlier results file: the "before" figures (sink CPU per event, one sink's progress).
    #[arg(long)]
    before: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let written = charts::run(&Settings {
        results: args.results,
        before: args.before,
        out: args.out,
    })?;
    println!("{}", serde_json::json!({ "charts": written }));
    Ok(())
}
