//! What each chart shows, as plain data: built from the results, drawn by [`super::draw`].
//!
//! A builder returns `None` when its data is not in the results (a section that did not run, or
//! a results file from before the data was recorded), and the chart is left out.

use super::results::{Drain, LatencyRun, Quantiles, Results, Soak, SoakSample};
use super::series::{columns, rate, si, thousands, ticks, trim, window_s};

/// One SVG file.
#[derive(Debug)]
pub struct Figure {
    pub file: &'static str,
    pub title: String,
    /// Width and height in pixels.
    pub size: (u32, u32),
    pub body: Body,
}

#[derive(Debug)]
pub enum Body {
    /// Line charts stacked top to bottom.
    Panels(Vec<Panel>),
    Bars(Bars),
}

#[derive(Debug)]
pub struct Panel {
    pub caption: String,
    pub x: Axis,
    pub y: Axis,
    pub lines: Vec<Line>,
    pub legend: Corner,
}

#[derive(Debug, Clone)]
pub struct Axis {
    pub desc: String,
    pub min: f64,
    pub max: f64,
    /// Labelled, with a grid line each.
    pub ticks: Vec<f64>,
    pub format: Format,
}

impl Axis {
    /// An axis from `min` to a round value at or above `max` (at least `floor`), ticks included.
    fn covering(desc: impl Into<String>, min: f64, max: f64, floor: f64, format: Format) -> Self {
        let ticks = ticks(min, max.max(floor), 6);
        Axis {
            desc: desc.into(),
            min: ticks.first().copied().unwrap_or(min),
            max: ticks.last().copied().unwrap_or(floor),
            ticks,
            format,
        }
    }
}

/// How tick values are written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    /// 250k, 2M.
    Si,
    /// At most this many decimals.
    Decimals(usize),
    /// The tick is log10 of the value: 10^3 is written 1k.
    Log10Si,
}

