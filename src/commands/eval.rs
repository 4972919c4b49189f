//! `secateur eval`: perplexity of a model over a text (WikiText-2 protocol).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use model::text::TextSource;
use model::{Perplexity, DEFAULT_PPL_WINDOW};
use serde::Serialize;

use super::common;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// GGUF file or HF directory (default: the fetched SmolLM2-135M-Instruct).
    model: Option<PathBuf>,
    /// Text to score: a plain text file, or `FILE.jsonl:FIELD`.
    #[arg(long, default_value = crate::DEFAULT_PPL_TEXT)]
    ppl: String,
    /// At most this many JSONL records (0 = all). Plain text files are read whole.
    #[arg(long, default_value_t = 200)]
    limit: usize,
    /// Window length in tokens (non-overlapping windows).
    #[arg(long, default_value_t = DEFAULT_PPL_WINDOW)]
    window: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    model: PathBuf,
    text: String,
    texts: usize,
    window: usize,
    perplexity: f64,
    mean_nll: f64,
    tokens_scored: usize,
    windows: usize,
    seconds: f64,
    tokens_per_second: f64,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let path = common::model_path(args.model)?;
    let source = TextSource::parse(&args.ppl);
    let texts = source.read((args.limit > 0).then_some(args.limit))?;
    let ckpt = common::load(&path)?;
    let model = common::build(&ckpt)?;
    // Concatenate with blank lines and tokenise once (WikiText-2 protocol).
    let tokens = common::encode(&ckpt, &texts.join("\n\n"))?;
    if args.window < 2 {
        anyhow::bail!("--window {}: must be at least 2 tokens", args.window);
    }
    let chunks: Vec<&[u32]> = tokens.chunks(args.window).collect();
    let bar = common::progress(chunks.len() as u64, "perplexity", args.json);
    let start = Instant::now();
    let mut parts = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        if chunk.len() >= 2 {
            parts.push(model.perplexity(chunk, args.window)?);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let ppl = Perplexity::combine(&parts)?;
    let seconds = start.elapsed().as_secs_f64();
    let report = Report {
        model: path,
        text: args.ppl,
        texts: texts.len(),
        window: args.window,
        perplexity: ppl.ppl,
        mean_nll: ppl.mean_nll,
        tokens_scored: ppl.tokens_scored,
        windows: ppl.windows,
        seconds,
        tokens_per_second: (ppl.tokens_scored + ppl.windows) as f64 / seconds,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "perplexity {:.4} over {} scored tokens ({} windows of ≤{} tokens, {} texts from {}) in {:.1}s ({:.0} tokens/s)",
            report.perplexity,
            report.tokens_scored,
            report.windows,
            report.window,
            report.texts,
            report.text,
            report.seconds,
            report.tokens_per_second
        );
    }
    Ok(())
}
