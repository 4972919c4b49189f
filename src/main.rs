//! `secateur`: agent-guided pruning of LLMs. This file only parses arguments and
//! dispatches; each subcommand lives in `commands/`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;


#[derive(Parser)]
#[command(name = "secateur", version, about = "Prune LLMs with an LLM agent", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download the offline assets (default model, texts, QA sets) into assets/.
    Fetch(commands::fetch::FetchArgs),
    /// List a model's architecture, layers, shapes, dtypes and parameter counts.
    Inspect(commands::inspect::InspectArgs),
    /// Evaluate a model: perplexity over a text, MMLU, factual QA.
    Eval(commands::eval::EvalArgs),
    /// Dense, every pruning baseline and the agent at one sparsity: table and plots.
    Compare(commands::compare::CompareArgs),
    /// Answer a prompt with greedy decoding through the model's chat template.
    Generate(commands::generate::GenerateArgs),
    /// Measure forward / statistics / backward throughput and memory.
    Bench(commands::bench::BenchArgs),
    /// Write a run's pruned model: HF safetensors for transformers, or the compressed sparse form.
    Export(commands::export::ExportArgs),
    /// Prune a model with the agent-guided loop (offline defaults); `--resume RUN` continues a run.
    Prune(commands::prune::PruneArgs),
    /// Serve the actor system as a daemon: HTTP JSON API, run queue, OTLP traces.
    Daemon(commands::daemon::DaemonArgs),
    /// Talk to a running daemon: list, show, submit, cancel runs.
    Runs(commands::runs::RunsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon installs its own subscriber (stderr logs plus OTLP traces).
    if !matches!(cli.command, Command::Daemon(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    let result = match cli.command {
        Command::Fetch(args) => commands::fetch::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Compare(args) => commands::compare::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Prune(args) => commands::prune::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Daemon(args) => commands::daemon::run(args),
        Command::Runs(args) => commands::runs::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

