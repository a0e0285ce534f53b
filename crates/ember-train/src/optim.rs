//! AdamW over named parameters, with decoupled weight decay, no-decay groups by name and
//! global-norm gradient clipping.
//!
//! Written here rather than taken from `burn-optim` because a training framework needs three
//! things Burn 0.21's optimizers do not give: clipping by the norm of *all* gradients together
//! (Burn clips each tensor on its own), parameter groups chosen by name, and optimizer state
//! keyed by parameter path so checkpoints are readable safetensors that resume exactly.
use crate::recipe::OptimConfig;
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use std::collections::BTreeMap;

/// First and second moments of one parameter, flattened.
#[derive(Clone, Debug)]
pub struct Moments<B: Backend> {
    pub m: Tensor<B, 1>,
    pub v: Tensor<B, 1>,
}

/// AdamW state: moments by parameter path, and the number of updates taken.
pub struct AdamW<B: Backend> {
    pub config: OptimConfig,
    pub moments: BTreeMap<String, Moments<B>>,
    pub updates: usize,
}

/// Tracks the dotted module path while Burn walks a module.
#[derive(Default)]
struct Path(Vec<String>);

impl Path {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn name(&self) -> String {
        self.0.join(".")
    }
}

/// Sums the squares of every gradient, on the device (one sync at the end, not one per tensor).
struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let sq = g.powi_scalar(2).sum();
            self.total = Some(match self.total.take() {
                None => sq,
                Some(t) => t + sq,
            });
        }
    }
}

/// Collects every float parameter, flattened, by dotted path.
struct Named<B: Backend> {
    path: Path,
    params: Vec<(String, Tensor<B, 1>)>,
}

impl<B: Backend> ModuleVisitor<B> for Named<B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        let n = value.shape().num_elements();
        self.params.push((self.path.name(), value.reshape([n])));
    }
}

/// Every float parameter of a module, flattened, by the dotted path the optimizer and the
/// checkpoints use (e.g. `blocks.1.mixer.BasedLinear.q.weight`), in module order.
pub fn named_parameters<B: Backend, M: burn::module::Module<B>>(module: &M) -> Vec<(String, Tensor<B, 1>)> {
    let mut v = Named { path: Path::default(), params: Vec::new() };
    module.visit(&mut v);
    v.params
}

/// Sets which parameters train: those whose dotted path `trainable` accepts keep their
/// gradients, every other one is detached (no gradient, so AdamW leaves it as it is).
struct Trainable<F: Fn(&str) -> bool> {
    path: Path,
    trainable: F,
}

impl<B: AutodiffBackend, F: Fn(&str) -> bool> ModuleMapper<B> for Trainable<F> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = tensor.set_require_grad((self.trainable)(&self.path.name()));
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// `module` with only the parameters whose path `trainable` accepts left trainable (the
/// paths of [`named_parameters`]); the rest are frozen.
pub fn set_trainable<B: AutodiffBackend, M: AutodiffModule<B>>(module: M, trainable: impl Fn(&str) -> bool) -> M {
    module.map(&mut Trainable { path: Path::default(), trainable })
}

struct Update<'a, B: AutodiffBackend> {
    opt: &'a mut AdamW<B::InnerBackend>,
    grads: GradientsParams,
    path: Path,
    lr: f64,
    clip_scale: f64,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Update<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let name = self.path.name();
        let decay = !self.opt.config.no_decay.iter().any(|pattern| name.contains(pattern.as_str()));
        let updated = self.opt.update(&name, tensor.inner(), grad * self.clip_scale, self.lr, decay);
        Param::from_mapped_value(id, Tensor::from_inner(updated).require_grad(), mapper)
    }
}

/// What one optimizer step did, for logging.
#[derive(Clone, Copy, Debug)]
pub struct StepInfo {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub clipped: bool,
}

impl<B: Backend> AdamW<B> {
    pub fn new(config: OptimConfig) -> Self {
        Self { config, moments: BTreeMap::new(), updates: 0 }
    }

    /// One AdamW update of a parameter: `p ← p(1 − lr·wd) − lr·m̂/(√v̂ + ε)`.
    fn update<const D: usize>(&mut self, name: &str, p: Tensor<B, D>, g: Tensor<B, D>, lr: f64, decay: bool) -> Tensor<B, D> {
        let shape = p.shape();
        let n = shape.num_elements();
        let [b1, b2] = self.config.betas;
        let g = g.reshape([n]);
        let (m, v) = match self.moments.remove(name) {
            Some(s) => (s.m * b1 + g.clone() * (1.0 - b1), s.v * b2 + g.powi_scalar(2) * (1.0 - b2)),
            None => (g.clone() * (1.0 - b1), g.powi_scalar(2) * (1.0 - b2)),
        };
        let t = (self.updates + 1) as i32;
        let m_hat = m.clone() / (1.0 - b1.powi(t));
        let v_hat = v.clone() / (1.0 - b2.powi(t));
        let step = (m_hat / (v_hat.sqrt() + self.config.eps)).reshape(shape);
        self.moments.insert(name.to_string(), Moments { m, v });
        let p = if decay && self.config.weight_decay > 0.0 { p * (1.0 - lr * self.config.weight_decay) } else { p };
        p - step * lr
    }
}

impl<I: Backend> AdamW<I> {
    /// Clips all gradients together to `grad_clip` (global L2 norm) and updates every parameter.
    pub fn step<B, M>(&mut self, module: M, grads: GradientsParams, lr: f64) -> (M, StepInfo)
    where
        B: AutodiffBackend<InnerBackend = I>,
        M: AutodiffModule<B>,
    {
        let mut norm = SquaredNorm::<B> { grads: &grads, total: None };
        module.visit(&mut norm);
        let grad_norm = norm.total.map_or(0.0, |t| t.into_scalar().elem::<f64>().sqrt());
        let max = self.config.grad_clip;
        let clipped = max > 0.0 && grad_norm > max;
        let clip_scale = if clipped { max / (grad_norm + 1e-6) } else { 1.0 };
        let mut update = Update::<B> { opt: self, grads, path: Path::default(), lr, clip_scale };
        let module = module.map(&mut update);
        self.updates += 1;
        (module, StepInfo { grad_norm, clipped })
    }
}

