//! End-to-end training on the bundled corpus: exact resume, checkpoint safety, generation.
use burn::backend::{Autodiff, NdArray};
use ember_train::checkpoint;
use ember_train::generate::{self, SampleOptions};
use ember_train::recipe::Recipe;
use ember_train::trainer::{train, TrainOptions};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

type B = Autodiff<NdArray<f32>>;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// based-tiny.toml shrunk to run in seconds, writing into `out`.
fn tiny(out: &Path, extra: &[&str]) -> Recipe {
    tiny_from("based-tiny.toml", out, extra)
}

/// A bundled tiny recipe shrunk the same way.
fn tiny_from(name: &str, out: &Path, extra: &[&str]) -> Recipe {
    let root = repo();
    let mut sets: Vec<String> = vec![
        "model.d_model=64".into(),
        "data.seq_len=32".into(),
        "train.batch_size=4".into(),
        "train.steps=8".into(),
        "optim.warmup_steps=2".into(),
        "train.eval_interval=4".into(),
        "train.eval_batches=2".into(),
        "train.checkpoint_interval=4".into(),
        format!("train.out_dir={:?}", out.display().to_string()),
        format!("data.cache_dir={:?}", out.join("cache").display().to_string()),
        format!("data.tokenizer={:?}", root.join("data/tokenizer.json").display().to_string()),
        format!("data.train={:?}", root.join("data/corpus/train.jsonl").display().to_string()),
        format!("data.valid={:?}", root.join("data/corpus/valid.jsonl").display().to_string()),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let mut recipe = Recipe::load(&root.join("recipes").join(name), &sets).unwrap();
    recipe.log.progress = false;
    recipe
}

fn quiet() -> TrainOptions {
    TrainOptions { quiet: true, ..Default::default() }
}

#[test]
fn interrupted_and_resumed_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let device = Default::default();
    let whole = tiny(&dir.join("whole"), &[]);
    let a = train::<B>(&whole, &quiet(), &device).unwrap();
    assert_eq!(a.losses.len(), 8);

    let parts = tiny(&dir.join("parts"), &[]);
    let first = train::<B>(&parts, &TrainOptions { stop_after: Some(5), ..quiet() }, &device).unwrap();
    assert_eq!(first.final_step, 5);
    // A fresh process would start from nothing but the run directory.
    let resume = TrainOptions { resume: Some(parts.train.out_dir.clone()), ..quiet() };
    let second = train::<B>(&parts, &resume, &device).unwrap();
    assert_eq!(second.final_step, 8);

    let resumed: Vec<_> = first.losses.iter().chain(&second.losses).cloned().collect();
    assert_eq!(resumed, a.losses, "losses differ after resume");
    assert_eq!(second.val_losses.last(), a.val_losses.last());
    let weights = |r: &Recipe| std::fs::read(r.train.out_dir.join("checkpoints/step-000008/model.safetensors")).unwrap();
    let (wa, wb) = (weights(&whole), weights(&parts));
    let (ta, tb) = (SafeTensors::deserialize(&wa).unwrap(), SafeTensors::deserialize(&wb).unwrap());
    assert_eq!(ta.len(), tb.len());
    for (name, view) in ta.tensors() {
        assert!(view.data() == tb.tensor(&name).unwrap().data(), "{name} differs after resume");
    }
    // The loss moved: the run trained something.
    assert!(a.losses[7].1 < a.losses[0].1, "{:?}", a.losses);
}

#[test]
fn a_finished_run_goes_on_only_when_train_steps_grows() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let run = tiny(&dir.path().join("run"), &[]);
    train::<B>(&run, &quiet(), &device).unwrap();
    let resume = TrainOptions { resume: Some(run.train.out_dir.clone()), ..quiet() };
    // At its own step count the run is over.
    let again = train::<B>(&run, &resume, &device).unwrap();
    assert_eq!((again.final_step, again.losses.len()), (8, 0));
    // Asked for 12 steps, it trains the 4 after step 8 and checkpoints the last.
    let longer = tiny(&dir.path().join("run"), &["train.steps=12"]);
    let more = train::<B>(&longer, &resume, &device).unwrap();
    assert_eq!((more.final_step, more.losses.first().map(|l| l.0), more.losses.len()), (12, Some(9), 4));
    assert!(longer.train.out_dir.join("checkpoints/step-000012/model.safetensors").exists());
}

#[test]
fn checkpoints_are_pruned_and_partial_ones_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny(dir.path(), &["train.checkpoint_interval=2", "train.keep_last=2"]);
    train::<B>(&recipe, &quiet(), &Default::default()).unwrap();
    let root = recipe.train.out_dir.join("checkpoints");
    let steps: Vec<usize> = checkpoint::list(&root).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![6, 8]);

    // A crash while writing step 10 leaves a .tmp directory: it is never taken for a checkpoint.
    let partial = root.join("step-000010.tmp");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("model.safetensors"), b"half").unwrap();
    assert_eq!(checkpoint::resolve(&recipe.train.out_dir).unwrap(), root.join("step-000008"));

    // A damaged checkpoint gives an error naming the file, not a panic.
    std::fs::write(root.join("step-000008/optimizer.safetensors"), b"garbage").unwrap();
    let err = train::<B>(&recipe, &TrainOptions { resume: Some(root.join("step-000008")), ..quiet() }, &Default::default())
        .unwrap_err();
    assert!(format!("{err:#}").contains("optimizer.safetensors"), "{err:#}");
}

