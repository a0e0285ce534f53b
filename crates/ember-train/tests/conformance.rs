//! `ember conformance` on the shared reference fixtures: every form of every known op matches.
use burn::backend::{Autodiff, NdArray};
use ember_train::conformance;

#[test]
fn every_form_matches_the_reference_fixtures() {
    let Some(dir) = conformance::default_fixture_dir() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("fixtures not found: set EMBER_FIXTURES or provide ../shared/fixtures");
        }
        eprintln!("SKIPPED: reference fixtures not found (set EMBER_FIXTURES or provide ../shared/fixtures)");
        return;
    };
    let report = conformance::run::<Autodiff<NdArray<f32>>>(&dir, &Default::default()).unwrap();
    println!("{}", report.table());
    for required in ["based_taylor", "linear_attn", "softmax_attn_gqa", "sliding_window_attn_gqa"] {
        assert!(report.rows.iter().any(|r| r.fixture == required), "fixture {required} was not checked");
    }
    assert!(report.passed(), "conformance failures:\n{}", report.table());
}
