//! The Markdown report: fitted laws with intervals, allocation tables, plots and the runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::analysis::ArchAnalysis;
use crate::bootstrap::Interval;
use crate::optimal::ComputeOptimal;
use crate::plot::{write_plots, PlotFiles};

/// Writes every architecture's plots, `report.md` and `fits.json` (the fitted numbers,
/// machine-readable) into `out_dir`, creating it if needed. Returns every path written.
pub fn write_report(out_dir: &Path, analyses: &[ArchAnalysis]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut written = Vec::new();
    let mut md = String::from("# Scaling-law fit\n\n");
    let total_runs: usize = analyses.iter().map(|a| a.runs.len()).sum();
    let _ = writeln!(
        md,
        "{total_runs} runs, {} architecture(s). Intervals are 5th–95th bootstrap percentiles.\n",
        analyses.len()
    );
    for analysis in analyses {
        let plots = write_plots(out_dir, analysis)?;
        written.extend(plots.iter().flat_map(|p| [p.png.clone(), p.svg.clone()]));
        md.push_str(&arch_section(analysis, &plots));
    }

    let report = out_dir.join("report.md");
    std::fs::write(&report, md).with_context(|| format!("writing {}", report.display()))?;
    let json = out_dir.join("fits.json");
    let text = serde_json::to_string_pretty(analyses).context("serialising fits")?;
    std::fs::write(&json, text).with_context(|| format!("writing {}", json.display()))?;
    written.push(report);
    written.push(json);
    Ok(written)
}

fn arch_section(analysis: &ArchAnalysis, plots: &[PlotFiles]) -> String {
    let mut md = format!("## {}\n\n", analysis.title());
    md.push_str(&approach3_section(analysis));
    md.push_str(&approach2_section(analysis));
    md.push_str("### Plots\n\n");
    for plot in plots {
        let (png, svg) = (file_name(&plot.png), file_name(&plot.svg));
        let _ = writeln!(md, "![{}]({png})\n\n([SVG]({svg}))\n", plot.title);
    }
    md.push_str(&runs_table(analysis));
    md
}

fn approach3_section(analysis: &ArchAnalysis) -> String {
    let mut md = String::from("### Approach 3: parametric fit `L(N, D) = E + A/N^α + B/D^β`\n\n");
    let fit = match &analysis.chinchilla {
        Ok(fit) => fit,
        Err(e) => return format!("{md}Not fitted: {e}.\n\n"),
    };
    let p = &fit.params;
    let _ = writeln!(
        md,
        "Huber objective {:.4e} over {} runs; {} bootstrap refits.\n",
        fit.objective,
        fit.n_runs,
        fit.bootstrap_samples.len()
    );
    md.push_str("| parameter | estimate | 90% interval |\n|---|---|---|\n");
    let intervals = fit.intervals.as_ref();
    for (name, value, ci) in [
        ("E", p.e, intervals.and_then(|i| i.e)),
        ("A", p.a, intervals.and_then(|i| i.a)),
        ("B", p.b, intervals.and_then(|i| i.b)),
        ("α", p.alpha, intervals.and_then(|i| i.alpha)),
        ("β", p.beta, intervals.and_then(|i| i.beta)),
    ] {
        let _ = writeln!(md, "| {name} | {} | {} |", num(value), interval(ci));
    }
    let sum = p.alpha + p.beta;
    let _ = writeln!(
        md,
        "\nCompute-optimal scaling: N_opt ∝ C^{:.3}, D_opt ∝ C^{:.3} (G = {}).\n",
        p.beta / sum,
        p.alpha / sum,
        num(p.g())
    );
    md.push_str(&allocation_table(
        analysis
            .report_flops
            .iter()
            .map(|&c| fit.compute_optimal(c)),
    ));
    md
}

fn approach2_section(analysis: &ArchAnalysis) -> String {
    let iso = &analysis.isoflop;
    let mut md = String::from("### Approach 2: isoFLOP profiles\n\n");
    md.push_str("| budget C (FLOPs) | runs | N* | D* | D*/N* | loss at N* | note |\n|---|---|---|---|---|---|---|\n");
    for b in &iso.budgets {
        let _ = match &b.minimum {
            Ok(m) => writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | |",
                num(b.flops),
                b.runs.len(),
                num(m.n_opt),
                num(m.d_opt),
                num(m.d_opt / m.n_opt),
                num(m.loss)
            ),
            Err(reason) => writeln!(
                md,
                "| {} | {} | – | – | – | – | skipped: {reason} |",
                num(b.flops),
                b.runs.len()
            ),
        };
    }
    let (Some(n_law), Some(d_law)) = (iso.n_law, iso.d_law) else {
        md.push_str("\nNo power law: fewer than two budgets have a minimum.\n\n");
        return md;
    };
    let ci = iso.intervals.as_ref();
    let _ = writeln!(
        md,
        "\nN*(C) = {} · C^{:.4} (exponent 90% interval {}), D*(C) = {} · C^{:.4} (exponent 90% interval {}); {} bootstrap refits.\n",
        num(n_law.coefficient),
        n_law.exponent,
        interval(ci.and_then(|i| i.n_exponent)),
        num(d_law.coefficient),
        d_law.exponent,
        interval(ci.and_then(|i| i.d_exponent)),
        iso.bootstrap_laws.len()
    );
    md.push_str(&allocation_table(
        analysis
            .report_flops
            .iter()
            .filter_map(|&c| iso.compute_optimal(c)),
    ));
    md
}

/// Compute-optimal N, D and tokens per parameter at each budget.
fn allocation_table(rows: impl Iterator<Item = ComputeOptimal>) -> String {
    let mut md = String::from("| C (FLOPs) | N_opt | D_opt | tokens/param | tokens/param 90% interval | loss |\n|---|---|---|---|---|---|\n");
    for r in rows {
        let loss = r.loss.map_or("–".to_owned(), num);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {loss} |",
            num(r.flops),
            num(r.n_opt),
            num(r.d_opt),
            num(r.tokens_per_param),
            interval(r.tokens_per_param_interval)
        );
    }
    md.push('\n');
    md
}

fn runs_table(analysis: &ArchAnalysis) -> String {
    let mut md =
        String::from("### Runs\n\n| name | N | D | C (FLOPs) | loss |\n|---|---|---|---|---|\n");
    for r in &analysis.runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            r.name,
            num(r.n_params),
            num(r.tokens),
            num(r.flops),
            num(r.loss)
        );
    }
    md.push('\n');
    md
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Four significant digits, scientific outside 0.01..10 000.
fn num(x: f64) -> String {
    if x != 0.0 && (x.abs() < 1e-2 || x.abs() >= 1e4) {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

fn interval(ci: Option<Interval>) -> String {
    ci.map_or("–".to_owned(), |i| {
        format!("[{}, {}]", num(i.lo), num(i.hi))
    })
}
