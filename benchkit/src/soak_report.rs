//! The soak's section of `bench/REPORT.md`, rendered from a `scripts/soak` results file
//! (`bench/results/soak.json`, see [`crate::bench::soak`]), between its own markers.

use serde_json::Value;

use crate::report::py::{fmt, show};
use crate::report::{Chart, provenance};

/// Where the soak's section starts in `bench/REPORT.md`.
pub const BEGIN: &str = "<!-- soak:begin (written by scripts/soak) -->";
/// Where it ends.
pub const END: &str = "<!-- soak:end -->";

/// A figure as the section prints it: whole above 100, one decimal below, `–` when absent.
fn figure(value: &Value) -> String {
    match value.as_f64() {
        None => "–".to_owned(),
        Some(v) if v.abs() >= 100.0 || v.fract() == 0.0 => fmt(value),
        Some(v) => format!("{v:.1}"),
    }
}

fn minutes(seconds: &Value) -> String {
    format!("{:.1} min", seconds.as_f64().unwrap_or(0.0) / 60.0)
}

/// The section, without the markers.
pub fn render(r: &Value, chart: Option<&Chart>) -> String {
    let s = &r["soak"];
    let checks = &s["checks"];
    let producer = &s["producer"];
    let sink_args: Vec<String> = r["settings"]["sink_args"]
        .as_array()
        .map(|a| a.iter().map(show).collect())
        .unwrap_or_default();
    let flags: Vec<String> = s["sink_flags"]
        .as_array()
        .map(|a| a.iter().map(show).collect())
        .unwrap_or_default();
    let mut lines = vec![
        "## Soak (`scripts/soak`)".to_owned(),
        String::new(),
        provenance(r, "scripts/soak", "bench/results/soak.json", ""),
        String::new(),
        format!(
            "The product as `scripts/demo` runs it, for a long time, on `scripts/stack`: the \
             producer streamed {} events/s for {} minutes ({} of the events poison, {} late), one \
             sink (`{}`, plus `{}`) wrote a fresh database with the full schema, and the window \
             publisher (1-minute windows) read its rollups. The processes were sampled every {} \
             s. Operations on the way:",
            fmt(&s["rate"]),
            show(&s["minutes"]),
            show(&s["bad_ratio"]),
            show(&s["late_ratio"]),
            flags.join(" "),
            sink_args.join(" "),
            show(&s["sample_every_s"]),
        ),
        String::new(),
        "| at | operation | took |".to_owned(),
        "|---|---|---|".to_owned(),
    ];
    for op in s["operations"].as_array().into_iter().flatten() {
        lines.push(format!(
            "| {} | {} | {} s |",
            minutes(&op["at_s"]),
            show(&op["what"]),
            show(&op["took_s"])
        ));
    }
    lines.push(String::new());
    let failures: Vec<String> = s["failures"]
        .as_array()
        .map(|f| f.iter().map(show).collect())
        .unwrap_or_default();
    lines.push(if failures.is_empty() {
        "**Verdict: pass.** Every check below held.".to_owned()
    } else {
        format!("**Verdict: FAIL:** {}.", failures.join("; "))
    });
    lines.push(String::new());
    lines.push(format!(
        "- **Exactly once:** the producer delivered {} of {} events sent, {} of them poison (to \
         the dead-letter topic). The table holds {} rows against {} expected (the warm-up event \
         plus every delivered event that is not poison), {} distinct Kafka (partition, offset): \
         {} duplicates, {} missing. The last row was queryable {} s after the producer stopped.",
        fmt(&checks["delivered"]),
        fmt(&producer["sent"]),
        fmt(&checks["poison"]),
        fmt(&checks["rows"]),
        fmt(&checks["expected_rows"]),
        fmt(&checks["distinct_offsets"]),
        fmt(&checks["duplicates"]),
        fmt(&checks["missing"]),
        show(&s["drain_after_producer_s"]),
    ));
    let exits: Vec<String> = checks["sink_exits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "the {} sink {} on {}",
                show(&e["sink"]),
                match e["code"].as_i64() {
                    Some(0) => "exited 0".to_owned(),
                    Some(code) if code < 0 => format!("was ended by signal {}", -code),
                    _ => format!("exited {}", show(&e["code"])),
                },
                show(&e["how"])
            )
        })
        .collect();
    lines.push(format!(
        "- **Exits:** {}; the window publisher exited {} on SIGTERM.",
        exits.join(", "),
        show(&checks["windows_exit"])
    ));
    let outage = &checks["outage"];
    if outage["skipped"] == true {
        lines.push(
            "- **Outage:** skipped: this ClickHouse has no fault rules (a server, not the \
             stack's endpoint)."
                .to_owned(),
        );
    } else if outage["ran"] == true {
        lines.push(format!(
            "- **Outage:** ClickHouse refused every INSERT for {} s (the sink's stall timeout: {} \
             s). The sinks logged {} stall report(s) at ERROR and {} recovery(ies); \
             `clickstream_sink_stalled` was 1 in {} sample(s) and {} at the end; the sink \
             {}counted {} retries by the end (every cause, since its restart).",
            show(&outage["seconds"]),
            show(&outage["stall_timeout_s"]),
            show(&outage["stall_reports"]),
            show(&outage["recoveries"]),
            show(&outage["stalled_samples"]),
            show(&outage["stalled_at_end"]),
            // (Runs before the soak measured it have no such figure.)
            match &outage["retries_during"] {
                Value::Null => String::new(),
                during => format!(
                    "retried an INSERT {} times during the outage and ",
                    show(during)
                ),
            },
            show(&outage["retries_at_end"]),
        ));
    } else if outage["ran"] == false {
        lines.push(
            "- **Outage:** did not run to its end (the soak stopped before ClickHouse took \
             INSERTs again)."
                .to_owned(),
        );
    }
    lines.push(format!(
        "- **Logs:** {} ERROR and {} WARN lines in all.",
        fmt(&checks["error_lines"]),
        fmt(&checks["warning_lines"]),
    ));
    for log in s["logs"].as_array().into_iter().flatten() {
        for message in log["messages"].as_array().into_iter().flatten() {
            lines.push(format!(
                "  - {}: `{}`",
                show(&log["process"]),
                show(message)
            ));
        }
    }
    lines.push(String::new());
    let summary = &s["summary"];
    lines.extend([
        "| sampled | min | max | at the end |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ]);
    for (key, label) in [
        ("sink_rss_mb", "sink RSS, MB"),
        ("second_sink_rss_mb", "second sink RSS, MB"),
        ("windows_rss_mb", "window publisher RSS, MB"),
        ("producer_rss_mb", "producer RSS, MB"),
        ("clickhouse_rss_mb", "ClickHouse endpoint RSS, MB"),
        ("kafka_rss_mb", "broker RSS, MB (in-memory topics)"),
        ("sink_fds", "sink open files"),
        ("sink_threads", "sink threads"),
        ("sink_series", "sink `/metrics` series"),
        ("lag", "consumer lag, events"),
    ] {
        let range = &summary[key];
        if range.is_null() {
            continue;
        }
        lines.push(format!(
            "| {label} | {} | {} | {} |",
            figure(&range["min"]),
            figure(&range["max"]),
            figure(&range["last"])
        ));
    }
    let quarters: Vec<String> = summary["sink_rss_mb_max_by_quarter"]
        .as_array()
        .map(|q| q.iter().map(figure).collect())
        .unwrap_or_default();
    lines.extend([
        String::new(),
        format!(
            "A minimum is often a sample just after a process started (the second sink, the \
             restarted one). The sink's largest RSS in each quarter of the run: {} MB (the sink \
             started again after the kill at {}, so the last quarters are a younger process).",
            quarters.join(" / "),
            s["operations"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|o| o["operation"] == "kill")
                .map_or("–".to_owned(), |o| minutes(&o["at_s"])),
        ),
        String::new(),
    ]);
    if let Some(chart) = chart {
        lines.extend([
            format!("![{}]({})", chart.title, chart.path),
            String::new(),
            "Dashed grey: the operations. RSS from `/proc/PID/status`; lag from the sink's \
             `/metrics`; rows per second from `count()` of the table between samples."
                .to_owned(),
            String::new(),
        ]);
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::charts::{figures, results::SoakFile};

    /// The committed soak section is what its committed results render to (with the chart
    /// `bench-charts` draws from them), so neither is edited by hand.
    #[test]
    fn renders_the_committed_soak_section_byte_for_byte() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("bench/results/soak.json"))
            .expect("bench/results/soak.json readable");
        let results: Value = serde_json::from_str(&text).expect("soak results parse");
        let file: SoakFile = serde_json::from_str(&text).expect("the chart reads them");
        let figure = file.soak.as_ref().and_then(figures::soak).expect("a chart");
        let chart = Chart {
            file: figure.file.to_owned(),
            title: figure.title,
            path: format!("charts/{}", figure.file),
        };
        let report =
            std::fs::read_to_string(root.join("bench/REPORT.md")).expect("report readable");
        let begin = report
            .find(&format!("{BEGIN}\n"))
            .expect("report has the soak's BEGIN")
            + BEGIN.len()
            + 1;
        let end = report
            .find(&format!("\n{END}"))
            .expect("report has the soak's END");
        let rendered = render(&results, Some(&chart));
        assert_eq!(rendered.trim_end(), &report[begin..end]);
        assert!(
            rendered.contains("**Verdict: pass.**"),
            "the committed soak passed"
        );
    }
}
