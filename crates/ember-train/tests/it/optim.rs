//! AdamW: decoupled weight decay only outside the no-decay groups, and the global gradient norm.
use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use ember_models::{Lm, LmConfig};
use ember_train::optim::{named_parameters, AdamW};
use ember_train::recipe::Recipe;
use std::path::Path;

type B = Autodiff<NdArray<f32>>;

fn recipe() -> Recipe {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/based-tiny.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    Recipe::from_str(&text, &path, &["model.d_model=32".into(), "model.vocab_size=64".into(), "model.pad_vocab_to=1".into()]).unwrap()
}

fn values(model: &Lm<B>) -> Vec<(String, Vec<f32>)> {
    named_parameters(&model.valid()).into_iter().map(|(n, t)| (n, t.into_data().to_vec::<f32>().unwrap())).collect()
}

fn tokens() -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new((0..16).map(|i| (i * 5 % 64) as i64).collect::<Vec<_>>(), [2, 8]), &Default::default())
}

#[test]
fn weight_decay_spares_the_no_decay_groups() {
    let r = recipe();
    let config: &LmConfig = &r.model;
    let model: Lm<B> = config.init_seeded(0, &Default::default());
    let before = values(&model);
    // Zero gradients: AdamW's adaptive step is zero, so only the decay moves a parameter.
    let loss = model.forward(tokens()).sum() * 0.0;
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let mut opt = AdamW::<NdArray<f32>>::new(r.optim.clone());
    let lr = 0.5;
    let (model, _) = opt.step(model, grads, lr);
    let after = values(&model);
    let factor = (1.0 - lr * r.optim.weight_decay) as f32;
    let (mut decayed, mut spared) = (0, 0);
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        let exempt = r.optim.no_decay.iter().any(|p| name.contains(p.as_str()));
        for (x, y) in b.iter().zip(a) {
            let want = if exempt { *x } else { x * factor };
            assert!((y - want).abs() <= 1e-6 * want.abs().max(1e-6), "{name}: {x} -> {y}, want {want}");
        }
        if exempt { spared += 1 } else { decayed += 1 }
    }
    assert!(before.iter().any(|(n, _)| n.contains("norm")) && before.iter().any(|(n, _)| n.starts_with("embed")));
    assert!(decayed > 0 && spared > 0, "{decayed} decayed, {spared} spared");
}

#[test]
fn reported_gradient_norm_is_the_global_norm() {
    let r = recipe();
    let model: Lm<B> = r.model.init_seeded(0, &Default::default());
    let loss = model.forward(tokens()).powi_scalar(2).mean();
    let grads = loss.backward();
    // Independently: the L2 norm of all gradients concatenated.
    let params = GradientsParams::from_grads(grads, &model);
    struct Sum<'a>(&'a GradientsParams, f64);
    impl burn::module::ModuleVisitor<B> for Sum<'_> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<B, D>>) {
            if let Some(g) = self.0.get::<NdArray<f32>, D>(p.id) {
                self.1 += g.into_data().to_vec::<f32>().unwrap().iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
            }
        }
    }
    let mut sum = Sum(&params, 0.0);
    burn::module::Module::visit(&model, &mut sum);
    let sq = sum.1;
    let mut opt = AdamW::<NdArray<f32>>::new(r.optim.clone());
    let (_, info) = opt.step(model, params, 1e-3);
    assert!((info.grad_norm - sq.sqrt()).abs() <= 1e-4 * sq.sqrt(), "{} vs {}", info.grad_norm, sq.sqrt());
    assert_eq!(info.clipped, info.grad_norm > r.optim.grad_clip);
}
