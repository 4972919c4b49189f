//! `secateur`: agent-guided pruning of LLMs. This file only parses arguments and
//! dispatches; each subcommand lives in `commands/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
#[cfg(test)]
mod readme_cli;

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
    // `[MODEL] PROMPT`: one value is the prompt, two are model and prompt (the same
    // optional positional MODEL as inspect, eval, bench and compare).
    #[command(allow_missing_positional = true)]
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
    quiet_library_backtraces();
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
            eprintln!("error: {}", render(&err));
            ExitCode::FAILURE
        }
    }
}

/// Errors are for people: candle wraps its errors with a captured backtrace (printed by
/// their `Display`) whenever `RUST_BACKTRACE` is set, so library backtrace capture is
/// turned off unless the user asked for it explicitly with `RUST_LIB_BACKTRACE`
/// (which takes precedence for `Backtrace::capture`; panics still honour
/// `RUST_BACKTRACE`). Called first in `main`, before any thread exists.
fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

/// An error and its causes on one line, each said once: many errors end their own
/// message with their source's (`cannot read x: No such file (os error 2)` whose source
/// is that io error), and a context may be how its cause begins (`invalid
/// configuration` over `invalid configuration:\n  field = …`). A cause the previous
/// part ends with is skipped; a cause that begins with the previous part replaces it.
fn render(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string().trim().to_string();
        if text.is_empty() || parts.last().is_some_and(|p| p.ends_with(&text)) {
            continue;
        }
        if parts
            .last()
            .is_some_and(|last| text.starts_with(last.trim_end_matches(':')))
        {
            parts.pop();
        }
        parts.push(text);
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::render;

    /// An error that repeats its source in its own message, as many do.
    #[derive(Debug)]
    struct Repeats(std::io::Error);

    impl std::fmt::Display for Repeats {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot read x.toml: {}", self.0)
        }
    }

    impl std::error::Error for Repeats {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(Repeats(io()));
        assert_eq!(render(&e), format!("cannot read x.toml: {}", io()));
        let e = anyhow::Error::msg("invalid configuration:\n  a = 1: bad")
            .context("invalid configuration");
        assert_eq!(render(&e), "invalid configuration:\n  a = 1: bad");
        let e = anyhow::Error::msg("disk full").context("writing masks.bin");
        assert_eq!(render(&e), "writing masks.bin: disk full");
        // A cause that merely mentions the context's words is still said.
        let e = anyhow::Error::msg("EOF while loading").context("loading");
        assert_eq!(render(&e), "loading: EOF while loading");
    }
}
