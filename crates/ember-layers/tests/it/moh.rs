//! Mixture-of-Head attention (LAYERS.md §8): router gates, load-balance loss, the dense and
//! sparse training paths, and decoding.

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use ember_layers::attention::AttentionConfig;
use ember_layers::moh::{Moh, MohConfig};
use ember_layers::seeded::build_seeded;
use ember_layers::LayerContext;

use crate::common::{assert_causal, host_rel_err, in_pieces, random, stepwise, to_vec, vec_rel_err};

type B = NdArray<f32>;
type AD = Autodiff<B>;
const D: usize = 32;

fn config(heads: usize, shared_heads: usize, top_k: usize) -> MohConfig {
    MohConfig { heads, shared_heads, top_k, ..Default::default() }
}

fn layer<Bk: Backend>(config: &MohConfig, seed: u64) -> Moh<Bk> {
    config.validate(D).unwrap();
    build_seeded(seed, &Default::default(), || config.init(LayerContext::single(D), 0.1, &Default::default()))
}

/// Replaces every router weight by `std`-normal values (0 gives the uniform router of A.7).
fn set_router<Bk: Backend>(mut moh: Moh<Bk>, std: f64, seed: u64) -> Moh<Bk> {
    let redraw = |linear: &mut Option<burn::nn::Linear<Bk>>, salt: u64| {
        if let Some(l) = linear {
            let dims = l.weight.dims();
            let w = if std == 0.0 { Tensor::zeros(dims, &Default::default()) } else { random(dims, std, seed + salt) };
            l.weight = Param::from_tensor(w);
        }
    };
    redraw(&mut moh.router_routed, 1);
    redraw(&mut moh.router_shared, 2);
    redraw(&mut moh.router_stage, 3);
    moh
}

/// Plain attention with the same q/k/v weights as `moh`, and the output-projection rows of the
/// heads outside `kept` zeroed (so it is MHA restricted to those heads).
fn restricted_mha(moh: &Moh<B>, kept: &[usize]) -> ember_layers::attention::Attention<B> {
    let mut attn = build_seeded(101, &Default::default(), || AttentionConfig { heads: moh.heads, ..Default::default() }.init::<B>(LayerContext::single(D), 0.1, &Default::default()));
    // (A fresh Param: cloning a not-yet-initialised lazy one would draw new weights.)
    attn.qkv.weight = Param::from_tensor(moh.qkv.weight.val());
    let mut out = moh.out.weight.val();
    let dh = moh.head_dim;
    for h in (0..moh.heads).filter(|h| !kept.contains(h)) {
        out = out.slice_assign([h * dh..(h + 1) * dh, 0..D], Tensor::zeros([dh, D], &Default::default()));
    }
    attn.out.weight = Param::from_tensor(out);
    attn
}

#[test]
fn zero_router_opens_shared_and_first_routed_heads_with_gate_one() {
    // §8.5 (1) and A.7: h = 8, h_s = 4, K = 2, zero router: ties go to the lowest routed heads
    // (4 and 5), and every open gate is exactly 1.
    let moh = set_router(layer::<B>(&config(8, 4, 2), 1), 0.0, 0);
    let x = random::<B, 3>([2, 9, D], 1.0, 2);
    let gates = to_vec(moh.routing(x.clone()).gates);
    for token in gates.chunks(8) {
        assert_eq!(token, &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    }
    let mha = restricted_mha(&moh, &[0, 1, 2, 3, 4, 5]).forward(x.clone());
    for sparse in [false, true] {
        let err = host_rel_err(moh.forward_aux_with(x.clone(), sparse).0, mha.clone());
        assert!(err <= 1e-4, "sparse={sparse}: MoH vs restricted MHA rel err {err}");
    }
    // With K = h − h_s every head is on: plain MHA.
    let moh = set_router(layer::<B>(&config(8, 4, 4), 3), 0.0, 0);
    let mha = restricted_mha(&moh, &(0..8).collect::<Vec<_>>()).forward(x.clone());
    assert!(to_vec(moh.routing(x.clone()).gates).iter().all(|&g| g == 1.0));
    for sparse in [false, true] {
        let err = host_rel_err(moh.forward_aux_with(x.clone(), sparse).0, mha.clone());
        assert!(err <= 1e-4, "sparse={sparse}: MoH (K = h − h_s) vs MHA rel err {err}");
    }
    // h_s = 0 (no stage weights) and h_s = 1 (shared gate fixed to 1) keep gates at 1 too.
    for (hs, k) in [(0, 3), (1, 2)] {
        let moh = set_router(layer::<B>(&config(8, hs, k), 4), 0.0, 0);
        let gates = to_vec(moh.routing(x.clone()).gates);
        let open = |h: usize| h < hs + k;
        assert!(gates.chunks(8).all(|g| (0..8).all(|h| g[h] == if open(h) { 1.0 } else { 0.0 })), "h_s={hs} K={k}: {gates:?}");
    }
}

/// The top-`k` of `p` with ties to the lowest index, computed on the host.
fn host_top_k(p: &[f32], k: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap().then(a.cmp(&b)));
    let mut chosen = vec![false; p.len()];
    order[..k].iter().for_each(|&i| chosen[i] = true);
    chosen
}

