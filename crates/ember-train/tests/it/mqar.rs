//! MQAR as a recipe data source: recipe checks, the accuracy metric, learning, exact resume,
//! early stopping, and the suite runner.
use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Int, Tensor, TensorData};
use ember_data::mqar::Split;
use ember_data::mqar_eval_batches;
use ember_train::mqar::{run_suite, suite_markdown, write_suite, SuiteOptions};
use ember_train::recipe::Recipe;
use ember_train::trainer::{evaluate, train, TrainOptions};
use std::path::{Path, PathBuf};

type B = Autodiff<NdArray<f32>>;
type I = NdArray<f32>;

/// A tiny MQAR recipe: conv + `mixer`, vocab 64, trained on T = 16 and 32 with 2 and 4 pairs.
fn recipe_text(name: &str, mixer: &str, out: &Path) -> String {
    format!(
        r#"
[model]
vocab_size = 64
d_model = 32
n_layers = 2

[model.mlp]
kind = "none"

[model.mixers.conv]
kind = "base_conv"
kernel_size = 3

[model.mixers.mixer]
{mixer}

[model.schedule]
default = "conv"
at.mixer = [1]

[data]
seq_len = 32

[data.mqar]
vocab_size = 64
train = [{{ pairs = 2, seq_len = 16, examples = 2000 }}, {{ pairs = 4, examples = 2000 }}]
test = [{{ pairs = 2, examples = 64 }}, {{ pairs = 4, examples = 64 }}, {{ pairs = 6, examples = 32, seq_len = 48 }}]

[optim]
lr = 1e-2
warmup_steps = 10
weight_decay = 0.0

[train]
name = "{name}"
out_dir = {out:?}
batch_size = 32
steps = 150
eval_interval = 50
eval_batches = 4
checkpoint_interval = 1000
seed = 3

[log]
samples = 0
progress = false
"#
    )
}

const ATTENTION: &str = "kind = \"attention\"\nheads = 2";

fn recipe(dir: &Path, name: &str, mixer: &str, sets: &[&str]) -> Recipe {
    let text = recipe_text(name, mixer, &dir.join(name));
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Recipe::from_str(&text, &dir.join(format!("{name}.toml")), &sets).unwrap_or_else(|e| panic!("{e}"))
}

fn quiet() -> TrainOptions {
    TrainOptions { quiet: true, ..Default::default() }
}

#[test]
fn recipe_mistakes_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = recipe_text("r", ATTENTION, dir.path());
    let path = dir.path().join("r.toml");
    let err = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Recipe::from_str(&text, &path, &sets).unwrap_err()
    };
    let e = err(&["data.tokenizer=\"tok.json\""]);
    assert_eq!(e.key(), Some("data.tokenizer"), "{e}");
    assert!(e.to_string().contains("generates its own tokens"), "{e}");
    let e = err(&["model.vocab_size=32"]);
    assert_eq!(e.key(), Some("model.vocab_size"), "{e}");
    let e = err(&["data.mqar.train=[{ pairs = 9, examples = 10 }]"]);
    assert_eq!(e.key(), Some("data.mqar.train[0].pairs"), "{e}");
    let e = err(&["data.mqar.train=[{ pairs = 2, examples = 10, seq_len = 33 }]"]);
    assert_eq!(e.key(), Some("data.mqar.train[0].seq_len"), "{e}");
    let e = err(&["data.mqar.test=[{ pairs = 2, examples = 0 }]"]);
    assert_eq!(e.key(), Some("data.mqar.test[0].examples"), "{e}");
    let e = err(&["train.stop_accuracy=1.5"]);
    assert_eq!(e.key(), Some("train.stop_accuracy"), "{e}");
    // Without [data.mqar] a recipe is a text recipe, and needs its tokenizer.
    let (start, end) = (text.find("[data.mqar]").unwrap(), text.find("[optim]").unwrap());
    let text = format!("{}{}", &text[..start], &text[end..]);
    let e = Recipe::from_str(&text, &path, &[]).unwrap_err();
    assert_eq!(e.key(), Some("data.tokenizer"), "{e}");
    assert!(e.to_string().contains("[data.mqar]"), "{e}");
}

