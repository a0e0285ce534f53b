//! `ember`: train, sample, check and benchmark efficient sequence models from TOML recipes.
mod backend;
mod bench;
mod eval;
mod sweep;

// Training allocates and frees tensors of tens of MB every step; glibc hands those back to the
// OS and page-faults them in again each time, which mimalloc avoids (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`, the same in mimalloc 2 and
/// 3; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ember_train::generate::{self, SampleOptions};
use ember_train::recipe::{Precision, Recipe};
use ember_train::trainer::{self, TrainOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "ember", version, about = "Pretrain, compare and sample efficient sequence models on Burn")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// CPU threads for the CPU backends' parallel ops and matmuls (default: `RAYON_NUM_THREADS`,
    /// else every core). Results do not depend on it: the threads split a matmul's output, never
    /// a sum.
    #[arg(long, global = true)]
    threads: Option<usize>,
}

/// Sizes the two CPU thread pools the backends use: rayon's (burn-flex's matmuls, parallel ops)
/// and matrixmultiply's (burn-ndarray's matmuls, which reads `MATMUL_NUM_THREADS` once, at its
/// first matmul, and uses at most 4). `--threads` wins over `RAYON_NUM_THREADS`, which wins over
/// the number of cores.
fn size_thread_pools(threads: Option<usize>) -> Result<()> {
    let from_env = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse::<usize>().ok());
    let Some(n) = threads.or(from_env) else { return Ok(()) };
    if n == 0 {
        bail!("--threads must be at least 1");
    }
    if threads.is_some() || std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        // Before any thread exists that could read the environment (the first thing `main` does).
        std::env::set_var("MATMUL_NUM_THREADS", n.to_string());
    }
    rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("sizing the CPU thread pool")
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a recipe (or resume a run).
    Train(TrainArgs),
    /// Recipe utilities.
    #[command(subcommand)]
    Recipe(RecipeCommand),
    /// Turn text, JSONL or Parquet into token shards.
    #[command(subcommand)]
    Data(DataCommand),
    /// Tokenizer utilities.
    #[command(subcommand)]
    Tokenizer(TokenizerCommand),
    /// Sample from a checkpoint with the recurrent forms.
    Generate(GenerateArgs),
    /// Check every form of every op against reference fixtures.
    Conformance(ConformanceArgs),
    /// Measure speed.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Evaluate checkpoints on synthetic tasks.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Scaling-law sweeps: plan, run (or emit a Slurm/shell script), collect, fit.
    Sweep(sweep::SweepArgs),
    /// Write a checkpoint's model as safetensors a PyTorch user can load: the Hugging Face
    /// Llama layout (`--format hf`) or ember's own (`--format ember`).
    Export(ExportArgs),
    /// Linearize a pretrained softmax Transformer (Hugging Face Llama / Qwen2 / Mistral) into a
    /// LoLCATs, Lizard-style, GLA or BASED student: attention transfer, then LoRA fine-tuning.
    Linearize(LinearizeArgs),
}

