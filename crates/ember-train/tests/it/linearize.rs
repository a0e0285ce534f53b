//! `ember linearize` end to end on a tiny teacher trained and exported here: attention transfer
//! lowers every layer's output error, stage 2 trains only what it names, both stages resume
//! exactly, and the student is an ordinary checkpoint.
use burn::backend::{Autodiff, NdArray};
use ember_models::hf::export::ExportDtype;
use ember_train::export::{export, export_with, Format};
use ember_train::linearize::{linearize, LinearizeOptions, LinearizeRecipe};
use ember_train::recipe::Recipe;
use ember_train::trainer::{train, Distill, TrainOptions};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

type B = Autodiff<NdArray<f32>>;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn data_keys(cache: &Path) -> String {
    let root = repo();
    format!(
        "tokenizer = {:?}\ntrain = {:?}\nvalid = {:?}\nseq_len = 32\ncache_dir = {:?}\n",
        root.join("data/tokenizer.json").display().to_string(),
        root.join("data/corpus/train.jsonl").display().to_string(),
        root.join("data/corpus/valid.jsonl").display().to_string(),
        cache.display().to_string()
    )
}

/// A 2-layer GQA softmax teacher, trained a little and exported in the Llama layout.
fn teacher(dir: &Path) -> PathBuf {
    let root = repo();
    let sets: Vec<String> = vec![
        "model.d_model=64".into(),
        "model.n_layers=2".into(),
        "model.mixers.attn.kv_heads=2".into(),
        "data.seq_len=32".into(),
        "train.batch_size=4".into(),
        "train.steps=30".into(),
        "train.eval_interval=30".into(),
        "train.checkpoint_interval=30".into(),
        format!("train.out_dir={:?}", dir.join("teacher-run").display().to_string()),
        format!("data.cache_dir={:?}", dir.join("cache").display().to_string()),
        format!("data.tokenizer={:?}", root.join("data/tokenizer.json").display().to_string()),
        format!("data.train={:?}", root.join("data/corpus/train.jsonl").display().to_string()),
        format!("data.valid={:?}", root.join("data/corpus/valid.jsonl").display().to_string()),
    ];
    let mut recipe = Recipe::load(&root.join("recipes/attn-tiny.toml"), &sets).unwrap();
    recipe.log.progress = false;
    let report = train::<B>(&recipe, &TrainOptions { quiet: true, ..Default::default() }, &Default::default()).unwrap();
    let hf = dir.join("teacher-hf");
    export::<NdArray<f32>>(&report.last_checkpoint.unwrap(), &hf, Format::Hf, ExportDtype::F32, &Default::default()).unwrap();
    hf
}

fn recipe(dir: &Path, teacher: &Path, out: &str, mixer: &str, stage1: usize, stage2: &str) -> LinearizeRecipe {
    recipe_with(dir, teacher, out, mixer, stage1, stage2, &[])
}

fn recipe_with(dir: &Path, teacher: &Path, out: &str, mixer: &str, stage1: usize, stage2: &str, sets: &[String]) -> LinearizeRecipe {
    let text = format!(
        "[teacher]\npath = {:?}\n\n[student.mixer]\n{mixer}\n\n[data]\n{}\n[stage1]\nsteps = {stage1}\nbatch_size = 4\noptim = {{ lr = 1e-2, warmup_steps = 0, schedule = \"constant\", weight_decay = 0.0, grad_clip = 0.0 }}\n\n[stage2]\n{stage2}\nbatch_size = 4\noptim = {{ lr = 1e-3, warmup_steps = 0, weight_decay = 0.0 }}\n\n[run]\nname = \"t\"\nout_dir = {:?}\neval_interval = 3\neval_batches = 2\ncheckpoint_interval = 3\n\n[log]\nprogress = false\ntensorboard = false\n",
        teacher.display().to_string(),
        data_keys(&dir.join("cache")),
        dir.join(out).display().to_string(),
    );
    LinearizeRecipe::from_str(&text, &dir.join(format!("{out}.toml")), sets).unwrap()
}

