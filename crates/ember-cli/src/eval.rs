//! `ember eval mqar`: recall accuracy of MQAR checkpoints, or a whole suite trained and tabulated;
//! `ember eval niah`: needle-in-a-haystack accuracy of checkpoints on a grid of lengths × depths.
use crate::backend;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use ember_train::mqar::{self, SuiteOptions, TestOverride};
use ember_train::niah::{self, NiahOptions};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Multi-query associative recall: accuracy per test segment of a checkpoint, or
    /// (--suite) train every recipe of a directory and tabulate accuracy against state size.
    Mqar(MqarArgs),
    /// Needle in a haystack: accuracy of a checkpoint on a grid of lengths × depths (rows are
    /// depths, columns lengths), or on its recipe's [data.niah] test segments.
    Niah(NiahArgs),
}

#[derive(Args)]
pub struct NiahArgs {
    /// Checkpoint directory (or run directory: its newest checkpoint) to evaluate (repeatable).
    /// Any synthetic-task checkpoint ([data.niah] or [data.mqar]) whose vocabulary holds the
    /// NIAH vocabulary.
    #[arg(long, required = true)]
    checkpoint: Vec<PathBuf>,
    /// Grid lengths (comma-separated; default data.seq_len when --depths is given). Without
    /// --lengths and --depths: the recipe's data.niah.test segments.
    #[arg(long, value_delimiter = ',')]
    lengths: Vec<usize>,
    /// Grid depths in [0, 1] (comma-separated; default 0,0.25,0.5,0.75,1 when --lengths is given).
    #[arg(long, value_delimiter = ',')]
    depths: Vec<f64>,
    /// Examples per cell (default 200 for a grid; replaces the recipe segments' own).
    #[arg(long)]
    examples: Option<usize>,
    /// Needles per example (default 1 for a grid; replaces the recipe segments' own).
    #[arg(long)]
    needles: Option<usize>,
    /// Task vocabulary (default [data.niah].vocab_size, else model.vocab_size); at most
    /// model.vocab_size.
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Sequences per evaluation batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Backend and device (see `ember train --help`).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No per-cell progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
pub struct MqarArgs {
    /// Checkpoint directory (or run directory: its newest checkpoint) to evaluate (repeatable).
    #[arg(long)]
    checkpoint: Vec<PathBuf>,
    /// A directory of MQAR recipes: train each (skipping finished runs, resuming interrupted
    /// ones), evaluate each on its test set, and write results.md/.csv/.jsonl and the figures
    /// accuracy_vs_state_T{len}.png/.svg (accuracy against state size, best learning rate) to --out.
    #[arg(long, conflicts_with = "checkpoint")]
    suite: Option<PathBuf>,
    /// Train and tabulate only these recipes of the suite (file names without .toml,
    /// comma-separated), e.g. to run a long suite in parts; a later run without --only skips the
    /// finished runs and tabulates them all.
    #[arg(long, value_delimiter = ',', requires = "suite")]
    only: Vec<String>,
    /// Suite runs trained at once (each uses about one CPU core on the cpu backend).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Rows of an earlier part of the suite (its results.jsonl; repeatable), tabulated and
    /// plotted with this part's runs, for a suite run in parts whose run directories are gone.
    /// A run of this part replaces an included row of the same name, a later file an earlier one.
    #[arg(long, requires = "suite")]
    include: Vec<PathBuf>,
    /// Where --suite writes its results.
    #[arg(long, default_value = "checkpoints/mqar-suite")]
    out: PathBuf,
    /// Train every suite recipe at each of these widths (model.d_model, comma-separated);
    /// runs are named NAME-dW. Default: each recipe's own width.
    #[arg(long, value_delimiter = ',')]
    widths: Vec<usize>,
    /// Train every suite recipe (at every width) at each of these learning rates (optim.lr,
    /// comma-separated), as Zoology sweeps them; runs are named NAME[-dW]-lrX and the table
    /// marks the best run of each recipe and width. Default: each recipe's own rate.
    #[arg(long, value_delimiter = ',')]
    lrs: Vec<f64>,
    /// Override any key of every suite recipe (repeatable), e.g. --set train.steps=100.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Test on these pair counts instead of the recipe's test set (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pairs: Vec<usize>,
    /// Sequence length of the --pairs segments (default: the recipe's data.seq_len).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Examples per --pairs segment.
    #[arg(long)]
    examples: Option<usize>,
    /// Sequences per evaluation batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Backend and device (see `ember train --help`).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Also write the results as JSON to this file (--checkpoint).
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

pub fn run(command: EvalCommand) -> Result<()> {
    let args = match command {
        EvalCommand::Mqar(args) => args,
        EvalCommand::Niah(args) => return run_niah(args),
    };
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let device = backend::resolve(&args.device, Default::default());
    if let Some(dir) = &args.suite {
        let recipes = mqar::select_recipes(mqar::suite_recipes(dir)?, &args.only)?;
        // Read before training, so that a wrong path fails now and not hours from now.
        let mut earlier = Vec::new();
        for path in &args.include {
            earlier.extend(mqar::read_suite_rows(path)?);
        }
        let mut overrides = args.overrides.clone();
        if args.device != "auto" {
            overrides.push(format!("train.device={:?}", args.device));
        }
        let opts = SuiteOptions { overrides, widths: args.widths.clone(), lrs: args.lrs.clone(), batch_size: args.batch_size, jobs: args.jobs, quiet: args.quiet };
        println!("MQAR suite: {} recipes from {} on {device}", recipes.len(), dir.display());
        let rows = backend::with_backend!(&device, |B, dev| mqar::run_suite::<B>(&recipes, &opts, &dev))?;
        let rows = mqar::merge_rows(rows, earlier);
        let command: Vec<String> = std::env::args().skip(1).collect();
        let written = mqar::write_suite(&rows, &args.out, &format!("ember {}", command.join(" ")))?;
        print!("\n{}", mqar::suite_markdown(&rows));
        for path in written {
            println!("wrote {}", path.display());
        }
        return Ok(());
    }
    if args.checkpoint.is_empty() {
        bail!("give --checkpoint DIR (repeatable) or --suite DIR");
    }
    let over = TestOverride { pairs: args.pairs.clone(), seq_len: args.seq_len, examples: args.examples };
    let mut all = Vec::new();
    for dir in &args.checkpoint {
        let (recipe, results) = backend::with_backend!(&device, |B, dev| {
            mqar::evaluate_checkpoint::<<B as burn::tensor::backend::AutodiffBackend>::InnerBackend>(dir, &over, args.batch_size, &dev)
        })?;
        println!("{} ({}, {} parameters) on {device}", dir.display(), recipe.train.name, recipe.model.num_params());
        print!("{}", mqar::results_table(&results));
        all.push(serde_json::json!({ "checkpoint": dir, "name": recipe.train.name, "results": results }));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&all)?)?;
    }
    Ok(())
}

