//! The sink benchmark's section of `bench/REPORT.md`, rendered from a `scripts/bench` results
//! file (`bench/results/latest.json`). Ported from the Python `scripts/bench` it replaced, with the
//! same output byte for byte (a test renders the committed report again).
//!
//! ```text
//! results.json + the charts bench-charts wrote ─▶ render ─▶ write_section ─▶ REPORT.md (BEGIN..END)
//! ```
//!
//! The sections, in order, each there when its key is in the results (`BENCH_SECTIONS` runs a
//! subset): `throughput` (1–2, with the consume-only bound), `ceiling` (the sink alone),
//! `latency` (3), `scale_out` (4), `bulk` (5); then the charts no section took, and the caveats.
//! A chart goes after the first section it illustrates.
//!
//! The results are a loose JSON document, read as a [`serde_json::Value`]: a key the Python reads
//! with `.get` or `in` may be absent and is handled as there; a key it reads with `[]` renders as
//! `–` when absent or null (where the Python stopped with a `KeyError` or printed `None`: the CPU
//! of servers the bench did not start is null). Values print as Python prints them (the `py`
//! helpers at the end): an int as an int, a float as its `repr`, `round` to even.
//!
//! serde_json (without `preserve_order`) hands an object's keys back sorted, where Python keeps
//! the file's order. The two places the order shows are ordered by what they mean instead: the
//! latency runs as `settings.flush` and `settings.rates` list them (the order they ran), the CPU
//! per event as sink / endpoint / broker (the order the table names them).

use std::fs;
use std::io;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::charts::Written;
use py::{eq, fixed, fmt, general, grouped, num, pct, round_float, rounded, show, truthy};

/// Where the section starts in `bench/REPORT.md`. The file is shared (`scripts/faults` writes
/// its own section between its own markers): only the part between [`BEGIN`] and [`END`] is
/// replaced.
pub const BEGIN: &str = "<!-- bench:begin (written by scripts/bench) -->";
/// Where the section ends.
pub const END: &str = "<!-- bench:end -->";

/// The reference projects' bulk run, as the issue quotes it: "10 million events, about 17
/// minutes at about 10,000 events/s with Kafka + Spark". The bulk run (section 5) is compared
/// with it; serialized, it is the `reference` of the results' `bulk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Reference {
    pub events: u64,
    pub minutes: u64,
    pub events_per_s: u64,
    pub pipeline: &'static str,
}

/// The reference run the bulk run is compared with.
pub const REFERENCE: Reference = Reference {
    events: 10_000_000,
    minutes: 17,
    events_per_s: 10_000,
    pipeline: "Kafka + Spark",
};

/// The sink's default `flush_interval_ms` (`sink/src/settings.rs`): the latency runs' `default`
/// flush setting, recorded under `flush_<ms>ms`.
pub fn sink_default_flush_interval_ms() -> u64 {
    clickstream_sink::Settings::default().flush_interval_ms
}

/// The sink's default `max_batch_bytes` (`sink/src/settings.rs`), named in the throughput
/// reading unless the sink's flags set `--max-batch-bytes`.
pub fn sink_default_max_batch_bytes() -> usize {
    clickstream_sink::Settings::default().max_batch_bytes
}

/// A chart the report embeds: `bench-charts`' file name and title, and where the report finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chart {
    /// The file name `bench-charts` wrote (`throughput.svg`): which section takes it.
    pub file: String,
    pub title: String,
    /// Relative to the report file (`charts/throughput.svg`).
    pub path: String,
}

impl Chart {
    /// A chart `bench-charts` wrote into `dir`, given relative to the report (`charts`).
    pub fn new(written: &Written, dir: &str) -> Self {
        Chart {
            file: written.file.clone(),
            title: written.title.clone(),
            path: format!("{dir}/{}", written.file),
        }
    }
}

/// The report section from results `r`, without the markers. `charts`: what `bench-charts`
/// wrote, in its order, each embedded after the first section it illustrates (any left over in
/// a section of their own). `before`: the earlier results file the before/after charts compare
/// with, relative to the repository (`bench/results/before-v2.json`), named in their notes.
pub fn render(r: &Value, charts: &[Chart], before: Option<&str>) -> String {
    let (m, settings) = (&r["machine"], &r["settings"]);
    let note = show(&settings["note"]);
    let defaults = note.split_once(": ").map_or(note.as_str(), |(_, d)| d);
    let mut lines = vec![
        "## Sink benchmark (`scripts/bench`)".to_owned(),
        String::new(),
        provenance(
            r,
            "scripts/bench",
            "bench/results/latest.json",
            ": other builds and tests ran at the same time (the \"everything else\" CPU below)",
        ),
        String::new(),
        match settings.get("external") {
            // Servers the bench did not start (BENCH_KAFKA_BROKERS, BENCH_CLICKHOUSE_URL).
            Some(external) => format!(
                "Servers: Kafka at {}, ClickHouse at {} (not started by the bench; their CPU is \
                 not measured). Every measurement has a fresh consumer group and a fresh \
                 database with the full `clickhouse/schema.sql` (rollups included). Sink flags: \
                 `{}`, otherwise the defaults ({defaults}).",
                show(&external["kafka"]),
                show(&external["clickhouse"]),
                join(&settings["sink_args"], " "),
            ),
            None => format!(
                "Stack: `scripts/stack` (tansu broker with in-memory storage; the chDB engine \
                 behind `scripts/clickhouse_http.py`), all on this machine. Every measurement \
                 has a fresh consumer group and a fresh database with the full \
                 `clickhouse/schema.sql` (rollups included). Sink flags: `{}`, otherwise the \
                 defaults ({defaults}). `session.timeout.ms=6000`: tansu completes a group's \
                 first join only after about half the session timeout, so the join (reported \
                 apart as the time to the first row) is ~3 s instead of ~5 s; it does not change \
                 the steady rate.",
                join(&settings["sink_args"], " "),
            ),
        },
        String::new(),
    ];
    let mut figures = Figures {
        charts,
        notes: notes(before),
        placed: Vec::new(),
    };
    if r.get("throughput").is_some() {
        lines.extend(section_throughput(r));
        lines.extend(figures.take(&["throughput.svg", "rss.svg", "cpu.svg"]));
    }
    if r.get("ceiling").is_some() {
        lines.extend(section_ceiling(r));
        lines.extend(figures.take(&["cpu.svg", "rss.svg"]));
    }
    if r.get("latency").is_some() {
        lines.extend(section_latency(r));
        lines.extend(figures.take(&["latency.svg"]));
    }
    if r.get("scale_out").is_some() {
        lines.extend(section_scale(r));
        lines.extend(figures.take(&["throughput.svg", "rss.svg"]));
    }
    if r.get("bulk").is_some() {
        lines.extend(section_bulk(r));
        lines.extend(figures.take(&["bulk.svg", "cpu.svg"]));
    }
    let left = figures.left_over();
    if !left.is_empty() {
        let files: Vec<&str> = left.iter().map(String::as_str).collect();
        lines.extend(["### Charts".to_owned(), String::new()]);
        lines.extend(figures.take(&files));
    }
    lines.extend([
        "### Caveats".to_owned(),
        String::new(),
        if settings.get("external").is_some() {
            "- The servers are someone else's: what else they ran during the bench is not \
             known here."
                .to_owned()
        } else {
            "- Not a real Kafka or ClickHouse: tansu keeps topics in memory; chDB is the \
             ClickHouse engine inside a Python process behind a Python HTTP server. Against a \
             ClickHouse server the insert side (and so the sink / bound ratio) will differ."
                .to_owned()
        },
        format!(
            "- Everything (broker, endpoint, sink, producer, other people's builds and tests) \
             shares {} cores. Compare figures within this run; absolute numbers move by tens of \
             percent between runs.",
            show(&m["cores"]),
        ),
        "- Every insert feeds the materialized views of `clickhouse/schema.sql` (four rollups and \
         `kafka_progress`) and carries a deduplication token: this is the product's insert, not a \
         bare table's."
            .to_owned(),
        "- Latency includes the producer's own batching and the broker; times have millisecond \
         precision."
            .to_owned(),
        String::new(),
    ]);
    lines.join("\n")
}

