//! Figures of the fits, each written as PNG and SVG.
//!
//! PNG text is rasterised with DejaVu Sans embedded in the binary (plotters' `ab_glyph`
//! backend), so plotting works on machines without fontconfig or system fonts.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::analysis::ArchAnalysis;
use crate::chinchilla::ChinchillaParams;
use crate::data::RunResult;
use crate::isoflop::IsoFlopFit;

const SIZE: (u32, u32) = (1000, 680);
const FONT: &str = "sans-serif";
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// One figure on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotFiles {
    pub title: String,
    pub png: PathBuf,
    pub svg: PathBuf,
}

/// Writes the three figures of one architecture into `dir`, file names prefixed by its slug.
/// Figures with nothing to show (no isoFLOP budget, no fitted allocation) are left out.
pub fn write_plots(dir: &Path, analysis: &ArchAnalysis) -> Result<Vec<PlotFiles>> {
    let slug = analysis.slug();
    let law = analysis.chinchilla.as_ref().ok().map(|f| &f.params);
    let (lo, hi) = analysis.flops_range();
    let hi = analysis.report_flops.iter().copied().fold(hi, f64::max);
    let mut files = vec![plot_loss_vs_compute(
        dir,
        &format!("{slug}_loss_vs_compute"),
        analysis.title(),
        &analysis.runs,
        law,
    )?];
    if !analysis.isoflop.budgets.is_empty() {
        files.push(plot_isoflop_curves(
            dir,
            &format!("{slug}_isoflop"),
            analysis.title(),
            &analysis.isoflop,
        )?);
    }
    if law.is_some() || analysis.isoflop.minima().next().is_some() {
        let name = format!("{slug}_optimal_allocation");
        files.push(plot_optimal_allocation(
            dir,
            &name,
            analysis.title(),
            law,
            &analysis.isoflop,
            (lo, hi),
        )?);
    }
    Ok(files)
}

/// Loss against compute, one line per model size, with the approach-3 compute-optimal
/// frontier `L(N_opt(C), D_opt(C))` when a law is given. Writes `dir/name.{png,svg}`.
pub fn plot_loss_vs_compute(
    dir: &Path,
    name: &str,
    arch: &str,
    runs: &[RunResult],
    law: Option<&ChinchillaParams>,
) -> Result<PlotFiles> {
    let title = format!("Loss vs compute: {arch}");
    save(
        &LossVsCompute {
            title: title.clone(),
            runs,
            law,
        },
        dir,
        name,
        title,
    )
}

/// Loss against model size per compute budget, with fitted parabolas and minima.
pub fn plot_isoflop_curves(
    dir: &Path,
    name: &str,
    arch: &str,
    fit: &IsoFlopFit,
) -> Result<PlotFiles> {
    let title = format!("IsoFLOP profiles: {arch}");
    save(
        &IsoFlopCurves {
            title: title.clone(),
            fit,
        },
        dir,
        name,
        title,
    )
}

/// Compute-optimal N and D against compute (log-log): approach-3 law (solid), approach-2
/// power laws (dashed) and the isoFLOP minima (markers), over `flops_range`.
pub fn plot_optimal_allocation(
    dir: &Path,
    name: &str,
    arch: &str,
    law: Option<&ChinchillaParams>,
    isoflop: &IsoFlopFit,
    flops_range: (f64, f64),
) -> Result<PlotFiles> {
    let title = format!("Compute-optimal allocation: {arch}");
    save(
        &OptimalAllocation {
            title: title.clone(),
            law,
            isoflop,
            flops_range,
        },
        dir,
        name,
        title,
    )
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A figure that can be drawn on any plotters backend, so PNG and SVG share one code path.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

fn save(figure: &impl Figure, dir: &Path, name: &str, title: String) -> Result<PlotFiles> {
    static FONT_ONCE: Once = Once::new();
    FONT_ONCE.call_once(|| {
        if plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_err() {
            panic!("embedded DejaVu Sans is not a valid font");
        }
    });
    let png = dir.join(format!("{name}.png"));
    let svg = dir.join(format!("{name}.svg"));
    render(BitMapBackend::new(&png, SIZE).into_drawing_area(), figure)
        .with_context(|| format!("drawing {}", png.display()))?;
    render(SVGBackend::new(&svg, SIZE).into_drawing_area(), figure)
        .with_context(|| format!("drawing {}", svg.display()))?;
    Ok(PlotFiles { title, png, svg })
}

fn render<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, figure: &impl Figure) -> Result<()> {
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    figure.draw(&root).map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))
}