fn quiet() -> LinearizeOptions {
    LinearizeOptions { quiet: true, ..Default::default() }
}

/// Every tensor of the newest checkpoint of `run`, by name.
fn tensors(run: &Path) -> Vec<(String, Vec<u8>)> {
    let ckpt = ember_train::checkpoint::resolve(run).unwrap();
    let bytes = std::fs::read(ckpt.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    v.sort();
    v
}

const LOLCATS: &str = "kind = \"lolcats\"\nfeature_dim = 16\nwindow = 8";

#[test]
fn linearizes_a_tiny_teacher_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let hf = teacher(dir);
    let device = Default::default();
    let no_stage2 = "steps = 0";
    let with_lora = "steps = 4\nlora = { rank = 4, alpha = 8.0 }";

    // Untrained feature maps (stage 1 of 0 steps) are the baseline stage 1 must beat, layer by layer.
    let before = linearize::<B>(&recipe(dir, &hf, "none", LOLCATS, 0, no_stage2), &quiet(), &device).unwrap();
    let whole = recipe(dir, &hf, "whole", LOLCATS, 6, with_lora);
    let after = linearize::<B>(&whole, &quiet(), &device).unwrap();
    assert_eq!(before.layer_errors.len(), 2);
    for ((l, e0), (_, e1)) in before.layer_errors.iter().zip(&after.layer_errors) {
        assert!(e1 < e0, "layer {l}: relative error {e0} before stage 1, {e1} after");
    }
    assert_eq!(after.rows.len(), 3, "teacher, after stage 1, after stage 2");
    assert_eq!(after.rows[0].valid_loss, before.rows[0].valid_loss, "the same held-out text");

    // Stage 2 trained the adapters and nothing else: the mixers are as stage 1 left them (its
    // checkpoints hold the replaced layers' mixers, `layers.{i}.…`), the rest is the teacher's.
    let stage1 = tensors(&dir.join("whole/stage1"));
    let stage2 = tensors(&dir.join("whole/stage2"));
    let teacher_weights = tensors(&dir.join("teacher-run"));
    let mut loras = 0;
    for (name, data) in &stage2 {
        let before = match name.strip_prefix("blocks.").and_then(|r| r.split_once(".mixer.")) {
            Some((l, rest)) => stage1.iter().find(|(n, _)| *n == format!("layers.{l}.{rest}")),
            None => teacher_weights.iter().find(|(n, _)| n == name),
        };
        match before {
            Some((_, before)) => assert_eq!(before, data, "{name} changed in stage 2"),
            None => {
                assert!(name.contains("lora"), "{name} appeared in stage 2");
                loras += 1;
            }
        }
    }
    assert_eq!(loras, 2 * 4 * 2, "A and B on q, k, v, o of both layers");
    let up = stage2.iter().find(|(n, _)| n.contains("q_lora.up")).unwrap();
    assert!(up.1.iter().any(|&b| b != 0), "LoRA B left its zero init");

    // Interrupted in stage 1 and re-run: the same student, bit for bit.
    let parts = recipe(dir, &hf, "parts", LOLCATS, 6, with_lora);
    let stopped = linearize::<B>(&parts, &LinearizeOptions { stop_after: Some(4), ..quiet() }, &device).unwrap();
    assert!(stopped.interrupted);
    let resumed = linearize::<B>(&parts, &quiet(), &device).unwrap();
    assert_eq!(tensors(&dir.join("parts/stage1")), stage1);
    assert_eq!(tensors(&dir.join("parts/stage2")), stage2);
    assert_eq!(resumed.rows[2].valid_loss, after.rows[2].valid_loss);

    // The student is an ordinary checkpoint: generation loads it, export writes it.
    let loaded = ember_train::generate::load::<NdArray<f32>>(&dir.join("whole/stage2"), &device).unwrap();
    assert_eq!(loaded.model.blocks.len(), 2);
    let ckpt = ember_train::checkpoint::resolve(&dir.join("whole/stage2")).unwrap();
    export::<NdArray<f32>>(&ckpt, &dir.join("student-export"), Format::Ember, ExportDtype::F32, &device).unwrap();

    // --merge-lora: the adapters folded into q/k/v/o compute the same logits, with no adapters left.
    export_with::<NdArray<f32>>(&ckpt, &dir.join("merged"), Format::Ember, ExportDtype::F32, true, &device).unwrap();
    let merged = ember_train::generate::load::<NdArray<f32>>(&dir.join("merged"), &device).unwrap();
    let ember_layers::Mixer::Lolcats(m) = &merged.model.blocks[0].mixer else { panic!("a lolcats student") };
    assert!(m.q_lora.is_none() && m.out_lora.is_none());
    let (a, b) = (logits_of(&loaded.model), logits_of(&merged.model));
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
    assert!(err < 1e-5, "merged vs adapted logits: {err}");
}