#[test]
fn accuracy_is_the_argmax_hit_rate_at_the_queries() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "acc", ATTENTION, &[]);
    let device = Default::default();
    let model = r.model.init_seeded::<I>(1, &device);
    let mqar = r.data.mqar.as_ref().unwrap();
    let batches = mqar_eval_batches(&mqar.dataset(Split::Test, 32, 3), 16, Some(3)).unwrap();
    let eval = evaluate(&model, &batches, &device);
    // The same from the full logits, by hand: per sequence, the share of its queries whose
    // argmax is the target; then the mean over sequences.
    let mut per_sequence = Vec::new();
    for batch in &batches {
        let ids: Vec<i64> = batch.inputs.iter().map(|&t| t as i64).collect();
        let logits = model.forward(Tensor::<I, 2, Int>::from_data(TensorData::new(ids, [batch.batch_size, batch.seq_len]), &device));
        let argmax: Vec<i64> = logits.argmax(2).into_data().convert::<i64>().to_vec().unwrap();
        for row in 0..batch.batch_size {
            let span = row * batch.seq_len..(row + 1) * batch.seq_len;
            let queries: Vec<usize> = span.filter(|&i| batch.targets[i] != ember_data::IGNORE).collect();
            let hits = queries.iter().filter(|&&i| argmax[i] == batch.targets[i] as i64).count();
            per_sequence.push(hits as f64 / queries.len() as f64);
        }
    }
    let expected = per_sequence.iter().sum::<f64>() / per_sequence.len() as f64;
    assert_eq!(eval.sequences, per_sequence.len());
    assert!((eval.accuracy - expected).abs() < 1e-12, "{} vs {expected}", eval.accuracy);
    assert!(eval.loss.is_finite() && eval.loss > 0.0);
}

#[test]
fn the_loss_over_scored_positions_equals_the_full_masked_loss_with_its_gradients() {
    // The trainer sends only the scored positions through the output head. The same loss from
    // the full [B, T, vocab] logits with the ignored positions masked out, by hand, must give
    // the same value and the same gradients.
    use burn::tensor::activation::log_softmax;
    use ember_train::trainer::batch_loss;
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "scored", "kind = \"gla\"\nheads = 2\nchunk_size = 16", &[]);
    let device = Default::default();
    let model = r.model.init_seeded::<B>(4, &device);
    let mqar = r.data.mqar.as_ref().unwrap();
    let batch = mqar_eval_batches(&mqar.dataset(Split::Train, 32, 3), 8, Some(1)).unwrap().remove(0);
    let (b, t) = (batch.batch_size, batch.seq_len);
    assert!(batch.targets.iter().any(|&x| x == ember_data::IGNORE) && batch.targets.iter().any(|&x| x != ember_data::IGNORE));

    let scored = batch_loss(&model, &batch, &device);
    let ids: Vec<i64> = batch.inputs.iter().map(|&x| x as i64).collect();
    let logits = model.forward(Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, t]), &device));
    let vocab = logits.dims()[2];
    let log_p = log_softmax(logits.reshape([b * t, vocab]), 1);
    // One-hot of each scored target; an all-zero row for an ignored position.
    let mut onehot = vec![0f32; b * t * vocab];
    let mut n = 0;
    for (i, &target) in batch.targets.iter().enumerate() {
        if target != ember_data::IGNORE {
            onehot[i * vocab + target as usize] = 1.0;
            n += 1;
        }
    }
    let onehot = Tensor::<B, 2>::from_data(TensorData::new(onehot, [b * t, vocab]), &device);
    let full = (log_p * onehot).sum().neg() / n as f64;

    // The training step's form: the same blocked loss with the head's hand-written backward.
    let fused = ember_train::trainer::training_losses(&model, &batch, &device).ce;

    let (a, e) = (scored.clone().into_scalar(), full.clone().into_scalar());
    assert!((a - e).abs() < 1e-5 * e.abs(), "loss {a} vs {e}");
    let f = fused.clone().into_scalar();
    assert!((f - e).abs() < 1e-5 * e.abs(), "training loss {f} vs {e}");
    let (ga, ge, gf) = (scored.backward(), full.backward(), fused.backward());
    let grads = |g: &<B as burn::tensor::backend::AutodiffBackend>::Gradients| {
        let embed = model.embed.weight.grad(g).unwrap().into_data().to_vec::<f32>().unwrap();
        let ember_layers::Mixer::Gla(gla) = &model.blocks[1].mixer else { panic!("layer 1 is GLA") };
        let q = gla.q.weight.grad(g).unwrap().into_data().to_vec::<f32>().unwrap();
        [embed, q]
    };
    for g in [&ga, &gf] {
        for (x, y) in grads(g).iter().zip(grads(&ge).iter()) {
            let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(scale > 0.0 && diff <= 1e-4 * scale, "gradients differ by {diff} (scale {scale})");
        }
    }
}

