//! Sweep recipes: expansion into runs (grid and isoFLOP designs, shapes from target sizes),
//! running with skip-finished and resume, collecting results, and the emitted scripts.
use burn::backend::{Autodiff, NdArray};
use ember_train::runs::RunAction;
use ember_train::sweep::emit::{script, Emit};
use ember_train::sweep::{collect, run_all, Design, Sweep};
use ember_train::trainer::{train, TrainOptions};
use std::path::{Path, PathBuf};

type B = Autodiff<NdArray<f32>>;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A sweep over the tiny recipes, shrunk to steps of 2 × 32 tokens, written into `dir`.
fn sweep_file(dir: &Path, axes: &str) -> PathBuf {
    let root = repo();
    let data = |p: &str| format!("{:?}", root.join(p).display().to_string());
    let text = format!(
        r#"
[sweep]
name = "t"
out_dir = {out:?}
archs.attention = {attn:?}
archs.based = {{ recipe = {based:?}, set = ["model.schedule.default=\"\"", "model.schedule.at={{}}", "model.schedule.pattern=[\"conv\", \"linear\", \"swa\"]"] }}
{axes}
set = [
  "data.seq_len=32", "train.batch_size=2", "train.eval_batches=2", "model.mlp.multiple_of=16",
  'data.tokenizer={tok}', 'data.train={train}', 'data.valid={valid}', 'data.cache_dir={cache:?}',
  "log.progress=false",
]
"#,
        out = dir.join("out").display().to_string(),
        attn = root.join("recipes/attn-tiny.toml").display().to_string(),
        based = root.join("recipes/based-tiny.toml").display().to_string(),
        tok = data("data/tokenizer.json"),
        train = data("data/corpus/train.jsonl"),
        valid = data("data/corpus/valid.jsonl"),
        cache = dir.join("cache").display().to_string(),
    );
    let path = dir.join("sweep.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_grid_expands_to_every_combination() {
    let dir = tempfile::tempdir().unwrap();
    let axes = "design = \"grid\"\nshapes = [{ d_model = 32, n_layers = 2 }, { d_model = 64, n_layers = 3 }]\ntokens = [640, 1280]\nlrs = [1e-3, 3e-3]";
    let sweep = Sweep::load(&sweep_file(dir.path(), axes)).unwrap();
    let runs = sweep.expand().unwrap();
    assert_eq!(runs.len(), 2 * 2 * 2 * 2);
    for run in &runs {
        let r = &run.recipe;
        assert_eq!((r.model.d_model, r.model.n_layers), (run.shape.d_model, run.shape.n_layers));
        assert_eq!(r.optim.lr, run.lr);
        assert_eq!(r.train.out_dir, dir.path().join("out/runs").join(&run.name));
        // 64 tokens a step: 640 tokens are 10 steps.
        assert_eq!(r.steps() as f64 * 64.0, run.tokens);
        assert!(run.tokens == 640.0 || run.tokens == 1280.0);
        assert_eq!(run.flops, 6.0 * run.n_params as f64 * run.tokens);
        assert_eq!(run.n_params, r.model.non_embedding_params());
        assert!(run.name.starts_with(&run.arch));
    }
    // BASED's pattern holds at 3 layers: conv, linear, swa.
    let based = runs.iter().find(|r| r.arch == "based" && r.shape.n_layers == 3).unwrap();
    assert_eq!(based.recipe.model.layer_mixers(), ["conv", "linear", "swa"]);
    let mut names: Vec<_> = runs.iter().map(|r| r.name.clone()).collect();
    names.dedup();
    assert_eq!(names.len(), runs.len());
}

#[test]
fn an_isoflop_design_spends_each_budget_on_every_size() {
    let dir = tempfile::tempdir().unwrap();
    let axes = "design = \"isoflop\"\nparams = [2e4, 6e4, 2e5]\naspect = 16\nflops = [1e9, 4e9]";
    let sweep = Sweep::load(&sweep_file(dir.path(), axes)).unwrap();
    assert_eq!(sweep.config.design, Design::Isoflop);
    let runs = sweep.expand().unwrap();
    assert_eq!(runs.len(), 2 * 3 * 2);
    for arch in ["attention", "based"] {
        let mine: Vec<_> = runs.iter().filter(|r| r.arch == arch).collect();
        // Shapes follow the targets: increasing sizes, d_model a multiple of 32, each within a
        // factor 2 of its target.
        let sizes: Vec<usize> = mine[..3].iter().map(|r| r.n_params).collect();
        assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
        for (r, target) in mine[..3].iter().zip([2e4, 6e4, 2e5]) {
            assert_eq!(r.shape.d_model % 32, 0);
            assert!((r.n_params as f64 / target).ln().abs() < 2f64.ln(), "{} for {target}", r.n_params);
        }
        for r in &mine {
            // D = C / 6N, rounded to whole steps of 64 tokens (at least one).
            let exact = r.budget.unwrap() / (6.0 * r.n_params as f64);
            assert!((r.tokens - exact).abs() <= 32.0 || r.tokens == 64.0, "{} tokens for {exact}", r.tokens);
            assert_eq!(r.tokens, r.recipe.steps() as f64 * 64.0);
        }
    }
}

#[test]
fn sweep_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = |axes: &str| Sweep::load(&sweep_file(dir.path(), axes)).unwrap_err().to_string();
    assert!(err("design = \"grid\"\nshapes = [{ d_model = 32, n_layers = 2 }]").contains("sweep.tokens"));
    assert!(err("design = \"isoflop\"\nshapes = [{ d_model = 32, n_layers = 2 }]\ntokens = [1]").contains("sweep.flops"));
    assert!(err("design = \"grid\"\ntokens = [64]").contains("sweep.shapes"));
    assert!(err("design = \"grid\"\nshapes = [{ d_model = 32, n_layers = 2 }]\ntokens = [-1]").contains("sweep.tokens"));
    let e = err("design = \"grid\"\nshapes = [{ d_model = 32, n_layer = 2 }]\ntokens = [64]");
    assert!(e.contains("sweep.toml:") && e.contains("n_layer"), "{e}");
    // A shape the base recipe cannot take names the arch.
    let e = Sweep::load(&sweep_file(dir.path(), "design = \"grid\"\nshapes = [{ d_model = 30, n_layers = 2 }]\ntokens = [64]"))
        .unwrap()
        .expand()
        .unwrap_err()
        .to_string();
    assert!(e.contains("arch") && e.contains("model.mixers"), "{e}");
}