#[test]
fn unselected_gates_are_exactly_zero_and_selected_follow_the_official_form() {
    let (h, hs, k) = (8, 3, 2);
    let e = h - hs;
    let moh = set_router(layer::<B>(&config(h, hs, k), 5), 0.5, 6);
    let x = random::<B, 3>([2, 40, D], 1.0, 7);
    let routing = moh.routing(x.clone());
    let gates = to_vec(routing.gates);
    let probs = to_vec(routing.probs.unwrap());
    // With W_h = 0 the stage weights are 1 each, so shared gates sum to h_s and selected
    // routed gates to K, the routed ones in proportion to p.
    let mut flat = moh.clone();
    flat.router_stage.as_mut().unwrap().weight = Param::from_tensor(Tensor::zeros([D, 2], &Default::default()));
    let flat_gates = to_vec(flat.routing(x).gates);
    let mut chosen_count = vec![0usize; e];
    for (token, (g, p)) in gates.chunks(h).zip(probs.chunks(e)).enumerate() {
        let chosen = host_top_k(p, k);
        for i in 0..e {
            if chosen[i] {
                assert!(g[hs + i] > 0.0, "token {token}: selected head {i} has gate {}", g[hs + i]);
                chosen_count[i] += 1;
            } else {
                assert_eq!(g[hs + i], 0.0, "token {token}: unselected head {i}");
            }
        }
        let fg = &flat_gates[token * h..(token + 1) * h];
        let shared: f32 = fg[..hs].iter().sum();
        let routed: f32 = fg[hs..].iter().sum();
        assert!((shared - hs as f32).abs() < 1e-5 && (routed - k as f32).abs() < 1e-5, "token {token}: {fg:?}");
        let sel_sum: f32 = (0..e).filter(|&i| chosen[i]).map(|i| p[i]).sum();
        for i in (0..e).filter(|&i| chosen[i]) {
            let want = k as f32 * p[i] / sel_sum;
            assert!((fg[hs + i] - want).abs() < 1e-5, "token {token} head {i}: {} vs {want}", fg[hs + i]);
        }
    }
    // The random router spreads tokens over several heads (so the test exercises routing).
    assert!(chosen_count.iter().filter(|&&c| c > 0).count() >= 3, "{chosen_count:?}");
}

/// Gradients of every parameter of `module`, in visiting order.
fn param_grads(module: &Moh<AD>, grads: &<AD as burn::tensor::backend::AutodiffBackend>::Gradients) -> Vec<Vec<f32>> {
    struct Collect<'a> {
        grads: &'a <AD as burn::tensor::backend::AutodiffBackend>::Gradients,
        out: Vec<Vec<f32>>,
    }
    impl ModuleVisitor<AD> for Collect<'_> {
        fn visit_float<const N: usize>(&mut self, param: &Param<Tensor<AD, N>>) {
            let n = param.val().shape().num_elements();
            self.out.push(param.val().grad(self.grads).map_or(vec![0.0; n], to_vec));
        }
    }
    let mut visitor = Collect { grads, out: Vec::new() };
    module.visit(&mut visitor);
    visitor.out
}

