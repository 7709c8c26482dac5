//! The PNG: client latency over time around the cutover, one panel per
//! rate, switchyard's transactions and the recipe's on one time axis (zero
//! is when each started to hold clients: the proxy's gate closing,
//! PgBouncer's PAUSE), each pause shaded behind them. A point is one
//! transaction at its due time, its latency counted from then. Text is drawn with a font compiled into the
//! binary, so no system font library is needed.

use super::stats::{PLOT_AFTER_S, PLOT_BEFORE_S};
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

/// Width of the image and height of one panel, pixels.
const WIDTH: u32 = 1400;
const PANEL_HEIGHT: u32 = 360;

/// The latency axis is logarithmic from here (ms); lower points sit on it.
const Y_FLOOR_MS: f64 = 0.1;

/// The font every label uses.
const FONT: &str = "sans-serif";

const OURS: RGBColor = RGBColor(31, 119, 180);
const RECIPE: RGBColor = RGBColor(214, 39, 40);

/// One rate's panel.
pub(crate) struct Panel {
    pub(crate) title: String,
    /// (seconds from the cutover command, latency ms) per transaction.
    pub(crate) ours: Vec<(f64, f64)>,
    pub(crate) recipe: Vec<(f64, f64)>,
    /// The pause, seconds.
    pub(crate) ours_span: f64,
    pub(crate) recipe_span: f64,
}

/// Draws `panels` into a PNG at `path`, creating its directory.
pub(crate) fn draw(path: &Path, panels: &[Panel]) -> Result<()> {
    register_font()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let rows = u32::try_from(panels.len().max(1)).unwrap_or(1);
    let root = BitMapBackend::new(path, (WIDTH, PANEL_HEIGHT * rows)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("filling the plot: {e}"))?;
    let areas = root.split_evenly((panels.len().max(1), 1));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        draw_panel(area, panel).with_context(|| format!("drawing the panel {}", panel.title))?;
    }
    root.present().map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

fn draw_panel(area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>, p: &Panel) -> Result<()> {
    let top = p.ours.iter().chain(&p.recipe).map(|&(_, y)| y).fold(10.0f64, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-PLOT_BEFORE_S..PLOT_AFTER_S, (Y_FLOOR_MS..top).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    let x_desc = if p.recipe.is_empty() {
        "seconds from the start of the pause (the gate closed)"
    } else {
        "seconds from the start of the pause (switchyard: gate closed; recipe: PAUSE sent)"
    };
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("latency from the schedule, ms")
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (span, color) in [(p.recipe_span, RECIPE), (p.ours_span, OURS)] {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, Y_FLOOR_MS), (span.min(PLOT_AFTER_S), top)],
                color.mix(0.12).filled(),
            )))
            .map_err(|e| anyhow!("{e}"))?;
    }
    let series = [
        ("usual recipe (logical replication + PgBouncer)", &p.recipe, RECIPE),
        ("switchyard CUTOVER", &p.ours, OURS),
    ];
    for (label, points, color) in series {
        // A run of one side only (the demo's) leaves the other empty.
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y.max(Y_FLOOR_MS)), 2, color.mix(0.55).filled())),
            )
            .map_err(|e| anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Registers the compiled-in font once per process.
fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT)
            .map_err(|_| anyhow!("the compiled-in font could not be read"));
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.png");
        let panel = Panel {
            title: "1000 TPS".into(),
            ours: vec![(-1.0, 1.2), (0.0, 20.0), (1.0, 1.1)],
            recipe: vec![(-1.0, 1.3), (0.1, 700.0), (2.0, 1.0)],
            ours_span: 0.05,
            recipe_span: 0.8,
        };
        draw(&path, &[panel]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    }
}
