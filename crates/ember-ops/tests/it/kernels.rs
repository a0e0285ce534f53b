//! The CubeCL kernels against the composed chunked forms, on wgpu (Mesa's lavapipe in CI):
//! outputs, final states and the gradient of every input, for each decay variant, chunk sizes
//! that do and do not divide T, chunks and head sizes that are not multiples of the kernels' 4×4
//! register blocks, an initial state, and half-precision inputs. (The shared fixtures hold the
//! kernel path to independent references too: `ember conformance --device wgpu`.)
#![cfg(feature = "wgpu")]
use burn::backend::{Autodiff, Wgpu};
use burn::tensor::{FloatDType, Tensor};
use ember_ops::random::TensorRng;
use ember_ops::kernels::{self, Kernels};
use ember_ops::linear_attention::LinearAttnOutput;
use ember_ops::{gated_linear_attention as gla, linear_attention, taylor};

type B = Autodiff<Wgpu>;

/// wgpu's device, or `None` (with a visible message) where no adapter exists; under `CI=true`
/// a missing adapter fails the test.
fn device() -> Option<burn::backend::wgpu::WgpuDevice> {
    let device = burn::backend::wgpu::WgpuDevice::DefaultDevice;
    let probe = std::panic::catch_unwind(|| Tensor::<Wgpu, 1>::zeros([1], &device).into_data());
    match probe {
        Ok(_) => Some(device),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but wgpu found no adapter")
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: wgpu has no adapter here (install mesa-vulkan-drivers for lavapipe)"
            );
            None
        }
    }
}

fn rel_err(got: Tensor<Wgpu, 4>, want: Tensor<Wgpu, 4>) -> f64 {
    let (got, want) = (got.cast(FloatDType::F32), want.cast(FloatDType::F32));
    let diff: f64 = (got - want.clone())
        .powi_scalar(2)
        .sum()
        .into_scalar()
        .into();
    let norm: f64 = want.powi_scalar(2).sum().into_scalar().into();
    (diff / norm.max(1e-30)).sqrt()
}

fn random(rng: &mut TensorRng, shape: [usize; 4], device: &burn::backend::wgpu::WgpuDevice) -> Tensor<B, 4> {
    rng.normal(shape, 1.0, device)
}

/// Runs `op` on fresh leaves made from `inputs` under `policy`, with random upstream gradients
/// `[d_out, d_state]`; returns outputs, state and the input gradients.
fn run(
    policy: Kernels,
    inputs: &[Tensor<B, 4>],
    upstream: &[Tensor<B, 4>; 2],
    op: &dyn Fn(&[Tensor<B, 4>]) -> (Tensor<B, 4>, Tensor<B, 4>),
) -> Vec<Tensor<Wgpu, 4>> {
    let leaves: Vec<_> = inputs
        .iter()
        .map(|x| Tensor::<B, 4>::from_inner(x.clone().inner()).require_grad())
        .collect();
    let (out, state) = kernels::with_policy(policy, || op(&leaves));
    let objective = (out.clone().cast(FloatDType::F32) * upstream[0].clone()).sum()
        + (state.clone() * upstream[1].clone()).sum();
    let grads = objective.backward();
    let mut result = vec![out.inner(), state.inner()];
    result.extend(
        leaves
            .iter()
            .map(|x| x.grad(&grads).expect("every input gets a gradient")),
    );
    result
}

/// Holds the kernel path to the composed path: every output and gradient within `tol`.
fn agree(
    what: &str,
    inputs: Vec<Tensor<B, 4>>,
    shapes: ([usize; 4], [usize; 4]),
    tol: f64,
    op: &dyn Fn(&[Tensor<B, 4>]) -> (Tensor<B, 4>, Tensor<B, 4>),
) {
    let mut rng = TensorRng::new(1);
    let device = inputs[0].device();
    let upstream = [random(&mut rng, shapes.0, &device), random(&mut rng, shapes.1, &device)];
    let composed = run(Kernels::Off, &inputs, &upstream, op);
    let kernel = run(Kernels::On, &inputs, &upstream, op);
    let names = [
        "output", "state", "grad 0", "grad 1", "grad 2", "grad 3", "grad 4",
    ];
    for ((name, got), want) in names.iter().zip(kernel).zip(composed) {
        assert_eq!(got.dims(), want.dims(), "{what}: {name} shape");
        let err = rel_err(got, want);
        assert!(err <= tol, "{what}: {name} differs from the composed form by {err:.2e} relative RMS (tolerance {tol:.0e})");
    }
}

