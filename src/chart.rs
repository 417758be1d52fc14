//! What weir's self-contained HTML pages share: an SVG document, one chart frame (axes,
//! labels, sizes) drawn the same way in the capacity report and the load test page, and
//! HTML escaping.
//!
//! Imports nothing from weir.

use std::ops::Range;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// A chart with f64 axes on an SVG backend.
pub type Chart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// An SVG document of `size` on a white background. `draw` gets the whole area; when it
/// says it could draw nothing, the result is empty (no `<svg>` at all).
pub fn svg(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> bool,
) -> String {
    let mut out = String::new();
    let drawn = {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        let _ = root.fill(&WHITE);
        let drawn = draw(&root);
        let _ = root.present();
        drawn
    };
    if drawn { out } else { String::new() }
}

/// The Okabe–Ito palette: told apart by readers with any common colour-vision deficiency,
/// and in grey when printed. In the order series take them.
pub const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(230, 159, 0),   // orange
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(0, 0, 0),       // black
];

/// The `i`th series' colour.
pub fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Axes over `x` × `y` with their descriptions on `area`, then `draw` on the chart.
/// `false` when the ranges cannot be laid out.
pub fn plot<'a, 'b: 'a>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    ranges: (Range<f64>, Range<f64>),
    descriptions: (&str, &str),
    draw: impl FnOnce(&mut Chart<'a, 'b>),
) -> bool {
    plot_labelled(area, ranges, descriptions, None, draw)
}

/// As [`plot`], with the x axis' tick labels written by `x_labels` (e.g. percentiles on a
/// log axis).
pub fn plot_labelled<'a, 'b: 'a>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    (x, y): (Range<f64>, Range<f64>),
    (x_desc, y_desc): (&str, &str),
    x_labels: Option<&dyn Fn(&f64) -> String>,
    draw: impl FnOnce(&mut Chart<'a, 'b>),
) -> bool {
    let Ok(mut chart) = ChartBuilder::on(area)
        .margin(10)
        .margin_right(20)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
    else {
        return false;
    };
    let mut mesh = chart.configure_mesh();
    mesh.label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .light_line_style(RGBColor(235, 235, 235))
        .x_desc(x_desc)
        .y_desc(y_desc);
    if let Some(format) = x_labels {
        mesh.x_label_formatter(format);
    }
    let _ = mesh.draw();
    draw(&mut chart);
    true
}

/// The legend of what `draw` labelled, in the upper left corner over a white box.
pub fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) {
    let _ = chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw();
}

/// The text of each `<text>` element of an SVG, in order: a page's charts read back (the
/// tests check each chart's legend entries and axis labels with it).
pub fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            t.split_once('>')
                .and_then(|(_, rest)| rest.split_once("</text>"))
        })
        .map(|(text, _)| text.trim().to_owned())
        .collect()
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
