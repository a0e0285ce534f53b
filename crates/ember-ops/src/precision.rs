//! Mixed precision: the compute dtype of a training run, and the casts that keep the numerically
//! sensitive parts (reductions, normalisers, softmax, recurrent states, decays) in f32.
//!
//! ember stores parameters and optimizer state in f32 always. With `bf16` a training step casts
//! the parameters to bf16 (a differentiable cast, so their gradients come back in f32), runs the
//! matmuls in bf16, and lifts to f32 wherever the ops below call [`to_f32`].
use burn::tensor::{backend::Backend, DType, FloatDType, Tensor};

/// The dtype matmuls and activations run in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 compute, f32 master weights, optimizer state, accumulations and states.
    Bf16,
}

impl Precision {
    pub const NAMES: &'static [&'static str] = &["f32", "bf16"];

    pub fn float_dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("unknown dtype {other:?} (known: {})", Self::NAMES.join(", "))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// `x` in f32 (a no-op when it already is).
pub fn to_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    to_dtype(x, DType::F32)
}

/// `x` cast to `dtype` (a float dtype; a no-op when `x` already has it).
pub fn to_dtype<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype {
        return x;
    }
    x.cast(FloatDType::from(dtype))
}

/// Casts every float parameter of `module` to `precision`. Under autodiff the cast is part of
/// the graph, so gradients reach the original (f32) parameters in f32: call it on the master
/// module at the start of each step and run the step on the result.
pub fn cast_params<B: Backend, M: burn::module::Module<B>>(module: M, precision: Precision) -> M {
    struct Caster(FloatDType);
    impl<B: Backend> burn::module::ModuleMapper<B> for Caster {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<B, D>>,
        ) -> burn::module::Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let tensor = to_dtype(tensor, self.0.into());
            burn::module::Param::from_mapped_value(id, tensor, mapper)
        }
    }
    if precision == Precision::F32 {
        return module;
    }
    module.map(&mut Caster(precision.float_dtype()))
}

/// Whether `device` can compute in `precision`: a small bf16 matmul is tried, since backends
/// without a bf16 kernel fail by panicking (Burn's ndarray, and GPUs without bf16 support).
pub fn supported<B: Backend>(precision: Precision, device: &B::Device) -> bool {
    if precision == Precision::F32 {
        return true;
    }
    let probe = || {
        let x = Tensor::<B, 2>::ones([4, 4], device).cast(precision.float_dtype());
        let y = to_f32(x.clone().matmul(x)).sum().into_scalar();
        use burn::tensor::ElementConversion;
        y.elem::<f32>() == 64.0
    };
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(probe)).unwrap_or(false);
    std::panic::set_hook(hook);
    ok
}