#[test]
fn router_gradients_reach_only_selected_heads_and_the_balance_loss() {
    // §8.5 (2) with the zero router: routed heads 2 and 3 (heads 6, 7) are never selected.
    let (h, hs, k) = (8, 4, 2);
    let moh = set_router(layer::<AD>(&config(h, hs, k), 8), 0.0, 0);
    let x = random::<AD, 3>([2, 12, D], 1.0, 9);
    let r = random::<AD, 3>([2, 12, D], 1.0, 10);
    let dh = moh.head_dim;
    let column_norms = |g: &[f32], width: usize| -> Vec<f32> {
        (0..width).map(|c| g.iter().skip(c).step_by(width).map(|v| v * v).sum::<f32>().sqrt()).collect()
    };
    for sparse in [false, true] {
        let task = |with_aux: bool| {
            let (y, aux) = moh.forward_aux_with(x.clone(), sparse);
            let task = (y * r.clone()).sum();
            if with_aux { task + aux.unwrap().sum() } else { task }
        };
        let grads = task(false).backward();
        let w_r = to_vec(moh.router_routed.as_ref().unwrap().weight.grad(&grads).unwrap());
        let cols = column_norms(&w_r, h - hs);
        assert!(cols[0] > 1e-3 && cols[1] > 1e-3, "selected routed heads get router gradient: {cols:?}");
        assert!(cols[2] <= 1e-6 * cols[0] && cols[3] <= 1e-6 * cols[0], "unselected heads leak router gradient: {cols:?}");
        // The never-selected heads' queries, keys and values get no gradient at all.
        let qkv = to_vec(moh.qkv.weight.grad(&grads).unwrap());
        let qkv_cols = column_norms(&qkv, 3 * h * dh);
        for part in 0..3 {
            for head in 0..h {
                let norm: f32 = qkv_cols[(part * h + head) * dh..(part * h + head + 1) * dh].iter().sum();
                if head >= hs + k {
                    assert_eq!(norm, 0.0, "sparse={sparse}: head {head} part {part} got gradient");
                } else {
                    assert!(norm > 0.0, "sparse={sparse}: head {head} part {part} got none");
                }
            }
        }
        // The balance loss reaches every router column.
        let grads = task(true).backward();
        let w_r = to_vec(moh.router_routed.as_ref().unwrap().weight.grad(&grads).unwrap());
        let cols = column_norms(&w_r, h - hs);
        assert!(cols[2] > 1e-6 && cols[3] > 1e-6, "balance loss gives no gradient to unselected heads: {cols:?}");
    }
}

/// `L_b = E · Σ_i f_i P_i` on the host from the routing's probabilities and selections.
fn host_balance_loss(moh: &Moh<B>, x: Tensor<B, 3>) -> f32 {
    let e = moh.heads - moh.shared_heads;
    let routing = moh.routing(x);
    let p = to_vec(routing.probs.unwrap());
    let sel = to_vec(routing.selected.unwrap().float());
    let n = (p.len() / e) as f32;
    (0..e)
        .map(|i| {
            let mean_p: f32 = p.iter().skip(i).step_by(e).sum::<f32>() / n;
            let frac: f32 = sel.iter().skip(i).step_by(e).sum::<f32>() / n;
            mean_p * frac
        })
        .sum::<f32>()
        * e as f32
}

#[test]
fn balance_loss_is_k_when_uniform_and_larger_when_concentrated() {
    // A.7: uniform router, h = 8, h_s = 4, K = 2 ⇒ L_b = 2 (β = 1 here, then the default 0.01).
    let cfg = MohConfig { balance_loss_weight: 1.0, ..config(8, 4, 2) };
    let moh = set_router(layer::<B>(&cfg, 11), 0.0, 0);
    let x = random::<B, 3>([2, 16, D], 1.0, 12);
    let lb: f32 = moh.forward_aux(x.clone()).1.unwrap().into_scalar();
    assert!((lb - 2.0).abs() < 1e-6, "uniform L_b = {lb}");
    let weighted = build_seeded(102, &Default::default(), || MohConfig::default().init::<B>(LayerContext::single(D), 0.1, &Default::default()));
    let weighted = set_router(weighted, 0.0, 0);
    let lb_default: f32 = weighted.forward_aux(x).1.unwrap().into_scalar();
    assert!((lb_default - 0.02).abs() < 1e-8, "β·L_b = {lb_default}");

    // Concentrate both f and P on heads 0 and 1: positive inputs and a router whose logits
    // rank the routed heads the same way for every token.
    let mut moh = moh;
    let scores = [3.0f32, 2.0, -1.0, -2.0];
    let w: Vec<f32> = (0..D).flat_map(|_| scores.map(|s| s / D as f32)).collect();
    moh.router_routed.as_mut().unwrap().weight =
        Param::from_tensor(Tensor::<B, 1>::from_floats(w.as_slice(), &Default::default()).reshape([D, 4]));
    let x = random::<B, 3>([2, 16, D], 1.0, 13).abs() + 0.5;
    let lb: f32 = moh.forward_aux(x.clone()).1.unwrap().into_scalar();
    let want = host_balance_loss(&moh, x);
    assert!((lb - want).abs() < 1e-5, "L_b {lb} vs host formula {want}");
    assert!(lb > 2.5, "concentrated routing should raise L_b above K = 2, got {lb}");
    // A random router is slightly imbalanced: still at least K.
    let moh = set_router(moh, 0.5, 14);
    let x = random::<B, 3>([2, 16, D], 1.0, 15);
    let lb: f32 = moh.forward_aux(x.clone()).1.unwrap().into_scalar();
    assert!((lb - host_balance_loss(&moh, x)).abs() < 1e-5);
}