#[derive(Args)]
struct LinearizeArgs {
    /// Linearization recipe (e.g. recipes/linearize/lolcats-attn-tiny.toml).
    #[arg(long)]
    recipe: PathBuf,
    /// Override a recipe key: `--set stage1.steps=100` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Backend device (overrides run.device).
    #[arg(long)]
    device: Option<String>,
    /// Stop stage 1 after this many steps (checkpointed); re-running resumes.
    #[arg(long)]
    stop_after: Option<usize>,
    /// No per-evaluation lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct ExportArgs {
    /// Checkpoint directory, or a run directory (its newest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// New directory to write into.
    #[arg(long)]
    out: PathBuf,
    /// hf: config.json + model.safetensors + tokenizer.json as `transformers` reads them
    /// (Llama, Qwen2 or Mistral; softmax-attention models with SwiGLU and RMSNorm only).
    /// ember: any model, keyed by ember's module paths, with its recipe (docs/RECIPES.md).
    /// fla: GLA models as flash-linear-attention's GLAForCausalLM.
    #[arg(long, value_enum, default_value = "hf")]
    format: ExportFormat,
    /// Fold LoRA adapters (from `ember linearize`) into the weights they adapt.
    #[arg(long)]
    merge_lora: bool,
    /// Precision of the written weights.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: ExportDtypeArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Hf,
    Ember,
    Fla,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportDtypeArg {
    F32,
    Bf16,
}

#[derive(Args)]
struct RecipeArgs {
    /// Recipe file; a bare name not found in the working directory is looked up in recipes/.
    #[arg(long)]
    recipe: PathBuf,
    /// Override any recipe key, e.g. --set optim.lr=3e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

#[derive(Args)]
struct TrainArgs {
    /// Recipe file (optional with --resume: the checkpoint's own recipe is used).
    #[arg(long)]
    recipe: Option<PathBuf>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue from a checkpoint directory, or a run directory's newest checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Backend and device (overrides train.device): auto, cpu, ndarray, flex, wgpu, cuda[:i], tch-cpu, tch-cuda[:i].
    #[arg(long)]
    device: Option<String>,
    /// Stop after this many steps (checkpointing there), as if interrupted.
    #[arg(long)]
    stop_after: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand)]
enum RecipeCommand {
    /// Validate a recipe and print parameters, FLOPs per token and state size per layer.
    Check {
        file: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Tokenize sources (.txt, .jsonl, .parquet, or directories of them) into shards + manifest.
    Prepare {
        /// Input files or directories.
        #[arg(required = true)]
        sources: Vec<PathBuf>,
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Field (JSONL) or column (Parquet) holding the text.
        #[arg(long, default_value = "text")]
        text_field: String,
        /// Treat every non-empty line of a .txt file as its own document.
        #[arg(long)]
        split_lines: bool,
    },
}

#[derive(Subcommand)]
enum TokenizerCommand {
    /// Train a byte-level BPE tokenizer (tokenizer.json) on text, JSONL or Parquet files.
    Train {
        #[arg(required = true)]
        sources: Vec<PathBuf>,
        #[arg(long, default_value_t = 8192)]
        vocab_size: usize,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct GenerateArgs {
    /// Checkpoint directory, or a run directory (its newest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long, default_value = "")]
    prompt: String,
    #[arg(long, default_value_t = 100)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// 0 = no top-k cut.
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of samples.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Backend and device (see `ember train --help`); `auto` picks the best one present.
    #[arg(long, default_value = "auto")]
    device: String,
}

#[derive(Args)]
struct ConformanceArgs {
    /// Directory of fixtures in the format of shared/fixtures/README.md.
    #[arg(long)]
    fixtures: PathBuf,
    /// Backend and device (see `ember train --help`).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Compute dtype: f32 (tolerance 1e-4) or bf16 (2e-2), per the fixtures' README.
    #[arg(long, default_value = "f32")]
    dtype: Precision,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time real training steps of a recipe: tokens/s, step time, peak memory, FLOP/s and MFU.
    Train(bench::TrainArgs),
    /// Time forward and forward+backward of each mixer (or op) over a grid of (B, T, H, D).
    Ops(bench::OpsArgs),
    /// TFLOP/s of Burn's CubeCL matmul (wgpu, cuda) per dtype, fixed kernel vs autotuned.
    Matmul(bench::MatmulArgs),
}

fn main() -> ExitCode {
    // Keep freed pages rather than handing them back to the OS 10 ms later: every step
    // allocates the same large tensors again (3-13% faster CPU steps, see BENCHMARKS.md).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let cli = Cli::parse();
    if let Err(e) = size_thread_pools(cli.threads) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_recipe(path: &std::path::Path, overrides: &[String]) -> Result<Recipe> {
    Recipe::load(path, overrides).map_err(|e| anyhow::anyhow!("{e}"))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Train(args) => train(args)?,
        Command::Recipe(RecipeCommand::Check { file, overrides }) => {
            let recipe = load_recipe(&file, &overrides)?;
            print!("{}", recipe.check_report());
        }
        Command::Data(DataCommand::Prepare { sources, tokenizer, out, text_field, split_lines }) => {
            let opts = ember_data::PrepareOptions { text_field, split_lines, ..Default::default() };
            let manifest = ember_data::prepare(&sources, &tokenizer, &out, &opts)?;
            println!(
                "prepared {} documents, {} tokens into {} ({} shards)",
                manifest.documents,
                manifest.total_tokens,
                out.display(),
                manifest.shards.len()
            );
        }
        Command::Tokenizer(TokenizerCommand::Train { sources, vocab_size, out }) => {
            ember_data::train_tokenizer(&sources, vocab_size, &out)?;
            let tok = ember_data::Tokenizer::from_file(&out)?;
            println!("trained a byte-level BPE with {} tokens: {}", tok.vocab_size(), out.display());
        }
        Command::Generate(args) => {
            let device = backend::resolve(&args.device, Default::default());
            backend::with_backend!(&device, |B, dev| generate_cmd::<B>(&args, &dev))?
        }
        Command::Conformance(args) => {
            let device = backend::resolve(&args.device, args.dtype);
            println!("conformance on {device} in {}", args.dtype);
            let report = backend::with_backend!(&device, |B, dev| {
                ember_train::conformance::run::<B>(&args.fixtures, args.dtype, &dev)
            })?;
            print!("{}", report.table());
            if !report.passed() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Bench(BenchCommand::Train(args)) => bench::train(args)?,
        Command::Bench(BenchCommand::Ops(args)) => bench::ops(args)?,
        Command::Bench(BenchCommand::Matmul(args)) => bench::matmul(args)?,
        Command::Eval(command) => eval::run(command)?,
        Command::Sweep(args) => sweep::run(args)?,
        Command::Linearize(args) => {
            use ember_train::linearize::{linearize, LinearizeOptions, LinearizeRecipe};
            let mut overrides = args.overrides.clone();
            if let Some(device) = &args.device {
                overrides.push(format!("run.device={device:?}"));
            }
            let recipe = LinearizeRecipe::load(&args.recipe, &overrides).map_err(|e| anyhow::anyhow!("{e}"))?;
            let device = backend::resolve(&recipe.run.device, ember_ops::precision::Precision::F32);
            let opts = LinearizeOptions { quiet: args.quiet, stop_after: args.stop_after };
            println!("linearizing {} into {:?} students on {device}; run directory {}", recipe.teacher.path.display(), recipe.student.mixer.kind(), recipe.run.out_dir.display());
            let report = backend::with_backend!(&device, |B, dev| linearize::<B>(&recipe, &opts, &dev))?;
            if report.interrupted {
                println!("stopped during stage 1 (checkpointed): run the same command again to resume");
            } else {
                print!("{}", report.markdown());
                println!("\nreport: {}", recipe.run.out_dir.join("report.md").display());
            }
        }
        Command::Export(args) => {
            use ember_models::hf::export::ExportDtype;
            use ember_train::export::Format;
            let format = match args.format {
                ExportFormat::Hf => Format::Hf,
                ExportFormat::Ember => Format::Ember,
                ExportFormat::Fla => Format::Fla,
            };
            let dtype = match args.dtype {
                ExportDtypeArg::F32 => ExportDtype::F32,
                ExportDtypeArg::Bf16 => ExportDtype::Bf16,
            };
            // A file conversion: the CPU backend reads and writes the weights.
            let files = ember_train::export::export_with::<burn::backend::NdArray<f32>>(&args.checkpoint, &args.out, format, dtype, args.merge_lora, &Default::default())?;
            for f in files {
                println!("wrote {}", f.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn train(args: TrainArgs) -> Result<()> {
    // `--device` is an override like any other, so the recipe's checks (e.g. of dtype) see it.
    let mut overrides = args.overrides.clone();
    if let Some(device) = &args.device {
        overrides.push(format!("train.device={device:?}"));
    }
    let recipe = match (&args.recipe, &args.resume) {
        (Some(path), _) => load_recipe(path, &overrides)?,
        (None, Some(resume)) => {
            let ckpt = ember_train::checkpoint::resolve(resume)?;
            load_recipe(&ckpt.join(ember_train::checkpoint::RECIPE_FILE), &overrides)?
        }
        (None, None) => bail!("give --recipe FILE, or --resume DIR to continue a run"),
    };
    let device = backend::resolve(&recipe.train.device, recipe.train.precision());
    let opts = TrainOptions { resume: args.resume.clone(), stop_after: args.stop_after, quiet: args.quiet };
    println!(
        "training {} ({} parameters) for {} steps on {device} in {}; run directory {}",
        recipe.train.name,
        recipe.model.num_params(),
        recipe.steps(),
        recipe.train.precision(),
        recipe.train.out_dir.display()
    );
    backend::with_backend!(&device, |B, dev| train_cmd::<B>(&recipe, &opts, &dev))
}

fn train_cmd<B: burn::tensor::backend::AutodiffBackend>(recipe: &Recipe, opts: &TrainOptions, device: &B::Device) -> Result<()> {
    let report = trainer::train::<B>(recipe, opts, device)?;
    match report.losses.last() {
        Some(&(_, loss)) => println!("step {}/{}: train loss {loss:.4}", report.final_step, report.total_steps),
        None => println!("step {}/{}: nothing to train (the run is finished: it reached train.steps, or train.stop_accuracy with steps left; raise that setting to extend it)", report.final_step, report.total_steps),
    }
    if let (Some((step, val)), Some((_, accuracy))) = (report.val_losses.last(), report.val_accuracies.last()) {
        let versus = match report.unigram_entropy {
            Some(entropy) => format!("; unigram entropy of the corpus {entropy:.4}"),
            None => String::new(),
        };
        println!("validation loss {val:.4} (perplexity {:.1}), accuracy {accuracy:.4} at step {step}{versus}", val.exp());
    }
    if report.stopped_early {
        println!("stopped early: validation accuracy reached train.stop_accuracy");
    }
    println!("{:.0} tokens/s", report.tokens_per_sec);
    if let Some(ckpt) = &report.last_checkpoint {
        println!("checkpoint {}", ckpt.display());
        if report.final_step == report.total_steps && recipe.log.samples > 0 && recipe.data.tokenizer.is_some() {
            let loaded = generate::load::<B::InnerBackend>(ckpt, device)?;
            for i in 0..recipe.log.samples {
                let opts = SampleOptions { max_tokens: recipe.log.sample_tokens, seed: i as u64, ..Default::default() };
                let g = generate::generate(&loaded.model, &loaded.tokenizer, &recipe.log.prompt, &opts, device)?;
                println!("--- sample {} ---\n{}{}", i + 1, recipe.log.prompt, g.text);
            }
        }
    }
    Ok(())
}

fn generate_cmd<B: burn::tensor::backend::AutodiffBackend>(args: &GenerateArgs, device: &B::Device) -> Result<()> {
    let loaded = generate::load::<B::InnerBackend>(&args.checkpoint, device)
        .with_context(|| format!("loading {}", args.checkpoint.display()))?;
    for i in 0..args.samples {
        let opts = SampleOptions {
            max_tokens: args.max_tokens,
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed + i as u64,
        };
        let g = generate::generate(&loaded.model, &loaded.tokenizer, &args.prompt, &opts, device)?;
        println!("{}{}", args.prompt, g.text);
        eprintln!(
            "[{} prompt tokens, prefill {:.1} ms; {} new tokens at {:.1} tokens/s; recurrent state {:.1} KiB]",
            g.prompt_tokens,
            g.prefill_ms,
            g.new_tokens.len(),
            g.tokens_per_sec,
            g.state_bytes as f64 / 1024.0
        );
    }
    Ok(())
}