/// The paragraph that says where a section comes from: the `script` that wrote it, when, from
/// which commit (and its uncommitted changes), its `results` file, the machine and its load
/// (`load_note` follows "at the end"), and how long the run took.
pub fn provenance(r: &Value, script: &str, results: &str, load_note: &str) -> String {
    let (m, git) = (&r["machine"], &r["git"]);
    let commit: String = show(&git["commit"]).chars().take(12).collect();
    let dirty = if truthy(&git["dirty"]) {
        format!(" (uncommitted changes in: {})", join(&git["dirty"], ", "))
    } else {
        String::new()
    };
    format!(
        "Generated by `{script}` on {} from commit `{commit}`{dirty}; raw figures in \
         `{results}`. Machine: {} cores ({}), {} GB; load average {} at the start and {} at the \
         end{load_note}. The whole run took {} s.",
        show(&r["date"]),
        show(&m["cores"]),
        show(&m["cpu"]),
        show(&m["memory_gb"]),
        show(&m["loadavg_start"][0]),
        show(&m["loadavg_end"][0]),
        show(&r["bench_wall_s"]),
    )
}

/// What each chart shows, printed under it.
fn notes(before: Option<&str>) -> Vec<(&'static str, String)> {
    let throughput_before = before
        .map(|b| format!(" Dashed grey: one sink in `{b}`."))
        .unwrap_or_default();
    let cpu_before = before.map_or_else(
        || ".".to_owned(),
        |b| format!("; \"before\" from `{b}`, \"after\" from this run."),
    );
    vec![
        (
            "throughput.svg",
            format!(
                "Rows queryable over time (`count()` of the table, the samples the times above \
                 come from) and the rate derived from them, for one sink and for the scale-out \
                 runs (section 4). Rows become queryable one INSERT at a time, so the rate is over \
                 a trailing window (2 s, or two sample gaps where samples are sparser); the flat \
                 start is the group join.{throughput_before}"
            ),
        ),
        (
            "rss.svg",
            "Sink RSS from `/proc/PID/status` about once a second over the drains of the \
             pre-loaded topic; the peak in the legend is the kernel's maxrss of the process (it \
             can fall between two samples)."
                .to_owned(),
        ),
        (
            "cpu.svg",
            format!(
                "Sink CPU (user + system, from the kernel's rusage) divided by the events \
                 drained{cpu_before}"
            ),
        ),
        (
            "latency.svg",
            "The p50 and p99 columns of the table above: one colour per flush setting, solid p99, \
             dashed p50; rate on a log scale."
                .to_owned(),
        ),
        (
            "bulk.svg",
            "Rows queryable, events/s (over a trailing window) and sink RSS over the bulk run; \
             dashed grey: the reference's pace."
                .to_owned(),
        ),
    ]
}

/// Places each chart once: after the first section that asks for it.
struct Figures<'a> {
    charts: &'a [Chart],
    notes: Vec<(&'static str, String)>,
    placed: Vec<String>,
}

impl Figures<'_> {
    /// The image line and the note of each of `files` that is a chart and not placed yet.
    fn take(&mut self, files: &[&str]) -> Vec<String> {
        let mut lines = Vec::new();
        for &file in files {
            // As in the Python's dict of charts, a file listed twice is its last chart.
            let Some(chart) = self.charts.iter().rev().find(|c| c.file == file) else {
                continue;
            };
            if self.placed.iter().any(|p| p == file) {
                continue;
            }
            self.placed.push(file.to_owned());
            lines.extend([format!("![{}]({})", chart.title, chart.path), String::new()]);
            match self.notes.iter().find(|(f, _)| *f == file) {
                Some((_, note)) if !note.is_empty() => lines.extend([note.clone(), String::new()]),
                _ => {}
            }
        }
        lines
    }

    /// The charts no section took, in the order `bench-charts` wrote them.
    fn left_over(&self) -> Vec<String> {
        let mut left: Vec<String> = Vec::new();
        for chart in self.charts {
            if !self.placed.contains(&chart.file) && !left.contains(&chart.file) {
                left.push(chart.file.clone());
            }
        }
        left
    }
}

/// The sink alone: the endpoint drops its INSERTs unread.
fn section_ceiling(r: &Value) -> Vec<String> {
    let c = &r["ceiling"];
    let bound = &r["bound_steady_events_per_s"];
    let mut lines = vec![
        "### The sink alone".to_owned(),
        String::new(),
        "The same pre-loaded topic, one sink with the defaults, but the endpoint accepts every \
         INSERT into the events table and drops it unread (a `discard` rule of \
         `scripts/clickhouse_http.py`; every other query, the stored-offset checks included, is \
         answered for real). This is the sink's own ceiling: consume, decode, encode, compress, \
         send, commit."
            .to_owned(),
        String::new(),
        "| | events/s (steady) | sink CPU µs/event | peak RSS MB | inserts | mean rows/insert |"
            .to_owned(),
        "|---|---:|---:|---:|---:|---:|".to_owned(),
        format!(
            "| sink, inserts dropped | {} ({}) | {} | {} | {} | {} |",
            fmt(&c["events_per_s"]),
            fmt(&c["steady_events_per_s"]),
            show(&c["sink_cpu_us_per_event"]),
            show(&c["sink_peak_rss_mb"]),
            show(&c["inserts"]),
            fmt(&c["mean_rows_per_insert"]),
        ),
    ];
    if truthy(bound) {
        lines.push(format!(
            "| consume-only bound (steady) | {} | | | | |",
            fmt(bound)
        ));
    }
    lines.push(String::new());
    if truthy(bound) {
        lines.push(format!(
            "Sink alone / consume-only bound, steady: {}.",
            show(&c["bound_ratio_steady"])
        ));
    }
    lines.push(String::new());
    lines
}