#[test]
fn dense_and_sparse_paths_agree_in_values_and_gradients() {
    for (h, hs, k) in [(8, 4, 2), (8, 0, 3), (8, 1, 2), (4, 2, 2), (4, 4, 0)] {
        let moh = set_router(layer::<AD>(&config(h, hs, k), 16), 0.5, 17);
        for t in [1, 7, 64, 65] {
            let x = random::<AD, 3>([2, t, D], 1.0, 18 + t as u64).require_grad();
            let r = random::<AD, 3>([2, t, D], 1.0, 19);
            let run = |sparse: bool| {
                let (y, aux) = moh.forward_aux_with(x.clone(), sparse);
                let aux_value = aux.as_ref().map(|a| to_vec(a.clone())[0]);
                let loss = (y.clone() * r.clone()).sum() + aux.map_or(Tensor::zeros([1], &Default::default()), |a| a);
                let grads = loss.backward();
                (to_vec(y), aux_value, to_vec(x.grad(&grads).unwrap()), param_grads(&moh, &grads))
            };
            let (y_d, aux_d, gx_d, gp_d) = run(false);
            let (y_s, aux_s, gx_s, gp_s) = run(true);
            let tag = format!("h={h} h_s={hs} K={k} T={t}");
            assert!(vec_rel_err(&y_s, &y_d) <= 1e-4, "{tag}: outputs");
            assert_eq!(aux_d, aux_s, "{tag}: balance loss");
            assert_eq!(aux_d.is_some(), k > 0, "{tag}: balance loss presence");
            assert!(vec_rel_err(&gx_s, &gx_d) <= 1e-4, "{tag}: grad x");
            assert_eq!(gp_d.len(), gp_s.len());
            for (i, (s, d)) in gp_s.iter().zip(&gp_d).enumerate() {
                assert!(vec_rel_err(s, d) <= 1e-4, "{tag}: grad of parameter {i} rel err {}", vec_rel_err(s, d));
            }
        }
    }
}

#[test]
fn decoding_prefill_and_state_carry_match_the_forward() {
    for (h, hs, k) in [(8, 4, 2), (8, 0, 3), (4, 4, 0)] {
        for skip in [true, false] {
            let cfg = MohConfig { skip_unselected: skip, ..config(h, hs, k) };
            let moh = set_router(layer::<B>(&cfg, 20), 0.5, 21);
            for t in [1, 7, 64, 65] {
                let tag = format!("h={h} h_s={hs} K={k} skip={skip} T={t}");
                let x = random::<B, 3>([2, t, D], 1.0, 22 + t as u64);
                let full = moh.forward(x.clone());
                let err = host_rel_err(stepwise(x.clone(), |x, s| moh.step(x, s)), full.clone());
                assert!(err <= 1e-4, "{tag}: recurrent vs forward rel err {err}");
                if t > 1 {
                    // Prefill then one token; and a‖b with a multi-token b after a's state.
                    let (y, s) = in_pieces(x.clone(), &[t - 1], |x, s, _| moh.step(x, s));
                    assert_eq!(s.position, t);
                    assert_eq!(s.numel(), cfg.state_size(D, t) * 2, "{tag}: state size (batch 2)");
                    let err = host_rel_err(y, full.clone());
                    assert!(err <= 1e-4, "{tag}: prefill+step rel err {err}");
                    let (y, _) = in_pieces(x.clone(), &[t / 3 + 1], |x, s, _| moh.step(x, s));
                    let err = host_rel_err(y, full);
                    assert!(err <= 1e-4, "{tag}: a‖b state carry rel err {err}");
                }
            }
        }
    }
}

