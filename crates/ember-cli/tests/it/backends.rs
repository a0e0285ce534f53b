//! Every backend compiled into this build, as a user picks it with `--device`: the reference
//! fixtures pass, and a tiny training run gives the same losses as the default CPU backend.
//!
//! `cargo test --workspace` covers `cpu` (ndarray) and `flex`; building the tests with
//! `--features ember-cli/wgpu` (as `.ci/run` does, on Mesa's lavapipe) adds `wgpu`, and
//! `--features ember-cli/tch` adds `tch-cpu` (see scripts/check-tch.sh).
use crate::common::*;
use std::path::Path;
use std::process::Output;

/// The non-default backends of this build, with the compute dtypes each is checked in.
fn backends() -> Vec<(&'static str, &'static [&'static str])> {
    let mut list: Vec<(&str, &[&str])> = vec![("flex", &["f32", "bf16"])];
    if cfg!(feature = "wgpu") {
        list.push(("wgpu", &["f32"]));
    }
    if cfg!(feature = "tch") {
        list.push(("tch-cpu", &["f32", "bf16"]));
    }
    list
}

/// Whether a run failed only because the machine has no adapter for the backend (no Vulkan
/// driver for wgpu): a visible skip locally, a failure under `CI=true`.
fn unavailable(device: &str, out: &Output) -> bool {
    let log = text(out);
    let missing = !out.status.success() && log.contains("No possible adapter");
    if missing {
        assert!(!in_ci(), "{device} has no adapter in CI (is mesa-vulkan-drivers installed?):\n{log}");
        eprintln!("SKIPPED {device}: no adapter on this machine (install mesa-vulkan-drivers for lavapipe)");
    }
    missing
}

#[test]
fn reference_fixtures_pass_on_every_backend_in_this_build() {
    let Some(fixtures) = ember_train::conformance::default_fixture_dir() else {
        assert!(!in_ci(), "fixtures not found");
        eprintln!("SKIPPED: reference fixtures not found");
        return;
    };
    for (device, dtypes) in backends() {
        for dtype in dtypes.iter() {
            let out = ember(&["conformance", "--fixtures", fixtures.to_str().unwrap(), "--device", device, "--dtype", dtype]);
            if unavailable(device, &out) {
                break;
            }
            let log = text(&out);
            println!("{device} {dtype}:\n{log}");
            assert!(out.status.success() && log.contains(" 0 failed"), "{device} {dtype}:\n{log}");
            // On wgpu the chunked forms also run on the CubeCL kernels, each a row of its own.
            let kernel_rows = log.lines().filter(|l| l.contains("kernels(C=")).count();
            assert_eq!(kernel_rows > 0, device == "wgpu", "{device}: {kernel_rows} kernel rows\n{log}");
        }
    }
    // A backend without bf16 says so instead of failing somewhere inside an op.
    let out = ember(&["conformance", "--fixtures", fixtures.to_str().unwrap(), "--device", "cpu", "--dtype", "bf16"]);
    assert!(!out.status.success() && text(&out).contains("cannot compute in bf16"), "{}", text(&out));
}

/// Training losses per step from a run directory's metrics.jsonl.
fn losses(run: &Path) -> Vec<f64> {
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("train/loss").and_then(|x| x.as_f64()))
        .collect()
}

/// Trains a small based-tiny for 8 steps on `device` in `dtype` with `train.kernels` set to
/// `kernels`; `None` if the backend is unavailable here.
fn tiny_run(dir: &Path, device: &str, dtype: &str, kernels: &str) -> Option<Vec<f64>> {
    let run = dir.join(format!("{device}-{dtype}-kernels-{kernels}"));
    let kernels = format!("train.kernels={kernels:?}");
    let out_dir = format!("train.out_dir={:?}", run.to_str().unwrap());
    let cache = format!("data.cache_dir={:?}", dir.join("cache").to_str().unwrap());
    let dtype_set = format!("train.dtype={dtype}");
    let mut args = vec!["train", "--recipe", "based-tiny.toml", "--quiet", "--device", device];
    for s in [
        out_dir.as_str(), cache.as_str(), dtype_set.as_str(), "model.d_model=64", "data.seq_len=32",
        "train.batch_size=4", "train.steps=8", "optim.warmup_steps=2", "train.eval_interval=8",
        "train.eval_batches=1", "train.checkpoint_interval=8", "log.every=1", "log.samples=0", &kernels,
    ] {
        args.extend(["--set", s]);
    }
    let out = ember(&args);
    if unavailable(device, &out) {
        return None;
    }
    assert!(out.status.success(), "{device} {dtype}:\n{}", text(&out));
    let l = losses(&run);
    assert_eq!(l.len(), 8, "{device} {dtype}: {l:?}");
    Some(l)
}

#[test]
fn tiny_training_gives_the_same_losses_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let reference = tiny_run(dir.path(), "cpu", "f32", "auto").unwrap();
    // The run must move, or equal curves would prove nothing.
    assert!(reference[7] < reference[0] - 0.05, "{reference:?}");
    for (device, dtypes) in backends() {
        // wgpu trains a second time with every chunked form forced onto the CubeCL kernels.
        let settings: &[&str] = if device == "wgpu" { &["auto", "on"] } else { &["auto"] };
        for dtype in dtypes.iter() {
            for kernels in settings {
                let Some(got) = tiny_run(dir.path(), device, dtype, kernels) else { break };
                // Same seed, same weights (drawn on the CPU), same batches: only rounding differs.
                let tolerance = if *dtype == "bf16" { 2e-2 } else { 1e-3 };
                for (step, (g, r)) in got.iter().zip(&reference).enumerate() {
                    assert!(
                        (g - r).abs() <= tolerance * r.abs(),
                        "{device} {dtype} kernels {kernels} step {}: loss {g} vs cpu f32 {r}\n{got:?}\n{reference:?}",
                        step + 1
                    );
                }
                println!("{device} {dtype} kernels {kernels}: {got:?} (cpu f32: {reference:?})");
            }
        }
    }
}

