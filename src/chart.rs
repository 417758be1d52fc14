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

/// Axes over `x` × `y` with their descriptions on `area`, then `draw` on the chart.
/// `false` when the ranges cannot be laid out.
pub fn plot<'a, 'b: 'a>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    (x, y): (Range<f64>, Range<f64>),
    (x_desc, y_desc): (&str, &str),
    draw: impl FnOnce(&mut Chart<'a, 'b>),
) -> bool {
    let Ok(mut chart) = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)
    else {
        return false;
    };
    let _ = chart
        .configure_mesh()
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw();
    draw(&mut chart);
    true
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
