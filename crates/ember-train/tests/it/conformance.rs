//! `ember conformance` on the shared reference fixtures: every form of every known op matches.
use burn::backend::{Autodiff, Flex, NdArray};
use ember_train::conformance;
use ember_train::recipe::Precision;
use std::path::PathBuf;

fn fixtures() -> Option<PathBuf> {
    let dir = conformance::default_fixture_dir();
    if dir.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("fixtures not found: set EMBER_FIXTURES or provide ../shared/fixtures");
        }
        eprintln!("SKIPPED: reference fixtures not found (set EMBER_FIXTURES or provide ../shared/fixtures)");
    }
    dir
}

fn assert_complete(report: &conformance::Report) {
    println!("{}", report.table());
    for required in [
        "based_taylor", "linear_attn", "hf_llama", "hf_qwen2", "softmax_attn_gqa", "sliding_window_attn_gqa", "gla", "gla_strong_decay",
        "scalar_decay_linear_attn", "lightning_constant_decay",
    ] {
        assert!(report.rows.iter().any(|r| r.fixture == required), "fixture {required} was not checked");
    }
    // Per-head decays also run the Lightning-2 path, in both forms.
    for required in ["scalar_decay_linear_attn", "lightning_constant_decay"] {
        for form in ["per-head parallel", "per-head chunked"] {
            let ran = report.rows.iter().any(|r| r.fixture == required && r.form.starts_with(form));
            assert!(ran, "{required}: {form} was not checked");
        }
    }
    // Chunked forms ran with a chunk size that divides T = 67 (1, 67) and ones that do not (16).
    for chunked in ["chunked(C=1)", "chunked(C=16)", "chunked(C=67)"] {
        assert!(report.rows.iter().any(|r| r.form.starts_with(chunked)), "no row for {chunked}");
    }
    assert!(report.passed(), "conformance failures:\n{}", report.table());
}

#[test]
fn every_form_matches_the_reference_fixtures() {
    let Some(dir) = fixtures() else { return };
    assert_complete(&conformance::run::<Autodiff<NdArray<f32>>>(&dir, Precision::F32, &Default::default()).unwrap());
}

/// bf16 compute (inputs rounded to bf16, f32 inside the linear ops) within the README's bf16
/// tolerance, on the CPU backend that has bf16 kernels.
#[test]
fn bf16_compute_matches_within_the_bf16_tolerance() {
    let Some(dir) = fixtures() else { return };
    let report = conformance::run::<Autodiff<Flex>>(&dir, Precision::Bf16, &Default::default()).unwrap();
    assert_complete(&report);
    // bf16 inputs must actually have been used: a perfect score would mean the cast was skipped.
    let worst = report.rows.iter().map(|r| r.output_err).fold(0.0, f64::max);
    assert!(worst > conformance::TOLERANCE, "bf16 errors all below the f32 tolerance ({worst:e}): no bf16 rounding happened");
}

#[test]
fn bf16_on_a_backend_without_it_is_a_clear_error() {
    let Some(dir) = fixtures() else { return };
    let err = conformance::run::<Autodiff<NdArray<f32>>>(&dir, Precision::Bf16, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("cannot compute in bf16"), "{err}");
}