/// The report from the lent H100 (tch built against PyTorch 2.9, run against 2.11): the first
/// matmul under `Autodiff<LibTorch<bf16>>` panicked in `data_ptr` ("Tensor that doesn't have
/// storage"). Against the libtorch the binary was built with, the same program runs. (ember's
/// own bf16 path, f32 weights on `LibTorch<f32>` cast per step, is what the conformance and
/// training tests above run in their own processes; it cannot share this one: Burn 0.21 keeps
/// the default float dtype per device, so after `LibTorch<bf16>` has run on the CPU device,
/// `LibTorch<f32>` creates bf16 tensors there too.)
#[cfg(feature = "tch")]
#[test]
fn libtorch_bf16_autodiff_matmul() {
    use burn::backend::libtorch::{LibTorch, LibTorchDevice};
    use burn::backend::Autodiff;
    use burn::tensor::{bf16, Tensor};
    type Bf16 = Autodiff<LibTorch<bf16>>;
    let a = Tensor::<Bf16, 2>::ones([64, 64], &LibTorchDevice::Cpu).require_grad();
    let grads = a.clone().matmul(a.clone()).sum().backward();
    let g = a.grad(&grads).unwrap().into_data().convert::<f32>().to_vec::<f32>().unwrap();
    assert!(g.iter().all(|&x| x == 128.0), "{:?}", &g[..4]);
}

/// `ember bench ops --compare` times each chunked form composed and on the kernels.
#[test]
fn bench_compare_times_the_kernels_beside_the_composed_form() {
    if !cfg!(feature = "wgpu") {
        eprintln!("SKIPPED: built without wgpu, the backend with kernels that CI has");
        return;
    }
    let out = ember(&[
        "bench", "ops", "--level", "op", "--kinds", "gla,linear_attention", "--form", "chunked", "--device", "wgpu",
        "--compare", "--batch", "1", "--seq", "64", "--heads", "2", "--head-dim", "16", "--warmup", "0", "--reps", "1",
    ]);
    if unavailable("wgpu", &out) {
        return;
    }
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    for op in ["gla", "linear_attention"] {
        for form in ["chunked", "kernels"] {
            let timed = log.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 9 && cols[1] == op && cols[2] == form && cols[9].parse::<f64>().is_ok()
            });
            assert!(timed, "no timed {op} {form} row:\n{log}");
        }
    }
}

/// After a point fails inside a CubeCL device, the points after it are reported as not run: the
/// device's memory manager can be left inconsistent, and later times wrong. On lavapipe the
/// composed GLA below asks for one 256 MiB buffer, over its limit.
#[test]
fn bench_ops_reports_the_points_after_a_device_failure_as_not_run() {
    if !cfg!(feature = "wgpu") {
        eprintln!("SKIPPED: built without wgpu, the backend with kernels that CI has");
        return;
    }
    let out = ember(&[
        "bench", "ops", "--level", "op", "--kinds", "gla,linear_attention", "--form", "chunked", "--device", "wgpu",
        "--kernels", "off", "--batch", "16", "--seq", "256", "--heads", "4", "--head-dim", "64", "--warmup", "0",
        "--reps", "1",
    ]);
    if unavailable("wgpu", &out) {
        return;
    }
    let log = text(&out);
    let row = |op: &str| {
        let found = log.lines().find(|l| l.starts_with("op ") && l.split_whitespace().nth(1) == Some(op));
        found.unwrap_or_else(|| panic!("no {op} row:\n{log}")).to_string()
    };
    if !row("gla").contains("failed:") {
        eprintln!("SKIPPED: this wgpu device allocated composed GLA's 256 MiB buffer (lavapipe cannot)");
        return;
    }
    assert!(row("linear_attention").contains("not run: the device failed at gla (chunked) at B=16, T=256"), "{log}");
}

/// Forcing the kernels on a backend without them is a recipe error naming the key.
#[test]
fn kernels_on_without_kernels_is_a_recipe_error() {
    let out = ember(&["train", "--recipe", "based-tiny.toml", "--quiet", "--device", "cpu", "--set", "train.kernels=\"on\""]);
    let log = text(&out);
    assert!(!out.status.success() && log.contains("train.kernels") && log.contains("no CubeCL kernels"), "{log}");
}

/// `ember bench matmul` times Burn's CubeCL matmul per dtype and kernel choice; other devices
/// are refused with the reason.
#[test]
fn bench_matmul_times_the_cubecl_matmul() {
    let out = ember(&["bench", "matmul", "--device", "cpu", "--size", "64"]);
    assert!(!out.status.success() && text(&out).contains("CubeCL matmul"), "{}", text(&out));
    if !cfg!(feature = "wgpu") {
        eprintln!("SKIPPED: built without wgpu");
        return;
    }
    let out = ember(&["bench", "matmul", "--device", "wgpu", "--size", "64", "--dtype", "f32", "--warmup", "1", "--reps", "1"]);
    if unavailable("wgpu", &out) {
        return;
    }
    let log = text(&out);
    let timed = log.lines().any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        // A 64³ product on lavapipe rounds to 0.00 TFLOP/s: the time is what must be there.
        cols.len() == 5 && cols[..3] == ["64", "f32", "fixed"] && cols[3].parse::<f64>().is_ok_and(|ms| ms > 0.0) && cols[4].parse::<f64>().is_ok()
    });
    assert!(out.status.success() && timed, "{log}");
}
