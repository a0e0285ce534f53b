//! Initial weights that are a function of a seed alone.
//!
//! Burn draws initial values from the backend's process-wide generator, eagerly
//! (`Tensor::random`) or lazily (a parameter's first use). Left alone, a module's weights would
//! depend on whatever else seeded or drew from that generator in between, in any thread. Here
//! every draw happens right after seeding, under one process-wide lock that every seeded build
//! takes, with each parameter materialised before the lock is released.
//!
//! Random *inputs* need no lock: they come from an `ember_ops::random::TensorRng` of their own.
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, Device, Tensor, TensorData};
use std::sync::Mutex;

/// The backend whose seeded generator draws the weights of [`init_seeded`].
pub type Host = burn::backend::NdArray<f32>;

/// Held from a seed until the last value drawn after it.
static DRAWS: Mutex<()> = Mutex::new(());

/// `target()` with the weights of `host(host_device)`, drawn on the CPU from `seed`: the same
/// weights on every backend (cpu, wgpu, cuda, libtorch), which is what makes their training
/// curves comparable. Both closures must build the same module (same config).
pub fn init_seeded<B: Backend, H: Module<Host>, M: Module<B>>(
    seed: u64,
    host: impl FnOnce(&Device<Host>) -> H,
    target: impl FnOnce() -> M,
) -> M {
    let host_device = Default::default();
    with_seed::<Host, _>(seed, &host_device, || {
        let mut values = CollectValues(Vec::new());
        host(&host_device).visit(&mut values);
        // Building the target may draw too (eager `Tensor::random`, and `Param::consume`
        // materialising lazy values): on ndarray that is the host's generator, which another
        // thread's seeded build must not see advanced, so it stays under the lock.
        target().map(&mut ReplaceValues(values.0.into_iter()))
    })
}

/// `build()` with its weights drawn from `B`'s own generator seeded with `seed`: reproducible
/// on one backend (each backend has its own generator, so not across backends; use
/// [`init_seeded`] for that). For small modules in tests, and for benchmarks.
pub fn build_seeded<B: Backend, M: Module<B>>(seed: u64, device: &B::Device, build: impl FnOnce() -> M) -> M {
    with_seed::<B, _>(seed, device, || {
        let module = build();
        module.visit(&mut Materialize);
        module
    })
}

/// `draw()` run right after seeding `B`'s generator with `seed`, under the lock: every value it
/// draws eagerly (`Tensor::random`) is a function of the seed. A lazily initialised parameter
/// draws at its first use, after the lock is gone: build modules with [`build_seeded`].
pub fn with_seed<B: Backend, R>(seed: u64, device: &B::Device, draw: impl FnOnce() -> R) -> R {
    exclusive_draws(|| {
        B::seed(device, seed);
        draw()
    })
}

/// `f()` run under the lock, unseeded: for building a module whose values are then overwritten
/// (a checkpoint's skeleton). Whatever its construction draws cannot then land between another
/// thread's seed and that thread's draws, which would change that thread's weights.
pub fn exclusive_draws<R>(f: impl FnOnce() -> R) -> R {
    let _guard = DRAWS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    f()
}

/// Forces lazily initialised parameters to draw their values now, in module order.
struct Materialize;

impl<B: Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// The values of every float parameter, in module order (materialising lazy ones).
struct CollectValues(Vec<TensorData>);

impl<B: Backend> ModuleVisitor<B> for CollectValues {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().into_data());
    }
}

/// Replaces every float parameter, in module order, by the next value (same structure assumed).
struct ReplaceValues(std::vec::IntoIter<TensorData>);

impl<B: Backend> ModuleMapper<B> for ReplaceValues {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, old, mapper) = param.consume();
        let data = self.0.next().expect("both modules come from one config");
        assert_eq!(data.shape, old.shape(), "both modules come from one config");
        let mut value = Tensor::from_data(data, &old.device());
        if old.is_require_grad() {
            value = value.require_grad();
        }
        Param::from_mapped_value(id, value, mapper)
    }
}