/// Compact scientific notation with up to three significant digits: `1e18`, `1.25e7`.
fn sci(v: &f64) -> String {
    let text = format!("{v:.2e}");
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    format!(
        "{}e{exponent}",
        mantissa.trim_end_matches('0').trim_end_matches('.')
    )
}

/// Colour `i` of `count` ordered series (sizes, budgets): viridis without its pale end,
/// so neighbouring series read as neighbours even when not all are in the legend.
fn color(i: usize, count: usize) -> RGBAColor {
    let t = if count > 1 {
        0.85 * i as f64 / (count - 1) as f64
    } else {
        0.0
    };
    ViridisRGB::get_color(t).to_rgba()
}

/// Whether series `i` of `count` gets a legend entry: about ten, evenly spread, always the ends.
fn in_legend(i: usize, count: usize) -> bool {
    let every = count.div_ceil(10).max(1);
    i.is_multiple_of(every) || i + 1 == count
}

/// `count` points evenly spaced in log between `lo` and `hi`.
fn log_space(lo: f64, hi: f64, count: usize) -> impl Iterator<Item = f64> {
    let (a, b) = (lo.ln(), hi.ln());
    (0..count).map(move |i| (a + (b - a) * i as f64 / (count - 1) as f64).exp())
}

/// Log-axis bounds around `values`, widened by a factor of 1.5 on each side.
fn log_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        (1.0, 10.0)
    } else {
        (lo / 1.5, hi * 1.5)
    }
}

/// Linear-axis bounds around `values` with 5% padding.
fn linear_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (lo - pad, hi + pad)
}

type Chart<'a, DB, Y> =
    ChartContext<'a, DB, Cartesian2d<LogCoord<f64>, <Y as AsRangedCoord>::CoordDescType>>;

/// A titled chart with a logarithmic x axis over `x` and the y axis `y`, grid and axis
/// labels drawn. `y_format` formats y ticks (log axes need it; linear ones read fine as is).
fn chart<'a, DB, Y>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    x: (f64, f64),
    y: Y,
    (x_desc, y_desc): (&str, &str),
    y_format: Option<fn(&f64) -> String>,
) -> std::result::Result<Chart<'a, DB, Y>, DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend,
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((x.0..x.1).log_scale(), y)?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&sci)
        .label_style((FONT, 14));
    if let Some(format) = &y_format {
        mesh.y_label_formatter(format);
    }
    mesh.draw()?;
    Ok(chart)
}

/// Legend, top right, shared by every figure but [`plot_lines`]'.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> DrawResult<DB> {
    draw_legend_at(chart, SeriesLabelPosition::UpperRight)
}

fn draw_legend_at<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()
}

fn legend_line(color: RGBAColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
}

/// One named line of [`plot_lines`]: points `(x, y)`, drawn in x order.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Lines over a logarithmic x axis and the linear y range `y`, each point marked: any
/// "metric against size" figure (MQAR accuracy against state size). Writes `dir/name.{png,svg}`.
pub fn plot_lines(dir: &Path, name: &str, title: String, axes: (&str, &str), y: (f64, f64), lines: &[Line]) -> Result<PlotFiles> {
    let figure = Lines { title: title.clone(), axes: (axes.0.to_string(), axes.1.to_string()), y, lines };
    save(&figure, dir, name, title)
}

struct Lines<'a> {
    title: String,
    axes: (String, String),
    y: (f64, f64),
    lines: &'a [Line],
}

