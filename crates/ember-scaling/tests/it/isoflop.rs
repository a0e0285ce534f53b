
use crate::common::{isoflop_sweep, log_space, TRUE_LAW};
use ember_scaling::{
    fit_budget, fit_isoflop, group_budgets, polyfit, BootstrapConfig, IsoFlopConfig, PowerLaw,
    RunResult, SkipReason,
};

fn with_bootstrap(resamples: usize, seed: u64) -> IsoFlopConfig {
    IsoFlopConfig {
        bootstrap: BootstrapConfig { resamples, seed },
        ..IsoFlopConfig::default()
    }
}

fn rel(a: f64, b: f64) -> f64 {
    (a / b - 1.0).abs()
}

/// Runs at budget `c` whose loss is exactly `curvature·(ln N − ln n_star)² + 2`.
fn parabola_runs(c: f64, n_star: f64, curvature: f64, sizes: &[f64]) -> Vec<RunResult> {
    sizes
        .iter()
        .map(|&n| {
            let loss = curvature * (n.ln() - n_star.ln()).powi(2) + 2.0;
            RunResult::new(format!("n{n:.3e}"), "", n, c / (6.0 * n), loss)
        })
        .collect()
}

#[test]
fn polyfit_recovers_exact_polynomials() {
    let xs: Vec<f64> = (0..7).map(|i| 18.0 + i as f64 * 0.7).collect();
    let ys: Vec<f64> = xs.iter().map(|x| 0.3 * x * x - 11.0 * x + 104.0).collect();
    let c = polyfit(&xs, &ys, 2).unwrap();
    for (got, want) in c.iter().zip([104.0, -11.0, 0.3]) {
        assert!(rel(*got, want) < 1e-8, "{c:?}");
    }
    assert!(
        polyfit(&[1.0, 1.0, 2.0], &[0.0, 1.0, 2.0], 2).is_none(),
        "two distinct x cannot fix a parabola"
    );
}

#[test]
fn finds_exact_minimum_of_exact_parabolas() {
    for (c, n_star) in [(1e18, 3.7e7), (1e20, 4.2e8), (3e21, 1.9e9)] {
        // Asymmetric, unevenly spaced sizes so the vertex is not simply the middle sample.
        let sizes: Vec<f64> = [0.2, 0.45, 0.9, 1.6, 3.5, 6.0]
            .iter()
            .map(|f| f * n_star)
            .collect();
        let fit = fit_budget(c, parabola_runs(c, n_star, 0.05, &sizes));
        let m = fit.minimum.unwrap();
        assert!(rel(m.n_opt, n_star) < 1e-6, "N* {} vs {n_star}", m.n_opt);
        assert!(rel(m.d_opt, c / (6.0 * n_star)) < 1e-6);
        assert!((m.loss - 2.0).abs() < 1e-9);
    }
}

#[test]
fn skips_budgets_without_a_minimum() {
    let two_sizes = parabola_runs(1e18, 1e7, 0.05, &[1e7, 2e7, 2e7]);
    assert_eq!(
        fit_budget(1e18, two_sizes).minimum,
        Err(SkipReason::TooFewSizes { distinct: 2 })
    );

    let concave = parabola_runs(1e18, 1e7, -0.05, &[5e6, 1e7, 2e7, 4e7]);
    let minimum = fit_budget(1e18, concave).minimum;
    assert!(
        matches!(minimum, Err(SkipReason::NoInteriorMinimum { curvature }) if curvature < 0.0),
        "{minimum:?}"
    );

    // A convex profile whose vertex lies below the smallest size trained: an extrapolation.
    let beyond = parabola_runs(1e18, 1e6, 0.05, &[5e6, 1e7, 2e7, 4e7]);
    let minimum = fit_budget(1e18, beyond).minimum;
    assert!(
        matches!(minimum, Err(SkipReason::MinimumOutsideSizes { n_opt, smallest, .. }) if rel(n_opt, 1e6) < 1e-6 && rel(smallest, 5e6) < 1e-9),
        "{minimum:?}"
    );
}

