//! `secateur generate`: greedy answer to a prompt through the chat template.

use std::path::PathBuf;

use anyhow::{Context, Result};
use model::{ChatMessage, ChatTemplate};

use super::common;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// GGUF file or HF directory (default: the fetched SmolLM2-135M-Instruct).
    pub(crate) model: Option<PathBuf>,
    /// The question or instruction (quote it).
    pub(crate) prompt: String,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Send the prompt as raw text, without the chat template.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    device: common::DeviceArg,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let path = common::model_path(args.model)?;
    let ckpt = common::load(&path)?;
    let model = common::build(&ckpt, &device)?;
    let template = if args.raw {
        None
    } else {
        ChatTemplate::for_checkpoint(&ckpt)?
    };
    let text = match &template {
        Some(t) => t.render(&[ChatMessage::user(args.prompt.clone())])?,
        None => args.prompt.clone(),
    };
    let prompt = common::encode(&ckpt, &text)?;
    let stops = stop_tokens(&ckpt);
    let out = model
        .generate(&prompt, args.max_tokens, &stops)
        .context("generation failed")?;
    let answer = ckpt
        .tokenizer
        .decode(&out, true)
        .map_err(|e| anyhow::anyhow!("{}: tokenizer: {e}", ckpt.path.display()))?;
    println!("{}", answer.trim());
    Ok(())
}

/// End-of-sequence ids (shared with the evaluations and the in-loop probe).
pub use ::eval::stop_tokens;