/// 1–2: one sink draining the pre-loaded topic against the consume-only bound, and where its
/// time goes.
fn section_throughput(r: &Value) -> Vec<String> {
    let (t, b, m) = (&r["throughput"], &r["bound"], &r["machine"]);
    let best = &b["best"];
    let runs: Vec<String> = items(&b["runs"])
        .map(|x| {
            format!(
                "{} {}/s (steady {}/s)",
                show(&x["api"]),
                fmt(&x["events_per_s"]),
                fmt(&x["steady_events_per_s"])
            )
        })
        .collect();
    let per_event: Vec<String> = cpu_per_event(t).into_iter().map(show).collect();
    let mut lines = vec![
        format!(
            "### 1–2. Throughput of one sink, and the consume-only bound ({} pre-loaded events, \
             3 partitions)",
            grouped(&t["events"])
        ),
        String::new(),
        "| | sink | consume-only bound | sink / bound |".to_owned(),
        "|---|---:|---:|---:|".to_owned(),
        format!(
            "| events/s, start to last row queryable | {} | {} | {} |",
            fmt(&r["sink_events_per_s"]),
            fmt(&r["bound_events_per_s"]),
            fixed(num(&r["sink_bound_ratio"]), 2),
        ),
        format!(
            "| events/s, steady (after the first row / message) | {} | {} | {} |",
            fmt(&r["sink_steady_events_per_s"]),
            fmt(&r["bound_steady_events_per_s"]),
            fixed(num(&r["sink_bound_ratio_steady"]), 2),
        ),
        format!(
            "| MB/s of Kafka payload, start to end (steady) | {} ({}) | {} ({}) | |",
            show(&t["mb_per_s"]),
            show(&t["steady_mb_per_s"]),
            round_float(
                num(&best["payload_bytes"]) / 1e6 / num(&best["elapsed_s"]),
                1
            ),
            rounded(&best["steady_mb_per_s"], 1),
        ),
        format!(
            "| time to first row / first message (group join) | {} s | {} s | |",
            show(&t["first_row_s"]),
            show(&best["first_message_s"]),
        ),
        format!(
            "| total time | {} s | {} s | |",
            show(&t["total_s"]),
            show(&best["elapsed_s"]),
        ),
        format!(
            "| CPU seconds (user + system), µs per event | {}, {} | {}, {} | |",
            show(&t["sink_cpu_s"]),
            show(&t["sink_cpu_us_per_event"]),
            show(&best["cpu_s"]),
            show(&best["cpu_us_per_event"]),
        ),
        format!(
            "| peak RSS | {} MB | {} MB | |",
            show(&t["sink_peak_rss_mb"]),
            show(&best["peak_rss_mb"]),
        ),
        format!(
            "| INSERTs (/metrics) | {} in {} flushes, {}/s steady, {} rows each | | |",
            grouped(&t["inserts"]),
            grouped(&t["flushes"]),
            show(&t["inserts_per_s_steady"]),
            grouped(&t["mean_rows_per_insert"]),
        ),
        format!(
            "| parts created by the inserts (block numbers of the active parts; the engine makes \
             a part per inserted block, sometimes two per INSERT) | {} | | |",
            grouped(&t["parts_created_by_inserts"]),
        ),
        format!(
            "| parts at the end, all / active (merges) | {} / {} | | |",
            grouped(&t["parts_total"]),
            grouped(&t["parts_active"]),
        ),
        format!(
            "| rows in the table / duplicates | {} / {} | | |",
            grouped(&t["rows"]),
            show(&t["duplicates"]),
        ),
        String::new(),
        format!(
            "Bound runs, best counts (`stream`: rdkafka StreamConsumer `recv` as in the sink; \
             `base`: a BaseConsumer poll loop; the first two before the sink, the last after \
             it): {}.",
            runs.join("; ")
        ),
        String::new(),
        "#### Where the rest of the time goes".to_owned(),
        String::new(),
        "Over the sink's run (start to last row queryable):".to_owned(),
        String::new(),
        "| | |".to_owned(),
        "|---|---:|".to_owned(),
        format!(
            "| wall time (steady part) | {} s ({} s) |",
            show(&t["total_s"]),
            show(&t["steady_s"]),
        ),
        format!(
            "| an INSERT in flight (sum of insert_duration_seconds; the partitions of a flush go \
             in one INSERT) | {} s = {} of the steady part |",
            show(&t["insert_duration_s_sum"]),
            pct(&t["insert_in_flight_share_of_steady"]),
        ),
        format!(
            "| mean INSERT: rows, seconds, rows/s while in flight | {}, {} s, {} |",
            grouped(&t["mean_rows_per_insert"]),
            show(&t["mean_insert_s"]),
            fmt(&t["rows_per_s_while_inserting"]),
        ),
        format!(
            "| 1 s samples with the partitions paused (buffer full for over a second) | {} |",
            pct(&t["paused_share_of_samples"]),
        ),
        format!(
            "| most rows buffered in a sample | {} |",
            fmt(&t["max_buffered_rows"]),
        ),
        format!(
            "| CPU s: sink / ClickHouse endpoint / broker | {} / {} / {} |",
            show(&t["sink_cpu_s"]),
            show(&t["clickhouse_endpoint_cpu_s"]),
            show(&t["broker_cpu_s"]),
        ),
        format!(
            "| CPU µs per event: sink / endpoint / broker (consume-only: {}) | {} |",
            show(&best["cpu_us_per_event"]),
            per_event.join(" / "),
        ),
        format!(
            "| CPU s: everything else on the machine / available ({} cores × wall) | {} / {} |",
            show(&m["cores"]),
            show(&t["other_processes_cpu_s"]),
            show(&t["machine_capacity_cpu_s"]),
        ),
        String::new(),
    ];
    let p = &t["profile"];
    if truthy(p) {
        lines.extend([
            format!(
                "Profile ({}; the profiled repeat ran at {} events/s steady, perf itself adding \
                 to the {} CPU s of other work; the figures above are from the unprofiled run):",
                show(&p["note"]),
                fmt(&p["profiled_run_steady_events_per_s"]),
                show(&p["profiled_run_perf_and_other_cpu_s"]),
            ),
            String::new(),
        ]);
        for (key, title) in [
            ("by_process", "by process"),
            ("endpoint_by_library", "endpoint by library"),
            ("sink_by_thread", "sink by thread"),
            ("sink_by_crate_or_library", "sink by crate or library"),
            ("sink_by_symbol", "sink, top symbols"),
        ] {
            let shares: Vec<String> = items(&p[key])
                .map(|e| format!("{} % `{}`", fixed(num(&e[0]), 1), show(&e[1])))
                .collect();
            lines.push(format!("- {title}: {}", shares.join("; ")));
        }
        lines.push(String::new());
    }
    lines.extend([discussion_throughput(r), String::new()]);
    lines
}

/// The reading of sections 1–2: what paces one sink.
fn discussion_throughput(r: &Value) -> String {
    let t = &r["throughput"];
    let per_event = &t["cpu_us_per_event"];
    // INSERTs (not flushes: a flush of only dead letters or stored rows makes none) over the
    // steady part.
    let inserts_per_s = num(&t["inserts_per_s_steady"]);
    let insert_every_s = num(&t["steady_s"]) / num(&t["inserts"]).max(1.0);
    let sink_args: Vec<String> = items(&r["settings"]["sink_args"]).map(show).collect();
    let batch_bytes = sink_args
        .iter()
        .position(|a| a == "--max-batch-bytes")
        .filter(|&i| i + 1 < sink_args.len())
        // Python's int(): surrounding spaces and digit-separating underscores allowed.
        .and_then(|i| sink_args[i + 1].trim().replace('_', "").parse::<i64>().ok())
        .or_else(|| r["settings"]["sink_max_batch_bytes"].as_i64())
        .map_or(sink_default_max_batch_bytes() as f64, |b| b as f64);
    let batch_mb = general(batch_bytes / f64::from(1 << 20));
    let steady_ratio = num(&r["sink_bound_ratio_steady"]);
    let mut text = vec![
        format!(
            "**Reading.** Consuming alone is {}× faster than the sink in the steady phase ({}); \
             from start to end the ratio is {} because both first wait ~{} s for the group join.",
            fixed(1.0 / steady_ratio.max(1e-9), 0),
            fixed(steady_ratio, 2),
            fixed(num(&r["sink_bound_ratio"]), 2),
            fixed(num(&t["first_row_s"]), 0),
        ),
        format!(
            "In the steady phase the sink made {} INSERTs a second, one every {} s on average \
             ({} rows each, every partition's rows of a flush in one INSERT): INSERTs were in \
             flight {} of the steady time, at {} rows/s while in flight. \
             `max_inserts_per_second` (2) bounds the INSERTs of the whole sink on average (a \
             token bucket of up to `max_parallel_inserts` INSERTs, full at the start, so a short \
             run can show a little more), so at this rate batches grow instead; meanwhile the rows \
             held (buffered and being inserted) stayed at `max_batch_bytes` ({batch_mb} MB) for \
             over a second, pausing the partitions, in {} of the 1 s samples (a full buffer \
             first only stops the sink taking messages). So one sink is paced by the \
             endpoint's insert speed within its insert rate and memory bounds, not by consuming \
             or decoding (the sink alone, below, drains the same topic faster).",
            fixed(inserts_per_s, 2),
            fixed(insert_every_s, 2),
            fmt(&t["mean_rows_per_insert"]),
            pct(&t["insert_in_flight_share_of_steady"]),
            fmt(&t["rows_per_s_while_inserting"]),
            pct(&t["paused_share_of_samples"]),
        ),
    ];
    // Python reads `t["cpu_us_per_event"]` (a file without it stops there): it is left out.
    if per_event.is_object() && cpu_per_event(t).iter().all(|v| !v.is_null()) {
        let profile = &t["profile"];
        let endpoint = shares(&profile["endpoint_by_library"]);
        let sink = shares(&profile["sink_by_crate_or_library"]);
        let share = |shares: &[(String, f64)], what: &str| {
            // As in a dict built from the list: the last share of a name counts.
            shares
                .iter()
                .rev()
                .find(|(w, _)| w == what)
                .map_or(0.0, |(_, s)| *s)
        };
        let where_endpoint = if endpoint.is_empty() {
            String::new()
        } else {
            format!(
                " ({} % of its samples inside the chDB library, {} % in the kernel; the Python \
                 layer is small)",
                fixed(share(&endpoint, "_chdb.abi3.so"), 0),
                fixed(share(&endpoint, "[kernel.kallsyms]"), 0),
            )
        };
        let where_sink = if sink.is_empty() {
            String::new()
        } else {
            format!(
                " ({} % of its samples in libc: malloc, free, memmove; {} % decoding the event \
                 (clickstream_event, serde_json); {} % LZ4)",
                fixed(share(&sink, "libc.so.6"), 0),
                fixed(
                    share(&sink, "serde_json") + share(&sink, "clickstream_event"),
                    0
                ),
                fixed(share(&sink, "lz4_flex"), 0),
            )
        };
        text.push(format!(
            "Per event the endpoint burns {} µs of CPU{where_endpoint}, the sink {} \
             µs{where_sink}, consuming alone {} µs. On {} cores with nothing else running that \
             would cap the pipeline near {} events/s; during this run other work took {} of the \
             {} CPU seconds.",
            show(&per_event["clickhouse_endpoint"]),
            show(&per_event["sink"]),
            show(&r["bound"]["best"]["cpu_us_per_event"]),
            show(&r["machine"]["cores"]),
            fmt(&t["cpu_limited_events_per_s"]),
            show(&t["other_processes_cpu_s"]),
            show(&t["machine_capacity_cpu_s"]),
        ));
    }
    let scale = items(&r["scale_out"]).collect::<Vec<_>>();
    if let [one, .., most] = scale[..] {
        let gain = num(&most["steady_events_per_s"]) / num(&one["steady_events_per_s"]).max(1.0);
        let cap = &t["cpu_limited_events_per_s"];
        let near_cap = truthy(cap) && num(&most["steady_events_per_s"]) >= 0.85 * num(cap);
        text.push(format!(
            "More sinks in the group (section 4) insert concurrently: {} reached {}× the steady \
             rate of one{}{}",
            show(&most["instances"]),
            fixed(gain, 2),
            if near_cap {
                " (near the CPU cap above)"
            } else {
                ""
            },
            if gain > 1.1 {
                ": each sink has its own insert rate and memory bounds, and the endpoint's CPU \
                 on a shared machine does the rest."
            } else {
                ", so the endpoint, not the sink's pipeline, is the limit."
            },
        ));
    }
    text.join(" ")
}

