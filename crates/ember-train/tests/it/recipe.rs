//! Recipe parsing, validation and error messages, and the learning-rate schedule.
use ember_train::recipe::{ErrorKind, LrSchedule, OptimConfig, Origin, Recipe, RecipeError};
use std::path::{Path, PathBuf};

const ORIGIN: &str = "recipes/x.toml";

/// A small valid recipe; tests edit one line of it and check where the error points.
const BASE: &str = r#"# a test recipe
[model]
vocab_size = 256
d_model = 64
n_layers = 4

[model.mixers.conv]
kind = "base_conv"

[model.mixers.lin]
kind = "based_linear"
heads = 4
feature_dim = 8

[model.schedule]
default = "conv"
at.lin = [1]

[data]
tokenizer = "tok.json"
train = "train.jsonl"
seq_len = 32

[optim]
lr = 1e-3
warmup_steps = 2

[train]
name = "t"
batch_size = 2
steps = 10
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn shipped(name: &str) -> (PathBuf, String) {
    let path = repo().join("recipes").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

fn sets(overrides: &[&str]) -> Vec<String> {
    overrides.iter().map(|s| s.to_string()).collect()
}

fn parse(text: &str, overrides: &[&str]) -> Result<Recipe, RecipeError> {
    Recipe::from_str(text, Path::new(ORIGIN), &sets(overrides))
}

fn err(text: &str, overrides: &[&str]) -> RecipeError {
    match parse(text, overrides) {
        Ok(_) => panic!("expected an error for overrides {overrides:?} and text:\n{text}"),
        Err(e) => e,
    }
}

/// `BASE` with the line `old` replaced by `new` (which may span several lines).
fn edit(old: &str, new: &str) -> String {
    assert!(BASE.lines().any(|l| l == old), "BASE has no line {old:?}");
    BASE.lines().map(|l| if l == old { new.to_string() } else { l.to_string() }).collect::<Vec<_>>().join("\n")
}

/// 1-based number of the first line of `text` equal to `line`.
fn line_of(text: &str, line: &str) -> usize {
    text.lines().position(|l| l == line).unwrap_or_else(|| panic!("no line {line:?}")) + 1
}

/// Asserts the error points at `line` of the file, is about `key`, and its message says `what`.
fn assert_at(e: &RecipeError, line: usize, key: &str, what: &str) {
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{ORIGIN}:{line}: ")), "expected {ORIGIN}:{line}: in {msg:?}");
    assert_eq!(e.line(), Some(line), "{msg}");
    assert_eq!(e.key(), Some(key), "{msg}");
    assert!(msg.contains(what), "expected {what:?} in {msg:?}");
}

#[test]
fn base_recipe_is_valid_and_fills_defaults() {
    let r = parse(BASE, &[]).unwrap();
    assert_eq!(r.steps(), 10);
    assert_eq!(r.train.out_dir, Path::new("checkpoints/t"));
    assert_eq!(r.optim.betas, [0.9, 0.95]);
    assert_eq!(r.optim.schedule, LrSchedule::Cosine);
    assert_eq!(r.optim.no_decay, ["norm", "bias", "embed"]);
    assert_eq!(r.data.text_field, "text");
    assert_eq!(r.log.prompt, "The");
    assert_eq!(r.train.device, "auto");
    assert_eq!(r.train.precision(), ember_train::recipe::Precision::F32);
    assert_eq!(r.source.text, BASE);
    assert_eq!(r.model.layer_mixers(), ["conv", "lin", "conv", "conv"]);
}

// ---- shipped recipes ----

const SHIPPED: &[&str] = &["based-360m.toml", "attn-360m.toml", "based-tiny.toml", "attn-tiny.toml"];

#[test]
fn shipped_recipes_parse_and_validate() {
    for name in SHIPPED {
        let (path, text) = shipped(name);
        let r = Recipe::from_str(&text, &path, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(format!("{}.toml", r.train.name), *name);
        assert!(r.optim.warmup_steps < r.steps());
        assert_eq!(r.data.tokenizer.as_deref(), Some(Path::new("data/tokenizer.json")), "{name}");
        let report = r.check_report();
        let rows = report.lines().filter(|l| {
            let mut words = l.split_whitespace();
            words.next().is_some_and(|w| w.parse::<usize>().is_ok())
                && words.next().is_some_and(|w| r.model.mixers.contains_key(w))
        });
        assert_eq!(rows.count(), r.model.n_layers, "{report}");
    }
}

#[test]
fn shipped_recipes_load_with_the_bundled_data() {
    // The test runs in crates/ember-train, so `data/...` resolves through the recipe's parent dir.
    for name in SHIPPED {
        let r = Recipe::load(&repo().join("recipes").join(name), &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(r.data.tokenizer.as_ref().unwrap().is_file(), "{:?}", r.data.tokenizer);
        assert!(r.data.train.as_ref().unwrap().is_file());
        assert!(r.data.valid.as_ref().unwrap().is_file());
    }
}

#[test]
fn based_360m_matches_the_reference_layout() {
    let (path, text) = shipped("based-360m.toml");
    let r = Recipe::from_str(&text, &path, &[]).unwrap();
    let m = &r.model;
    assert_eq!((m.n_layers, m.d_model, m.padded_vocab()), (27, 1024, 50280));
    let mixers = m.layer_mixers();
    for (layer, name) in mixers.iter().enumerate() {
        let kind = m.mixers[*name].kind();
        let want = match layer {
            1 | 6 | 11 | 16 | 21 => "based_linear",
            2 | 7 | 12 | 17 | 22 => "attention",
            _ => "base_conv",
        };
        assert_eq!(kind, want, "layer {layer}");
    }
    assert_eq!(m.mlp.hidden_width(1024), 2048);
    assert_eq!((r.optim.lr, r.optim.min_lr, r.optim.warmup_steps, r.steps()), (8e-4, 8e-5, 200, 20000));
    assert_eq!(r.tokens_per_step(), 256 * 2048);
    let n = m.num_params();
    assert!((355_000_000..370_000_000).contains(&n), "{n}");
    let report = r.check_report();
    println!("{report}");
    assert!(report.contains(&format!("({n})")), "{report}");
}

#[test]
fn attn_360m_has_a_matching_budget() {
    let (path, text) = shipped("attn-360m.toml");
    let attn = Recipe::from_str(&text, &path, &[]).unwrap();
    let (path, text) = shipped("based-360m.toml");
    let based = Recipe::from_str(&text, &path, &[]).unwrap();
    let (a, b) = (attn.model.num_params() as f64, based.model.num_params() as f64);
    assert!((a / b - 1.0).abs() < 0.02, "attn {a} vs based {b}");
    assert!(attn.model.mixers.values().all(|m| m.kind() == "attention"));
    assert_eq!(attn.tokens_per_step(), based.tokens_per_step());
    assert_eq!(attn.optim, based.optim);
}

#[test]
fn the_annotated_example_in_the_docs_is_a_valid_recipe() {
    let path = repo().join("docs/RECIPES.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let start = doc.rfind("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let example = Recipe::from_str(&doc[start..end], &path, &[]).unwrap_or_else(|e| panic!("{e}"));
    // It claims to be based-tiny.toml spelled out.
    let (tiny_path, text) = shipped("based-tiny.toml");
    let tiny = Recipe::from_str(&text, &tiny_path, &[]).unwrap();
    assert_eq!((example.model, example.data, example.optim, example.train, example.log), (tiny.model, tiny.data, tiny.optim, tiny.train, tiny.log));
}

#[test]
fn the_docs_have_a_row_for_every_key() {
    let doc = std::fs::read_to_string(repo().join("docs/RECIPES.md")).unwrap();
    let (path, text) = shipped("based-tiny.toml");
    let r = Recipe::from_str(&text, &path, &[]).unwrap();
    // Every key the structs serialize (absent options aside), except user-chosen names.
    fn walk(v: &toml::Value, parent: Option<&str>, doc: &str, seen: &mut usize) {
        if let toml::Value::Table(t) = v {
            for (k, child) in t {
                let user_named = matches!(parent, Some("mixers" | "at"));
                let row = if parent.is_none() { format!("| `[{k}]` |") } else { format!("| `{k}` |") };
                if !user_named {
                    assert!(doc.contains(&row), "docs/RECIPES.md has no row {row:?} (under {parent:?})");
                    *seen += 1;
                }
                walk(child, Some(if user_named { "" } else { k }), doc, seen);
            }
        }
    }
    let mut seen = 0;
    walk(&toml::Value::try_from(&r).unwrap(), None, &doc, &mut seen);
    assert!(seen > 50, "{seen}");
    for optional in ["kv_heads", "head_dim", "hidden", "valid", "steps", "tokens"] {
        assert!(doc.contains(&format!("| `{optional}` |")), "{optional}");
    }
}

#[test]
fn tiny_recipes_are_small() {
    for name in ["based-tiny.toml", "attn-tiny.toml"] {
        let (path, text) = shipped(name);
        let r = Recipe::from_str(&text, &path, &[]).unwrap();
        assert_eq!((r.model.d_model, r.model.vocab_size, r.data.seq_len), (128, 8192, 128));
        assert!(r.model.num_params() < 3_000_000, "{}", r.model.num_params());
    }
}

// ---- errors: syntax, unknown keys, types ----

#[test]
fn syntax_error_has_line_and_column() {
    let text = edit("d_model = 64", "d_model = = 64");
    let e = err(&text, &[]);
    let line = line_of(&text, "d_model = = 64");
    assert!(matches!(e.origin, Origin::Line { line: l, column: Some(_) } if l == line), "{e}");
    assert!(e.to_string().starts_with(&format!("{ORIGIN}:{line}:")), "{e}");
    assert!(e.to_string().contains("TOML syntax error"), "{e}");
}

#[test]
fn unknown_top_level_key() {
    let text = format!("{BASE}\n[logg]\nevery = 5\n");
    let e = err(&text, &[]);
    assert_at(&e, line_of(&text, "[logg]"), "logg", "unknown key logg (did you mean log?)");
}

#[test]
fn unknown_nested_key_with_suggestion() {
    let text = edit("d_model = 64", "d_model = 64\ndmodel = 64");
    let e = err(&text, &[]);
    assert_eq!(
        e.to_string(),
        format!("{ORIGIN}:{}: unknown key model.dmodel (did you mean d_model?)", line_of(&text, "dmodel = 64"))
    );
}

#[test]
fn unknown_key_inside_a_mixer_table() {
    let text = edit("heads = 4", "headz = 4");
    let e = err(&text, &[]);
    assert_at(&e, line_of(&text, "headz = 4"), "model.mixers.lin.headz", "(did you mean heads?)");
}

#[test]
fn wrong_type_inside_a_mixer_table() {
    let text = edit("feature_dim = 8", "feature_dim = \"eight\"");
    let e = err(&text, &[]);
    assert_at(&e, line_of(&text, "feature_dim = \"eight\""), "model.mixers.lin.feature_dim", "invalid type: string");
}

#[test]
fn bad_enum_value_inside_a_mixer_table() {
    let text = edit("feature_dim = 8", "feature_dim = 8\nfeature_map = \"fancy\"");
    let e = err(&text, &[]);
    assert_at(&e, line_of(&text, "feature_map = \"fancy\""), "model.mixers.lin.feature_map", "unknown variant `fancy`");
}

#[test]
fn unknown_mixer_kind_suggests_the_closest() {
    let text = edit("kind = \"based_linear\"", "kind = \"based_linaer\"");
    let e = err(&text, &[]);
    assert_at(&e, line_of(&text, "kind = \"based_linaer\""), "model.mixers.lin.kind", "did you mean \"based_linear\"?");
}

#[test]
fn mixer_kind_of_the_wrong_type() {
    let text = edit("kind = \"based_linear\"", "kind = 3");
    let e = err(&text, &[]);
    let kinds = ember_layers::mixer::KINDS.join(", ");
    assert_at(&e, line_of(&text, "kind = 3"), "model.mixers.lin.kind", &format!("expected a string (one of: {kinds})"));
}

#[test]
fn mixer_without_kind() {
    let text = edit("kind = \"based_linear\"", "");
    let e = err(&text, &[]);
    assert_eq!(e.key(), Some("model.mixers.lin.kind"));
    assert!(e.to_string().starts_with(&format!("{ORIGIN}: missing key model.mixers.lin.kind")), "{e}");
}

#[test]
fn wrong_type_names_key_and_line() {
    let text = edit("lr = 1e-3", "lr = \"fast\"");
    let e = err(&text, &[]);
    assert_eq!(
        e.to_string(),
        format!("{ORIGIN}:{}: key optim.lr: invalid type: string \"fast\", expected f64", line_of(&text, "lr = \"fast\""))
    );
}

#[test]
fn wrong_array_element_type() {
    let text = edit("at.lin = [1]", "at.lin = [1, \"two\"]");
    let e = err(&text, &[]);
    assert_at(&e, line_of(&text, "at.lin = [1, \"two\"]"), "model.schedule.at.lin[1]", "invalid type: string \"two\"");
}

#[test]
fn unknown_schedule_variant_suggests_the_closest() {
    let text = edit("warmup_steps = 2", "warmup_steps = 2\nschedule = \"cosin\"");
    let e = err(&text, &[]);
    assert_at(&e, line_of(&text, "schedule = \"cosin\""), "optim.schedule", "(did you mean \"cosine\"?)");
}

#[test]
fn negative_integer_for_a_size() {
    let text = edit("batch_size = 2", "batch_size = -2");
    let e = err(&text, &[]);
    assert_at(&e, line_of(&text, "batch_size = -2"), "train.batch_size", "invalid value: integer `-2`");
}

#[test]
fn missing_required_key() {
    let text = edit("batch_size = 2", "");
    let e = err(&text, &[]);
    assert_eq!(e.to_string(), format!("{ORIGIN}: missing key train.batch_size"));
    assert!(matches!(*e.kind, ErrorKind::MissingKey { .. }));
}

#[test]
fn missing_section() {
    let start = BASE.find("[optim]").unwrap();
    let end = BASE.find("[train]").unwrap();
    let text = format!("{}{}", &BASE[..start], &BASE[end..]);
    let e = err(&text, &[]);
    assert_eq!(e.to_string(), format!("{ORIGIN}: missing key optim (the recipe needs a [optim] section)"));
}

// ---- errors: values ----

#[test]
fn negative_learning_rate() {
    let text = edit("lr = 1e-3", "lr = -1e-3");
    let e = err(&text, &[]);
    assert_at(&e, line_of(&text, "lr = -1e-3"), "optim.lr", "must be a positive number");
}

#[test]
fn schedule_names_a_missing_mixer() {
    let text = edit("at.lin = [1]", "at.lin = [1]\nat.swa = [2]");
    let e = err(&text, &[]);
    assert_at(&e, line_of(&text, "at.swa = [2]"), "model.schedule.at.swa", "no mixer named \"swa\"");
}

#[test]
fn schedule_layer_out_of_range() {
    let text = edit("at.lin = [1]", "at.lin = [1, 40]");
    let e = err(&text, &[]);
    assert_eq!(
        e.to_string(),
        format!(
            "{ORIGIN}:{}: key model.schedule.at.lin: layer 40 is out of range (n_layers = 4)",
            line_of(&text, "at.lin = [1, 40]")
        )
    );
}

#[test]
fn mixer_validation_points_at_the_mixer_table() {
    let text = edit("heads = 4", "heads = 5");
    let e = err(&text, &[]);
    assert_at(&e, line_of(&text, "[model.mixers.lin]"), "model.mixers.lin", "divisible by heads (5)");
}

#[test]
fn betas_must_be_below_one() {
    let text = edit("lr = 1e-3", "lr = 1e-3\nbetas = [0.9, 1.0]");
    let e = err(&text, &[]);
    assert_at(&e, line_of(&text, "betas = [0.9, 1.0]"), "optim.betas[1]", "must be in [0, 1)");
}

#[test]
fn min_lr_above_lr() {
    let text = edit("lr = 1e-3", "lr = 1e-3\nmin_lr = 1e-2");
    let e = err(&text, &[]);
    assert_at(&e, line_of(&text, "min_lr = 1e-2"), "optim.min_lr", "must be in [0, optim.lr");
}

#[test]
fn warmup_must_be_shorter_than_training() {
    let text = edit("warmup_steps = 2", "warmup_steps = 10");
    let e = err(&text, &[]);
    assert_at(&e, line_of(&text, "warmup_steps = 10"), "optim.warmup_steps", "smaller than the number of training steps (10)");
}

#[test]
fn steps_and_tokens_are_exclusive() {
    let text = edit("steps = 10", "steps = 10\ntokens = 1000");
    let e = err(&text, &[]);
    assert_at(&e, line_of(&text, "tokens = 1000"), "train.tokens", "not both");

    let e = err(&edit("steps = 10", ""), &[]);
    assert_eq!(e.to_string(), format!("{ORIGIN}: missing key train.steps (or train.tokens)"));
}

#[test]
fn tokens_give_steps_rounded_up() {
    // 2 sequences × 32 tokens × 3 accumulated = 192 tokens per step.
    let text = edit("steps = 10", "tokens = 1000");
    let r = parse(&text, &["optim.grad_accum=3"]).unwrap();
    assert_eq!(r.tokens_per_step(), 192);
    assert_eq!(r.steps(), 6); // ceil(1000 / 192)
    let r = parse(&edit("steps = 10", "tokens = 1152"), &["optim.grad_accum=3"]).unwrap();
    assert_eq!(r.steps(), 6);
}

#[test]
fn zero_intervals_and_sizes_are_rejected() {
    for (set, key) in [
        ("train.eval_interval=0", "train.eval_interval"),
        ("train.checkpoint_interval=0", "train.checkpoint_interval"),
        ("train.keep_last=0", "train.keep_last"),
        ("train.batch_size=0", "train.batch_size"),
        ("data.seq_len=0", "data.seq_len"),
        ("log.every=0", "log.every"),
        ("optim.grad_accum=0", "optim.grad_accum"),
    ] {
        let e = err(BASE, &[set]);
        assert_eq!(e.key(), Some(key), "{e}");
        assert_eq!(e.origin, Origin::Set(set.into()), "{e}");
    }
}

#[test]
fn bf16_needs_a_backend_that_has_it() {
    for device in ["cpu", "ndarray"] {
        let set = format!("train.device={device}");
        let e = err(BASE, &[&set, "train.dtype=bf16"]);
        assert_eq!(e.key(), Some("train.dtype"));
        assert!(e.to_string().contains("computes in f32/f64 only"), "{e}");
    }
    for device in ["auto", "flex", "tch-cpu", "cuda:0", "wgpu"] {
        let set = format!("train.device={device}");
        let r = parse(BASE, &[&set, "train.dtype=bf16"]).unwrap();
        assert_eq!(r.train.precision(), ember_train::recipe::Precision::Bf16);
    }
    let e = err(BASE, &["train.dtype=f16"]);
    assert!(e.to_string().contains("unknown dtype \"f16\""), "{e}");
}

#[test]
fn unknown_device() {
    let e = err(BASE, &["train.device=tpu"]);
    assert_eq!(e.key(), Some("train.device"));
    assert!(parse(BASE, &["train.device=cuda:1"]).is_ok());
    assert!(parse(BASE, &["train.device=tch-cpu"]).is_ok());
    assert_eq!(err(BASE, &["train.device=cuda:x"]).key(), Some("train.device"));
}

// ---- --set overrides ----

#[test]
fn overrides_change_values_and_are_recorded() {
    let r = parse(
        BASE,
        &[
            "optim.lr=3e-4",
            "model.mixers.lin.heads=8",
            "model.schedule.at.lin=[1, 2]",
            "train.name=run-2",
            "optim.schedule=wsd",
            "log.tensorboard=false",
        ],
    )
    .unwrap();
    assert_eq!(r.optim.lr, 3e-4);
    assert_eq!(r.model.layer_mixers(), ["conv", "lin", "lin", "conv"]);
    assert_eq!(r.train.name, "run-2");
    assert_eq!(r.train.out_dir, Path::new("checkpoints/run-2"));
    assert_eq!(r.optim.schedule, LrSchedule::Wsd);
    assert!(!r.log.tensorboard);
    match &r.model.mixers["lin"] {
        ember_layers::MixerConfig::BasedLinear(c) => assert_eq!(c.heads, 8),
        other => panic!("{other:?}"),
    }
    // The saved text is the final recipe: it parses to the same thing without the overrides.
    assert!(r.source.text.contains("--set optim.lr=3e-4"));
    let again = Recipe::from_str(&r.source.text, Path::new(ORIGIN), &[]).unwrap();
    assert_eq!((again.model, again.data, again.optim, again.train, again.log), (r.model, r.data, r.optim, r.train, r.log));
}

#[test]
fn override_with_a_bad_value_names_the_set() {
    let e = err(BASE, &["optim.lr=abc"]);
    assert_eq!(e.to_string(), format!("{ORIGIN}: --set optim.lr=abc: key optim.lr: invalid type: string \"abc\", expected f64"));
}

#[test]
fn override_of_an_unknown_key() {
    let e = err(BASE, &["model.dmodel=3"]);
    assert_eq!(e.to_string(), format!("{ORIGIN}: --set model.dmodel=3: unknown key model.dmodel (did you mean d_model?)"));
}

#[test]
fn override_inside_a_mixer_table() {
    let e = err(BASE, &["model.mixers.lin.headz=2"]);
    assert_eq!(e.origin, Origin::Set("model.mixers.lin.headz=2".into()));
    assert_eq!(e.key(), Some("model.mixers.lin.headz"));
}

#[test]
fn override_on_a_mixer_the_recipe_lacks() {
    let e = err(BASE, &["model.mixers.linn.window=32"]);
    let msg = e.to_string();
    assert_eq!(e.origin, Origin::Set("model.mixers.linn.window=32".into()), "{msg}");
    assert_eq!(e.key(), Some("model.mixers.linn.kind"), "{msg}");
    assert!(msg.contains("the recipe has no model.mixers.linn") && msg.contains("did you mean lin?"), "{msg}");
}

#[test]
fn table_level_error_mentions_the_override_below_it() {
    // validate() reports MLP problems on the whole `model.mlp` table.
    let text = edit("n_layers = 4", "n_layers = 4\n\n[model.mlp]\nhidden_mult = 2.0");
    let e = err(&text, &["model.mlp.hidden=0"]);
    assert_at(&e, line_of(&text, "[model.mlp]"), "model.mlp", "MLP width must be positive");
    assert!(e.to_string().ends_with("(note: changed by --set model.mlp.hidden=0)"), "{e}");
    // Without a [model.mlp] in the file, the --set created the table and is blamed directly.
    let e = err(BASE, &["model.mlp.hidden=0"]);
    assert_eq!(e.origin, Origin::Set("model.mlp.hidden=0".into()), "{e}");
}

#[test]
fn malformed_overrides() {
    for (arg, what) in [
        ("optim.lr", "expected KEY=VALUE"),
        ("optim..lr=1", "not a dotted key"),
        ("optim.lr.x=1", "optim.lr is a float, not a table"),
        ("optim.betas=[0.9,", "not a valid TOML value"),
        ("optim.lr=", "no value after '='"),
    ] {
        let e = err(BASE, &[arg]);
        assert_eq!(e.origin, Origin::Set(arg.into()), "{e}");
        assert!(matches!(*e.kind, ErrorKind::Override { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("{ORIGIN}: --set {arg}: bad override: ")), "{msg}");
        assert!(msg.contains(what), "{arg}: {msg}");
    }
}

#[test]
fn later_override_wins_and_is_blamed() {
    let e = err(BASE, &["optim.lr=1e-3", "optim.lr=-1"]);
    assert_eq!(e.origin, Origin::Set("optim.lr=-1".into()));
    assert!(parse(BASE, &["optim.lr=-1", "optim.lr=1e-3"]).is_ok());
}

// ---- files ----

/// Writes `recipes/x.toml` (with `text`) and the given data files under a fresh temp dir.
fn project(text: &str, files: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        let p = dir.path().join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "").unwrap();
    }
    std::fs::create_dir_all(dir.path().join("recipes")).unwrap();
    let recipe = dir.path().join("recipes/x.toml");
    std::fs::write(&recipe, text).unwrap();
    (dir, recipe)
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn data_paths_resolve_next_to_the_recipe_and_its_parent() {
    let text = edit("tokenizer = \"tok.json\"", "tokenizer = \"data/tok.json\"");
    let (dir, recipe) = project(&text, &["data/tok.json", "recipes/train.jsonl"]);
    let r = Recipe::load(&recipe, &[]).unwrap();
    // data/tok.json is found under the recipe's parent, train.jsonl next to the recipe.
    assert_eq!(r.data.tokenizer, Some(dir.path().join("data/tok.json")));
    assert!(r.data.tokenizer.as_ref().unwrap().is_file());
    assert_eq!(r.data.train, Some(dir.path().join("recipes/train.jsonl")));
}

#[test]
fn missing_data_file() {
    let (dir, recipe) = project(BASE, &["recipes/tok.json"]);
    let e = Recipe::load(&recipe, &[]).unwrap_err();
    let msg = e.to_string();
    let line = line_of(BASE, "train = \"train.jsonl\"");
    assert!(msg.starts_with(&format!("{}:{line}: key data.train: path train.jsonl not found (looked at: train.jsonl, ", recipe.display())), "{msg}");
    assert!(msg.contains(&dir.path().join("recipes/train.jsonl").display().to_string()), "{msg}");

    // The tokenizer must exist too, and is checked first; an override is blamed as such.
    let nope = dir.path().join("nope.json");
    let arg = format!("data.tokenizer={:?}", nope.display().to_string());
    let e = Recipe::load(&recipe, std::slice::from_ref(&arg)).unwrap_err();
    assert_eq!(e.origin, Origin::Set(arg));
    assert!(e.to_string().contains(&format!("key data.tokenizer: file {} not found", nope.display())), "{e}");
}

#[test]
fn tokenizer_must_be_a_file() {
    let (dir, recipe) = project(BASE, &["recipes/tok.json/x", "recipes/train.jsonl"]);
    let e = Recipe::load(&recipe, &[]).unwrap_err();
    assert_eq!(e.key(), Some("data.tokenizer"));
    assert!(e.to_string().contains("is a directory"), "{e}");
    drop(dir);
}

#[test]
fn loading_writes_nothing() {
    let (dir, recipe) = project(BASE, &["recipes/tok.json", "recipes/train.jsonl"]);
    let out = dir.path().join("out");
    let cache = dir.path().join("cache");
    let before = listing(dir.path());
    let r = Recipe::load(
        &recipe,
        &[format!("train.out_dir={:?}", out.display().to_string()), format!("data.cache_dir={:?}", cache.display().to_string())],
    )
    .unwrap();
    assert_eq!(r.train.out_dir, out);
    assert!(!out.exists() && !cache.exists());
    assert_eq!(listing(dir.path()), before);
    r.validate().unwrap();
    let _ = r.check_report();
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn resolve_path_lists_where_it_looked() {
    let e = Recipe::resolve_path(Path::new("no-such-recipe")).unwrap_err();
    assert!(matches!(*e.kind, ErrorKind::NotFound { .. }));
    let msg = e.to_string();
    for place in ["no-such-recipe", "no-such-recipe.toml", "recipes/no-such-recipe", "recipes/no-such-recipe.toml"] {
        assert!(msg.contains(place), "{place} not in {msg}");
    }
    // An existing path is returned as is; a missing extension is added.
    let full = repo().join("recipes/based-tiny.toml");
    assert_eq!(Recipe::resolve_path(&full).unwrap(), full);
    assert_eq!(Recipe::resolve_path(&repo().join("recipes/based-tiny")).unwrap(), full);
}

#[test]
fn error_at_locates_later_checks() {
    let r = parse(BASE, &[]).unwrap();
    let e = r.error_at("model.vocab_size", "smaller than the tokenizer's 8192 tokens");
    assert_eq!(
        e.to_string(),
        format!("{ORIGIN}:{}: key model.vocab_size: smaller than the tokenizer's 8192 tokens", line_of(BASE, "vocab_size = 256"))
    );
}

// ---- learning-rate schedule ----

fn optim(schedule: LrSchedule) -> OptimConfig {
    let r = parse(BASE, &[]).unwrap();
    OptimConfig { lr: 1.0, min_lr: 0.1, warmup_steps: 10, schedule, ..r.optim }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn warmup_is_linear_from_lr_over_warmup_to_lr() {
    let o = optim(LrSchedule::Cosine);
    assert!(close(o.lr_at(0, 100), 0.1));
    assert!(close(o.lr_at(4, 100), 0.5));
    assert!(close(o.lr_at(9, 100), 1.0));
    assert!(close(o.lr_at(10, 100), 1.0)); // first post-warm-up step: still the peak
}

#[test]
fn cosine_reaches_min_lr_at_the_last_step() {
    let o = optim(LrSchedule::Cosine);
    let total = 101; // 91 post-warm-up steps: the middle one is step 55
    assert!(close(o.lr_at(55, total), 0.55));
    assert!(close(o.lr_at(100, total), 0.1));
    assert!(close(o.lr_at(500, total), 0.1));
    for s in 10..100 {
        assert!(o.lr_at(s + 1, total) < o.lr_at(s, total), "not decreasing at {s}");
    }
}

#[test]
fn wsd_is_flat_then_decays_linearly() {
    let o = optim(LrSchedule::Wsd); // decay_fraction 0.2 of 100 steps: steps 80..=99 decay
    for s in 10..=80 {
        assert!(close(o.lr_at(s, 100), 1.0), "step {s}: {}", o.lr_at(s, 100));
    }
    assert!(o.lr_at(81, 100) < 1.0);
    assert!(close(o.lr_at(90, 100), 1.0 - 0.9 * 10.0 / 19.0));
    assert!(close(o.lr_at(99, 100), 0.1));
    let o = OptimConfig { decay_fraction: 0.0, ..o };
    assert!(close(o.lr_at(99, 100), 1.0));
}

#[test]
fn a_held_cosine_is_pytorchs_per_epoch_cosine_annealing() {
    // Zoology: CosineAnnealingLR(T_max = 32 epochs, eta_min = 0) stepped once per epoch, so
    // epoch e trains at lr (1 + cos(π e / 32)) / 2 throughout.
    let (epochs, per_epoch) = (32, 7);
    let o = OptimConfig { lr: 0.01, min_lr: 0.0, warmup_steps: 0, schedule: LrSchedule::Cosine, schedule_every: per_epoch, ..optim(LrSchedule::Cosine) };
    let total = epochs * per_epoch;
    for e in 0..epochs {
        let expected = 0.01 * (1.0 + (std::f64::consts::PI * e as f64 / epochs as f64).cos()) / 2.0;
        for s in e * per_epoch..(e + 1) * per_epoch {
            assert!((o.lr_at(s, total) - expected).abs() < 1e-12, "step {s} (epoch {e}): {} vs {expected}", o.lr_at(s, total));
        }
    }
}

#[test]
fn constant_stays_at_lr() {
    let o = optim(LrSchedule::Constant);
    assert!(close(o.lr_at(5, 100), 0.6));
    assert!(close(o.lr_at(10, 100), 1.0) && close(o.lr_at(99, 100), 1.0));
}
