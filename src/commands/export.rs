//! `secateur export RUN --format hf|sparse|gguf --out DIR`: write a run's pruned model.
//!
//! The run's checkpoint database gives the model path (from the stored config) and the
//! masks of its last committed iteration (every committed delta replayed in order, as
//! `--resume` does), so a killed run exports what it had committed.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use export::{ExportDtype, ExportOptions};
use kernels::Mask;

use super::common;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// Hugging Face directory (config.json, tokenizer, safetensors) for transformers.
    Hf,
    /// Compressed bitmask + non-zero values; `secateur` loads it directly.
    Sparse,
    /// GGUF sources only: the source file with the pruned weights re-quantised to their
    /// source types (llama.cpp runs it; affine block types keep zeros only approximately).
    Gguf,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Run id (a folder of --runs-dir) or the path of a run folder.
    run: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "hf")]
    format: Format,
    /// Destination directory; must not exist unless --force.
    #[arg(long)]
    out: PathBuf,
    /// Weights dtype: f32, f16 or bf16 (default: the source's float type, f32 for quantised GGUF).
    #[arg(long)]
    dtype: Option<String>,
    /// Replace an existing destination (only after the new export is complete).
    #[arg(long)]
    force: bool,
    /// Folder of run folders.
    #[arg(long, default_value = "runs")]
    runs_dir: PathBuf,
    /// HF export: shard size limit in MB.
    #[arg(long, default_value_t = 5000)]
    max_shard_mb: u64,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let as_path = PathBuf::from(&args.run);
    let run_dir = if as_path.is_dir() {
        as_path
    } else {
        args.runs_dir.join(&args.run)
    };
    if !run_dir.is_dir() {
        bail!(
            "unknown run `{}`: neither a folder nor a run in {}",
            args.run,
            args.runs_dir.display()
        );
    }
    let dtype = match &args.dtype {
        None => None,
        Some(s) => Some(
            ExportDtype::parse(s)
                .with_context(|| format!("--dtype `{s}`: expected f32, f16 or bf16"))?,
        ),
    };
    if args.out.exists() && !args.force {
        bail!(
            "{} already exists (pass --force to replace it)",
            args.out.display()
        );
    }
    let mut run =
        actors::RunFolder::find(&run_dir.to_string_lossy(), &args.runs_dir)?.pruned_model()?;
    let model = run.config.model.path.clone();
    let committed_iterations = run.committed_iterations();
    let repaired = std::mem::take(&mut run.weights);
    let repaired_layers = repaired.len();
    let masks: HashMap<String, Mask> = run.mask_map();
    let mut ckpt = common::load(&model)?;
    // A run that repaired its kept weights exports them, not the source's W ⊙ M.
    export::replace_weights(&mut ckpt.tensors, repaired)?;
    let opts = ExportOptions {
        dtype,
        force: args.force,
        max_shard_bytes: args.max_shard_mb.saturating_mul(1_000_000),
    };
    let summary = match args.format {
        Format::Hf => export::export_hf(&ckpt, &masks, &args.out, &opts)?,
        Format::Sparse => export::export_sparse(&ckpt, &masks, &args.out, &opts)?,
        Format::Gguf => export::export_gguf(&ckpt, &masks, &args.out, &opts)?,
    };
    let types = match args.format {
        Format::Gguf => "the source GGUF types".to_string(),
        _ => summary.dtype.torch_name().to_string(),
    };
    let pruned: usize = masks.values().map(Mask::count_pruned).sum();
    let total: usize = masks.values().map(Mask::len).sum();
    common::print(&format!(
        "exported run {} ({} committed iterations, {:.2}% of prunable weights pruned, {} repaired layers) from {} as {} to {}: {} weight bytes, {} bytes in all",
        run_dir.display(),
        committed_iterations,
        100.0 * pruned as f64 / total.max(1) as f64,
        repaired_layers,
        model.display(),
        types,
        summary.dir.display(),
        summary.weight_bytes,
        summary.total_bytes
    ))
}