/// 3: event-to-queryable latency per flush setting and rate.
fn section_latency(r: &Value) -> Vec<String> {
    let mut lines = vec![
        format!(
            "### 3. Latency, event to queryable ({} s per rate)",
            show(&r["settings"]["seconds_per_rate"])
        ),
        String::new(),
        "From the table itself: `inserted_at - event_time` over the run's rows (`inserted_at` is \
         `now64(3)` at insert, `event_time` stamped by the producer when it made the event; one \
         clock). The sink joined first (a warm-up event had to be queryable). Inserts per second \
         from `clickstream_sink_inserts_total` over the producer's run. \"Without the tail\": the \
         same rows minus those made in the last flush interval + 1 s of the run, whose partial \
         batch waits the full interval after the producer stops (a continuing stream does not \
         see that)."
            .to_owned(),
        String::new(),
        "| flush | rate /s | rows | p50 ms | p95 ms | p99 ms | max ms | without the tail: p99 / \
         max ms | inserts/s | rows/insert | not yet queryable when the producer stopped | sink \
         CPU s | sink peak RSS MB |"
            .to_owned(),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|".to_owned(),
    ];
    for x in latency_runs(r) {
        let (q, w) = (&x["latency_ms"], &x["latency_ms_without_last_interval"]);
        let tail = if truthy(w) {
            format!("{} / {}", fmt(&w["p99"]), fmt(&w["max"]))
        } else {
            "–".to_owned()
        };
        lines.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {tail} | {} | {} | {} | {} | {} |",
            show(&x["flush_setting"]),
            grouped(&x["rate"]),
            grouped(&x["rows"]),
            fmt(&q["p50"]),
            fmt(&q["p95"]),
            fmt(&q["p99"]),
            fmt(&q["max"]),
            show(&x["inserts_per_s"]),
            fmt(&x["mean_rows_per_insert"]),
            grouped(&x["backlog_at_producer_end"]),
            show(&x["sink_cpu_s"]),
            fmt(&x["sink_peak_rss_mb"]),
        ));
    }
    lines.extend([String::new(), discussion_latency(r), String::new()]);
    lines
}

/// The reading of section 3: how a flush is triggered, and where the sink fell behind.
fn discussion_latency(r: &Value) -> String {
    let behind: Vec<String> = latency_runs(r)
        .into_iter()
        .filter(|x| num(&x["drain_after_producer_s"]) > num(&x["flush_interval_ms"]) / 1000.0 + 5.0)
        .map(|x| {
            format!(
                "{}/s with {} (rows still arriving {} s after the producer stopped)",
                grouped(&x["rate"]),
                show(&x["flush_setting"]),
                show(&x["drain_after_producer_s"]),
            )
        })
        .collect();
    let mut text = "**Reading.** A batch is flushed when it holds `max_rows` (1,000) rows or its \
                    oldest row has waited the flush interval; each flush writes the rows of every \
                    partition it takes (3 here) in one INSERT, and the next flush waits 1 / \
                    `max_inserts_per_second` (0.5 s) per INSERT, so a sink makes at most about 2 \
                    INSERTs/s at any rate, which is where the high rates sit. At low rates the \
                    interval dominates: the default 5 s gives about half of it as median and the \
                    interval plus an insert as maximum; 1 s shrinks both to about a second. From \
                    a thousand events/s up, batches grow instead of inserts (rows/insert grows \
                    with the rate), and latency is the wait for the next flush slot plus the \
                    insert time, whatever the interval."
        .to_owned();
    if behind.is_empty() {
        text.push_str(
            " The sink kept up at every rate (rows still unqueryable when the producer stopped \
             are about one flush gap's worth).",
        );
    } else {
        text.push_str(&format!(
            " The sink did not keep up at {}: there latency measures the backlog.",
            behind.join("; ")
        ));
    }
    text
}