impl Figure for Lines<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let x = log_bounds(self.lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)));
        let axes = (self.axes.0.as_str(), self.axes.1.as_str());
        let mut chart = chart(root, &self.title, x, self.y.0..self.y.1, axes, None)?;
        for (i, line) in self.lines.iter().enumerate() {
            let mut points = line.points.clone();
            points.sort_by(|p, q| p.0.total_cmp(&q.0));
            // Categorical series (mixers): spread over the whole palette, every one labelled.
            let c = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
                .label(line.label.clone())
                .legend(legend_line(c));
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
        }
        // Bottom right: a metric that grows with size (accuracy against state) leaves it empty,
        // where the top right would hide the largest models' points.
        draw_legend_at(&mut chart, SeriesLabelPosition::LowerRight)
    }
}

struct LossVsCompute<'a> {
    title: String,
    runs: &'a [RunResult],
    law: Option<&'a ChinchillaParams>,
}

impl Figure for LossVsCompute<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (c_lo, c_hi) = log_bounds(self.runs.iter().map(|r| r.flops));
        let frontier: Vec<(f64, f64)> = match self.law {
            Some(law) => log_space(c_lo, c_hi, 100)
                .map(|c| (c, law.optimal_loss(c)))
                .collect(),
            None => Vec::new(),
        };
        let (y_lo, y_hi) = linear_bounds(
            self.runs
                .iter()
                .map(|r| r.loss)
                .chain(frontier.iter().map(|p| p.1)),
        );
        let axes = ("compute C (FLOPs)", "validation loss");
        let mut chart = chart(root, &self.title, (c_lo, c_hi), y_lo..y_hi, axes, None)?;

        let mut sizes: Vec<f64> = self.runs.iter().map(|r| r.n_params).collect();
        sizes.sort_by(f64::total_cmp);
        sizes.dedup();
        for (i, &n) in sizes.iter().enumerate() {
            let mut points: Vec<(f64, f64)> = self
                .runs
                .iter()
                .filter(|r| r.n_params == n)
                .map(|r| (r.flops, r.loss))
                .collect();
            points.sort_by(|p, q| p.0.total_cmp(&q.0));
            let c = color(i, sizes.len());
            let line = chart.draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?;
            if in_legend(i, sizes.len()) {
                line.label(format!("N = {}", sci(&n)))
                    .legend(legend_line(c));
            }
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
        }
        if !frontier.is_empty() {
            let black = BLACK.to_rgba();
            chart
                .draw_series(LineSeries::new(frontier, black.stroke_width(3)))?
                .label("compute-optimal frontier (approach 3)")
                .legend(legend_line(black));
        }
        draw_legend(&mut chart)
    }
}

struct IsoFlopCurves<'a> {
    title: String,
    fit: &'a IsoFlopFit,
}

impl Figure for IsoFlopCurves<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let budgets = &self.fit.budgets;
        let all_runs = || budgets.iter().flat_map(|b| b.runs.iter());
        let (n_lo, n_hi) = log_bounds(all_runs().map(|r| r.n_params));
        // Minima far outside the sampled sizes would squash the plot; they stay in the report.
        let shown_minima: Vec<(usize, f64, f64)> = budgets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.minimum.as_ref().ok().map(|m| (i, m.n_opt, m.loss)))
            .filter(|&(_, n, _)| n > n_lo && n < n_hi)
            .collect();
        let curves: Vec<(usize, Vec<(f64, f64)>)> = budgets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let p = b.parabola?;
                let (lo, hi) = log_bounds(b.runs.iter().map(|r| r.n_params));
                Some((
                    i,
                    log_space(lo.max(n_lo), hi.min(n_hi), 60)
                        .map(|n| (n, p.eval(n.ln())))
                        .collect(),
                ))
            })
            .collect();
        let (y_lo, y_hi) = linear_bounds(
            all_runs()
                .map(|r| r.loss)
                .chain(shown_minima.iter().map(|m| m.2)),
        );
        let axes = ("parameters N (as the sweep counts them)", "validation loss");
        let mut chart = chart(root, &self.title, (n_lo, n_hi), y_lo..y_hi, axes, None)?;

        let count = budgets.len();
        for (i, budget) in budgets.iter().enumerate() {
            let c = color(i, count);
            let points = chart.draw_series(
                budget
                    .runs
                    .iter()
                    .map(|r| Circle::new((r.n_params, r.loss), 4, c.filled())),
            )?;
            if in_legend(i, count) {
                points
                    .label(format!("C = {} FLOPs", sci(&budget.flops)))
                    .legend(move |(x, y)| Circle::new((x + 10, y), 4, c.filled()));
            }
        }
        for (i, curve) in curves {
            // Keep the curve inside the plot: a parabola can leave the loss range at its ends.
            let inside = curve.into_iter().filter(|p| p.1 >= y_lo && p.1 <= y_hi);
            chart.draw_series(LineSeries::new(inside, color(i, count).stroke_width(2)))?;
        }
        let black = BLACK.to_rgba();
        chart
            .draw_series(
                shown_minima
                    .iter()
                    .map(|&(i, n, l)| Cross::new((n, l), 8, color(i, count).stroke_width(3))),
            )?
            .label("fitted minimum")
            .legend(move |(x, y)| Cross::new((x + 10, y), 6, black.stroke_width(2)));
        draw_legend(&mut chart)
    }
}

