//! Hugging Face checkpoints: the reference teachers' logits, export and re-import, and the
//! errors a broken checkpoint gives.
use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use ember_models::hf::{self, export, HfError};
use ember_ops::rope::{frequencies, RopeScaling};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

type B = NdArray<f32>;

fn fixtures() -> Option<PathBuf> {
    let dir = match std::env::var("EMBER_FIXTURES") {
        Ok(d) => PathBuf::from(d),
        Err(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("fixtures not found: set EMBER_FIXTURES or provide ../shared/fixtures");
    }
    eprintln!("SKIPPED: reference fixtures not found (set EMBER_FIXTURES or provide ../shared/fixtures)");
    None
}

/// `input_ids` and the logits `transformers` computed, from `expected_logits.safetensors`.
fn expected(dir: &Path) -> (Tensor<B, 2, Int>, Vec<f32>) {
    let bytes = std::fs::read(dir.join("expected_logits.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let ids_data: Vec<i64> = ids.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    let logits = st.tensor("logits").unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    (Tensor::from_data(TensorData::new(ids_data, ids.shape().to_vec()), &Default::default()), logits)
}

fn rel_rms(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got.iter().zip(want).map(|(g, w)| ((g - w) as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn logits(model: &ember_models::Lm<B>, ids: Tensor<B, 2, Int>) -> Vec<f32> {
    model.forward(ids).into_data().to_vec::<f32>().unwrap()
}

#[test]
fn llama_and_qwen2_teachers_reproduce_transformers_logits() {
    let Some(dir) = fixtures() else { return };
    for name in ["hf_llama", "hf_qwen2"] {
        let teacher = hf::load::<B>(&dir.join(name), &Default::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (ids, want) = expected(&dir.join(name));
        let err = rel_rms(&logits(&teacher.model, ids), &want);
        eprintln!("{name}: relative RMS error {err:.2e}");
        assert!(err <= 1e-4, "{name}: logits differ from transformers' by {err}");
    }
    // The two differ where the spec says: Qwen2 ties the head and has q/k/v biases, Llama neither.
    let llama = hf::HfConfig::read(&dir.join("hf_llama")).unwrap();
    let qwen = hf::HfConfig::read(&dir.join("hf_qwen2")).unwrap();
    assert!(!llama.tie_word_embeddings && !llama.qkv_bias && llama.num_kv_heads < llama.num_heads);
    assert!(qwen.tie_word_embeddings && qwen.qkv_bias && !qwen.o_bias);
}

#[test]
fn an_exported_teacher_loads_back_with_identical_logits() {
    let Some(dir) = fixtures() else { return };
    let out = tempfile::tempdir().unwrap();
    for name in ["hf_llama", "hf_qwen2"] {
        let teacher = hf::load::<B>(&dir.join(name), &Default::default()).unwrap();
        let target = out.path().join(name);
        export::export(&teacher.model, &teacher.lm_config, &target, export::ExportDtype::F32).unwrap();
        // The same config as transformers wrote, key by key where ember reads it.
        assert_eq!(hf::HfConfig::read(&target).unwrap(), hf::HfConfig { max_position_embeddings: 4096, ..teacher.config.clone() });
        let again = hf::load::<B>(&target, &Default::default()).unwrap();
        let (ids, _) = expected(&dir.join(name));
        assert_eq!(logits(&again.model, ids.clone()), logits(&teacher.model, ids), "{name}");
        // And the exported tensors are the originals, bit for bit.
        let original = hf::Checkpoint::open(&dir.join(name)).unwrap();
        let exported = hf::Checkpoint::open(&target).unwrap();
        for tensor in original.names() {
            assert_eq!(exported.read_f32(tensor).unwrap(), original.read_f32(tensor).unwrap(), "{name}: {tensor}");
        }
    }
}

#[test]
fn missing_and_mismatched_tensors_are_named() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let copy = |sub: &str| {
        let to = tmp.path().join(sub);
        std::fs::create_dir_all(&to).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(dir.join("hf_llama").join(f), to.join(f)).unwrap();
        }
        to
    };
    // Drop two tensors from the checkpoint.
    let broken = copy("missing");
    let ckpt = hf::Checkpoint::open(&broken).unwrap();
    let mut kept = std::collections::BTreeMap::new();
    for name in ckpt.names().filter(|n| !n.ends_with("layers.1.mlp.up_proj.weight") && !n.ends_with("model.norm.weight")) {
        kept.insert(name.clone(), ckpt.read_f32(name).unwrap());
    }
    drop(ckpt);
    export::write_safetensors(&broken.join("model.safetensors"), &kept, export::ExportDtype::F32, None).unwrap();
    let e = hf::load::<B>(&broken, &Default::default()).err().unwrap().to_string();
    assert!(e.contains("missing tensor model.layers.1.mlp.up_proj.weight") && e.contains("missing tensor model.norm.weight"), "{e}");
    assert!(e.contains(&broken.display().to_string()), "{e}");

    // A config that does not match the weights.
    let wrong = copy("mismatch");
    let config = std::fs::read_to_string(wrong.join("config.json")).unwrap().replace("\"intermediate_size\": 160", "\"intermediate_size\": 128");
    std::fs::write(wrong.join("config.json"), config).unwrap();
    let e = hf::load::<B>(&wrong, &Default::default()).err().unwrap();
    assert!(matches!(e, HfError::Tensors { .. }));
    let e = e.to_string();
    assert!(e.contains("model.layers.0.mlp.down_proj.weight has shape [64, 160]"), "{e}");

    // No checkpoint at all, and an unsupported architecture.
    let e = hf::load::<B>(tmp.path(), &Default::default()).err().unwrap().to_string();
    assert!(e.contains("config.json"), "{e}");
    let gpt2 = copy("gpt2");
    let config = std::fs::read_to_string(gpt2.join("config.json")).unwrap().replace("\"model_type\": \"llama\"", "\"model_type\": \"gpt2\"");
    std::fs::write(gpt2.join("config.json"), config).unwrap();
    let e = hf::load::<B>(&gpt2, &Default::default()).err().unwrap().to_string();
    assert!(e.contains("model_type") && e.contains("gpt2"), "{e}");
}

#[test]
fn bf16_checkpoints_load_within_bf16_rounding() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let teacher = hf::load::<B>(&dir.join("hf_qwen2"), &Default::default()).unwrap();
    export::export(&teacher.model, &teacher.lm_config, tmp.path(), export::ExportDtype::Bf16).unwrap();
    let half = hf::load::<B>(tmp.path(), &Default::default()).unwrap();
    let (ids, want) = expected(&dir.join("hf_qwen2"));
    let err = rel_rms(&logits(&half.model, ids), &want);
    assert!(err > 0.0 && err < 2e-2, "{err}");
}

#[test]
fn rope_scalings_follow_their_definitions() {
    let (d, base) = (64, 10_000.0);
    let (plain, one) = frequencies(d, base, None, 10);
    assert_eq!(one, 1.0);
    assert!(plain.windows(2).all(|w| w[0] > w[1]) && plain[0] == 1.0);
    // Linear: every frequency over the factor.
    let (linear, _) = frequencies(d, base, Some(&RopeScaling::Linear { factor: 4.0 }), 10);
    assert!(linear.iter().zip(&plain).all(|(l, p)| (l * 4.0 - p).abs() < 1e-15));
    // Dynamic NTK: unchanged within the original context, all lower beyond it.
    let dynamic = RopeScaling::Dynamic { factor: 2.0, original_max_position: 100 };
    assert_eq!(frequencies(d, base, Some(&dynamic), 100).0, plain);
    let (longer, _) = frequencies(d, base, Some(&dynamic), 400);
    assert!(longer[0] == 1.0 && longer[1..].iter().zip(&plain[1..]).all(|(l, p)| l < p));
    // Llama 3: short wavelengths kept, long ones over the factor, the ones between in between.
    let llama3 = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position: 8192 };
    let (l3, _) = frequencies(128, 500_000.0, Some(&llama3), 10);
    let (p3, _) = frequencies(128, 500_000.0, None, 10);
    for (l, p) in l3.iter().zip(&p3) {
        let wavelen = 2.0 * std::f64::consts::PI / p;
        if wavelen < 8192.0 / 4.0 {
            assert_eq!(l, p);
        } else if wavelen > 8192.0 {
            assert!((l * 8.0 - p).abs() < 1e-15);
        } else {
            assert!(*l < *p && *l > p / 8.0);
        }
    }
    // YaRN: the fastest rotation kept, the slowest interpolated, cos/sin scaled by 0.1 ln s + 1.
    let yarn = RopeScaling::Yarn { factor: 4.0, original_max_position: 4096, beta_fast: 32.0, beta_slow: 1.0, attention_factor: None, mscale: None, mscale_all_dim: None };
    let (y, scale) = frequencies(d, base, Some(&yarn), 10);
    assert!((scale - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
    assert_eq!(y[0], plain[0]);
    assert!((y[d / 2 - 1] * 4.0 - plain[d / 2 - 1]).abs() < 1e-15);
}
