
use std::path::Path;

use crate::common::{grid_sweep, isoflop_sweep, log_space, TRUE_LAW};
use ember_scaling::{
    analyse, plot_isoflop_curves, plot_loss_vs_compute, plot_optimal_allocation, write_report,
    AnalysisConfig, BootstrapConfig, ChinchillaConfig, ChinchillaParams, IsoFlopConfig, StartGrid,
};

fn quick_config() -> AnalysisConfig {
    let bootstrap = BootstrapConfig {
        resamples: 10,
        seed: 1,
    };
    AnalysisConfig {
        chinchilla: ChinchillaConfig {
            grid: StartGrid::coarse(),
            bootstrap,
            bootstrap_grid_starts: 1,
            ..ChinchillaConfig::default()
        },
        isoflop: IsoFlopConfig {
            bootstrap,
            ..IsoFlopConfig::default()
        },
        report_flops: None,
    }
}

fn assert_non_empty(path: &Path) {
    let len = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len();
    assert!(len > 0, "{} is empty", path.display());
}

/// A PNG's signature and an SVG's root element.
fn assert_image(path: &Path) {
    assert_non_empty(path);
    let bytes = std::fs::read(path).unwrap();
    match path.extension().and_then(|e| e.to_str()) {
        Some("png") => assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display()),
        Some("svg") => assert!(
            String::from_utf8_lossy(&bytes).contains("<svg"),
            "{}",
            path.display()
        ),
        other => panic!("unexpected extension {other:?}"),
    }
}

#[test]
fn plot_functions_write_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let runs = isoflop_sweep(&TRUE_LAW, &log_space(1e17, 1e20, 4), 0.005, 5);
    let analysis = analyse(&runs, &quick_config()).remove(0);
    let law = analysis.chinchilla.as_ref().ok().map(|f| &f.params);
    let files = [
        plot_loss_vs_compute(dir.path(), "a", "test", &runs, law).unwrap(),
        plot_isoflop_curves(dir.path(), "b", "test", &analysis.isoflop).unwrap(),
        plot_optimal_allocation(
            dir.path(),
            "c",
            "test",
            law,
            &analysis.isoflop,
            (1e17, 1e23),
        )
        .unwrap(),
    ];
    for f in &files {
        assert_image(&f.png);
        assert_image(&f.svg);
    }
    // Axis text reaches the SVG as text.
    let svg = std::fs::read_to_string(&files[0].svg).unwrap();
    assert!(svg.contains("validation loss") && svg.contains("compute-optimal frontier"));
}

#[test]
fn report_covers_every_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let mut runs = isoflop_sweep(&TRUE_LAW, &log_space(1e17, 1e20, 4), 0.005, 5);
    runs.extend(grid_sweep(&TRUE_LAW, 0.01, 6));
    // A second architecture with a better data exponent.
    let other = ChinchillaParams {
        beta: 0.32,
        ..TRUE_LAW
    };
    for mut run in isoflop_sweep(&other, &log_space(1e17, 1e20, 4), 0.005, 8) {
        run.arch = "hybrid v2".into();
        runs.push(run);
    }
    let analyses = analyse(&runs, &quick_config());
    assert_eq!(
        analyses.iter().map(|a| a.arch.as_str()).collect::<Vec<_>>(),
        ["test", "hybrid v2"]
    );

    let written = write_report(&out, &analyses).unwrap();
    // Three figures × (PNG, SVG) per architecture, then report.md and fits.json.
    assert_eq!(written.len(), 2 * 3 * 2 + 2, "{written:?}");
    for path in &written {
        assert!(path.starts_with(&out));
        match path.extension().and_then(|e| e.to_str()) {
            Some("png" | "svg") => assert_image(path),
            _ => assert_non_empty(path),
        }
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "## test",
        "## hybrid v2",
        "| α |",
        "| β |",
        "Approach 2",
        "N*(C) =",
        "tokens/param",
        "(hybrid_v2_isoflop.png)",
        "| name | N |",
    ] {
        assert!(md.contains(needle), "report lacks {needle:?}:\n{md}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("fits.json")).unwrap()).unwrap();
    let alpha = json[0]["chinchilla"]["Ok"]["params"]["alpha"]
        .as_f64()
        .unwrap();
    assert!((alpha - TRUE_LAW.alpha).abs() < 0.05, "{alpha}");
}