impl Format {
    pub fn apply(self, value: f64) -> String {
        match self {
            Format::Si => si(value),
            Format::Decimals(d) => trim(value, d),
            Format::Log10Si => si(10f64.powf(value).round()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Corner {
    UpperLeft,
    UpperRight,
    LowerRight,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stroke {
    Solid,
    Dashed,
}

#[derive(Debug, Clone)]
pub struct Line {
    /// In the legend; `None` for a line that shares the legend entry of the one before it.
    pub label: Option<String>,
    pub points: Vec<(f64, f64)>,
    pub color: Color,
    pub stroke: Stroke,
    pub markers: bool,
}

/// Grouped vertical bars: one group per category, one bar per series in each group.
#[derive(Debug)]
pub struct Bars {
    pub groups: Vec<String>,
    pub series: Vec<BarSeries>,
    pub y: Axis,
    /// Decimals of the value written above each bar.
    pub value_decimals: usize,
}

#[derive(Debug)]
pub struct BarSeries {
    pub label: String,
    pub color: Color,
    /// One per group; `None` leaves a gap.
    pub values: Vec<Option<f64>>,
}

/// sRGB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Color(pub u8, pub u8, pub u8);

// Okabe-Ito: told apart with the common colour-vision deficiencies too.
const BLUE: Color = Color(0, 114, 178);
const ORANGE: Color = Color(230, 159, 0);
const GREEN: Color = Color(0, 158, 115);
const VERMILLION: Color = Color(213, 94, 0);
const PURPLE: Color = Color(204, 121, 167);
const GREY: Color = Color(120, 120, 120);
const PALETTE: [Color; 5] = [BLUE, VERMILLION, GREEN, ORANGE, PURPLE];

const WIDE: (u32, u32) = (960, 540);
const TWO_PANELS: (u32, u32) = (960, 820);
const THREE_PANELS: (u32, u32) = (960, 1100);

/// Every chart the results have data for, in report order.
pub fn all(after: &Results, before: Option<&Results>) -> Vec<Figure> {
    [
        throughput(after, before),
        latency(after),
        rss(after),
        cpu(after, before),
        bulk(after),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn sinks(n: u32) -> String {
    if n == 1 {
        "1 sink".to_owned()
    } else {
        format!("{n} sinks")
    }
}

fn max_of(values: impl IntoIterator<Item = f64>) -> f64 {
    values.into_iter().fold(0.0, f64::max)
}

fn seconds_axis(lines: &[Line], desc: &str) -> Axis {
    let end = max_of(lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)));
    Axis::covering(desc, 0.0, end, 1.0, Format::Decimals(0))
}

fn value_axis(lines: &[Line], desc: impl Into<String>, format: Format) -> Axis {
    let top = max_of(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)));
    Axis::covering(desc, 0.0, top * 1.05, 1.0, format)
}

/// The same runs twice: rows queryable, and the rate derived from them.
fn progress_panels(runs: &[(String, &Drain, Color, Stroke)], legend: Corner) -> Vec<Panel> {
    let line = |label: &str, points, color, stroke| Line {
        label: Some(label.to_owned()),
        points,
        color,
        stroke,
        markers: false,
    };
    let rows: Vec<Line> = runs
        .iter()
        .map(|(label, d, color, stroke)| line(label, d.progress.clone(), *color, *stroke))
        .collect();
    let window = max_of(runs.iter().map(|(_, d, ..)| window_s(&d.progress)));
    // Same colours as above: one legend for both panels.
    let rates: Vec<Line> = runs
        .iter()
        .map(|(_, d, color, stroke)| Line {
            label: None,
            ..line("", rate(&d.progress, window), *color, *stroke)
        })
        .collect();
    let x_desc = "seconds since the sink(s) started";
    vec![
        Panel {
            caption: "Rows queryable (count() of the table)".to_owned(),
            x: seconds_axis(&rows, x_desc),
            y: value_axis(&rows, "rows", Format::Si),
            lines: rows,
            legend,
        },
        Panel {
            caption: format!(
                "Events/s made queryable, over the preceding {} s (colours as above)",
                trim(window, 1)
            ),
            x: seconds_axis(&rates, x_desc),
            y: value_axis(&rates, "events/s", Format::Si),
            lines: rates,
            legend: Corner::UpperRight,
        },
    ]
}

/// Events/s over time, one sink against several (and one sink before).
pub fn throughput(after: &Results, before: Option<&Results>) -> Option<Figure> {
    let mut runs = Vec::new();
    if let Some(t) = after.throughput.as_ref().filter(|d| d.progress.len() > 1) {
        runs.push((sinks(1), t, BLUE, Stroke::Solid));
    }
    for (d, color) in after
        .scale_out
        .iter()
        .filter(|d| d.instances > 1 && d.progress.len() > 1)
        .zip([VERMILLION, GREEN, ORANGE, PURPLE])
    {
        runs.push((
            format!("{} (scale-out)", sinks(d.instances)),
            d,
            color,
            Stroke::Solid,
        ));
    }
    if runs.is_empty() {
        return None;
    }
    let events = runs[0].1.events;
    // Only a run of as many events is comparable.
    let before = before.and_then(|b| Some((b, b.throughput.as_ref()?)));
    if let Some((b, t)) = before.filter(|(_, t)| t.events == events) {
        runs.push((
            format!("1 sink, before (run on {})", b.git.describe()),
            t,
            GREY,
            Stroke::Dashed,
        ));
    }
    // The scale-out runs drain a topic topped up (BENCH_SCALE_EVENTS): each line says how
    // many events it drained when they differ.
    let mixed = runs.iter().any(|(_, d, _, _)| d.events != events);
    if mixed {
        for (label, d, _, _) in &mut runs {
            *label = format!("{label}, {} events", si(d.events as f64));
        }
    }
    Some(Figure {
        file: "throughput.svg",
        title: if mixed {
            "Draining the pre-loaded topic (3 partitions): one sink and more".to_owned()
        } else {
            format!(
                "Draining {} pre-loaded events (3 partitions): one sink and more",
                thousands(events as f64)
            )
        },
        size: TWO_PANELS,
        body: Body::Panels(progress_panels(&runs, Corner::LowerRight)),
    })
}

/// p50 and p99 event-to-queryable latency per producer rate, one colour per flush setting.
pub fn latency(after: &Results) -> Option<Figure> {
    let mut lines = Vec::new();
    let mut rates = Vec::new();
    // The sink's default first, then by interval.
    let mut settings: Vec<Vec<&LatencyRun>> = after
        .latency
        .values()
        .map(|runs| runs.values().filter(|r| r.rate > 0.0).collect())
        .collect();
    settings.retain(|runs: &Vec<_>| !runs.is_empty());
    settings.sort_by_key(|runs| {
        (
            !runs[0].flush_setting.contains("default"),
            runs[0].flush_interval_ms,
        )
    });
    for (mut runs, color) in settings.into_iter().zip(PALETTE) {
        runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let first = runs[0];
        let setting = if first.flush_setting.contains("default") {
            format!("{} ({} ms)", first.flush_setting, first.flush_interval_ms)
        } else {
            first.flush_setting.clone()
        };
        rates.extend(runs.iter().map(|r| r.rate.log10()));
        for (quantile, stroke) in [("p99", Stroke::Solid), ("p50", Stroke::Dashed)] {
            let ms = |q: &Quantiles| if quantile == "p99" { q.p99 } else { q.p50 };
            lines.push(Line {
                label: Some(format!("{quantile}, flush: {setting}")),
                points: runs
                    .iter()
                    .map(|r| (r.rate.log10(), ms(&r.latency_ms) / 1000.0))
                    .collect(),
                color,
                stroke,
                markers: true,
            });
        }
    }
    if lines.is_empty() {
        return None;
    }
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    let (lo, hi) = (rates[0], rates[rates.len() - 1]);
    let pad = ((hi - lo) * 0.06).max(0.1);
    let seconds = after
        .settings
        .seconds_per_rate
        .map(|s| format!(" ({} s per rate)", trim(s, 0)))
        .unwrap_or_default();
    Some(Figure {
        file: "latency.svg",
        title: format!("Event-to-queryable latency by producer rate{seconds}"),
        size: WIDE,
        body: Body::Panels(vec![Panel {
            caption: String::new(),
            x: Axis {
                desc: "producer rate, events/s (log scale)".to_owned(),
                min: lo - pad,
                max: hi + pad,
                ticks: rates,
                format: Format::Log10Si,
            },
            y: value_axis(
                &lines,
                "latency, s (inserted_at − event_time)",
                Format::Decimals(1),
            ),
            lines,
            legend: Corner::UpperRight,
        }]),
    })
}

/// One line per sink of a run: the first carries the legend entry.
fn rss_lines(label: &str, d: &Drain, color: Color, stroke: Stroke) -> Vec<Line> {
    columns(&d.rss_mb_samples)
        .into_iter()
        .enumerate()
        .map(|(i, points)| Line {
            label: (i == 0).then(|| label.to_owned()),
            points,
            color,
            stroke,
            markers: false,
        })
        .collect()
}

fn peak(d: &Drain) -> String {
    d.sink_peak_rss_mb
        .map(|mb| format!(", peak {} MB", trim(mb, 0)))
        .unwrap_or_default()
}

/// Sink RSS over the pre-loaded runs.
pub fn rss(after: &Results) -> Option<Figure> {
    let mut lines = Vec::new();
    if let Some(t) = &after.throughput {
        lines.extend(rss_lines(
            &format!("1 sink{}", peak(t)),
            t,
            BLUE,
            Stroke::Solid,
        ));
    }
    for (d, color) in after
        .scale_out
        .iter()
        .filter(|d| d.instances > 1)
        .zip([VERMILLION, GREEN, ORANGE, PURPLE])
    {
        let label = format!("{}, each (scale-out{})", sinks(d.instances), peak(d));
        lines.extend(rss_lines(&label, d, color, Stroke::Solid));
    }
    if let Some(c) = &after.ceiling {
        let label = format!("1 sink, inserts dropped{}", peak(c));
        lines.extend(rss_lines(&label, c, GREY, Stroke::Dashed));
    }
    if lines.is_empty() {
        return None;
    }
    Some(Figure {
        file: "rss.svg",
        title: "Sink resident memory (RSS) while draining the pre-loaded topic".to_owned(),
        size: WIDE,
        body: Body::Panels(vec![Panel {
            caption: "RSS from /proc about once a second; peak: the kernel's maxrss of the process"
                .to_owned(),
            x: seconds_axis(&lines, "seconds since the sink(s) started"),
            y: value_axis(&lines, "RSS, MB", Format::Decimals(0)),
            lines,
            legend: Corner::LowerRight,
        }]),
    })
}

/// Sink CPU per event, before against after, per kind of run.
pub fn cpu(after: &Results, before: Option<&Results>) -> Option<Figure> {
    let per_event = |d: Option<&Drain>| d.and_then(|d| d.sink_cpu_us_per_event);
    fn scaled(r: &Results) -> Option<&Drain> {
        r.scale_out.iter().max_by_key(|d| d.instances)
    }
    let mut groups = Vec::new();
    let mut values: [Vec<Option<f64>>; 2] = [Vec::new(), Vec::new()];
    let mut add = |group: String, b: Option<f64>, a: Option<f64>| {
        if b.is_some() || a.is_some() {
            groups.push(group);
            values[0].push(b);
            values[1].push(a);
        }
    };
    let before_throughput = before.and_then(|b| b.throughput.as_ref());
    add(
        format!(
            "1 sink, {}",
            events(before_throughput, after.throughput.as_ref())
        ),
        per_event(before_throughput),
        per_event(after.throughput.as_ref()),
    );
    let k = scaled(after).or(before.and_then(scaled));
    if let Some(k) = k.filter(|d| d.instances > 1) {
        fn with(r: &Results, instances: u32) -> Option<&Drain> {
            r.scale_out.iter().find(|d| d.instances == instances)
        }
        let (b, a) = (
            before.and_then(|b| with(b, k.instances)),
            with(after, k.instances),
        );
        add(
            format!("{} (sum), {}", sinks(k.instances), events(b, a)),
            per_event(b),
            per_event(a),
        );
    }
    let (b, a) = (
        before.and_then(|b| b.ceiling.as_ref()),
        after.ceiling.as_ref(),
    );
    add(
        format!("inserts dropped, {}", events(b, a)),
        per_event(b),
        per_event(a),
    );
    let (b, a) = (
        before.and_then(|b| b.bulk.as_ref()).map(|b| &b.drain),
        after.bulk.as_ref().map(|b| &b.drain),
    );
    add(
        format!("bulk, {}", events(b, a)),
        per_event(b),
        per_event(a),
    );
    if groups.is_empty() {
        return None;
    }
    let top = max_of(values.iter().flatten().flatten().copied());
    let longest = groups.iter().map(|g| g.chars().count()).max().unwrap_or(0) as u32;
    let group_px = (9 * longest + 20).max(210);
    let [before_values, after_values] = values;
    let mut series = Vec::new();
    if let Some(b) = before.filter(|_| before_values.iter().any(Option::is_some)) {
        series.push(BarSeries {
            label: format!("before (run on {})", b.git.describe()),
            color: GREY,
            values: before_values,
        });
    }
    series.push(BarSeries {
        label: format!("after (run on {})", after.git.describe()),
        color: BLUE,
        values: after_values,
    });
    Some(Figure {
        file: "cpu.svg",
        title: "Sink CPU per event (user + system), before and after".to_owned(),
        // Room for each group's label under it (about 9 px a character at 15 px).
        size: (WIDE.0.max(120 + group_px * groups.len() as u32), WIDE.1),
        body: Body::Bars(Bars {
            groups,
            series,
            y: Axis::covering(
                "µs of sink CPU per event",
                0.0,
                top * 1.15,
                1.0,
                Format::Decimals(1),
            ),
            value_decimals: 2,
        }),
    })
}

/// How many events a pair of runs drained: "2M events", or "2M before / 200k after".
fn events(before: Option<&Drain>, after: Option<&Drain>) -> String {
    match (before.map(|d| d.events), after.map(|d| d.events)) {
        (Some(b), Some(a)) if b != a => format!("{} before / {} after", si(b as f64), si(a as f64)),
        (_, Some(n)) | (Some(n), None) => format!("{} events", si(n as f64)),
        (None, None) => "no events".to_owned(),
    }
}

/// The bulk run: rows, rate and RSS over time, against the reference's pace.
pub fn bulk(after: &Results) -> Option<Figure> {
    let bulk = after.bulk.as_ref().filter(|b| b.drain.progress.len() > 1)?;
    let d = &bulk.drain;
    let mut panels = progress_panels(
        &[("1 sink, defaults".to_owned(), d, BLUE, Stroke::Solid)],
        Corner::UpperLeft,
    );
    let end = panels[0].x.max;
    if let Some(r) = &bulk.reference {
        let label = format!(
            "reference: {}, {} events in ~{} min (~{}/s)",
            r.pipeline,
            si(r.events as f64),
            trim(r.minutes, 0),
            thousands(r.events_per_s)
        );
        let reference = |points| Line {
            label: Some(label.clone()),
            points,
            color: GREY,
            stroke: Stroke::Dashed,
            markers: false,
        };
        panels[0]
            .lines
            .push(reference(vec![(0.0, 0.0), (end, r.events_per_s * end)]));
        panels[1].lines.push(reference(vec![
            (0.0, r.events_per_s),
            (end, r.events_per_s),
        ]));
        for panel in &mut panels {
            panel.y = value_axis(&panel.lines, panel.y.desc.clone(), panel.y.format);
        }
    }
    let rss = rss_lines(
        &format!("sink RSS{}", peak(d)),
        d,
        VERMILLION,
        Stroke::Solid,
    );
    if !rss.is_empty() {
        panels.push(Panel {
            caption: "Sink RSS from /proc, about once a second".to_owned(),
            x: panels[0].x.clone(),
            y: value_axis(&rss, "RSS, MB", Format::Decimals(0)),
            lines: rss,
            legend: Corner::LowerRight,
        });
    }
    let size = if panels.len() == 3 {
        THREE_PANELS
    } else {
        TWO_PANELS
    };
    Some(Figure {
        file: "bulk.svg",
        title: format!(
            "{} events through one sink (3 partitions, defaults)",
            thousands(d.events as f64)
        ),
        size,
        body: Body::Panels(panels),
    })
}

/// The soak: memory of the long-running processes, the sink's lag and the rate it made rows
/// queryable, over the run, with the operations marked.
pub fn soak(soak: &Soak) -> Option<Figure> {
    if soak.samples.len() < 2 {
        return None;
    }
    let minutes = |t: f64| t / 60.0;
    let series = |f: fn(&SoakSample) -> Option<f64>| -> Vec<(f64, f64)> {
        soak.samples
            .iter()
            .filter_map(|s| f(s).map(|v| (minutes(s.t_s), v)))
            .collect()
    };
    let line = |label: &str, points: Vec<(f64, f64)>, color| Line {
        label: Some(label.to_owned()),
        points,
        color,
        stroke: Stroke::Solid,
        markers: false,
    };
    let memory: Vec<Line> = [
        ("sink", series(|s| s.sink_rss_mb), BLUE),
        ("second sink", series(|s| s.second_sink_rss_mb), VERMILLION),
        ("window publisher", series(|s| s.windows_rss_mb), GREEN),
    ]
    .into_iter()
    .filter(|(_, points, _)| !points.is_empty())
    .map(|(label, points, color)| line(label, points, color))
    .collect();
    let lag = vec![line("consumer lag (sink)", series(|s| s.lag), BLUE)];
    let rows = series(|s| s.rows);
    let per_s: Vec<(f64, f64)> = rows
        .windows(2)
        .filter(|w| w[1].0 > w[0].0)
        .map(|w| {
            (
                w[1].0,
                (w[1].1 - w[0].1).max(0.0) / ((w[1].0 - w[0].0) * 60.0),
            )
        })
        .collect();
    let queryable = vec![line("rows made queryable per second", per_s, BLUE)];
    let end = minutes(soak.samples.iter().map(|s| s.t_s).fold(0.0, f64::max));
    let x = Axis::covering(
        "minutes since the producer started",
        0.0,
        end,
        1.0,
        Format::Decimals(0),
    );
    let names: Vec<&str> = soak
        .operations
        .iter()
        .map(|o| o.operation.as_str())
        .collect();
    let marked = |mut lines: Vec<Line>, desc: &str, format: Format, caption: String, legend| {
        let y = value_axis(&lines, desc, format);
        for (i, op) in soak.operations.iter().enumerate() {
            lines.push(Line {
                label: (i == 0).then(|| format!("operations: {}", names.join(", "))),
                points: vec![(minutes(op.at_s), y.min), (minutes(op.at_s), y.max)],
                color: GREY,
                stroke: Stroke::Dashed,
                markers: false,
            });
        }
        Panel {
            caption,
            x: x.clone(),
            y,
            lines,
            legend,
        }
    };
    let panels = vec![
        marked(
            memory,
            "RSS, MB",
            Format::Decimals(0),
            "Resident memory (RSS) from /proc".to_owned(),
            Corner::UpperLeft,
        ),
        marked(
            lag,
            "events",
            Format::Si,
            "The sink's consumer lag (its /metrics, summed over partitions)".to_owned(),
            Corner::UpperRight,
        ),
        marked(
            queryable,
            "events/s",
            Format::Si,
            "Rows made queryable per second, between samples".to_owned(),
            Corner::UpperRight,
        ),
    ];
    Some(Figure {
        file: "soak.svg",
        title: format!(
            "Soak: {} events/s for {} minutes, with operations",
            thousands(soak.rate),
            trim(soak.minutes, 1)
        ),
        size: THREE_PANELS,
        body: Body::Panels(panels),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(json: &str) -> Results {
        serde_json::from_str(json).expect("test results parse")
    }

    const DRAIN: &str = r#"{"instances": 1, "events": 1000, "sink_cpu_us_per_event": 4.4,
        "sink_peak_rss_mb": 400, "progress": [[0, 0], [1, 500], [2, 1000]],
        "rss_mb_samples": [[0, 10], [1, 300], [2, 400]]}"#;

    #[test]
    fn the_soak_chart_marks_each_operation_in_every_panel_and_derives_the_rate() {
        let soak: crate::charts::results::SoakFile = serde_json::from_str(
            r#"{"soak": {"rate": 100, "minutes": 1,
                "samples": [{"t_s": 0, "sink_rss_mb": 10, "lag": 5, "rows": 0},
                            {"t_s": 30, "sink_rss_mb": 12, "second_sink_rss_mb": 9, "rows": 3000},
                            {"t_s": 60, "sink_rss_mb": 11, "lag": 0, "rows": 6000}],
                "operations": [{"at_s": 12, "operation": "join"}, {"at_s": 39, "operation": "kill"}]}}"#,
        )
        .expect("soak results parse");
        let soak = soak.soak.expect("a soak");
        let Some(Figure {
            body: Body::Panels(panels),
            file,
            ..
        }) = super::soak(&soak)
        else {
            panic!("no soak chart");
        };
        assert_eq!(file, "soak.svg");
        assert_eq!(panels.len(), 3);
        for panel in &panels {
            let markers: Vec<&Line> = panel.lines.iter().filter(|l| l.color == GREY).collect();
            assert_eq!(markers.len(), 2, "{}", panel.caption);
            assert_eq!(markers[1].points[0].0, 39.0 / 60.0);
        }
        let labels: Vec<_> = panels[0]
            .lines
            .iter()
            .filter_map(|l| l.label.clone())
            .collect();
        assert_eq!(
            labels,
            ["sink", "second sink", "operations: join, kill"],
            "the publisher has no samples"
        );
        assert_eq!(panels[2].lines[0].points, [(0.5, 100.0), (1.0, 100.0)]);
        let one = crate::charts::results::Soak {
            samples: vec![],
            operations: vec![],
            rate: 1.0,
            minutes: 1.0,
        };
        assert!(super::soak(&one).is_none());
    }

    #[test]
    fn an_empty_results_file_has_no_charts() {
        assert!(all(&results("{}"), None).is_empty());
    }

    #[test]
    fn a_file_without_rss_samples_has_no_rss_chart() {
        let old = results(
            r#"{"throughput": {"events": 10, "sink_cpu_us_per_event": 3.2,
                "progress": [[0, 0], [3, 10]]}}"#,
        );
        let files: Vec<_> = all(&old, None).iter().map(|f| f.file).collect();
        assert_eq!(files, ["throughput.svg", "cpu.svg"]);
    }