#[test]
fn attention_learns_to_recall_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let whole = recipe(dir.path(), "whole", ATTENTION, &[]);
    let report = train::<B>(&whole, &quiet(), &device).unwrap();
    let accuracy: Vec<f64> = report.val_accuracies.iter().map(|&(_, a)| a).collect();
    eprintln!("attention MQAR validation accuracy {accuracy:?}, loss {:?}", report.val_losses);
    // Chance is about 1/32 (a value is one of 32 tokens): recall must be learned.
    assert!(*accuracy.last().unwrap() > 0.5, "{accuracy:?}");

    // 60 steps, stopped at 25 and resumed, equal 60 straight steps.
    let sets = ["train.steps=60", "train.eval_interval=30"];
    let a = train::<B>(&recipe(dir.path(), "straight", ATTENTION, &sets), &quiet(), &device).unwrap();
    let parts = recipe(dir.path(), "parts", ATTENTION, &sets);
    let first = train::<B>(&parts, &TrainOptions { stop_after: Some(25), ..quiet() }, &device).unwrap();
    let second = train::<B>(&parts, &TrainOptions { resume: Some(parts.train.out_dir.clone()), ..quiet() }, &device).unwrap();
    let resumed: Vec<_> = first.losses.iter().chain(&second.losses).cloned().collect();
    assert_eq!(resumed, a.losses);
    assert_eq!(second.val_accuracies.last(), a.val_accuracies.last());
}

#[test]
fn a_run_stops_at_its_target_accuracy_and_stays_finished() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    // Recall above 0.3 comes within the first 100 of the 150 steps (it is ~0.9 at the end).
    let r = recipe(dir.path(), "early", ATTENTION, &["train.stop_accuracy=0.3", "train.eval_interval=25"]);
    let report = train::<B>(&r, &quiet(), &device).unwrap();
    let step = report.final_step;
    assert!(report.stopped_early && step < 150 && step % 25 == 0, "{report:?}");
    assert!(report.val_accuracies.last().unwrap().1 >= 0.3);
    assert!(report.val_accuracies[..report.val_accuracies.len() - 1].iter().all(|&(_, a)| a < 0.3));
    assert!(report.last_checkpoint.as_ref().unwrap().ends_with(format!("step-{step:06}")));
    // Resuming a finished run trains no further.
    let again = train::<B>(&r, &TrainOptions { resume: Some(r.train.out_dir.clone()), ..quiet() }, &device).unwrap();
    assert_eq!((again.final_step, again.losses.len()), (step, 0));
}