struct OptimalAllocation<'a> {
    title: String,
    law: Option<&'a ChinchillaParams>,
    isoflop: &'a IsoFlopFit,
    flops_range: (f64, f64),
}

impl Figure for OptimalAllocation<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (c_lo, c_hi) = self.flops_range;
        let grid: Vec<f64> = log_space(c_lo, c_hi, 80).collect();
        let curve = |f: &dyn Fn(f64) -> f64| -> Vec<(f64, f64)> {
            grid.iter().map(|&c| (c, f(c))).collect()
        };
        let (law_n, law_d) = match self.law {
            Some(p) => (
                curve(&|c| p.optimal_allocation(c).0),
                curve(&|c| p.optimal_allocation(c).1),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let (iso_n, iso_d) = match (self.isoflop.n_law, self.isoflop.d_law) {
            (Some(n), Some(d)) => (curve(&|c| n.eval(c)), curve(&|c| d.eval(c))),
            _ => (Vec::new(), Vec::new()),
        };
        let minima: Vec<(f64, f64, f64)> = self
            .isoflop
            .minima()
            .map(|(c, m)| (c, m.n_opt, m.d_opt))
            .collect();

        let ys = [&law_n, &law_d, &iso_n, &iso_d]
            .into_iter()
            .flat_map(|s| s.iter().map(|p| p.1));
        let (y_lo, y_hi) = log_bounds(ys.chain(minima.iter().flat_map(|m| [m.1, m.2])));
        let (x_lo, x_hi) = log_bounds(grid.iter().copied().chain(minima.iter().map(|m| m.0)));
        let axes = ("compute C (FLOPs)", "parameters N / tokens D");
        let y = (y_lo..y_hi).log_scale();
        let mut chart = chart(root, &self.title, (x_lo, x_hi), y, axes, Some(sci))?;

        let (blue, red) = (BLUE.to_rgba(), RED.to_rgba());
        for (series, c, label) in [
            (law_n, blue, "N_opt, approach 3"),
            (law_d, red, "D_opt, approach 3"),
        ] {
            if !series.is_empty() {
                chart
                    .draw_series(LineSeries::new(series, c.stroke_width(2)))?
                    .label(label)
                    .legend(legend_line(c));
            }
        }
        for (series, c, label) in [
            (iso_n, blue, "N*, approach 2"),
            (iso_d, red, "D*, approach 2"),
        ] {
            if !series.is_empty() {
                chart
                    .draw_series(DashedLineSeries::new(
                        series,
                        8,
                        6,
                        c.mix(0.6).stroke_width(2),
                    ))?
                    .label(label)
                    .legend(legend_line(c.mix(0.6)));
            }
        }
        if !minima.is_empty() {
            chart
                .draw_series(
                    minima
                        .iter()
                        .map(|m| Circle::new((m.0, m.1), 5, blue.filled())),
                )?
                .label("isoFLOP minimum N*")
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, blue.filled()));
            chart
                .draw_series(
                    minima
                        .iter()
                        .map(|m| TriangleMarker::new((m.0, m.2), 6, red.filled())),
                )?
                .label("isoFLOP minimum D*")
                .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, red.filled()));
        }
        draw_legend(&mut chart)
    }
}
