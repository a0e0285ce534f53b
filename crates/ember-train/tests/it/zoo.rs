//! Every bundled tiny recipe (one per layer family) trains on the bundled corpus: its validation
//! loss falls. Shrunk in length, batch and sequence so the whole file runs in a few minutes.
use burn::backend::{Autodiff, NdArray};
use ember_train::recipe::Recipe;
use ember_train::trainer::{train, TrainOptions};
use std::path::{Path, PathBuf};

type B = Autodiff<NdArray<f32>>;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn tiny_recipes() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(repo().join("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().ends_with("-tiny.toml"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn there_is_a_tiny_recipe_per_family() {
    let names: Vec<String> = tiny_recipes().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for family in ["based", "attn", "gla", "transnormer", "rat", "aaren", "moh", "titans", "titans-mal", "titans-mag", "titans-mac", "moneta", "yaad", "memora"] {
        assert!(names.contains(&format!("{family}-tiny.toml")), "no {family}-tiny.toml in recipes/ ({names:?})");
    }
}

#[test]
fn every_tiny_recipe_trains_on_the_bundled_corpus() {
    let root = repo();
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    for path in tiny_recipes() {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let out = dir.path().join(&name);
        let sets: Vec<String> = vec![
            "data.seq_len=64".into(),
            "train.batch_size=4".into(),
            "train.steps=30".into(),
            "optim.warmup_steps=5".into(),
            "train.eval_interval=10".into(),
            "train.eval_batches=2".into(),
            "train.checkpoint_interval=1000".into(),
            format!("train.out_dir={:?}", out.display().to_string()),
            format!("data.cache_dir={:?}", dir.path().join("cache").display().to_string()),
            format!("data.tokenizer={:?}", root.join("data/tokenizer.json").display().to_string()),
            format!("data.train={:?}", root.join("data/corpus/train.jsonl").display().to_string()),
            format!("data.valid={:?}", root.join("data/corpus/valid.jsonl").display().to_string()),
        ];
        let mut recipe = Recipe::load(&path, &sets).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        recipe.log.progress = false;
        // The size `ember recipe check` reports is the size of the model that gets built.
        let model = recipe.model.init_seeded::<B>(0, &device);
        assert_eq!(recipe.model.num_params(), burn::module::Module::num_params(&model), "{name}: parameter count");
        let report = train::<B>(&recipe, &TrainOptions { quiet: true, ..Default::default() }, &device)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let val: Vec<f64> = report.val_losses.iter().map(|&(_, l)| l).collect();
        assert_eq!(val.len(), 3, "{name}: {val:?}");
        assert!(val.iter().all(|l| l.is_finite()), "{name}: {val:?}");
        assert!(val[1] < val[0] && val[2] < val[1], "{name}: validation loss did not fall: {val:?}");
        eprintln!("{name}: validation loss {val:?}");
    }
}