#[test]
fn moh_is_causal() {
    let t = 40;
    for skip in [true, false] {
        let cfg = MohConfig { skip_unselected: skip, ..config(8, 4, 2) };
        let moh = set_router(layer::<B>(&cfg, 30), 0.5, 31);
        let x = random::<B, 3>([2, t, D], 1.0, 32);
        assert_causal(x, &[0, 17, 33, 39], 3.0, |x| moh.forward(x), &format!("skip={skip}"));
    }
}

#[test]
fn config_validation_and_parameter_count() {
    let ok = |c: MohConfig| c.validate(D).map_err(|e| format!("{c:?}: {e}"));
    let err = |c: MohConfig, key: &str| {
        let e = c.validate(D).expect_err(&format!("{c:?} should be rejected"));
        assert!(e.contains(key), "{e:?} should name {key}");
    };
    ok(MohConfig::default()).unwrap();
    err(config(8, 4, 5), "top_k");
    err(config(8, 9, 0), "shared_heads");
    err(config(8, 4, 0), "top_k");
    err(config(0, 0, 0), "heads");
    err(config(6, 2, 2), "d_model");
    err(MohConfig { head_dim: Some(5), ..config(8, 4, 2) }, "head_dim");
    err(MohConfig { balance_loss_weight: -1.0, ..config(8, 4, 2) }, "balance_loss_weight");
    err(MohConfig { rope_base: 1.0, ..config(8, 4, 2) }, "rope_base");
    for (h, hs, k) in [(8, 4, 2), (8, 0, 3), (8, 1, 2), (4, 4, 0), (1, 1, 0), (2, 0, 2)] {
        let cfg = config(h, hs, k);
        ok(cfg.clone()).unwrap();
        let moh = layer::<B>(&cfg, 40);
        assert_eq!(moh.num_params(), cfg.params(D), "h={h} h_s={hs} K={k}");
    }
    // Skipping unselected heads counts only the shared and selected heads' attention FLOPs.
    let dense = MohConfig { skip_unselected: false, ..Default::default() };
    let attention = |c: &MohConfig| c.flops_per_token(D, 1023) - 2.0 * c.params(D) as f64;
    assert_eq!(attention(&MohConfig::default()) / attention(&dense), 6.0 / 8.0);
}

/// fwd+bwd time of the dense and sparse training paths (run by hand:
/// `cargo test -p ember-layers --test moh -- --ignored --nocapture bench`, `MOH_BENCH_T=512,2048`).
/// Measured on NdArray, 2 shared cores under load from other jobs, debug profile (deps at
/// opt-level 3): T=512 dense 295–485 ms, sparse 229–439 ms; T=2048 dense 6.9–8.4 s, sparse
/// 4.1–5.0 s (the sparse path was faster in every pair). Theory: 6 of 8 heads' score/value
/// work, i.e. 2 of 4 for the routed heads.
#[test]
#[ignore]
fn bench_dense_vs_sparse() {
    let d = 256;
    let lens: Vec<usize> = std::env::var("MOH_BENCH_T")
        .map(|s| s.split(',').map(|t| t.parse().unwrap()).collect())
        .unwrap_or(vec![512, 2048]);
    let cfg = MohConfig::default();
    let moh = build_seeded(50, &Default::default(), || cfg.init::<AD>(LayerContext::single(d), 0.02, &Default::default()));
    let moh = set_router(moh, 0.5, 51);
    for t in lens {
        let x = random::<AD, 3>([2, t, d], 1.0, 52).require_grad();
        for sparse in [false, true, false, true] {
            let start = std::time::Instant::now();
            let reps = 3;
            for _ in 0..reps {
                let (y, aux) = moh.forward_aux_with(x.clone(), sparse);
                let grads = (y.sum() + aux.unwrap().sum()).backward();
                drop(grads);
            }
            let ms = start.elapsed().as_secs_f64() * 1e3 / reps as f64;
            println!("B=2 T={t} D={d} h=8 h_s=4 K=2 {}: {ms:.1} ms fwd+bwd", if sparse { "sparse" } else { "dense " });
        }
    }
}

