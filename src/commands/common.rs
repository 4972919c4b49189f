//! Steps several subcommands share: loading a checkpoint with a clear error,
//! building the model on the chosen device, tokenising texts, and progress bars.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use model::{Checkpoint, Model};

/// The model path a command uses when none is given.
pub fn default_model() -> PathBuf {
    PathBuf::from(config::assets::MODEL)
}

/// Resolve the model argument, pointing at `secateur fetch` when the default is absent.
pub fn model_path(arg: Option<PathBuf>) -> Result<PathBuf> {
    let path = arg.unwrap_or_else(default_model);
    if !path.exists() {
        if path == default_model() {
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

/// `--device`: where the model runs (`auto`, `cpu`, `cuda`, `cuda:N`), as
/// `model.device` in a prune config.
#[derive(clap::Args, Clone, Copy)]
pub struct DeviceArg {
    /// auto | cpu | cuda | cuda:N (auto: CUDA device 0 in a CUDA build with a GPU,
    /// else the CPU). Weights are f32 on the CPU, bf16 on a GPU.
    #[arg(long, value_name = "DEVICE", default_value = "auto")]
    pub device: config::Device,
}

impl DeviceArg {
    /// The candle device, resolved once (errors: bad ordinal, no driver, or a build
    /// without CUDA).
    pub fn resolve(self) -> Result<Device> {
        device::resolve(self.device).map_err(|e| anyhow::anyhow!("--device: {e}"))
    }
}

/// The model of a checkpoint on `device`: f32 on the CPU, bf16 on a GPU.
pub fn build(ckpt: &Checkpoint, device: &Device) -> Result<Model> {
    let dtype = device::weight_dtype(device);
    let model = Model::new_with_dtype(&ckpt.config, &ckpt.tensors, device, dtype)
        .with_context(|| format!("{}: building the model", ckpt.path.display()))?;
    device::settle(device).map_err(anyhow::Error::msg)?;
    Ok(model)
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

/// The evaluation crate's progress as terminal bars ([`progress`]), hidden when `quiet`
/// (`--json` output) or stderr is not a terminal.
pub struct Bars {
    pub quiet: bool,
}

impl ::eval::Progress for Bars {
    fn task(&self, len: u64, what: &str) -> Box<dyn ::eval::Task> {
        Box::new(BarTask(progress(len, what, self.quiet)))
    }
}

struct BarTask(ProgressBar);

impl ::eval::Task for BarTask {
    fn advance(&self, steps: u64) {
        self.0.inc(steps);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
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

/// CPU seconds this process has run so far, all threads (exited ones included), user +
/// system, from `getrusage`; `None` where the call fails.
pub fn process_cpu_seconds() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given and
    // reads nothing from it; the struct is read only when the call succeeded.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return None;
        }
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

/// Wall and process CPU time since it was started.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch {
    wall: Instant,
    cpu: Option<f64>,
}

impl Stopwatch {
    pub fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: process_cpu_seconds(),
        }
    }

    pub fn wall_seconds(&self) -> f64 {
        self.wall.elapsed().as_secs_f64()
    }

    /// CPU seconds of the whole process since the start: the work timed, plus anything
    /// else the process did meanwhile (progress bars, idle runtime threads: noise).
    pub fn cpu_seconds(&self) -> Option<f64> {
        Some(process_cpu_seconds()? - self.cpu?)
    }

    /// The run's usage so far, with the process's peak RSS.
    pub fn usage(&self) -> actors::Usage {
        actors::Usage {
            wall_seconds: self.wall_seconds(),
            cpu_seconds: self.cpu_seconds(),
            peak_rss_bytes: peak_rss_bytes(),
        }
    }
}

/// Peak resident set size (VmHWM) of this process, from /proc on Linux; `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stopwatch_counts_this_process_cpu_time() {
        let clock = Stopwatch::start();
        // About 0.1 s of arithmetic on this thread in an unoptimised build.
        let mut x = 1u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        std::hint::black_box(x);
        let (wall, cpu) = (clock.wall_seconds(), clock.cpu_seconds().unwrap());
        // Other tests of this binary may run meanwhile: no upper bound from one thread.
        assert!(cpu > 0.0 && wall > 0.0, "cpu {cpu} s, wall {wall} s");
        let usage = clock.usage();
        assert!(usage.wall_seconds >= wall && usage.cpu_seconds.unwrap() >= cpu);
        assert!(usage.peak_rss_bytes.unwrap() > 0);
    }
}