#[test]
fn runs_are_skipped_when_finished_and_resumed_when_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let axes = "design = \"grid\"\nshapes = [{ d_model = 32, n_layers = 2 }]\ntokens = [384, 640]";
    let sweep = Sweep::load(&sweep_file(dir.path(), axes)).unwrap();
    let runs = sweep.expand().unwrap();
    assert_eq!(runs.len(), 4);
    let device = Default::default();
    // One run is interrupted after 3 of its steps.
    let interrupted = &runs[1];
    train::<B>(&interrupted.recipe, &TrainOptions { stop_after: Some(3), quiet: true, ..Default::default() }, &device).unwrap();
    let (results, _) = collect::collect(&runs).unwrap();
    assert_eq!((results[1].steps_done, results[1].finished), (3, false));
    assert!(results.iter().enumerate().all(|(i, r)| i == 1 || r.steps_done == 0));

    let actions = run_all::<B>(&runs, 2, true, &device).unwrap();
    assert_eq!(actions, [RunAction::Trained, RunAction::Resumed, RunAction::Trained, RunAction::Trained]);
    let (results, points) = collect::collect(&runs).unwrap();
    for (r, run) in results.iter().zip(&runs) {
        assert!(r.finished && r.steps_done == run.recipe.steps(), "{r:?}");
        assert!(r.loss.unwrap().is_finite());
    }
    // Every evaluation is a point; the last of a run is its final loss.
    let last = points.iter().rfind(|p| p.name == runs[0].name).unwrap();
    assert_eq!(Some(last.loss), results[0].loss);
    assert_eq!(last.tokens, runs[0].tokens);

    let again = run_all::<B>(&runs, 2, true, &device).unwrap();
    assert!(again.iter().all(|&a| a == RunAction::AlreadyFinished));
    let written = collect::write(&sweep, &results, &points).unwrap();
    // The table is what the fits read.
    let table = ember_scaling::load_runs(&written[0]).unwrap();
    assert_eq!(table.len(), 4);
    assert_eq!(table[0].n_params, runs[0].n_params as f64);
}

#[test]
fn the_slurm_script_is_valid_bash_naming_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let axes = "design = \"grid\"\nshapes = [{ d_model = 32, n_layers = 2 }, { d_model = 64, n_layers = 2 }]\ntokens = [640]";
    let sweep = Sweep::load(&sweep_file(dir.path(), axes)).unwrap();
    let runs = sweep.expand().unwrap();
    for kind in [Emit::Slurm, Emit::Shell] {
        let text = script(kind, &sweep, &runs, dir.path(), &["--gres=gpu:1".into()]);
        let path = dir.path().join("s.sh");
        std::fs::write(&path, &text).unwrap();
        let check = std::process::Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(check.status.success(), "{}\n{text}", String::from_utf8_lossy(&check.stderr));
        for run in &runs {
            assert!(text.contains(&format!("'{}'", run.name)), "{} missing", run.name);
        }
        if kind == Emit::Slurm {
            assert!(text.contains(&format!("#SBATCH --array=0-{}", runs.len() - 1)));
            assert!(text.contains("#SBATCH --gres=gpu:1"));
        }
    }
}