fn out(r: LinearAttnOutput<B>) -> (Tensor<B, 4>, Tensor<B, 4>) {
    (r.output, r.state)
}

/// Log decays in (−∞, 0]: `log σ(x)/norm`, GLA's gate.
fn log_decay(
    rng: &mut TensorRng,
    shape: [usize; 4],
    norm: f64,
    device: &burn::backend::wgpu::WgpuDevice,
) -> Tensor<B, 4> {
    burn::tensor::activation::log_sigmoid(random(rng, shape, device).add_scalar(2.0)) / norm
}

#[test]
fn kernels_match_the_composed_chunked_forms() {
    let mut rng = TensorRng::new(2);
    let Some(device) = device() else { return };
    assert!(kernels::available::<B>() && kernels::available::<Wgpu>());
    let (b, h, dk, dv) = (2, 3, 6, 5);
    for (t, chunk) in [(37, 16), (32, 1), (32, 64), (70, 64), (40, 7)] {
        let qk = [b, t, h, dk];
        let shapes = ([b, t, h, dv], [b, h, dk, dv]);
        let base = |rng: &mut TensorRng| {
            vec![
                random(rng, qk, &device),
                random(rng, qk, &device),
                random(rng, [b, t, h, dv], &device),
            ]
        };
        let h0 = random(&mut rng, [b, h, dk, dv], &device);

        let mut inputs = base(&mut rng);
        inputs.push(h0.clone());
        agree(
            &format!("linear attention T={t} C={chunk}"),
            inputs,
            shapes,
            1e-4,
            &|x| {
                out(linear_attention::chunked(
                    x[0].clone(),
                    x[1].clone(),
                    x[2].clone(),
                    Some(x[3].clone()),
                    0.3,
                    chunk,
                ))
            },
        );

        // Per-channel decay (GLA), mild and strong (normaliser 16 and 1).
        for norm in [16.0, 1.0] {
            let mut inputs = base(&mut rng);
            inputs.push(log_decay(&mut rng, qk, norm, &device));
            inputs.push(h0.clone());
            agree(
                &format!("GLA T={t} C={chunk} norm {norm}"),
                inputs,
                shapes,
                1e-4,
                &|x| {
                    out(gla::chunked(
                        x[0].clone(),
                        x[1].clone(),
                        x[2].clone(),
                        x[3].clone(),
                        Some(x[4].clone()),
                        0.3,
                        chunk,
                    ))
                },
            );
        }

        // Per-head decay (Lightning-2's path), given as [B, T, H, 1] and squeezed.
        let mut inputs = base(&mut rng);
        inputs.push(log_decay(&mut rng, [b, t, h, 1], 4.0, &device));
        inputs.push(h0.clone());
        agree(
            &format!("per-head decay T={t} C={chunk}"),
            inputs,
            shapes,
            1e-4,
            &|x| {
                let g = x[3].clone().squeeze_dim::<3>(3);
                out(gla::chunked_per_head(
                    x[0].clone(),
                    x[1].clone(),
                    x[2].clone(),
                    g,
                    Some(x[4].clone()),
                    0.3,
                    chunk,
                ))
            },
        );
    }
}

#[test]
fn kernels_match_the_composed_taylor_form() {
    let mut rng = TensorRng::new(3);
    let Some(device) = device() else { return };
    let (b, t, h, d, dv) = (2, 45, 2, 4, 6);
    let inputs = vec![
        random(&mut rng, [b, t, h, d], &device) * 0.5,
        random(&mut rng, [b, t, h, d], &device) * 0.5,
        random(&mut rng, [b, t, h, dv], &device),
    ];
    for map in [taylor::FeatureMap::Compact, taylor::FeatureMap::Full] {
        let f = map.dim(d);
        agree(
            &format!("Taylor {map:?}"),
            inputs.clone(),
            ([b, t, h, dv], [b, h, f, dv]),
            1e-4,
            &|x| {
                let r = taylor::chunked(
                    x[0].clone(),
                    x[1].clone(),
                    x[2].clone(),
                    None,
                    map,
                    1e-6,
                    16,
                );
                (r.output, r.state.kv)
            },
        );
    }
}

