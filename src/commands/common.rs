//! Steps several subcommands share: loading a checkpoint with a clear error,
//! building the CPU model, tokenising texts, and progress bars.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use model::{Checkpoint, Model};

/// Resolve the model argument, pointing at `secateur fetch` when the default is absent.
pub fn model_path(arg: Option<PathBuf>) -> Result<PathBuf> {
    let path = arg.unwrap_or_else(crate::default_model);
    if !path.exists() {
        if path == crate::default_model() {
            anyhow::bail!(
                "{}: default model not found; run `secateur fetch` first",
                path.display()
            );
        }
        anyhow::bail!("{}: no such file or directory", path.display());
    }
    Ok(path)
}

/// Load a checkpoint, reporting the time it took on stderr.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let start = Instant::now();
    let ckpt = model::load_checkpoint(path)?;
    eprintln!(
        "loaded {} ({}, {} layers, {:.1} M params) in {:.1}s",
        path.display(),
        ckpt.config.architecture.name(),
        ckpt.config.num_hidden_layers,
        ckpt.parameter_count() as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(ckpt)
}

/// The f32 CPU model of a checkpoint.
pub fn build(ckpt: &Checkpoint) -> Result<Model> {
    Model::new(&ckpt.config, &ckpt.tensors, &Device::Cpu)
        .with_context(|| format!("{}: building the model", ckpt.path.display()))
}

/// Tokenise `text` without adding special tokens (texts are scored as they are).
pub fn encode(ckpt: &Checkpoint, text: &str) -> Result<Vec<u32>> {
    let enc = ckpt
        .tokenizer
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("{}: tokenizer: {e}", ckpt.path.display()))?;
    Ok(enc.get_ids().to_vec())
}

/// A bar over `len` units, hidden when stderr is not a terminal or `quiet`.
pub fn progress(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})")
            .expect("static template is valid")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Write `text` and a newline to stdout. A closed pipe (`secateur inspect | head`)
/// ends the output quietly instead of panicking like `println!` does.
pub fn print(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Peak resident set size (VmHWM) of this process, from /proc on Linux; `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
