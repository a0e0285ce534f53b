//! The assembled model: generation through the recurrent forms reproduces the training forward,
//! the model is causal end to end, and the parameter count matches the module's.
use burn::backend::NdArray;
use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use ember_models::LmConfig;

type B = NdArray<f32>;

/// A hybrid of every mixer kind, as a recipe's `[model]` table would give it.
fn config() -> LmConfig {
    toml::from_str(
        r#"
        vocab_size = 50
        d_model = 32
        n_layers = 4
        tie_embeddings = false
        [mlp]
        hidden = 48
        [mixers.conv]
        kind = "base_conv"
        [mixers.lin]
        kind = "based_linear"
        heads = 4
        feature_dim = 8
        chunk_size = 8
        [mixers.swa]
        kind = "attention"
        heads = 4
        kv_heads = 2
        window = 6
        [schedule]
        default = "conv"
        at = { lin = [1], swa = [2] }
        "#,
    )
    .unwrap()
}

fn tokens(ids: &[i64]) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &Default::default())
}

fn ids(t: usize) -> Vec<i64> {
    (0..t).map(|i| ((i * 7 + 3) % 50) as i64).collect()
}

fn rel_err(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f32 {
    let d = (a - b.clone()).powi_scalar(2).sum().sqrt().into_scalar();
    d / b.powi_scalar(2).sum().sqrt().into_scalar()
}

#[test]
fn token_by_token_generation_equals_the_training_forward() {
    let model = config().init_seeded::<B>(0, &Default::default());
    for t in [1, 7, 20] {
        let ids = ids(t);
        let full = model.forward(tokens(&ids));
        let mut state = None;
        let mut steps = Vec::new();
        for &id in &ids {
            let (logits, s) = model.step(tokens(&[id]), state);
            steps.push(logits);
            state = Some(s);
        }
        let err = rel_err(Tensor::cat(steps, 1), full.clone());
        assert!(err <= 1e-4, "T={t}: step-by-step vs forward {err}");
        // Prefill of all but the last token, then one step.
        if t > 1 {
            let (head, s) = model.step(tokens(&ids[..t - 1]), None);
            let (tail, _) = model.step(tokens(&ids[t - 1..]), Some(s));
            let err = rel_err(Tensor::cat(vec![head, tail], 1), full);
            assert!(err <= 1e-4, "T={t}: prefill + step vs forward {err}");
        }
    }
}

#[test]
fn the_model_is_causal() {
    let model = config().init_seeded::<B>(0, &Default::default());
    let a = ids(24);
    let mut b = a.clone();
    b[15] = (b[15] + 1) % 50;
    let ya = model.forward(tokens(&a)).into_data().to_vec::<f32>().unwrap();
    let yb = model.forward(tokens(&b)).into_data().to_vec::<f32>().unwrap();
    let v = config().padded_vocab();
    assert!(ya[..15 * v] == yb[..15 * v], "changing token 15 changed earlier logits");
    assert!(ya[15 * v..16 * v] != yb[15 * v..16 * v]);
}

#[test]
fn parameter_count_matches_the_module() {
    let config = config();
    let model = config.init_seeded::<B>(0, &Default::default());
    assert_eq!(config.num_params(), model.num_params());
    let mut tied = config.clone();
    tied.tie_embeddings = true;
    assert_eq!(tied.num_params(), tied.init_seeded::<B>(0, &Default::default()).num_params());
}

#[test]
fn schedule_places_each_mixer() {
    let config = config();
    assert_eq!(config.layer_mixers(), vec!["conv", "lin", "swa", "conv"]);
    let mut bad = config.clone();
    bad.schedule.at.insert("missing".into(), vec![0]);
    let (key, msg) = bad.validate().unwrap_err();
    assert_eq!(key, "model.schedule.at.missing");
    assert!(msg.contains("no mixer named"), "{msg}");
}

#[test]
fn a_pattern_repeats_over_the_depth() {
    let mut config = config();
    config.schedule.default.clear();
    config.schedule.at.clear();
    config.schedule.pattern = Some(vec!["conv".into(), "lin".into(), "swa".into()]);
    config.n_layers = 7;
    config.validate().unwrap();
    assert_eq!(config.layer_mixers(), vec!["conv", "lin", "swa", "conv", "lin", "swa", "conv"]);
    config.schedule.at.insert("lin".into(), vec![6]);
    assert_eq!(config.layer_mixers()[6], "lin");
    let mut both = config.clone();
    both.schedule.default = "conv".into();
    assert_eq!(both.validate().unwrap_err().0, "model.schedule.default");
    let mut unknown = config.clone();
    unknown.schedule.pattern = Some(vec!["conv".into(), "nope".into()]);
    assert_eq!(unknown.validate().unwrap_err().0, "model.schedule.pattern");
    let mut neither = config;
    neither.schedule.pattern = None;
    assert_eq!(neither.validate().unwrap_err().0, "model.schedule.default");
}

#[test]
fn the_same_seed_gives_the_same_weights() {
    let config = config();
    let weights = |m: &ember_models::Lm<B>| -> Vec<f32> {
        let mut all = m.embed.weight.val().into_data().to_vec::<f32>().unwrap();
        let Some(ember_layers::mlp::Mlp::Glu(mlp)) = &m.blocks[1].mlp else { panic!("a SwiGLU MLP") };
        all.extend(mlp.fc_in.weight.val().into_data().to_vec::<f32>().unwrap());
        all
    };
    let a = config.init_seeded::<B>(7, &Default::default());
    let b = config.init_seeded::<B>(7, &Default::default());
    let c = config.init_seeded::<B>(8, &Default::default());
    assert!(weights(&a) == weights(&b));
    assert!(weights(&a) != weights(&c));
}