#[test]
fn groups_budgets_by_tolerance_and_by_label() {
    let mut runs = vec![
        RunResult::new("a", "", 1e7, 1e10 / 6.0 * 1.00, 3.0), // 1e17 FLOPs
        RunResult::new("b", "", 2e7, 1e10 / 12.0 * 1.08, 3.0), // 1.08e17
        RunResult::new("c", "", 1e7, 3e10 / 6.0, 3.0),        // 3e17
        RunResult::new("d", "", 2e7, 3e10 / 12.0 * 0.95, 3.0), // 2.85e17
    ];
    let groups = group_budgets(&runs, 0.15);
    let names: Vec<Vec<&str>> = groups
        .iter()
        .map(|g| g.1.iter().map(|r| r.name.as_str()).collect())
        .collect();
    assert_eq!(names, vec![vec!["a", "b"], vec!["d", "c"]]);
    assert!(
        rel(groups[0].0, (1e17f64 * 1.08e17).sqrt()) < 1e-9,
        "geometric mean of the FLOPs"
    );

    // A label overrides the FLOPs-based grouping.
    runs[0].budget = Some(3e17);
    runs[2].budget = Some(3e17);
    let groups = group_budgets(&runs, 0.15);
    assert_eq!(groups.len(), 3);
    assert_eq!(groups.iter().find(|g| g.0 == 3e17).unwrap().1.len(), 2);
}

#[test]
fn power_law_recovers_exponent_from_exact_minima() {
    // N*(C) = 0.09 C^0.5 at each budget, loss an exact parabola around it.
    let budgets = log_space(1e17, 1e21, 5);
    let mut runs = Vec::new();
    for &c in &budgets {
        let n_star = 0.09 * c.powf(0.5);
        let sizes: Vec<f64> = [0.25, 0.5, 1.0, 2.0, 4.0]
            .iter()
            .map(|f| f * n_star)
            .collect();
        runs.extend(parabola_runs(c, n_star, 0.04, &sizes));
    }
    let fit = fit_isoflop(&runs, &with_bootstrap(0, 0));
    assert_eq!(fit.minima().count(), 5);
    let n_law = fit.n_law.unwrap();
    let d_law = fit.d_law.unwrap();
    assert!(
        (n_law.exponent - 0.5).abs() < 1e-6 && rel(n_law.coefficient, 0.09) < 1e-5,
        "{n_law:?}"
    );
    // D* = C / (6 N*) = C^0.5 / 0.54.
    assert!(
        (d_law.exponent - 0.5).abs() < 1e-6 && rel(d_law.coefficient, 1.0 / 0.54) < 1e-5,
        "{d_law:?}"
    );
    let at = fit.compute_optimal(1e22).unwrap();
    assert!(rel(at.tokens_per_param, 1.0 / (6.0 * 0.09 * 0.09)) < 1e-5);
    assert!(fit.intervals.is_none());

    let law = PowerLaw::fit(
        &[1.0, 10.0, 100.0],
        &[2.0, 2.0 * 10f64.powf(0.3), 2.0 * 100f64.powf(0.3)],
    )
    .unwrap();
    assert!((law.exponent - 0.3).abs() < 1e-12 && rel(law.coefficient, 2.0) < 1e-12);
}

#[test]
fn noisy_isoflop_sweep_recovers_chinchilla_exponents_with_intervals() {
    let t = TRUE_LAW;
    let a_n = t.beta / (t.alpha + t.beta);
    let budgets = log_space(1e17, 1e21, 5);
    let runs = isoflop_sweep(&t, &budgets, 0.005, 3);
    let fit = fit_isoflop(&runs, &with_bootstrap(100, 11));
    assert_eq!(fit.budgets.len(), 5);
    let n_law = fit.n_law.unwrap();
    assert!(
        (n_law.exponent - a_n).abs() < 0.05,
        "a_N {} vs {a_n}",
        n_law.exponent
    );
    let ci = fit.intervals.as_ref().unwrap();
    let n_ci = ci.n_exponent.unwrap();
    let d_ci = ci.d_exponent.unwrap();
    assert!(n_ci.contains(a_n) && n_ci.lo < n_ci.hi, "{n_ci:?} vs {a_n}");
    assert!(d_ci.contains(1.0 - a_n), "{d_ci:?} vs {}", 1.0 - a_n);
    let ratio = fit.compute_optimal(1e21).unwrap();
    let true_ratio = t.tokens_per_param(1e21);
    assert!(
        rel(ratio.tokens_per_param, true_ratio) < 0.3,
        "{} vs {true_ratio}",
        ratio.tokens_per_param
    );
}
