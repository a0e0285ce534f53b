//! When the chunked forms run on ember-kernels' CubeCL kernels instead of composed Burn ops.
//!
//! The kernels exist for Burn's CubeCL backends (`Wgpu`, `Cuda`, with or without `Autodiff`)
//! when this crate is built with the `wgpu` or `cuda` feature. The ops stay generic over
//! `B: Backend`, so the choice is made at run time by the backend's type: a backend without
//! kernels keeps the composed form. [`Kernels`] (recipe key `train.kernels`, or the environment
//! variable `EMBER_KERNELS` for every command) forces either, for testing and benchmarks.
use crate::linear_attention::LinearAttnOutput;
use burn::tensor::{backend::Backend, Tensor};
use std::cell::Cell;

/// Whether the chunked forms use the CubeCL kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kernels {
    /// The kernels where the backend has them, the composed form elsewhere.
    #[default]
    Auto,
    /// Always the kernels: an error on a backend without them.
    On,
    /// Never the kernels: the composed Burn ops everywhere.
    Off,
}

impl std::str::FromStr for Kernels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Kernels::Auto),
            "on" => Ok(Kernels::On),
            "off" => Ok(Kernels::Off),
            other => Err(format!(
                "unknown kernels setting {other:?} (known: auto, on, off)"
            )),
        }
    }
}

impl std::fmt::Display for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kernels::Auto => "auto",
            Kernels::On => "on",
            Kernels::Off => "off",
        })
    }
}

/// The largest chunk the kernels take (their `C×C` scores fill WebGPU's guaranteed 16 KiB of
/// shared memory); larger requests run at this size, which computes the same function.
pub const MAX_CHUNK: usize = 64;

thread_local! {
    // Per thread, so tests running side by side can force different settings.
    static POLICY: Cell<Option<Kernels>> = const { Cell::new(None) };
    static CALLS: Cell<u64> = const { Cell::new(0) };
}

/// How many times this thread has run the kernels (benchmarks label their rows by it).
pub fn calls() -> u64 {
    CALLS.with(Cell::get)
}

/// How many of those runs were on tensor cores (`f16`/`bf16` inputs on a
/// device with cooperative matrices; `EMBER_TENSOR_CORES=off` turns them off).
pub fn tensor_core_calls() -> u64 {
    dispatch::tensor_core_calls()
}

/// The setting in force on this thread: the last [`set_policy`], else `EMBER_KERNELS`, else auto.
pub fn policy() -> Kernels {
    // Read once: every chunked call of every layer asks.
    static FROM_ENV: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
    POLICY.with(Cell::get).unwrap_or_else(|| {
        *FROM_ENV.get_or_init(|| match std::env::var("EMBER_KERNELS") {
            Ok(value) => value.parse().unwrap_or_else(|e| panic!("EMBER_KERNELS: {e}")),
            Err(_) => Kernels::Auto,
        })
    })
}

/// Sets the policy of this thread.
pub fn set_policy(kernels: Kernels) {
    POLICY.with(|p| p.set(Some(kernels)));
}

/// Runs `f` under `kernels`, then restores the previous setting.
pub fn with_policy<R>(kernels: Kernels, f: impl FnOnce() -> R) -> R {
    let previous = POLICY.with(|p| p.replace(Some(kernels)));
    let result = f();
    POLICY.with(|p| p.set(previous));
    result
}

/// Whether backend `B` has the kernels in this build.
pub fn available<B: Backend>() -> bool {
    dispatch::has::<B>()
}

/// The variants of the chunked core, for [`Kernels::Auto`]'s choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// No decay: linear attention, BASED's Taylor features.
    NoDecay,
    /// One log decay per head (data-dependent or constant): RetNet, TransNormer/Lightning.
    PerHead,
    /// A log decay per key channel: GLA.
    PerChannel,
}

impl Variant {
    /// Whether [`Kernels::Auto`] runs this variant on the kernels. Only where they were
    /// measured faster than the composed form (docs/BENCHMARKS.md, "CubeCL kernels"): the
    /// per-channel decay, whose composed form builds a `C×C×K` tensor per chunk. The others
    /// compose into Burn's tiled matmuls, which the kernels only match at best on lavapipe
    /// (0.9–2× their time); re-measure on a GPU with `ember bench ops --compare` first.
    fn auto(self) -> bool {
        self == Variant::PerChannel
    }
}