#[test]
fn the_suite_trains_evaluates_and_skips_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("suite");
    std::fs::create_dir_all(&suite).unwrap();
    let mixers = [("attention", ATTENTION), ("gla", "kind = \"gla\"\nheads = 2\nchunk_size = 16")];
    for (name, mixer) in mixers {
        std::fs::write(suite.join(format!("{name}.toml")), recipe_text(name, mixer, &dir.path().join("runs").join(name))).unwrap();
    }
    let recipes: Vec<PathBuf> = ember_train::mqar::suite_recipes(&suite).unwrap();
    let opts = SuiteOptions {
        overrides: vec!["train.steps=12".into(), "train.eval_interval=6".into()],
        widths: vec![16, 32],
        lrs: vec![3e-3, 3e-2],
        batch_size: 32,
        jobs: 2,
        quiet: true,
    };
    let device = Default::default();
    let rows = run_suite::<B>(&recipes, &opts, &device).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.recipe.as_str()).collect();
    assert_eq!(
        names,
        ["attention-d16-lr3e-3", "attention-d16-lr3e-2", "attention-d32-lr3e-3", "attention-d32-lr3e-2",
         "gla-d16-lr3e-3", "gla-d16-lr3e-2", "gla-d32-lr3e-3", "gla-d32-lr3e-2"]
    );
    // Each run trained at its own rate, in its own directory, and exactly one rate wins per
    // recipe and width: the one with the best mean accuracy.
    for pair in rows.chunks(2) {
        assert_eq!((pair[0].lr, pair[1].lr), (3e-3, 3e-2));
        assert_eq!((pair[0].file.as_str(), pair[0].d_model), (pair[1].file.as_str(), pair[1].d_model));
        let saved = std::fs::read_to_string(dir.path().join("runs").join(&pair[1].recipe).join("metrics.jsonl")).unwrap();
        assert!(saved.contains("\"train/lr\""), "{} trained in its own directory", pair[1].recipe);
        assert_eq!(pair.iter().filter(|r| r.best).count(), 1);
        let best = pair.iter().find(|r| r.best).unwrap();
        assert!(pair.iter().all(|r| ember_train::mqar::mean_accuracy(r) <= ember_train::mqar::mean_accuracy(best)));
    }
    for row in &rows {
        assert_eq!(row.steps, 12);
        assert_eq!(row.layers, if row.recipe.starts_with("gla") { "base_conv+gla" } else { "base_conv+attention" });
        let segments: Vec<(usize, usize)> = row.results.iter().map(|s| (s.seq_len, s.pairs)).collect();
        assert_eq!(segments, [(32, 2), (32, 4), (48, 6)]);
        assert!(row.results.iter().all(|s| (0.0..=1.0).contains(&s.accuracy)));
    }
    // Wider models hold more state.
    assert!(rows[2].state_floats > rows[0].state_floats && rows[6].state_floats > rows[4].state_floats);
    let metrics = dir.path().join("runs/gla-d32-lr3e-2/metrics.jsonl");
    let before = std::fs::read_to_string(&metrics).unwrap();
    // A second run finds every run finished: it only evaluates, with the same results.
    let again = run_suite::<B>(&recipes, &opts, &device).unwrap();
    assert_eq!(std::fs::read_to_string(&metrics).unwrap(), before);
    for (a, b) in rows.iter().zip(&again) {
        assert_eq!(a.results, b.results);
        assert_eq!(a.best, b.best);
    }
    let table = suite_markdown(&rows);
    assert_eq!(table.matches("**").count(), 2 * 4, "one bold winner per recipe and width: {table}");
    // A repeated rate would train two runs into one directory: refused.
    let twice = SuiteOptions { lrs: vec![3e-3, 3e-3], ..opts.clone() };
    let err = run_suite::<B>(&recipes, &twice, &device).unwrap_err().to_string();
    assert!(err.contains("--lrs lists 3e-3 twice"), "{err}");
    assert!(table.contains("| T=32, 2 pairs | T=32, 4 pairs | T=48, 6 pairs |"), "{table}");
    assert_eq!(table.lines().count(), 2 + rows.len());
    let written = write_suite(&rows, &dir.path().join("out"), "ember eval mqar --suite x").unwrap();
    let csv = std::fs::read_to_string(&written[1]).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3 * rows.len());
    // One figure per test length (32 and 48), PNG and SVG, with a line per recipe file.
    let names: Vec<String> = written[3..].iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["accuracy_vs_state_T32.png", "accuracy_vs_state_T32.svg", "accuracy_vs_state_T48.png", "accuracy_vs_state_T48.svg"]);
    let svg: String = std::fs::read_to_string(&written[4]).unwrap().split_whitespace().collect();
    assert!(svg.contains(">attention<") && svg.contains(">gla<"), "legend labels in the SVG: {svg}");
    assert!(std::fs::metadata(&written[3]).unwrap().len() > 1000);
}

