//! Burn's CubeCL matmul under an explicit strategy, for `ember bench matmul`: the question why
//! bf16 ran no faster than f32 on Burn's CUDA backend.
//!
//! Burn 0.21 picks the matmul kernel by autotuning only when built with its `autotune` feature;
//! without it (ember's dependency on burn turns default features off) every matmul takes
//! `MatmulStrategy::Cube`, i.e. cubek's `Strategy::Auto`: one fixed tensor-core (CMMA) tiling
//! for every shape and dtype. `--features cuda` now turns autotuning on; this module times both
//! paths in one binary.
use burn::tensor::{Tensor, TensorPrimitive};
use burn_cubecl::kernel::matmul::{matmul, MatmulStrategy};
use burn_cubecl::{element::BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

/// Which kernel choice a matmul takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPath {
    /// The one kernel Burn uses without its `autotune` feature.
    Fixed,
    /// Autotuned over cubek's kernels (needs this crate's `autotune` feature).
    Autotune,
}

impl std::fmt::Display for MatmulPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MatmulPath::Fixed => "fixed",
            MatmulPath::Autotune => "autotune",
        })
    }
}

/// The paths this build has.
pub fn matmul_paths() -> Vec<MatmulPath> {
    let mut paths = vec![MatmulPath::Fixed];
    if cfg!(feature = "autotune") {
        paths.push(MatmulPath::Autotune);
    }
    paths
}

/// `lhs · rhs` (same float dtype, output in it) on `path`. Panics on a path this build lacks.
pub fn matmul_on<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    lhs: Tensor<CubeBackend<R, F, I, BT>, 2>,
    rhs: Tensor<CubeBackend<R, F, I, BT>, 2>,
    path: MatmulPath,
) -> Tensor<CubeBackend<R, F, I, BT>, 2> {
    let (lhs, rhs) = (lhs.into_primitive().tensor(), rhs.into_primitive().tensor());
    let dtype = lhs.dtype;
    let strategy = match path {
        MatmulPath::Fixed => MatmulStrategy::Cube,
        #[cfg(feature = "autotune")]
        MatmulPath::Autotune => MatmulStrategy::Autotune,
        #[cfg(not(feature = "autotune"))]
        MatmulPath::Autotune => {
            panic!("this build has no autotuned matmul (ember-kernels' autotune feature)")
        }
    };
    let out = matmul(lhs, rhs, None, strategy, dtype)
        .unwrap_or_else(|e| panic!("matmul on {path}: {e:?}"));
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