/// Whether the chunked forms of `variant` on `B` use the kernels now. Panics under
/// [`Kernels::On`] on a backend without them (callers that take the setting from a user check
/// [`available`] first).
pub fn enabled<B: Backend>(variant: Variant) -> bool {
    match policy() {
        Kernels::Off => false,
        Kernels::Auto => variant.auto() && available::<B>(),
        Kernels::On => {
            assert!(
                available::<B>(),
                "kernels = \"on\", but backend {} has no kernels in this build (they need wgpu or cuda)",
                std::any::type_name::<B>()
            );
            true
        }
    }
}

/// The chunked linear-attention core on the kernels (see `ember_kernels::chunked`): call only
/// where [`enabled`] holds. `g` is a per-channel log decay `[B, T, H, K]`.
pub(crate) fn chunked<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    g: Option<&Tensor<B, 4>>,
    h0: Option<&Tensor<B, 4>>,
    scale: f64,
    chunk: usize,
) -> LinearAttnOutput<B> {
    CALLS.with(|c| c.set(c.get() + 1));
    dispatch::chunked(q, k, v, g, h0, scale, chunk)
        .unwrap_or_else(|| panic!("no kernels for backend {}", std::any::type_name::<B>()))
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod dispatch {
    use crate::linear_attention::LinearAttnOutput;
    use burn::tensor::{backend::Backend, Tensor};
    use ember_kernels::ChunkedLinearAttention;
    use std::any::{Any, TypeId};

    /// Calls `$f::<K>` for the first kernel backend `K` that is `B`, else gives `None`.
    macro_rules! on_kernel_backend {
        ($f:ident::<$b:ty>($($arg:expr),*)) => {{
            #[cfg(feature = "wgpu")]
            if let Some(r) = $f::<$b, burn::backend::Wgpu>($($arg),*) { return Some(r); }
            #[cfg(feature = "wgpu")]
            if let Some(r) = $f::<$b, burn::backend::Autodiff<burn::backend::Wgpu>>($($arg),*) { return Some(r); }
            #[cfg(feature = "cuda")]
            if let Some(r) = $f::<$b, burn::backend::Cuda>($($arg),*) { return Some(r); }
            #[cfg(feature = "cuda")]
            if let Some(r) = $f::<$b, burn::backend::Autodiff<burn::backend::Cuda>>($($arg),*) { return Some(r); }
            None
        }};
    }

    fn same<B: Backend, K: ChunkedLinearAttention>() -> Option<()> {
        (TypeId::of::<B>() == TypeId::of::<K>()).then_some(())
    }

    const _: () = assert!(super::MAX_CHUNK == ember_kernels::MAX_CHUNK);

    pub fn tensor_core_calls() -> u64 {
        ember_kernels::tensor_core_calls()
    }

    pub fn has<B: Backend>() -> bool {
        let found: Option<()> = (|| on_kernel_backend!(same::<B>()))();
        found.is_some()
    }

    /// `x` as the type it is (`B` and `K` are the same type, checked by the caller).
    fn cast<X: 'static, Y: 'static>(x: X) -> Y {
        *(Box::new(x) as Box<dyn Any>)
            .downcast::<Y>()
            .expect("dispatch on the same type")
    }

    fn run<B: Backend, K: ChunkedLinearAttention>(
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        g: Option<&Tensor<B, 4>>,
        h0: Option<&Tensor<B, 4>>,
        scale: f64,
        chunk: usize,
    ) -> Option<LinearAttnOutput<B>> {
        same::<B, K>()?;
        let to_k = |x: &Tensor<B, 4>| cast::<_, Tensor<K, 4>>(x.clone());
        let out = ember_kernels::chunked(
            to_k(q),
            to_k(k),
            to_k(v),
            g.map(to_k),
            h0.map(to_k),
            scale,
            chunk,
        );
        Some(LinearAttnOutput {
            output: cast(out.output),
            state: cast(out.state),
        })
    }

    pub fn chunked<B: Backend>(
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        g: Option<&Tensor<B, 4>>,
        h0: Option<&Tensor<B, 4>>,
        scale: f64,
        chunk: usize,
    ) -> Option<LinearAttnOutput<B>> {
        on_kernel_backend!(run::<B>(q, k, v, g, h0, scale, chunk))
    }
}

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
mod dispatch {
    use crate::linear_attention::LinearAttnOutput;
    use burn::tensor::{backend::Backend, Tensor};

    pub fn tensor_core_calls() -> u64 {
        0
    }

    pub fn has<B: Backend>() -> bool {
        false
    }

    pub fn chunked<B: Backend>(
        _: &Tensor<B, 4>,
        _: &Tensor<B, 4>,
        _: &Tensor<B, 4>,
        _: Option<&Tensor<B, 4>>,
        _: Option<&Tensor<B, 4>>,
        _: f64,
        _: usize,
    ) -> Option<LinearAttnOutput<B>> {
        None
    }
}