fn logits_of(model: &ember_models::Lm<NdArray<f32>>) -> Vec<f32> {
    let ids: Vec<i64> = (0..24).map(|i| (i * 37 % 500) as i64).collect();
    let t = burn::tensor::Tensor::<NdArray<f32>, 2, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(ids, [2, 12]), &Default::default());
    model.forward(t).into_data().to_vec::<f32>().unwrap()
}

#[test]
fn lizard_gla_and_based_students_learn_in_stage_1() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let hf = teacher(dir);
    let device = Default::default();
    let lizard = "kind = \"lolcats\"\nfeature_dim = 16\nwindow = 8\ndecay = true\nsinks = 2";
    let gla = "kind = \"gla\"\nchunk_size = 16";
    let based = "kind = \"based_linear\"\nfeature_dim = 8";
    // GLA's new parameters (gates, output gate, head norm) take a gentler rate than feature maps.
    let cases = [("lizard", lizard, "1e-2", "steps = 2\nlora = { rank = 2, alpha = 4.0 }\nkl_weight = 1.0\ntemperature = 2.0"), ("gla", gla, "2e-3", "steps = 2\ntrainable = [\"mixer\"]"), ("based", based, "2e-3", "steps = 2\ntrainable = [\"mixer\"]")];
    for (name, mixer, lr, stage2) in cases {
        let before = linearize::<B>(&recipe(dir, &hf, &format!("{name}-0"), mixer, 0, "steps = 0"), &quiet(), &device).unwrap();
        let sets = [format!("stage1.optim.lr={lr}")];
        let after = linearize::<B>(&recipe_with(dir, &hf, name, mixer, 12, stage2, &sets), &quiet(), &device).unwrap();
        for ((l, e0), (_, e1)) in before.layer_errors.iter().zip(&after.layer_errors) {
            // This 30-step teacher still attends almost uniformly, which BASED's Taylor map with
            // small q/k already reproduces (errors ~1e-5 from the start): it must stay there.
            let bound = if name == "based" { e0.max(1e-4) } else { *e0 };
            assert!(*e1 < bound, "{name} layer {l}: relative error {e0} before stage 1, {e1} after");
        }
        assert!(after.rows[2].valid_loss.is_finite());
    }

    // The GLA student in fla's GLAForCausalLM layout: every tensor under fla's name, `[out, in]`.
    let ckpt = ember_train::checkpoint::resolve(&dir.join("gla/stage2")).unwrap();
    let out = dir.join("gla-fla");
    export::<NdArray<f32>>(&ckpt, &out, Format::Fla, ExportDtype::F32, &device).unwrap();
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "gla");
    assert_eq!(config["expand_k"], 1.0);
    assert_eq!(config["num_heads"], 4);
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let per_layer = ["attn_norm.weight", "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight", "attn.g_proj.weight", "attn.gk_proj.0.weight", "attn.gk_proj.1.weight", "attn.gk_proj.1.bias", "attn.g_norm_swish_gate.weight", "attn.o_proj.weight", "mlp_norm.weight", "mlp.up_proj.weight", "mlp.gate_proj.weight", "mlp.down_proj.weight"];
    let mut want: Vec<String> = (0..2).flat_map(|i| per_layer.iter().map(move |n| format!("model.layers.{i}.{n}"))).collect();
    want.extend(["model.embeddings.weight".to_string(), "model.norm.weight".to_string()]);
    want.sort();
    assert_eq!(names, want);
    assert_eq!(st.tensor("model.layers.0.attn.gk_proj.0.weight").unwrap().shape(), &[16, 64]);
    assert_eq!(st.tensor("model.layers.1.mlp.down_proj.weight").unwrap().shape()[0], 64);

    // ember reads the fla layout back: the same model, the same logits.
    let (config, from_fla) = ember_models::hf::fla::load::<NdArray<f32>>(&out, &device).unwrap();
    assert_eq!(config.layer_mixers(), vec!["gla", "gla"]);
    let student = ember_train::generate::load::<NdArray<f32>>(&dir.join("gla/stage2"), &device).unwrap();
    // (The read-back model has fla's default chunk size: the same function, other rounding.)
    let (a, b) = (logits_of(&from_fla), logits_of(&student.model));
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
    assert!(err < 1e-5, "fla read-back vs student logits: {err}");
}