/// 4: 1..k sinks in one group on the pre-loaded topic.
fn section_scale(r: &Value) -> Vec<String> {
    let s: Vec<&Value> = items(&r["scale_out"]).collect();
    let rounds = items(&r["scale_rounds"]).count();
    let mut lines = vec![
        format!(
            "### 4. Scale-out: sinks in one group on the pre-loaded topic ({} events, 3 \
             partitions)",
            grouped(s.first().map_or(&r["settings"]["events"], |x| &x["events"]))
        ),
        String::new(),
    ];
    if rounds > 1 {
        lines.extend([
            format!(
                "{rounds} rounds, interleaved (each sink count once per round, so that a slow \
                 minute of the machine falls on every count alike). Each row is the count's \
                 median run; the last column has every round's steady rate, in round order."
            ),
            String::new(),
        ]);
    }
    let mut header = "| sinks | total s | events/s | first row s | steady events/s | × one sink \
                      (steady) | inserts | rows/insert | sink CPU s (sum) | endpoint CPU s | \
                      other CPU s | rows / duplicates |"
        .to_owned();
    let mut rule = "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|".to_owned();
    if rounds > 1 {
        header.push_str(" steady events/s, each round |");
        rule.push_str("---|");
    }
    lines.extend([header, rule]);
    let first = s.first().map(|x| &x["steady_events_per_s"]);
    let one = first.filter(|v| truthy(v)).map_or(1.0, num);
    for x in &s {
        let mut row = format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            show(&x["instances"]),
            show(&x["total_s"]),
            fmt(&x["events_per_s"]),
            show(&x["first_row_s"]),
            fmt(&x["steady_events_per_s"]),
            fixed(num(&x["steady_events_per_s"]) / one, 2),
            grouped(&x["inserts"]),
            fmt(&x["mean_rows_per_insert"]),
            show(&x["sink_cpu_s"]),
            show(&x["clickhouse_endpoint_cpu_s"]),
            show(&x["other_processes_cpu_s"]),
            grouped(&x["rows"]),
            show(&x["duplicates"]),
        );
        if rounds > 1 {
            let each: Vec<String> = items(&x["steady_events_per_s_rounds"]).map(fmt).collect();
            row.push_str(&format!(" {} |", each.join(" / ")));
        }
        lines.push(row);
    }
    let endpoint_cost = match s[..] {
        [one, .., most]
            if !one["clickhouse_endpoint_cpu_s"].is_null()
                && !most["clickhouse_endpoint_cpu_s"].is_null() =>
        {
            format!(
                " Fewer, larger INSERTs also cost the endpoint less: {} CPU s with {} INSERTs \
                 against {} with {}.{}",
                show(&one["clickhouse_endpoint_cpu_s"]),
                show(&one["inserts"]),
                show(&most["clickhouse_endpoint_cpu_s"]),
                show(&most["inserts"]),
                per_event_cost(one, most),
            )
        }
        _ => String::new(),
    };
    let ratio = match (s.last(), r.get("one_sink_of_most_steady")) {
        (Some(most), Some(median)) if rounds > 1 => {
            let each: Vec<String> = items(&r["one_sink_of_most_steady_rounds"])
                .map(|v| fixed(num(v), 2))
                .collect();
            format!(
                " One sink's steady rate over {}'s, round by round: {}; the median **{}**.",
                show(&most["instances"]),
                each.join(", "),
                fixed(num(median), 2),
            )
        }
        _ => " Compare the single-sink rows here and in section 1 to see the run-to-run noise \
              on this machine."
            .to_owned(),
    };
    let pooled = match r.get("one_sink_pooled_memory") {
        Some(p) if !p["of_most_steady"].is_null() => {
            let bytes = items(&p["sink_args"]).last().map_or(0.0, |v| {
                v.as_str()
                    .and_then(|b| b.parse::<f64>().ok())
                    .unwrap_or(0.0)
            });
            let list = |key: &str, each: &dyn Fn(&Value) -> String| {
                items(&p[key]).map(each).collect::<Vec<_>>().join(" / ")
            };
            format!(
                " One sink given the memory bound of the {k} together (`--max-batch-bytes {mb} \
                 MB`), once per round: {rates} events/s steady at {rss} MB of peak RSS, **{ratios} \
                 of {k} sinks, median {median}**, {dups} duplicates.",
                k = show(&p["sinks_pooled"]),
                mb = fixed(bytes / 1_048_576.0, 0),
                rates = list("steady_events_per_s_rounds", &fmt),
                rss = list("sink_peak_rss_mb_rounds", &show),
                ratios = list("of_most_steady_rounds", &|v| fixed(num(v), 2)),
                median = fixed(num(&p["of_most_steady"]), 2),
                dups = list("duplicates_rounds", &show),
            )
        }
        _ => String::new(),
    };
    lines.extend([
        String::new(),
        format!(
            "**Reading.** A sink has at most one INSERT in flight per partition (a big flush is split \
             into several, run at once, within its INSERTs per second), and k sinks bring k \
             times the INSERTs per second and k times the memory: their inserts are larger, \
             which the endpoint handles more cheaply. All of them share the one endpoint and the \
             machine's {} cores; the join (first row) stays at about half the session timeout. With 3 \
             partitions a 4th sink would sit idle.{ratio}{pooled}{endpoint_cost}",
            show(&r["machine"]["cores"]),
        ),
        String::new(),
    ]);
    lines
}

/// The machine's CPU per event with one sink and with the most sinks (endpoint, sinks and
/// broker together), and their ratio: on a machine that CPU limits, about the pace one sink
/// keeps next to them.
fn per_event_cost(one: &Value, most: &Value) -> String {
    let (a, b) = (&one["cpu_us_per_event"], &most["cpu_us_per_event"]);
    let total = |costs: &Value| {
        costs
            .as_object()
            .map_or(0.0, |c| c.values().map(num).sum::<f64>())
    };
    let (ta, tb) = (total(a), total(b));
    if ta <= 0.0 || tb <= 0.0 {
        return String::new();
    }
    format!(
        " Per event the machine spent {} µs of CPU with one sink (the endpoint {}, the sink {}) \
         and {} µs with {} (the endpoint {}, the sinks {}), a ratio of {}.",
        fixed(ta, 2),
        show(&a["clickhouse_endpoint"]),
        show(&a["sink"]),
        fixed(tb, 2),
        show(&most["instances"]),
        show(&b["clickhouse_endpoint"]),
        show(&b["sink"]),
        fixed(tb / ta, 2),
    )
}

/// `12.3 s`, or `1,234.5 s = 20.6 min`.
fn minutes(seconds: &Value) -> String {
    let mut text = format!("{} s", grouped(seconds));
    if num(seconds) >= 60.0 {
        text.push_str(&format!(" = {} min", fixed(num(seconds) / 60.0, 1)));
    }
    text
}

/// 5: the reference projects' bulk run, 10 million events produced, then drained by one sink.
fn section_bulk(r: &Value) -> Vec<String> {
    let b = &r["bulk"];
    let (reference, vs, p) = (&b["reference"], &b["vs_reference"], &b["producer"]);
    let events = &b["events"];
    let title = if eq(events, &10_000_000.into()) {
        "10 million events".to_owned()
    } else {
        format!(
            "10 million events, scaled down to {} (BENCH_BULK_EVENTS)",
            grouped(events)
        )
    };
    let mut lines = vec![
        format!("### 5. {title}"),
        String::new(),
        format!(
            "The reference projects' bulk run: {} events in about {} minutes at about {} \
             events/s with {}. Here the producer writes {} events at `--rate max` into a fresh \
             3-partition topic; then one sink with the defaults (and the flags above) drains \
             them until `count()` of its table equals the events. The two run one after the \
             other.",
            grouped(&reference["events"]),
            show(&reference["minutes"]),
            grouped(&reference["events_per_s"]),
            show(&reference["pipeline"]),
            grouped(events),
        ),
        String::new(),
        "| | |".to_owned(),
        "|---|---:|".to_owned(),
        format!(
            "| producer: time, events/s | {} s, {} |",
            show(&b["produce_s"]),
            fmt(&p["rate_per_s"]),
        ),
        format!(
            "| sink: time to the last row queryable (to the first row) | {} ({} s) |",
            minutes(&b["total_s"]),
            show(&b["first_row_s"]),
        ),
        format!(
            "| sink events/s, start to end (steady) | {} ({}) |",
            fmt(&b["events_per_s"]),
            fmt(&b["steady_events_per_s"]),
        ),
        format!(
            "| sink CPU s, µs per event | {}, {} |",
            show(&b["sink_cpu_s"]),
            show(&b["sink_cpu_us_per_event"]),
        ),
        format!("| sink peak RSS | {} MB |", show(&b["sink_peak_rss_mb"])),
        format!(
            "| INSERTs, rows per INSERT | {}, {} |",
            grouped(&b["inserts"]),
            fmt(&b["mean_rows_per_insert"]),
        ),
        format!(
            "| rows in the table / duplicates | {} / {} |",
            grouped(&b["rows"]),
            show(&b["duplicates"]),
        ),
        format!(
            "| produce, then drain | {} |",
            minutes(&b["produce_then_drain_s"])
        ),
        format!(
            "| the reference ({}) at its pace for {} events | ~{} |",
            show(&reference["pipeline"]),
            grouped(events),
            minutes(&vs["reference_s_for_these_events"]),
        ),
        format!(
            "| against the reference: the drain alone / produce, then drain | {}× / {}× as fast |",
            show(&vs["drain_speedup"]),
            show(&vs["produce_then_drain_speedup"]),
        ),
        String::new(),
    ];
    let ok = eq(&b["rows"], events) && !truthy(&b["duplicates"]);
    let scaled = if eq(events, &reference["events"]) {
        String::new()
    } else {
        format!(
            " (~{} at its pace for {})",
            minutes(&vs["reference_s_for_these_events"]),
            grouped(events)
        )
    };
    let mut text = vec![format!(
        "**Reading.** {} ({} rows, {} duplicates). The drain took {} where the reference quotes \
         ~{} min for {}{scaled}. A loose comparison: the reference is a streaming pipeline on \
         other hardware whose producer set the pace (producing and processing overlap); here \
         both steps run one after the other on {} shared cores, against an in-memory broker and \
         the chDB engine, with the full schema's rollups.",
        if ok {
            "Every event arrived exactly once"
        } else {
            "NOT every event arrived exactly once"
        },
        grouped(&b["rows"]),
        show(&b["duplicates"]),
        minutes(&b["total_s"]),
        show(&reference["minutes"]),
        grouped(&reference["events"]),
        show(&r["machine"]["cores"]),
    )];
    if r.get("throughput").is_some() {
        let t = &r["throughput"];
        text.push(format!(
            "Peak RSS {} MB for {} events against {} MB for {} in section 1; CPU per event {} µs \
             against {}.",
            show(&b["sink_peak_rss_mb"]),
            grouped(events),
            show(&t["sink_peak_rss_mb"]),
            grouped(&t["events"]),
            show(&b["sink_cpu_us_per_event"]),
            show(&t["sink_cpu_us_per_event"]),
        ));
    }
    lines.extend([text.join(" "), String::new()]);
    lines
}

