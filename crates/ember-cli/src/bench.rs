//! `ember bench train` and `ember bench ops`: arguments, the device facts that only the binary
//! can know (which backend a device name became, its memory statistics, its peak FLOP/s), and
//! the printed report.
use crate::backend;
use anyhow::{Context, Result};
use clap::Args;
use ember_train::bench::ops::{self, Grid, Level, OpsOptions};
use ember_train::bench::peak::{self, Peak};
use ember_train::bench::{self as b, MemoryProbe, TrainBenchOptions};
use ember_train::recipe::{Precision, Recipe};
use std::path::PathBuf;

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub recipe: crate::RecipeArgs,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Backend and device (overrides train.device; see `ember train --help`).
    #[arg(long)]
    pub device: Option<String>,
    /// Compute dtype, overriding train.dtype: f32, or bf16 (f32 master weights).
    #[arg(long)]
    pub dtype: Option<Precision>,
    /// Peak of the device in TFLOP/s for MFU (default: a datasheet figure for known NVIDIA
    /// GPUs, an estimate from /proc/cpuinfo on a CPU).
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Also write the result as one JSON object to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args)]
pub struct OpsArgs {
    /// mixer: each mixer kind of the registry (projections included) on x: [B, T, H·D];
    /// op: the sequence ops alone on q, k, v: [B, T, H, D].
    #[arg(long, default_value = "mixer")]
    pub level: Level,
    /// Mixer kinds (level mixer) or ops (level op: softmax_attention, linear_attention,
    /// based_taylor) to time, comma-separated; default all.
    #[arg(long, value_delimiter = ',')]
    pub kinds: Option<Vec<String>>,
    /// Training form to time where there is a choice; default each mixer's own.
    #[arg(long, value_parser = ["parallel", "chunked"])]
    pub form: Option<String>,
    /// Whether chunked forms run on ember's CubeCL kernels (wgpu, cuda): auto (where they were
    /// measured faster), on, off. Rows that ran on the kernels say form "kernels" ("kernels-tc"
    /// where they ran on tensor cores; `EMBER_TENSOR_CORES=off` turns those off).
    #[arg(long, default_value = "auto")]
    pub kernels: ember_ops::kernels::Kernels,
    /// Time every chunked form twice where the backend has the kernels: composed Burn ops
    /// ("chunked"), then the kernels ("kernels").
    #[arg(long)]
    pub compare: bool,
    /// Set a key of every mixer config that has it, e.g. --mixer-set skip_unselected=false
    /// (MoH's dense path) or --mixer-set chunk_size=128 (repeatable; TOML values).
    #[arg(long = "mixer-set", value_name = "KEY=VALUE")]
    pub mixer_sets: Vec<String>,
    /// Shape grid: cpu (B 2, T 256/512/1024, H 4, D 64) or fla (65,536 tokens per call,
    /// T 1K…32K, H 16, D 64); the options below replace parts of it.
    #[arg(long, default_value = "cpu")]
    pub grid: String,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub batch: Option<Vec<usize>>,
    /// Sequence lengths, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub seq: Option<Vec<usize>>,
    /// Head counts, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub heads: Option<Vec<usize>>,
    /// Head widths, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub head_dim: Option<Vec<usize>>,
    /// Tokens per call: the batch of each point is tokens / T (replaces --batch).
    #[arg(long)]
    pub tokens: Option<usize>,
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
    /// Backend and device (see `ember train --help`).
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed repetitions per point (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Skip points estimated to need more memory than this (default: 80% of the GPU's memory
    /// per nvidia-smi, 8 GiB on another GPU, 16 GiB on the CPU).
    #[arg(long)]
    pub max_mem_gb: Option<f64>,
    /// Also write the rows as JSON lines to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The kind of device a backend runs on, from its Burn name (`autodiff<cubecl<cuda>>`, …).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// A CubeCL backend on CUDA.
    CubeclCuda,
    /// Another CubeCL backend (wgpu: Vulkan, Metal, …).
    CubeclWgpu,
    /// libtorch on a GPU.
    TorchGpu,
    Cpu,
}

impl Kind {
    fn of(backend_name: &str) -> Kind {
        if backend_name.contains("cubecl<cuda") {
            Kind::CubeclCuda
        } else if backend_name.contains("cubecl<") {
            Kind::CubeclWgpu
        } else if backend_name.contains("libtorch<") && !backend_name.contains("libtorch<cpu") {
            Kind::TorchGpu
        } else {
            Kind::Cpu
        }
    }

    /// The `nvidia-smi` index of the GPU, if it is one (wgpu's default device is taken as GPU 0).
    fn gpu_index(self, device: &str) -> Option<usize> {
        match self {
            Kind::Cpu => None,
            Kind::CubeclWgpu => Some(0),
            Kind::CubeclCuda | Kind::TorchGpu => Some(backend::index(device)),
        }
    }
}

/// How peak memory can be measured on `device` (run by the backend named `backend_name`).
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
fn memory_probe(device: &str, backend_name: &str) -> MemoryProbe {
    match Kind::of(backend_name) {
        Kind::Cpu => MemoryProbe::process_peak_rss(),
        #[cfg(feature = "cuda")]
        Kind::CubeclCuda => {
            use cubecl::Runtime;
            let dev = burn::backend::cuda::CudaDevice::new(backend::index(device));
            pool_probe(move || cubecl::cuda::CudaRuntime::client(&dev).memory_usage().ok())
        }
        #[cfg(feature = "wgpu")]
        Kind::CubeclWgpu => {
            use cubecl::Runtime;
            let dev = burn::backend::wgpu::WgpuDevice::DefaultDevice;
            pool_probe(move || cubecl::wgpu::WgpuRuntime::client(&dev).memory_usage().ok())
        }
        Kind::TorchGpu => MemoryProbe::unavailable("libtorch's CUDA allocator statistics are not reachable through Burn"),
        #[allow(unreachable_patterns)]
        _ => MemoryProbe::unavailable(format!("{backend_name}: built without the cubecl dependency")),
    }
}

/// The CubeCL memory pool's high-water mark: the largest `bytes_reserved` seen (the pool
/// grows to what the busiest moment of a step needed, and is read between steps).
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn pool_probe(usage: impl Fn() -> Option<cubecl::MemoryUsage> + 'static) -> MemoryProbe {
    MemoryProbe::new("CubeCL pool reserved, high-water", move || usage().map(|u| u.bytes_reserved))
}

/// The peak FLOP/s MFU is taken against: `--peak-tflops`, the datasheet figure of a known
/// NVIDIA GPU, or an estimate for the CPU.
fn device_peak(given: Option<f64>, device: &str, backend_name: &str, precision: Precision) -> Result<Peak, String> {
    if let Some(tflops) = given {
        return Ok(Peak { tflops, source: "--peak-tflops".into() });
    }
    match Kind::of(backend_name).gpu_index(device) {
        Some(i) => peak::nvidia_gpu_peak(i, precision),
        None => {
            let cpu = peak::this_cpu_peak().ok_or("cannot read /proc/cpuinfo; pass --peak-tflops")?;
            match precision {
                Precision::Bf16 => Ok(Peak { source: format!("{}; the f32 figure, for bf16", cpu.source), ..cpu }),
                Precision::F32 => Ok(cpu),
            }
        }
    }
}

/// `--max-mem-gb`, or a conservative guess for the device.
fn max_mem_bytes(given: Option<f64>, device: &str, backend_name: &str) -> f64 {
    const GIB: f64 = (1u64 << 30) as f64;
    if let Some(gb) = given {
        return gb * GIB;
    }
    match Kind::of(backend_name).gpu_index(device) {
        Some(i) => peak::nvidia_gpu_memory(i).map_or(8.0 * GIB, |bytes| 0.8 * bytes),
        None => 16.0 * GIB,
    }
}

pub fn train(args: TrainArgs) -> Result<()> {
    let recipe = Recipe::load(&args.recipe.recipe, &args.recipe.overrides).map_err(|e| anyhow::anyhow!("{e}"))?;
    let precision = args.dtype.unwrap_or_else(|| recipe.train.precision());
    let device = backend::resolve(args.device.as_deref().unwrap_or(&recipe.train.device), precision);
    let opts = TrainBenchOptions { steps: args.steps, warmup: args.warmup, precision };
    let (result, backend_name, memory) = backend::with_backend!(&device, |B, dev| {
        let backend_name = <B as burn::tensor::backend::Backend>::name(&dev);
        let mut memory = memory_probe(&device, &backend_name);
        ember_train::bench::train_steps::<B>(&recipe, &opts, &mut memory, &dev).map(|r| (r, backend_name, memory))
    })
    .with_context(|| format!("benchmarking {} on {device}", recipe.source.path.display()))?;
    let peak = device_peak(args.peak_tflops, &device, &backend_name, precision);
    let mfu = |flops: f64| peak.as_ref().ok().map(|p| 100.0 * flops / (p.tflops * 1e12));

    println!("recipe        {}", recipe.source.path.display());
    println!("device        {device} ({backend_name})");
    println!("dtype         {precision}");
    println!("parameters    {}", result.params);
    println!("tokens/step   {} ({} × {} × grad_accum {})", result.tokens_per_step, recipe.train.batch_size, recipe.data.seq_len, recipe.optim.grad_accum);
    println!("step          {:.1} ms mean, {:.1} ms median ({} steps after {} warm-up)", result.step_ms, result.median_step_ms, args.steps, args.warmup);
    println!("throughput    {:.0} tokens/s", result.tokens_per_sec);
    println!("peak memory   {}", memory.describe());
    println!("FLOP/s        {:.4} TFLOP/s by 6·N·tokens/s", result.model_flops_per_sec / 1e12);
    println!(
        "              {:.4} TFLOP/s by 3 × the model's forward FLOPs/token ({:.2} MFLOP at seq_len {}, attention included)",
        result.counted_flops_per_sec / 1e12,
        result.forward_flops_per_token / 1e6,
        recipe.data.seq_len
    );
    match &peak {
        Ok(p) => {
            println!("device peak   {:.3} TFLOP/s ({})", p.tflops, p.source);
            let (six_n, counted) = (mfu(result.model_flops_per_sec), mfu(result.counted_flops_per_sec));
            println!("MFU           {:.2}% (6·N), {:.2}% (model FLOPs)", six_n.unwrap_or(f64::NAN), counted.unwrap_or(f64::NAN));
        }
        Err(why) => println!("MFU           n/a ({why})"),
    }
    if let Some(path) = &args.json {
        let row = serde_json::json!({
            "recipe": recipe.source.path.display().to_string(),
            "device": device,
            "backend": backend_name,
            "dtype": precision.to_string(),
            "params": result.params,
            "tokens_per_step": result.tokens_per_step,
            "steps": args.steps,
            "warmup": args.warmup,
            "step_ms": result.step_ms,
            "median_step_ms": result.median_step_ms,
            "tokens_per_sec": result.tokens_per_sec,
            "peak_memory_bytes": memory.peak_bytes(),
            "peak_memory": memory.describe(),
            "flops_per_sec_6n": result.model_flops_per_sec,
            "forward_flops_per_token": result.forward_flops_per_token,
            "flops_per_sec_model": result.counted_flops_per_sec,
            "peak_tflops": peak.as_ref().ok().map(|p| p.tflops),
            "peak_source": peak.as_ref().map_or_else(|e| e.clone(), |p| p.source.clone()),
            "mfu_6n": mfu(result.model_flops_per_sec).map(|m| m / 100.0),
            "mfu_model": mfu(result.counted_flops_per_sec).map(|m| m / 100.0),
        });
        b::write_jsonl(path, &[row])?;
    }
    Ok(())
}

pub fn ops(args: OpsArgs) -> Result<()> {
    let mut grid = Grid::preset(&args.grid).map_err(anyhow::Error::msg)?;
    let replace = |list: &mut Vec<usize>, given: &Option<Vec<usize>>| {
        if let Some(given) = given {
            *list = given.clone();
        }
    };
    replace(&mut grid.batch, &args.batch);
    replace(&mut grid.seq_len, &args.seq);
    replace(&mut grid.heads, &args.heads);
    replace(&mut grid.head_dim, &args.head_dim);
    if args.batch.is_some() {
        grid.tokens = None;
    }
    if args.tokens.is_some() {
        grid.tokens = args.tokens;
    }
    let shapes = grid.shapes().map_err(anyhow::Error::msg)?;
    let form = args.form.as_deref().map(|f| if f == "chunked" { ember_ops::Form::Chunked } else { ember_ops::Form::Parallel });
    let device = backend::resolve(&args.device, args.dtype);
    // Rows are written as they come, so a run that dies part-way (out of memory, say) keeps them.
    let mut json = match &args.json {
        Some(path) => Some(std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?),
        None => None,
    };
    let mut json_error = None;
    backend::with_backend!(&device, |B, dev| {
        let backend_name = <B as burn::tensor::backend::Backend>::name(&dev);
        let opts = OpsOptions {
            level: args.level,
            kinds: args.kinds.clone(),
            form,
            mixer_sets: args.mixer_sets.iter().map(|s| parse_mixer_set(s)).collect::<Result<_>>()?,
            precision: args.dtype,
            warmup: args.warmup,
            reps: args.reps,
            max_mem_bytes: max_mem_bytes(args.max_mem_gb, &device, &backend_name),
            kernels: args.kernels,
            compare: args.compare,
        };
        // The header goes out with the first row, so an error comes alone.
        let mut header = Some(format!(
            "device {device} ({backend_name}), {}, {} warm-up + {} timed calls per point (median), memory limit {:.1} GiB\n{}",
            args.dtype,
            args.warmup,
            args.reps,
            b::gib(opts.max_mem_bytes),
            ops::OpsRow::HEADER
        ));
        ops::run::<B>(&opts, &shapes, &dev, |row| {
            if let Some(header) = header.take() {
                println!("{header}");
            }
            println!("{}", row.line());
            if let Some(file) = json.as_mut() {
                use std::io::Write;
                let written = serde_json::to_writer(&mut *file, row).map_err(std::io::Error::from).and_then(|_| writeln!(file));
                if let Err(e) = written {
                    json_error.get_or_insert(e);
                }
            }
        })
    })
    .with_context(|| format!("device {device}"))?;
    if let (Some(e), Some(path)) = (json_error, &args.json) {
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// `KEY=VALUE` of `--mixer-set`, the value read as TOML (`false`, `128`, `"elu"`).
fn parse_mixer_set(arg: &str) -> Result<(String, serde_json::Value)> {
    let (key, value) = arg.split_once('=').with_context(|| format!("--mixer-set {arg:?}: expected KEY=VALUE"))?;
    let table: toml::Table = format!("v = {value}").parse().with_context(|| format!("--mixer-set {arg:?}: {value:?} is not a TOML value"))?;
    Ok((key.trim().to_string(), serde_json::to_value(&table["v"])?))
}

#[derive(Args)]
pub struct MatmulArgs {
    /// Square sizes n (an n×n by n×n product), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4096,8192")]
    pub size: Vec<usize>,
    /// Float dtypes, comma-separated: f32, bf16, f16.
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    pub dtype: Vec<String>,
    /// Untimed calls first (they include autotuning and kernel compilation).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed calls (median).
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// wgpu or cuda[:i]: Burn's CubeCL backends.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// `ember bench matmul`: TFLOP/s of Burn's CubeCL matmul per size, dtype and kernel choice
/// (the fixed kernel Burn uses without autotuning, and the autotuned one where built in).
pub fn matmul(args: MatmulArgs) -> Result<()> {
    let device = backend::resolve(&args.device, Precision::F32);
    match device.split(':').next().unwrap_or("") {
        #[cfg(feature = "wgpu")]
        "wgpu" => matmul_rows::<burn::backend::Wgpu>(&args, &Default::default(), |a, b, p| ember_kernels::matmul_on(a, b, p)),
        #[cfg(feature = "cuda")]
        "cuda" => {
            let dev = burn::backend::cuda::CudaDevice::new(backend::index(&device));
            matmul_rows::<burn::backend::Cuda>(&args, &dev, |a, b, p| ember_kernels::matmul_on(a, b, p))
        }
        other => anyhow::bail!(
            "bench matmul times Burn's CubeCL matmul, on --device wgpu or cuda; {other:?} is not one (this build: {})",
            backend::compiled().join(", ")
        ),
    }
}

/// The table of [`matmul`] on backend `B`; `product` is `ember_kernels::matmul_on` for `B`.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn matmul_rows<B: burn::tensor::backend::Backend>(
    args: &MatmulArgs,
    device: &B::Device,
    product: impl Fn(burn::tensor::Tensor<B, 2>, burn::tensor::Tensor<B, 2>, ember_kernels::MatmulPath) -> burn::tensor::Tensor<B, 2>,
) -> Result<()> {
    use burn::tensor::{Distribution, FloatDType, Tensor};
    println!("device {} ({}), {} warm-up + {} timed calls (median)", args.device, B::name(device), args.warmup, args.reps);
    println!("{:>6}  {:<5}  {:<8}  {:>10}  {:>9}", "n", "dtype", "kernel", "ms", "TFLOP/s");
    for &n in &args.size {
        for dtype in &args.dtype {
            let float = match dtype.as_str() {
                "f32" => FloatDType::F32,
                "bf16" => FloatDType::BF16,
                "f16" => FloatDType::F16,
                other => anyhow::bail!("--dtype {other:?}: expected f32, bf16 or f16"),
            };
            let random = || Tensor::<B, 2>::random([n, n], Distribution::Normal(0.0, 1.0), device).cast(float);
            let (a, b) = (random(), random());
            for path in ember_kernels::matmul_paths() {
                let times = b::time_reps::<B>(device, args.warmup, args.reps, || drop(product(a.clone(), b.clone(), path)))?;
                let ms = b::median_ms(&times);
                let tflops = 2.0 * (n as f64).powi(3) / (ms / 1e3) / 1e12;
                println!("{n:>6}  {dtype:<5}  {path:<8}  {ms:>10.3}  {tflops:>9.2}");
            }
        }
    }
    Ok(())
}