#[test]
fn distillation_loss_is_plain_cross_entropy_when_the_student_is_the_teacher() {
    use ember_train::trainer::{batch_losses, distill_losses};
    let dir = tempfile::tempdir().unwrap();
    let hf = teacher(dir.path());
    let device = Default::default();
    let teacher = ember_models::hf::load::<B>(&hf, &device).unwrap().model;
    let batch = ember_data::Batch { inputs: (0..64).map(|i| i * 7 % 300).collect(), targets: (0..64).map(|i| (i * 7 + 1) % 300).collect(), batch_size: 2, seq_len: 32 };
    use burn::module::AutodiffModule;
    let d = Distill { teacher: teacher.valid(), ce_weight: 1.0, kl_weight: 5.0, temperature: 2.0 };
    let (total, ce) = distill_losses(&teacher, &batch, &d, &device);
    let plain = batch_losses(&teacher, &batch, &device).ce;
    let (total, ce, plain): (f32, f32, f32) = (total.into_scalar(), ce.into_scalar(), plain.into_scalar());
    assert!((total - plain).abs() < 1e-5 && (ce - plain).abs() < 1e-6, "{total} {ce} {plain}");
}

#[test]
fn shipped_linearize_recipes_parse_and_mistakes_name_their_line() {
    let dir = repo().join("recipes/linearize");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        LinearizeRecipe::from_str(&text, &path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
    }
    assert!(seen >= 3, "lolcats, gla and a real-teacher recipe ship");
    // RAT has a chunk_size too, so only the kind is wrong.
    let path = dir.join("gla-attn-tiny.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let bad = text.replace("kind = \"gla\"", "kind = \"rat\"");
    let line = bad.lines().position(|l| l.contains("kind = \"rat\"")).unwrap() + 1;
    let err = LinearizeRecipe::from_str(&bad, &path, &[]).unwrap_err().to_string();
    assert!(err.contains("student.mixer.kind") && err.contains(&format!(":{line}")), "{err}");
    let lolcats = std::fs::read_to_string(dir.join("lolcats-attn-tiny.toml")).unwrap();
    let err = LinearizeRecipe::from_str(&lolcats, &path, &["stage2.lora.rank=0".into()]).unwrap_err().to_string();
    assert!(err.contains("stage2.lora") && err.contains("rank"), "{err}");
}