/// The latency runs in the order they ran: flush settings as `settings.flush` lists them
/// (`default` is the group whose runs say `sink default`), rates as `settings.rates` lists them;
/// anything not listed after, rates by value.
fn latency_runs(r: &Value) -> Vec<&Value> {
    let flush: Vec<String> = items(&r["settings"]["flush"]).map(show).collect();
    let rates: Vec<String> = items(&r["settings"]["rates"]).map(show).collect();
    let mut groups: Vec<(&String, &Value)> = r["latency"]
        .as_object()
        .map(|o| o.iter().collect())
        .unwrap_or_default();
    groups.sort_by_key(|(key, runs)| {
        let default = runs
            .as_object()
            .and_then(|o| o.values().next())
            .is_some_and(|x| x["flush_setting"] == "sink default");
        flush
            .iter()
            .position(|f| (f == "default" && default) || **key == format!("flush_{f}ms"))
            .unwrap_or(usize::MAX)
    });
    let mut ordered = Vec::new();
    for (_, runs) in groups {
        let mut runs: Vec<(&String, &Value)> = runs
            .as_object()
            .map(|o| o.iter().collect())
            .unwrap_or_default();
        runs.sort_by_key(|(rate, _)| {
            let listed = rates.iter().position(|r| r == *rate);
            (listed.unwrap_or(usize::MAX), rate.parse::<u64>().ok())
        });
        ordered.extend(runs.into_iter().map(|(_, x)| x));
    }
    ordered
}

/// A drain's `cpu_us_per_event` values: sink, endpoint, broker (the order the report names
/// them), then any others.
fn cpu_per_event(t: &Value) -> Vec<&Value> {
    const NAMED: [&str; 3] = ["sink", "clickhouse_endpoint", "broker"];
    let Some(per_event) = t["cpu_us_per_event"].as_object() else {
        return Vec::new();
    };
    let named = NAMED.iter().filter_map(|k| per_event.get(*k));
    let others = per_event
        .iter()
        .filter(|(k, _)| !NAMED.contains(&k.as_str()))
        .map(|(_, v)| v);
    named.chain(others).collect()
}

/// A profile's `[[share, what], ...]` as `(what, share)`.
fn shares(list: &Value) -> Vec<(String, f64)> {
    items(list).map(|e| (show(&e[1]), num(&e[0]))).collect()
}

/// The elements of a JSON array (none for anything else).
fn items(list: &Value) -> impl Iterator<Item = &Value> {
    list.as_array().into_iter().flatten()
}

/// Python's `sep.join(list)`.
fn join(list: &Value, sep: &str) -> String {
    items(list).map(show).collect::<Vec<_>>().join(sep)
}

/// Writes `section` between [`BEGIN`] and [`END`] of the file at `path`: replaces what is there,
/// or adds it after the file's `# ` title (at the top if it has none); a missing or blank file
/// gets the report's title and the section. The rest of the file is left as it is.
pub fn write_section(path: &Path, section: &str) -> io::Result<()> {
    write_between(path, BEGIN, END, section)
}