#[test]
fn generation_from_a_checkpoint_uses_the_recurrent_forms() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny(dir.path(), &[]);
    let report = train::<B>(&recipe, &quiet(), &Default::default()).unwrap();
    let device = Default::default();
    let loaded = generate::load::<NdArray<f32>>(report.last_checkpoint.as_ref().unwrap(), &device).unwrap();
    let opts = SampleOptions { max_tokens: 12, temperature: 0.0, ..Default::default() };
    let a = generate::generate(&loaded.model, &loaded.tokenizer, "fn main", &opts, &device).unwrap();
    let b = generate::generate(&loaded.model, &loaded.tokenizer, "fn main", &opts, &device).unwrap();
    assert_eq!(a.new_tokens, b.new_tokens, "greedy decoding is deterministic");
    assert!(a.state_bytes > 0);
    // Greedy decoding picks the argmax of the forward pass at every step.
    let mut ids: Vec<i64> = loaded.tokenizer.encode("fn main").into_iter().map(i64::from).collect();
    for &next in &a.new_tokens {
        let t = burn::tensor::Tensor::<NdArray<f32>, 2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(ids.clone(), [1, ids.len()]),
            &device,
        );
        let logits = loaded.model.forward(t);
        let [_, len, v] = logits.dims();
        let vocab = loaded.tokenizer.vocab_size();
        let last = logits.narrow(1, len - 1, 1).reshape([v]).narrow(0, 0, vocab);
        assert_eq!(last.argmax(0).into_scalar() as u32, next);
        ids.push(next as i64);
    }
}

#[test]
fn tiny_based_learns_well_below_the_unigram_entropy() {
    // based-tiny.toml as shipped, cut to the first 100 of its 200 steps to keep CI short.
    let dir = tempfile::tempdir().unwrap();
    let root = repo();
    let sets = [
        "train.steps=100".to_string(),
        format!("train.out_dir={:?}", dir.path().join("run").display().to_string()),
        format!("data.cache_dir={:?}", dir.path().join("cache").display().to_string()),
    ];
    let recipe = Recipe::load(&root.join("recipes/based-tiny.toml"), &sets).unwrap();
    let report = train::<B>(&recipe, &quiet(), &Default::default()).unwrap();
    let (_, val) = *report.val_losses.last().unwrap();
    let entropy = report.unigram_entropy.unwrap();
    println!("validation loss {val:.4} vs unigram entropy {entropy:.4} nats/token");
    // A model that ignored context could not beat the unigram entropy; this one must use it.
    assert!(val < entropy - 0.75, "validation loss {val} vs unigram entropy {entropy}");
    // And validation loss fell at every evaluation.
    for pair in report.val_losses.windows(2) {
        assert!(pair[1].1 < pair[0].1, "validation loss rose: {:?}", report.val_losses);
    }
}

fn logits_of(model: &ember_models::Lm<NdArray<f32>>) -> Vec<f32> {
    let ids: Vec<i64> = (0..24).map(|i| (i * 37 % 500) as i64).collect();
    let t = burn::tensor::Tensor::<NdArray<f32>, 2, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(ids, [2, 12]), &Default::default());
    model.forward(t).into_data().to_vec::<f32>().unwrap()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn exports_load_back_with_the_same_logits() {
    use ember_models::hf::export::ExportDtype;
    use ember_train::export::{export, Format};
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_from("attn-tiny.toml", &dir.path().join("run"), &["model.n_layers=2", "model.mixers.attn.kv_heads=2"]);
    let report = train::<B>(&recipe, &quiet(), &Default::default()).unwrap();
    let ckpt = report.last_checkpoint.unwrap();
    let device = Default::default();
    let (model, _, _) = generate::load_model::<NdArray<f32>>(&ckpt, &device).unwrap();
    let want = logits_of(&model);

    // The Hugging Face layout, read back through the teacher loader.
    let hf_dir = dir.path().join("hf");
    let files = export::<NdArray<f32>>(&ckpt, &hf_dir, Format::Hf, ExportDtype::F32, &device).unwrap();
    assert!(files.iter().any(|f| f.ends_with("tokenizer.json")), "{files:?}");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(hf_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["num_key_value_heads"], 2);
    let teacher = ember_models::hf::load::<NdArray<f32>>(&hf_dir, &device).unwrap();
    assert!(max_rel(&logits_of(&teacher.model), &want) < 1e-6);

    // ember's own layout, loaded like a checkpoint (f32 exactly, bf16 within its rounding).
    let own = dir.path().join("ember");
    export::<NdArray<f32>>(&ckpt, &own, Format::Ember, ExportDtype::F32, &device).unwrap();
    let loaded = generate::load::<NdArray<f32>>(&own, &device).unwrap();
    assert_eq!(logits_of(&loaded.model), want);
    let half = dir.path().join("bf16");
    export::<NdArray<f32>>(&ckpt, &half, Format::Ember, ExportDtype::Bf16, &device).unwrap();
    let (model, _, _) = generate::load_model::<NdArray<f32>>(&half, &device).unwrap();
    let err = max_rel(&logits_of(&model), &want);
    assert!(err > 0.0 && err < 2e-2, "{err}");

    // Nothing is overwritten.
    let e = export::<NdArray<f32>>(&ckpt, &own, Format::Ember, ExportDtype::F32, &device).unwrap_err().to_string();
    assert!(e.contains("already holds"), "{e}");
}