fn run_niah(args: NiahArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.examples == Some(0) {
        bail!("--examples must be at least 1");
    }
    let device = backend::resolve(&args.device, Default::default());
    let opts = NiahOptions {
        lengths: args.lengths.clone(),
        depths: args.depths.clone(),
        needles: args.needles,
        examples: args.examples,
        vocab_size: args.vocab_size,
        progress: !args.quiet,
    };
    let mut all = Vec::new();
    for dir in &args.checkpoint {
        let report = backend::with_backend!(&device, |B, dev| {
            niah::evaluate_checkpoint::<<B as burn::tensor::backend::AutodiffBackend>::InnerBackend>(dir, &opts, args.batch_size, &dev)
        })?;
        let recipe = &report.recipe;
        println!(
            "{} ({}, {} parameters, trained at seq_len {}) on {device}: NIAH accuracy, vocabulary {}",
            dir.display(),
            recipe.train.name,
            recipe.model.num_params(),
            recipe.data.seq_len,
            report.vocab_size
        );
        print!("\n{}", niah::grid_table(&report.results));
        all.push(serde_json::json!({
            "checkpoint": dir,
            "name": recipe.train.name,
            "vocab_size": report.vocab_size,
            "results": report.results,
        }));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&all)?)?;
    }
    Ok(())
}