    #[test]
    fn before_and_after_bars_line_up_by_group() {
        let after = results(&format!(
            r#"{{"git": {{"commit": "abcdef0123"}},
            "throughput": {DRAIN}, "ceiling": {DRAIN}}}"#
        ));
        let before = results(&format!(
            r#"{{"git": {{"commit": "5916ca2203"}}, "throughput": {}}}"#,
            DRAIN.replace("4.4", "3.2")
        ));
        let Some(Figure {
            body: Body::Bars(bars),
            ..
        }) = cpu(&after, Some(&before))
        else {
            panic!("no bar chart");
        };
        assert_eq!(
            bars.groups,
            ["1 sink, 1k events", "inserts dropped, 1k events"]
        );
        assert_eq!(bars.series[0].label, "before (run on 5916ca2)");
        assert_eq!(bars.series[1].label, "after (run on abcdef0)");
        assert_eq!(bars.series[0].values, [Some(3.2), None]);
        assert_eq!(bars.series[1].values, [Some(4.4), Some(4.4)]);
    }

    #[test]
    fn latency_lines_are_sorted_by_rate_on_a_log_axis() {
        let run = |rate: u32| {
            format!(
                r#""{rate}": {{"rate": {rate}, "flush_setting": "sink default", "flush_interval_ms": 5000,
                "latency_ms": {{"p50": 1000, "p99": 2000}}}}"#
            )
        };
        let r = results(&format!(
            r#"{{"latency": {{"flush_5000ms": {{{}, {}}}}}}}"#,
            run(50_000),
            run(100)
        ));
        let Some(Figure {
            body: Body::Panels(panels),
            ..
        }) = latency(&r)
        else {
            panic!("no latency chart");
        };
        let p99 = &panels[0].lines[0];
        assert_eq!(p99.points, [(2.0, 2.0), (50_000f64.log10(), 2.0)]);
        assert_eq!(Format::Log10Si.apply(50_000f64.log10()), "50k");
    }

    #[test]
    fn the_bulk_chart_draws_the_reference_pace() {
        let r = results(&format!(
            r#"{{"bulk": {{"reference": {{"events": 10000000, "events_per_s": 10000, "minutes": 17,
                "pipeline": "Kafka + Spark"}}, {}}}"#,
            &DRAIN[1..]
        ));
        let Some(Figure {
            body: Body::Panels(panels),
            ..
        }) = bulk(&r)
        else {
            panic!("no bulk chart");
        };
        assert_eq!(panels.len(), 3);
        let reference = &panels[1].lines[1];
        assert_eq!(reference.stroke, Stroke::Dashed);
        assert!(reference.points.iter().all(|p| p.1 == 10_000.0));
    }
}