/// [`write_section`] between other markers (`scripts/soak`'s section of the same file).
pub fn write_between(path: &Path, begin: &str, end: &str, section: &str) -> io::Result<()> {
    let section = format!("{begin}\n{}\n{end}", py::rstrip(section));
    let existing = match fs::read_to_string(path) {
        // Python reads the file with universal newlines.
        Ok(text) => text.replace("\r\n", "\n").replace('\r', "\n"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let updated = match (existing.find(begin), existing.find(end)) {
        (Some(open), Some(close)) if open < close => {
            format!(
                "{}{section}{}",
                &existing[..open],
                &existing[close + end.len()..]
            )
        }
        _ if py::strip(&existing).is_empty() => {
            format!("# Benchmark and fault-injection report\n\n{section}\n")
        }
        _ if existing.starts_with("# ") => {
            let (title, rest) = existing.split_once('\n').unwrap_or((&existing, ""));
            format!("{title}\n\n{section}\n\n{}", py::lstrip(rest))
        }
        _ => format!("{section}\n\n{existing}"),
    };
    if let Some(dir) = std::path::absolute(path)?.parent() {
        fs::create_dir_all(dir)?;
    }
    write_whole(path, &updated)
}

/// Writes `text` to a file beside `path`, then renames it over `path`: an interrupted write
/// leaves the old file, not half a new one.
pub fn write_whole(path: &Path, text: &str) -> io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    fs::write(&partial, text)?;
    fs::rename(&partial, path)
}

/// Python's formatting of the values the report prints.
pub(crate) mod py {
    use serde_json::{Number, Value};

    /// `str(value)`, or an f-string's `{value}`: `None`, `True`, an int as an int, a float as its
    /// `repr` (`3.0`, `126.5`, `1e+16`), a string as it is, a list or dict as Python shows it.
    pub fn show(value: &Value) -> String {
        match value {
            Value::String(s) => s.clone(),
            // A figure not measured (the CPU of servers the bench did not start): a dash, as
            // `fmt` writes it, rather than Python's `None`.
            Value::Null => "–".to_owned(),
            other => repr(other),
        }
    }

    fn repr(value: &Value) -> String {
        match value {
            Value::Null => "None".to_owned(),
            Value::Bool(true) => "True".to_owned(),
            Value::Bool(false) => "False".to_owned(),
            Value::Number(n) => number(n),
            Value::String(s) => {
                let quote = if s.contains('\'') && !s.contains('"') {
                    '"'
                } else {
                    '\''
                };
                let mut out = String::from(quote);
                for c in s.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        c if c == quote => out.extend(['\\', c]),
                        c => out.push(c),
                    }
                }
                out.push(quote);
                out
            }
            Value::Array(a) => format!("[{}]", a.iter().map(repr).collect::<Vec<_>>().join(", ")),
            Value::Object(o) => format!(
                "{{{}}}",
                o.iter()
                    .map(|(k, v)| format!("{}: {}", repr(&Value::String(k.clone())), repr(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn number(n: &Number) -> String {
        match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => float_repr(f),
            _ => n.to_string(),
        }
    }

    /// `repr(x)` of a float: the shortest digits that read back as `x`, in exponent form below
    /// 1e-4 and from 1e16 (Rust's `{:?}` switches at the same points; Python writes the
    /// exponent signed, at least two digits).
    fn float_repr(x: f64) -> String {
        if !x.is_finite() {
            return nonfinite(x);
        }
        let debug = format!("{x:?}");
        match debug.split_once('e') {
            Some((mantissa, exponent)) => {
                let (sign, digits) = exponent
                    .strip_prefix('-')
                    .map_or(("+", exponent), |d| ("-", d));
                format!("{mantissa}e{sign}{digits:0>2}")
            }
            None => debug,
        }
    }

    fn nonfinite(x: f64) -> String {
        if x.is_nan() {
            "nan".to_owned()
        } else if x > 0.0 {
            "inf".to_owned()
        } else {
            "-inf".to_owned()
        }
    }

    /// A number as f64 (`True` is 1); NaN for anything else, so that comparisons with it fail.
    pub fn num(value: &Value) -> f64 {
        match value {
            Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
            Value::Bool(b) => f64::from(u8::from(*b)),
            _ => f64::NAN,
        }
    }

    fn int(value: &Value) -> Option<i128> {
        match value {
            Value::Number(n) => n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from)),
            Value::Bool(b) => Some(i128::from(*b)),
            _ => None,
        }
    }

    /// `a == b`: numbers by value (`10000000 == 10000000.0`), anything else as JSON.
    pub fn eq(a: &Value, b: &Value) -> bool {
        match (int(a), int(b)) {
            (Some(x), Some(y)) => x == y,
            _ if a.is_number() && b.is_number() => num(a) == num(b),
            _ => a == b,
        }
    }

    /// Python's truth of a value: not `None`, `False`, zero, or empty.
    pub fn truthy(value: &Value) -> bool {
        match value {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        }
    }

    /// `f"{x:.Nf}"`.
    pub fn fixed(x: f64, decimals: usize) -> String {
        if x.is_finite() {
            format!("{x:.decimals$}")
        } else {
            nonfinite(x)
        }
    }

    /// `f"{x:g}"`: six significant digits, trailing zeros dropped, exponent form below 1e-4 and
    /// from 1e6.
    pub fn general(x: f64) -> String {
        if !x.is_finite() {
            return nonfinite(x);
        }
        if x == 0.0 {
            return if x.is_sign_negative() { "-0" } else { "0" }.to_owned();
        }
        let scientific = format!("{x:.5e}");
        let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
        let exponent: i32 = exponent.parse().unwrap_or(0);
        if (-4..6).contains(&exponent) {
            let decimals = usize::try_from(5 - exponent).unwrap_or(0);
            trim_zeros(&format!("{x:.decimals$}"))
        } else {
            let sign = if exponent < 0 { '-' } else { '+' };
            format!("{}e{sign}{:02}", trim_zeros(mantissa), exponent.abs())
        }
    }

    fn trim_zeros(digits: &str) -> String {
        if digits.contains('.') {
            digits
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_owned()
        } else {
            digits.to_owned()
        }
    }

    /// `round(value, digits)`, shown: an int stays as it is, a float is rounded to the nearest
    /// decimal (ties to even, as Python's).
    pub fn rounded(value: &Value, digits: usize) -> String {
        match value {
            Value::Number(n) if n.is_f64() => round_float(num(value), digits),
            other => show(other),
        }
    }

    /// `round(x, digits)` of a float, shown: its `repr`.
    pub fn round_float(x: f64, digits: usize) -> String {
        float_repr(fixed(x, digits).parse().unwrap_or(x))
    }

    /// `f"{value:,}"`: thousands separators in an int, or in a float's `repr` (unless in
    /// exponent form).
    pub fn grouped(value: &Value) -> String {
        match value {
            Value::Number(n) if n.is_f64() => {
                let repr = float_repr(num(value));
                if repr.contains(['e', 'n']) {
                    repr
                } else {
                    group(&repr)
                }
            }
            _ => match int(value) {
                Some(i) => group(&i.to_string()),
                None => show(value),
            },
        }
    }

    /// `fmt()` of scripts/bench: `–` for `None`, else `round(value)` (ties to even) with
    /// thousands separators.
    pub fn fmt(value: &Value) -> String {
        if value.is_null() {
            return "–".to_owned();
        }
        if let Some(i) = int(value) {
            return group(&i.to_string());
        }
        let x = num(value).round_ties_even();
        if !x.is_finite() {
            // Python's round() refuses these; show what there is.
            return show(value);
        }
        if x == 0.0 {
            return "0".to_owned();
        }
        group(&format!("{x:.0}"))
    }

    /// `pct()` of scripts/bench: `–` for `None`, else a share as a whole percentage (`28 %`).
    pub fn pct(value: &Value) -> String {
        if value.is_null() {
            "–".to_owned()
        } else {
            format!("{} %", fixed(100.0 * num(value), 0))
        }
    }

    /// Thousands separators in the integer part of a decimal number (`-1234.5` → `-1,234.5`).
    fn group(number: &str) -> String {
        let (sign, unsigned) = number
            .strip_prefix('-')
            .map_or(("", number), |rest| ("-", rest));
        let (whole, fraction) = unsigned
            .find('.')
            .map_or((unsigned, ""), |dot| unsigned.split_at(dot));
        let mut out = String::from(sign);
        for (i, digit) in whole.chars().enumerate() {
            if i > 0 && (whole.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(digit);
        }
        out.push_str(fraction);
        out
    }

    /// What `str.isspace()` takes for whitespace (Unicode's, plus the separators \x1c-\x1f).
    fn space(c: char) -> bool {
        c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
    }

    /// `text.rstrip()`.
    pub fn rstrip(text: &str) -> &str {
        text.trim_end_matches(space)
    }

    /// `text.lstrip()`.
    pub fn lstrip(text: &str) -> &str {
        text.trim_start_matches(space)
    }

    /// `text.strip()`.
    pub fn strip(text: &str) -> &str {
        lstrip(rstrip(text))
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use serde_json::json;

        #[test]
        fn numbers_print_as_python_prints_them() {
            let shown: Vec<String> = [
                json!(3.0),
                json!(126.5),
                json!(3),
                json!(1e16),
                json!(1e-7),
                json!(0.0001),
                json!(null),
                json!(true),
                json!(["a", 1]),
            ]
            .iter()
            .map(show)
            .collect();
            assert_eq!(
                shown,
                [
                    "3.0", "126.5", "3", "1e+16", "1e-07", "0.0001", "–", "True", "['a', 1]"
                ]
            );
        }

        #[test]
        fn fmt_rounds_half_to_even_with_thousands_separators() {
            assert_eq!(fmt(&json!(245700.5199370398)), "245,701");
            assert_eq!(fmt(&json!(2.5)), "2");
            assert_eq!(fmt(&json!(3.5)), "4");
            assert_eq!(fmt(&json!(-0.4)), "0");
            assert_eq!(fmt(&json!(-1234567)), "-1,234,567");
            assert_eq!(fmt(&json!(534754.0)), "534,754");
            assert_eq!(fmt(&json!(null)), "–");
        }

        #[test]
        fn grouped_floats_keep_their_repr() {
            assert_eq!(grouped(&json!(1020.0)), "1,020.0");
            assert_eq!(grouped(&json!(157.999)), "157.999");
            assert_eq!(grouped(&json!(2000000)), "2,000,000");
            assert_eq!(grouped(&json!(1e16)), "1e+16");
        }

        #[test]
        fn general_and_fixed_and_round() {
            assert_eq!(general(64.0), "64");
            assert_eq!(general(0.5), "0.5");
            assert_eq!(general(3_000_000.0 / 1_048_576.0), "2.86102");
            assert_eq!(general(1_048_576.0), "1.04858e+06");
            assert_eq!(general(0.00001), "1e-05");
            assert_eq!(fixed(0.125, 2), "0.12");
            assert_eq!(pct(&json!(1.868)), "187 %");
            assert_eq!(rounded(&json!(205.87), 1), "205.9");
            assert_eq!(rounded(&json!(110.89999), 1), "110.9");
            assert_eq!(rounded(&json!(0.25), 1), "0.2");
            assert_eq!(rounded(&json!(7), 1), "7");
        }

        #[test]
        fn equality_and_truth_follow_python() {
            assert!(eq(&json!(10000000), &json!(10000000.0)));
            assert!(!eq(&json!(10000000), &json!("10000000")));
            assert!(!truthy(&json!(0.0)) && !truthy(&json!([])) && !truthy(&json!(null)));
            assert!(truthy(&json!({"a": 1})) && truthy(&json!(0.1)));
            assert_eq!(rstrip("a \n\x1c\n"), "a");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::charts::{Results, figures};

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn load(path: &str) -> Value {
        let text = fs::read_to_string(root().join(path)).expect("results file readable");
        serde_json::from_str(&text).expect("results file parses")
    }

    /// The charts `bench-charts` draws from `results` (against `before-v2.json`), in its order,
    /// linked as the report in `bench/` links them.
    fn charts_of(results: &Value) -> Vec<Chart> {
        let after: Results = serde_json::from_value(results.clone()).expect("charts read results");
        let before: Results = serde_json::from_value(load("bench/results/before-v2.json"))
            .expect("charts read the before file");
        figures::all(&after, Some(&before))
            .into_iter()
            .map(|f| Chart {
                file: f.file.to_owned(),
                title: f.title,
                path: format!("charts/{}", f.file),
            })
            .collect()
    }

    fn first_difference(expected: &str, got: &str) -> String {
        let (mut expected_lines, mut got_lines) = (expected.lines(), got.lines());
        for n in 1.. {
            match (expected_lines.next(), got_lines.next()) {
                (None, None) => break,
                (e, g) if e == g => {}
                (e, g) => return format!("line {n} differs:\n expected: {e:?}\n      got: {g:?}"),
            }
        }
        "the lines match; the line ends differ".to_owned()
    }

    #[test]
    fn renders_the_committed_report_byte_for_byte() {
        let results = load("bench/results/latest.json");
        let report = fs::read_to_string(root().join("bench/REPORT.md")).expect("report readable");
        let begin = report
            .find(&format!("{BEGIN}\n"))
            .expect("report has BEGIN")
            + BEGIN.len()
            + 1;
        let end = report.find(&format!("\n{END}")).expect("report has END");
        let expected = &report[begin..end];

        let charts = charts_of(&results);
        assert_eq!(charts.len(), 5, "the committed report embeds five charts");
        let rendered = render(&results, &charts, Some("bench/results/before-v2.json"));
        let got = py::rstrip(&rendered);
        assert!(
            got == expected,
            "the rendered section is not the committed one; {}",
            first_difference(expected, got)
        );
    }

    #[test]
    fn a_run_of_some_sections_renders_those() {
        let mut results = load("bench/results/latest.json");
        let object = results.as_object_mut().expect("results are an object");
        object.remove("throughput");
        object.remove("bulk");
        let charts = charts_of(&results);
        let report = render(&results, &charts, None);
        assert!(!report.contains("### 1–2."), "{report}");
        assert!(!report.contains("### 5."), "{report}");
        for heading in ["### The sink alone", "### 3. Latency", "### 4. Scale-out"] {
            assert!(report.contains(heading), "{heading} missing:\n{report}");
        }
        // Charts follow the first section they illustrate: cpu.svg the ceiling's.
        let ceiling = report.find("### The sink alone").expect("ceiling section");
        let latency = report.find("### 3.").expect("latency section");
        let cpu = report.find("](charts/cpu.svg)").expect("cpu chart");
        assert!(ceiling < cpu && cpu < latency, "{report}");
        assert!(
            report.contains("divided by the events drained.\n"),
            "{report}"
        );

        // Only the latency runs (BENCH_SECTIONS=latency): no pre-loaded topic, no bound.
        let only_latency = json!({
            "date": results["date"], "git": results["git"], "machine": results["machine"],
            "settings": results["settings"], "latency": results["latency"],
            "bench_wall_s": 400,
        });
        let report = render(&only_latency, &[], None);
        assert!(report.contains("### 3. Latency") && !report.contains("### 4."));
        assert!(report.ends_with("millisecond precision.\n"), "{report}");

        // Charts no section takes go in a section of their own, in bench-charts' order.
        let extra = Chart {
            file: "other.svg".to_owned(),
            title: "Other".to_owned(),
            path: "charts/other.svg".to_owned(),
        };
        let report = render(&only_latency, &[extra], None);
        assert!(
            report.contains("### Charts\n\n![Other](charts/other.svg)\n\n### Caveats"),
            "{report}"
        );
    }

    #[test]
    fn latency_runs_keep_the_order_they_ran_in() {
        let run = |setting: &str, rate: u64| json!({"flush_setting": setting, "rate": rate});
        let results = json!({
            "settings": {"flush": ["1000", "default"], "rates": [50000, 100]},
            "latency": {
                "flush_5000ms": {"100": run("sink default", 100), "50000": run("sink default", 50000)},
                "flush_1000ms": {"100": run("1000", 100), "50000": run("1000", 50000)},
            },
        });
        let order: Vec<(String, String)> = latency_runs(&results)
            .into_iter()
            .map(|x| (show(&x["flush_setting"]), show(&x["rate"])))
            .collect();
        let expected = [
            ("1000", "50000"),
            ("1000", "100"),
            ("sink default", "50000"),
            ("sink default", "100"),
        ];
        assert_eq!(order, expected.map(|(f, r)| (f.to_owned(), r.to_owned())));
    }

    #[test]
    fn the_sink_defaults_are_the_ones_the_report_names() {
        assert_eq!(sink_default_flush_interval_ms(), 5000);
        assert_eq!(sink_default_max_batch_bytes(), 64 << 20);
    }

    #[test]
    fn write_section_replaces_its_part_or_adds_it() {
        let dir = std::env::temp_dir().join(format!("benchkit-report-{}", std::process::id()));
        let path = dir.join("sub").join("REPORT.md");
        let section = |text: &str| format!("{BEGIN}\n{text}\n{END}");
        let _ = fs::remove_dir_all(&dir);

        // A missing file (and directory) gets the title and the section.
        write_section(&path, "one\n\n").expect("write into a missing file");
        let text = fs::read_to_string(&path).expect("written");
        assert_eq!(
            text,
            format!(
                "# Benchmark and fault-injection report\n\n{}\n",
                section("one")
            )
        );

        // Between the markers: replaced, the rest left as it is.
        let faults = "<!-- faults:begin -->\nfaults\n<!-- faults:end -->\n";
        fs::write(&path, format!("# Title\n\n{}\n\n{faults}", section("old"))).expect("write");
        write_section(&path, "new").expect("replace");
        let text = fs::read_to_string(&path).expect("written");
        assert_eq!(text, format!("# Title\n\n{}\n\n{faults}", section("new")));

        // No markers: after the title, or at the top without one.
        fs::write(&path, format!("# Title\n\n\n{faults}")).expect("write");
        write_section(&path, "added").expect("add after the title");
        let text = fs::read_to_string(&path).expect("written");
        assert_eq!(text, format!("# Title\n\n{}\n\n{faults}", section("added")));
        fs::write(&path, faults).expect("write");
        write_section(&path, "top").expect("add at the top");
        let text = fs::read_to_string(&path).expect("written");
        assert_eq!(text, format!("{}\n\n{faults}", section("top")));

        // A blank file counts as empty.
        fs::write(&path, " \n\n").expect("write");
        write_section(&path, "x").expect("write into a blank file");
        let text = fs::read_to_string(&path).expect("written");
        assert_eq!(
            text,
            format!(
                "# Benchmark and fault-injection report\n\n{}\n",
                section("x")
            )
        );

        fs::remove_dir_all(&dir).expect("temp dir removed");
    }
}