#[test]
fn the_best_learning_rate_is_the_highest_mean_accuracy_per_recipe_and_width() {
    use ember_train::mqar::{mark_best, SegmentResult, SuiteRow};
    let row = |file: &str, d_model: usize, lr: f64, accuracies: &[f64]| SuiteRow {
        recipe: format!("{file}-d{d_model}-lr{lr:.1e}"),
        file: file.into(),
        layers: "base_conv+gla".into(),
        d_model,
        lr,
        best: true,
        params: 0,
        state_floats: 0,
        seq_len: 64,
        steps: 1,
        stopped_early: false,
        train_secs: 0.0,
        results: accuracies.iter().map(|&accuracy| SegmentResult { seq_len: 64, pairs: 4, examples: 1, accuracy, loss: 0.0 }).collect(),
    };
    let mut rows = vec![
        row("gla", 64, 1e-3, &[0.9, 0.1]), // mean 0.5
        row("gla", 64, 1e-2, &[0.6, 0.6]), // mean 0.6: best of gla at 64
        row("gla", 128, 1e-3, &[0.25, 0.25]), // equal means: the first wins
        row("gla", 128, 1e-2, &[0.5, 0.0]),
        row("based", 64, 1e-3, &[0.0, 0.0]), // alone: best
    ];
    mark_best(&mut rows);
    let best: Vec<bool> = rows.iter().map(|r| r.best).collect();
    assert_eq!(best, [false, true, true, false, true]);
}

#[test]
fn a_suite_run_in_parts_gets_one_table_from_the_earlier_parts_results() {
    use ember_train::mqar::{merge_rows, read_suite_rows, SegmentResult, SuiteRow};
    let row = |file: &str, lr: f64, accuracy: f64| SuiteRow {
        recipe: format!("{file}-d64-lr{lr:e}"),
        file: file.into(),
        layers: "zoology_conv+gla".into(),
        d_model: 64,
        lr,
        best: false,
        params: 10,
        state_floats: 20,
        seq_len: 64,
        steps: 7,
        stopped_early: false,
        train_secs: 1.5,
        results: vec![SegmentResult { seq_len: 64, pairs: 4, examples: 8, accuracy, loss: 0.25 }],
    };
    // Part 1 ran gla at two rates and attention at one; its results.jsonl is all that is left.
    let dir = tempfile::tempdir().unwrap();
    let part1 = vec![row("gla", 1e-3, 0.9), row("gla", 1e-2, 0.5), row("attention", 1e-3, 0.3)];
    let written = write_suite(&part1, &dir.path().join("part1"), "ember eval mqar --suite x --only gla,attention").unwrap();
    let earlier = read_suite_rows(&written[2]).unwrap();
    assert_eq!(earlier.len(), 3);
    assert_eq!((earlier[0].recipe.as_str(), earlier[0].results[0].accuracy, earlier[0].train_secs), ("gla-d64-lr1e-3", 0.9, 1.5));
    // Part 2 trains based and reruns gla at 1e-2, now better than part 1's gla at 1e-3.
    let part2 = vec![row("based", 1e-3, 0.4), row("gla", 1e-2, 0.95)];
    // The same part included twice (two --include of one file) adds its rows once.
    let twice: Vec<SuiteRow> = earlier.iter().chain(&earlier).cloned().collect();
    let merged = merge_rows(part2, twice);
    let names: Vec<&str> = merged.iter().map(|r| r.recipe.as_str()).collect();
    assert_eq!(names, ["attention-d64-lr1e-3", "based-d64-lr1e-3", "gla-d64-lr1e-3", "gla-d64-lr1e-2"]);
    let gla_rerun = &merged[3];
    assert_eq!(gla_rerun.results[0].accuracy, 0.95, "the rerun replaces the earlier row");
    let best: Vec<bool> = merged.iter().map(|r| r.best).collect();
    assert_eq!(best, [true, true, false, true], "the best rate is chosen again over both parts");
    // A file that is not a suite's results names itself and the line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"recipe\":\"x\"}\n").unwrap();
    let err = format!("{:#}", read_suite_rows(&bad).unwrap_err());
    assert!(err.contains("bad.jsonl line 1"), "{err}");
    let err = format!("{:#}", read_suite_rows(&dir.path().join("missing.jsonl")).unwrap_err());
    assert!(err.contains("missing.jsonl"), "{err}");
}

fn suite_dir(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes").join(dir)
}

#[test]
fn the_shipped_mqar_suites_load_and_validate() {
    for dir in ["mqar", "mqar/zoology", "niah"] {
        for path in ember_train::mqar::suite_recipes(&suite_dir(dir)).unwrap() {
            let r = Recipe::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(Some(r.train.name.as_str()), path.file_stem().and_then(|s| s.to_str()), "{}", path.display());
        }
    }
}

