//! Draws a [`Figure`] as SVG with plotters (its SVG backend only: text is left to the viewer's
//! sans-serif font, so no font files are read).

use std::path::Path;

use std::ops::Range;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::figures::{Axis, Bars, Body, Color as Srgb, Corner, Figure, Panel, Stroke};

/// What plotters reports when drawing or writing the file fails.
pub type DrawError = DrawingAreaErrorKind<std::io::Error>;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

const FONT: &str = "sans-serif";

/// Writes `figure` to `path`.
pub fn render(figure: &Figure, path: &Path) -> Result<(), DrawError> {
    let root = SVGBackend::new(path, figure.size).into_drawing_area();
    root.fill(&WHITE)?;
    let body = root
        .margin(8, 8, 8, 8)
        .titled(&figure.title, (FONT, 22).into_font().style(FontStyle::Bold))?;
    match &figure.body {
        Body::Panels(panels) => {
            for (area, panel) in body.split_evenly((panels.len(), 1)).iter().zip(panels) {
                draw_panel(area, panel)?;
            }
        }
        Body::Bars(bars) => draw_bars(&body, bars)?,
    }
    root.present()
}

fn rgb(color: Srgb) -> RGBColor {
    RGBColor(color.0, color.1, color.2)
}

fn position(corner: Corner) -> SeriesLabelPosition {
    match corner {
        Corner::UpperLeft => SeriesLabelPosition::UpperLeft,
        Corner::UpperRight => SeriesLabelPosition::UpperRight,
        Corner::LowerRight => SeriesLabelPosition::LowerRight,
    }
}

/// A linear axis with exactly the ticks the figure chose (plotters' own `with_key_points` does not
/// keep the f64 label formatter).
struct Ticked {
    range: Range<f64>,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(axis: &Axis) -> Self {
        Ticked {
            range: axis.min..axis.max,
            ticks: axis.ticks.clone(),
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = self.range.end - self.range.start;
        let share = if span > 0.0 {
            (value - self.range.start) / span
        } else {
            0.5
        };
        limit.0 + (f64::from(limit.1 - limit.0) * share).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Grid lines at the ticks only, no finer ones.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

fn draw_panel(area: &Area, panel: &Panel) -> Result<(), DrawError> {
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(10)
        .margin_right(30)
        .x_label_area_size(50)
        .y_label_area_size(80);
    if !panel.caption.is_empty() {
        builder.caption(&panel.caption, (FONT, 16));
    }
    let mut chart = builder.build_cartesian_2d(Ticked::new(&panel.x), Ticked::new(&panel.y))?;
    let (x_format, y_format) = (panel.x.format, panel.y.format);
    chart
        .configure_mesh()
        .x_desc(&panel.x.desc)
        .y_desc(&panel.y.desc)
        .x_label_formatter(&|v| x_format.apply(*v))
        .y_label_formatter(&|v| y_format.apply(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .bold_line_style(BLACK.mix(0.12))
        .axis_style(BLACK.mix(0.6))
        .draw()?;
    for line in &panel.lines {
        let color = rgb(line.color);
        let style = color.stroke_width(2);
        if line.markers {
            chart.draw_series(
                line.points
                    .iter()
                    .map(|&p| Circle::new(p, 4, color.filled())),
            )?;
        }
        let series = match line.stroke {
            Stroke::Solid => {
                chart.draw_series(LineSeries::new(line.points.iter().copied(), style))?
            }
            Stroke::Dashed => chart.draw_series(DashedLineSeries::new(
                line.points.iter().copied(),
                9,
                6,
                style,
            ))?,
        };
        if let Some(label) = &line.label {
            let stroke = line.stroke;
            series.label(label).legend(move |(x, y)| {
                let points = vec![(x, y), (x + 26, y)];
                match stroke {
                    Stroke::Solid => PathElement::new(points, style).into_dyn(),
                    Stroke::Dashed => DashedPathElement::new(points, 6, 4, style).into_dyn(),
                }
            });
        }
    }
    if panel.lines.iter().any(|l| l.label.is_some()) {
        chart
            .configure_series_labels()
            .position(position(panel.legend))
            .margin(12)
            .legend_area_size(34)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .draw()?;
    }
    Ok(())
}

fn draw_bars(area: &Area, bars: &Bars) -> Result<(), DrawError> {
    let groups = bars.groups.len();
    let x = Ticked {
        range: -0.5..groups as f64 - 0.5,
        ticks: (0..groups).map(|g| g as f64).collect(),
    };
    let (y_min, y_max) = (bars.y.min, bars.y.max);
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .margin_top(24)
        .margin_right(30)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x, Ticked::new(&bars.y))?;
    let y_format = bars.y.format;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|v| {
            bars.groups
                .get(v.round().max(0.0) as usize)
                .cloned()
                .unwrap_or_default()
        })
        .y_desc(&bars.y.desc)
        .y_label_formatter(&|v| y_format.apply(*v))
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 15))
        .bold_line_style(BLACK.mix(0.12))
        .axis_style(BLACK.mix(0.6))
        .draw()?;
    let width = 0.7 / bars.series.len().max(1) as f64;
    let value_style =
        TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (s, series) in bars.series.iter().enumerate() {
        let color = rgb(series.color);
        // The bars a group has sit side by side, centred on it (no gap where one is missing).
        let placed: Vec<(f64, f64)> = series
            .values
            .iter()
            .enumerate()
            .filter_map(|(g, v)| {
                let present = bars.series.iter().filter(|x| x.values[g].is_some());
                let before = bars.series[..s].iter().filter(|x| x.values[g].is_some());
                let left = g as f64 - present.count() as f64 * width / 2.0;
                Some((left + before.count() as f64 * width, (*v)?))
            })
            .collect();
        chart
            .draw_series(placed.iter().map(|&(x, v)| {
                Rectangle::new(
                    [(x + width * 0.06, 0.0), (x + width * 0.94, v)],
                    color.filled(),
                )
            }))?
            .label(&series.label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 7), (x + 22, y + 7)], color.filled()));
        chart.draw_series(placed.iter().map(|&(x, v)| {
            Text::new(
                super::series::trim(v, bars.value_decimals),
                (x + width / 2.0, v + (y_max - y_min) * 0.01),
                value_style.clone(),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .margin(12)
        .legend_area_size(34)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}