/// Half-precision inputs go through the kernels' run-time float type (`#[define(F)]`). wgpu has
/// f16 but no bf16 (WGSL/lavapipe), so this runs f16 here; bf16 is the same code path on CUDA.
#[test]
fn kernels_take_half_precision_inputs() {
    let mut rng = TensorRng::new(4);
    let Some(device) = device() else { return };
    let (b, t, h, dk, dv) = (1, 50, 2, 16, 16);
    let half = |x: Tensor<B, 4>| x.cast(FloatDType::F16);
    let inputs = vec![
        half(random(&mut rng, [b, t, h, dk], &device)),
        half(random(&mut rng, [b, t, h, dk], &device)),
        half(random(&mut rng, [b, t, h, dv], &device)),
        log_decay(&mut rng, [b, t, h, dk], 16.0, &device),
    ];
    // Both paths compute in f32 from the same f16 values; they differ by f32 rounding and the
    // f16 rounding of the output and the gradients.
    agree(
        "GLA, f16 q/k/v",
        inputs,
        ([b, t, h, dv], [b, h, dk, dv]),
        1e-2,
        &|x| {
            out(gla::chunked(
                x[0].clone(),
                x[1].clone(),
                x[2].clone(),
                x[3].clone(),
                None,
                0.25,
                16,
            ))
        },
    );
}

/// The tensor-core kernels (f16/bf16 inputs on a device with cooperative matrices) against the
/// composed form: outputs, final states and every input gradient, for head sizes that are not
/// multiples of the tiles, a ragged last chunk, no decay, and a mild and a strong per-channel
/// decay. Runs where the device has the matrices: CUDA (16×16 tiles), and wgpu built with
/// `--features vulkan` on a Vulkan driver with `VK_KHR_cooperative_matrix`, such as Mesa's
/// lavapipe from 25.x (8×8 tiles); CI's lavapipe (22.3, through WGSL) has none and skips.
#[test]
fn tensor_core_kernels_match_the_composed_form() {
    let mut rng = TensorRng::new(5);
    use ember_kernels::{tensor_core_calls, with_tensor_cores, TensorCores};
    let Some(device) = device() else { return };
    let (b, h, dk, dv) = (2, 2, 24, 20);
    let half = |x: Tensor<B, 4>| x.cast(FloatDType::F16);
    let before = tensor_core_calls();
    with_tensor_cores(TensorCores::On, || {
        let mut x = || half(random(&mut rng, [1, 16, 1, 16], &device));
        kernels::with_policy(Kernels::On, || linear_attention::chunked(x(), x(), x(), None, 1.0, 16))
    });
    if tensor_core_calls() == before {
        eprintln!(
            "SKIPPED: this device has no f16 cooperative matrices (tensor cores); build with \
             --features vulkan and run on lavapipe from Mesa 25.x, or on CUDA"
        );
        return;
    }
    for (t, chunk) in [(70, 64), (37, 16), (64, 32)] {
        let qk = [b, t, h, dk];
        let shapes = ([b, t, h, dv], [b, h, dk, dv]);
        let qkv = |rng: &mut TensorRng| {
            vec![
                half(random(rng, qk, &device)),
                half(random(rng, qk, &device)),
                half(random(rng, [b, t, h, dv], &device)),
            ]
        };
        let h0 = random(&mut rng, [b, h, dk, dv], &device);
        let calls = tensor_core_calls();
        // f16 operands (scores, states and gradients included) with f32 accumulation, against
        // the composed form in f32 from the same f16 inputs: measured on lavapipe 1.5e-4 to
        // 9.8e-4 relative RMS (the largest on the decay's gradient, a cumulative sum), about
        // f16's rounding (4.9e-4).
        let tol = 3e-3;
        with_tensor_cores(TensorCores::On, || {
            let mut inputs = qkv(&mut rng);
            inputs.push(h0.clone());
            agree(&format!("tensor cores, no decay, T={t} C={chunk}"), inputs, shapes, tol, &|x| {
                out(linear_attention::chunked(x[0].clone(), x[1].clone(), x[2].clone(), Some(x[3].clone()), 0.2, chunk))
            });
            for norm in [16.0, 1.0] {
                let mut inputs = qkv(&mut rng);
                inputs.push(log_decay(&mut rng, qk, norm, &device));
                inputs.push(h0.clone());
                agree(&format!("tensor cores, GLA norm {norm}, T={t} C={chunk}"), inputs, shapes, tol, &|x| {
                    out(gla::chunked(x[0].clone(), x[1].clone(), x[2].clone(), x[3].clone(), Some(x[4].clone()), 0.2, chunk))
                });
            }
        });
        assert_eq!(tensor_core_calls() - calls, 3, "every kernel call ran on the tensor cores");
    }
}