#[test]
fn the_zoology_suite_keeps_zoologys_epochs() {
    // 32 epochs of the whole mixture in batches of 256, the cosine stepped once an epoch, the
    // whole test set validated once an epoch: the numbers in the recipes must agree with their data.
    for path in ember_train::mqar::suite_recipes(&suite_dir("mqar/zoology")).unwrap() {
        let r = Recipe::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
        let mqar = r.data.mqar.as_ref().unwrap();
        let batch = r.train.batch_size;
        let per_epoch: usize = mqar.train.iter().map(|s| s.examples.div_ceil(batch)).sum();
        let test_batches: usize = mqar.test.iter().map(|s| s.examples.div_ceil(batch)).sum();
        let name = path.display();
        assert_eq!((batch, mqar.train.iter().map(|s| s.examples).sum::<usize>()), (256, 180_000), "{name}");
        assert_eq!(r.optim.schedule_every, per_epoch, "{name}");
        assert_eq!(r.steps(), 32 * per_epoch, "{name}");
        assert_eq!(r.train.eval_interval, per_epoch, "{name}");
        assert!(r.train.eval_batches >= test_batches, "{name}");
        assert_eq!((r.optim.betas, r.optim.grad_clip, r.optim.warmup_steps, r.optim.no_decay.is_empty()), ([0.9, 0.999], 0.0, 0, true), "{name}");
        assert!(mqar.random_non_queries && mqar.order == ember_data::synthetic::Order::Sequential, "{name}");
    }
}

#[test]
fn the_cpu_suite_is_one_pass_of_the_zoology_suites_model_and_optimizer() {
    // Each CPU recipe must train its Zoology twin's model with the same optimizer, one pass over
    // its (smaller) mixture: only the data sizes, batch and schedule length may differ.
    let cpu = ember_train::mqar::suite_recipes(&suite_dir("mqar")).unwrap();
    let zoology = ember_train::mqar::suite_recipes(&suite_dir("mqar/zoology")).unwrap();
    let names = |paths: &[PathBuf]| paths.iter().map(|p| p.file_name().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(names(&cpu), names(&zoology), "the two suites hold the same mixers");
    for (c, z) in cpu.iter().zip(&zoology) {
        let (c, z) = (Recipe::load(c, &[]).unwrap(), Recipe::load(z, &[]).unwrap());
        let name = &c.train.name;
        assert_eq!(c.model, z.model, "{name}: the model differs from its Zoology twin");
        let (cd, zd) = (c.data.mqar.as_ref().unwrap(), z.data.mqar.as_ref().unwrap());
        assert_eq!((cd.vocab_size, cd.random_non_queries, cd.order), (zd.vocab_size, zd.random_non_queries, zd.order), "{name}");
        let shapes = |d: &ember_data::mqar::MqarConfig| d.train.iter().map(|s| (s.pairs, s.seq_len)).collect::<Vec<_>>();
        assert_eq!(shapes(cd), shapes(zd), "{name}: the training mixture's segments differ");
        let per_pass: usize = cd.train.iter().map(|s| s.examples.div_ceil(c.train.batch_size)).sum();
        assert_eq!(c.steps(), per_pass, "{name}: not one pass over the mixture");
        assert_eq!((c.optim.betas, c.optim.weight_decay, c.optim.grad_clip, c.optim.warmup_steps, &c.optim.no_decay), (z.optim.betas, z.optim.weight_decay, z.optim.grad_clip, z.optim.warmup_steps, &z.optim.no_decay), "{name}");
        assert_eq!((c.train.stop_accuracy, c.train.seed), (z.train.stop_accuracy, z.train.seed), "{name}");
    }
}

#[test]
fn only_picks_suite_recipes_by_name_and_refuses_an_unknown_one() {
    let all = ember_train::mqar::suite_recipes(&suite_dir("mqar")).unwrap();
    let picked = ember_train::mqar::select_recipes(all.clone(), &["gla".into(), "attention".into()]).unwrap();
    let stems: Vec<_> = picked.iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(stems, ["attention", "gla"], "the suite's order, only the names given");
    assert_eq!(ember_train::mqar::select_recipes(all.clone(), &[]).unwrap(), all);
    let err = ember_train::mqar::select_recipes(all, &["glaa".into()]).unwrap_err().to_string();
    assert!(err.contains("\"glaa\"") && err.contains("linear-attention"), "names the typo and the suite's recipes: {err}");
}
