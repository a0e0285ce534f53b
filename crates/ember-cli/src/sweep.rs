//! `ember sweep`: expand a sweep recipe into runs, print the plan, run them (or write a Slurm /
//! shell script that does), collect the results and fit scaling laws.
use crate::backend;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use ember_train::sweep::emit::{self, Emit};
use ember_train::sweep::{self, collect, Sweep};
use std::path::PathBuf;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SweepArgs {
    #[command(subcommand)]
    command: Option<SweepCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum SweepCommand {
    /// Gather the results of a sweep's run directories into results.csv, results.jsonl and
    /// evals.csv in its output directory.
    Collect {
        #[arg(long)]
        recipe: PathBuf,
    },
    /// Fit L(N, D) = E + A/N^α + B/D^β and the isoFLOP laws, with bootstrap intervals, and write
    /// plots and report.md.
    Fit(FitArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Sweep recipe (recipes/sweeps/*.toml).
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Print the plan (runs, sizes, tokens, FLOPs, and an estimated time from two timed steps of
    /// every shape) and stop.
    #[arg(long)]
    plan: bool,
    /// Runs trained at once (each takes about one CPU core on the cpu backend).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Instead of running, write a script that runs the sweep: slurm (a job array, one task
    /// per run) or shell (one run after another). Use with --script.
    #[arg(long)]
    emit: Option<Emit>,
    /// Where --emit writes (default: <out_dir>/sweep.slurm or sweep.sh).
    #[arg(long)]
    script: Option<PathBuf>,
    /// Extra `#SBATCH` options for --emit slurm, e.g. --sbatch "--gres=gpu:1" (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    sbatch: Vec<String>,
    /// Backend and device for every run (see `ember train --help`).
    #[arg(long, default_value = "auto")]
    device: String,
    /// No progress bars or per-run lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct FitArgs {
    /// The sweep recipe: fits <out_dir>/results.csv into <out_dir>/report.
    #[arg(long, conflicts_with = "results")]
    recipe: Option<PathBuf>,
    /// Or a results table (CSV or JSONL with n_params, tokens, loss; arch, flops, budget optional).
    #[arg(long)]
    results: Option<PathBuf>,
    /// Report directory (default: <out_dir>/report, or next to --results).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: SweepArgs) -> Result<()> {
    match args.command {
        Some(SweepCommand::Collect { recipe }) => collect_cmd(&Sweep::load(&recipe)?),
        Some(SweepCommand::Fit(fit)) => fit_cmd(fit),
        None => run_cmd(args.run),
    }
}

fn run_cmd(args: RunArgs) -> Result<()> {
    let Some(path) = &args.recipe else { bail!("give --recipe SWEEP.toml (or a subcommand: collect, fit)") };
    let sweep = Sweep::load(path)?;
    let mut runs = sweep.expand()?;
    if args.device != "auto" {
        for run in &mut runs {
            run.recipe.train.device = args.device.clone();
        }
    }
    sweep.write_recipes(&runs)?;
    let device = backend::resolve(&args.device, Default::default());
    if args.plan {
        let secs = backend::with_backend!(&device, |B, dev| sweep::estimate_seconds::<B>(&runs, &dev))?;
        print!("{}", sweep::plan_table(&sweep, &runs, Some(&secs)));
        if args.jobs > 1 {
            let total: f64 = secs.iter().sum();
            println!("with --jobs {}: about {:.1} min if the machine has that many free cores", args.jobs, total / 60.0 / args.jobs as f64);
        }
        return Ok(());
    }
    print!("{}", sweep::plan_table(&sweep, &runs, None));
    if let Some(kind) = args.emit {
        let default_name = if kind == Emit::Slurm { "sweep.slurm" } else { "sweep.sh" };
        let script = args.script.clone().unwrap_or_else(|| sweep.out_dir.join(default_name));
        let text = emit::script(kind, &sweep, &runs, &std::env::current_dir()?, &args.sbatch);
        std::fs::write(&script, text)?;
        println!("wrote {} (run recipes in {})", script.display(), sweep.out_dir.join("recipes").display());
        return Ok(());
    }
    println!("running on {device}, {} at a time", args.jobs.max(1));
    backend::with_backend!(&device, |B, dev| sweep::run_all::<B>(&runs, args.jobs, args.quiet, &dev))?;
    collect_cmd(&sweep)?;
    let results = sweep.out_dir.join("results.csv");
    match sweep::fit(&results, &sweep.out_dir.join("report")) {
        Ok(written) => println!("fitted: {}", written.iter().find(|p| p.ends_with("report.md")).unwrap_or(&written[0]).display()),
        Err(e) => eprintln!("no fit: {e:#}"),
    }
    Ok(())
}

fn collect_cmd(sweep: &Sweep) -> Result<()> {
    let runs = sweep.expand()?;
    let (results, points) = collect::collect(&runs)?;
    let finished = results.iter().filter(|r| r.finished).count();
    for path in collect::write(sweep, &results, &points)? {
        println!("wrote {}", path.display());
    }
    println!("{finished} of {} runs finished, {} evaluation points", results.len(), points.len());
    Ok(())
}

fn fit_cmd(args: FitArgs) -> Result<()> {
    let (results, out) = match (&args.recipe, &args.results) {
        (Some(recipe), _) => {
            let sweep = Sweep::load(recipe)?;
            (sweep.out_dir.join("results.csv"), sweep.out_dir.join("report"))
        }
        (None, Some(results)) => {
            let dir = results.parent().map(|p| p.join("report")).unwrap_or_else(|| "report".into());
            (results.clone(), dir)
        }
        (None, None) => bail!("give --recipe SWEEP.toml or --results FILE"),
    };
    let out = args.out.unwrap_or(out);
    for path in sweep::fit(&results, &out)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}
