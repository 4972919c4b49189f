//! `secateur prune`: run (or resume) agent-guided pruning, then write the run folder:
//! `report.json`, `report.md`, `iterations.png`, `layers.png`, `masks.bin`.
//!
//! With no arguments it runs the offline default preset: SmolLM2-135M, heuristic
//! planner, calibration on XSum, in-loop PPL on a held-out XSum slice, final PPL on QuAC.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actors::{ProgressEvent, RunOptions};
use anyhow::{Context, Result};
use config::{BackendKind, Config};
use indicatif::ProgressBar;

use super::common;

#[derive(clap::Args)]
pub struct PruneArgs {
    /// TOML config file (every field optional; defaults are the `default` preset).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A shipped preset instead of a file (`default`, `paper-qwen3-8b`).
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    /// Continue a stored run (killed or failed) from its last committed iteration; the
    /// run's stored config is used.
    #[arg(long, value_name = "RUN_ID")]
    resume: Option<String>,
    /// Folder of run folders (overrides `run.runs_dir`).
    #[arg(long)]
    runs_dir: Option<PathBuf>,
    /// Overrides `pruning.max_iterations`.
    #[arg(long)]
    max_iterations: Option<u32>,
    /// Overrides `pruning.candidates` (K plans per iteration).
    #[arg(long)]
    candidates: Option<usize>,
    /// Overrides `pruning.target_sparsity`.
    #[arg(long)]
    target: Option<f64>,
    /// Overrides `planner.backend`: heuristic | local | openai | gemini | anthropic.
    #[arg(long, value_name = "BACKEND", value_parser = parse_backend)]
    planner: Option<BackendKind>,
    /// Overrides `planner.model`: the GGUF for `local` (default: the
    /// Qwen2.5-Coder-0.5B-Instruct asset), the model name for hosted backends.
    #[arg(long, value_name = "PATH_OR_NAME")]
    planner_model: Option<String>,
    /// Overrides `model.device`: auto | cpu | cuda | cuda:N. A resumed run keeps its
    /// stored device (bf16 on a GPU and f32 on the CPU give different numbers).
    #[arg(long, value_name = "DEVICE", conflicts_with = "resume")]
    device: Option<config::Device>,
    /// Print the report as JSON on stdout instead of a text summary.
    #[arg(long)]
    json: bool,
}

/// A local planner's GGUF is only opened once the target model is loaded and profiled
/// (minutes in): a wrong path fails here instead, naming the file.
fn check_local_planners(cfg: &Config) -> Result<()> {
    let backends = [Some(&cfg.planner), cfg.planner.fallback.as_deref()];
    for bc in backends.into_iter().flatten() {
        if let (BackendKind::Local, Some(m)) = (bc.backend, &bc.model) {
            if !std::path::Path::new(m).is_file() {
                anyhow::bail!(
                    "{m}: local planner model not found (planner.model / --planner-model)"
                );
            }
        }
    }
    Ok(())
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    [
        BackendKind::Heuristic,
        BackendKind::Local,
        BackendKind::Openai,
        BackendKind::Gemini,
        BackendKind::Anthropic,
    ]
    .into_iter()
    .find(|k| k.name() == s)
    .ok_or_else(|| format!("`{s}`: expected heuristic, local, openai, gemini or anthropic"))
}

fn load_config(args: &PruneArgs) -> Result<Config> {
    let mut cfg = match (&args.config, &args.preset) {
        (Some(path), _) => Config::load(path)?,
        (None, Some(name)) => Config::preset(name)?,
        (None, None) => Config::default(),
    };
    if let Some(d) = &args.runs_dir {
        cfg.run.runs_dir = d.clone();
    }
    if let Some(n) = args.max_iterations {
        cfg.pruning.max_iterations = n;
    }
    if let Some(k) = args.candidates {
        cfg.pruning.candidates = k;
    }
    if let Some(t) = args.target {
        cfg.pruning.target_sparsity = t;
    }
    if let Some(b) = args.planner {
        cfg.planner.backend = b;
    }
    if let Some(d) = args.device {
        cfg.model.device = d;
    }
    if let Some(m) = &args.planner_model {
        cfg.planner.model = Some(m.clone());
    } else if args.planner == Some(BackendKind::Local) && cfg.planner.model.is_none() {
        cfg.planner.model = Some(llm::local::DEFAULT_MODEL.to_string());
    }
    cfg.validate().context("invalid configuration")?;
    Ok(cfg)
}

/// glibc keeps freed memory in per-thread malloc arenas (64 MiB heaps each) and raises
/// its mmap threshold after large frees, so the tensors of many worker threads pile up:
/// a default SmolLM2 run reached 10.6 GB RSS in ~160 arenas for a 0.5 GB model. Two
/// arenas and a fixed 1 MiB mmap threshold (large tensors go back to the OS on drop)
/// keep RSS near the live data. Must run before any thread is started.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_MMAP_THRESHOLD: i32 = -3;
    const M_ARENA_MAX: i32 = -8;
    // SAFETY: mallopt only changes allocator parameters; called before other threads.
    unsafe {
        mallopt(M_ARENA_MAX, 2);
        mallopt(M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

pub fn run(args: PruneArgs) -> Result<()> {
    limit_malloc_arenas();
    let cfg = load_config(&args)?;
    if args.resume.is_none() {
        // Points at `secateur fetch` when the default model is missing.
        let is_default = cfg.model.path == common::default_model();
        common::model_path(Some(cfg.model.path.clone())).map_err(|e| {
            if is_default {
                anyhow::anyhow!(
                    "{}: default model not found; run `secateur fetch` first",
                    cfg.model.path.display()
                )
            } else {
                e
            }
        })?;
        check_local_planners(&cfg)?;
        // A CUDA request in a build without CUDA (or a missing GPU) fails here, before
        // the checkpoint is read, naming the field.
        device::resolve(cfg.model.device)
            .map_err(|e| anyhow::anyhow!("model.device = \"{}\": {e}", cfg.model.device))?;
    }
    let run_id = args
        .resume
        .clone()
        .unwrap_or_else(|| actors::run::new_run_id(&cfg));
    eprintln!(
        "{} run {run_id} in {}",
        if args.resume.is_some() {
            "resuming"
        } else {
            "starting"
        },
        cfg.run.runs_dir.join(&run_id).display()
    );
    let target = cfg.pruning.target_sparsity;
    let bar = common::progress(1000, "sparsity ‰ of target", args.json);
    let bar = Arc::new(Mutex::new(bar));
    let progress_bar = bar.clone();
    let progress: actors::ProgressFn = Arc::new(move |e: &ProgressEvent| {
        let bar = progress_bar.lock().unwrap_or_else(|p| p.into_inner());
        on_progress(&bar, e, target);
    });
    let clock = common::Stopwatch::start();
    let out = match actors::run_pruning_blocking(
        cfg,
        RunOptions {
            resume: args.resume.clone(),
            run_id: Some(run_id),
            progress: Some(progress),
            final_eval: true,
            // The kill-and-resume tests' fault points; none in normal use.
            faults: actors::Faults::from_env(),
            ..Default::default()
        },
    ) {
        Ok(out) => out,
        // `--resume` of a run that finished and wrote its outputs: nothing to redo.
        Err(e @ actors::RunError::Finished { .. }) => {
            bar.lock()
                .unwrap_or_else(|p| p.into_inner())
                .finish_and_clear();
            return common::print(&e.to_string());
        }
        Err(e) => return Err(e.into()),
    };
    bar.lock()
        .unwrap_or_else(|p| p.into_inner())
        .finish_and_clear();
    let s = &out.summary;
    let usage = clock.usage();
    let written = out.write_outputs(usage)?;
    let extras = out.extras(usage);
    if args.json {
        common::print(&serde_json::to_string_pretty(&report::report_json(
            s, &extras,
        ))?)?;
    } else {
        let t = report::Table4::of(s);
        common::print(&format!(
            "run {} {} ({}): {} iterations, {} successful, {} rollbacks; sparsity {:.2}% (target {:.2}%); in-loop PPL {:.3} -> {:.3}",
            s.run_id, s.state, s.stop_reason, t.iterations, t.successful, t.rollbacks,
            t.final_sparsity * 100.0, t.target_sparsity * 100.0, t.baseline_ppl, t.final_ppl
        ))?;
        if let Some(last) = s.rejected.last() {
            common::print(&format!(
                "no acceptable plan: the critic vetoed {} plan(s); last: {} (all in report.md)",
                s.rejected.len(),
                last.reasons.join("; ")
            ))?;
        }
        if let Some(stop) = s.stopped_by.iter().find(|p| p.plan.stop_pruning) {
            common::print(&format!(
                "the planner ({}) stopped the run; its reasoning: {} (all in report.md)",
                stop.backend,
                stop.plan.reasoning.replace('\n', " ")
            ))?;
        }
        if let Some(f) = &out.final_eval {
            common::print(&format!(
                "final PPL on {}: dense {:.3} -> pruned {:.3}",
                f.text, f.dense_ppl, f.pruned_ppl
            ))?;
        }
        if let Some((p, d, f)) = s
            .probe
            .as_ref()
            .and_then(|p| Some((p, p.dense()?, p.last()?)))
        {
            common::print(&format!(
                "knowledge probe ({} questions): dense {:.1}% -> {:.1}% after iteration {}{}",
                p.questions,
                d.accuracy * 100.0,
                f.accuracy * 100.0,
                f.iteration,
                if p.informative {
                    ""
                } else {
                    " [uninformative: dense near zero or too few questions]"
                }
            ))?;
        }
        for p in &written {
            common::print(&format!("wrote {}", p.display()))?;
        }
    }
    if let Some(f) = &s.failure {
        anyhow::bail!("run {} failed: {f}", s.run_id);
    }
    Ok(())
}

/// One line per stored iteration on stderr (scripts and tests read them), and the bar.
fn on_progress(bar: &ProgressBar, e: &ProgressEvent, target: f64) {
    match e {
        ProgressEvent::Started {
            run_id,
            baseline_ppl,
            next_iteration,
        } => bar.suspend(|| {
            eprintln!("run {run_id}: baseline PPL {baseline_ppl:.4}, starting at iteration {next_iteration}")
        }),
        ProgressEvent::Phase { iteration, state } => {
            bar.set_message(format!("iteration {iteration}: {state:?}"))
        }
        ProgressEvent::Iteration {
            record,
            timings,
            candidates,
            ..
        } => {
            let o = &record.outcome;
            let what = if o.rolled_back { "rolled back" } else { "committed" };
            bar.suspend(|| {
                eprintln!(
                    "iteration {} {what}: sparsity {:.4} -> {:.4}, PPL {:.4} -> {:.4} ({:+.1}%), {:.1}s [{}]",
                    o.iteration,
                    o.sparsity_before,
                    o.sparsity_after,
                    o.ppl_before,
                    o.ppl_after,
                    o.ppl_change() * 100.0,
                    timings.total_ms() as f64 / 1000.0,
                    record.feedback.assessment
                )
            });
            bar.suspend(|| eprintln!("  {}", planner_line(candidates)));
            let now = if o.rolled_back { o.sparsity_before } else { o.sparsity_after };
            bar.set_position(((now / target).min(1.0) * 1000.0) as u64);
        }
        ProgressEvent::Finished { state, reason } => {
            bar.suspend(|| eprintln!("finished: {state:?} ({reason:?})"))
        }
    }
}

/// What the critic made of this iteration's candidates (every planning round), and the
/// planner's time: `planner local: 3 candidates, 1 approved unchanged, 0 amended, 2
/// vetoed; 41.2 s (13.7 s per plan) [vetoed: reason; …]`. The share of plans approved
/// unchanged is one of the figures a planner backend is judged by.
fn planner_line(candidates: &[protocol::ReviewedCandidate]) -> String {
    use protocol::Verdict;
    let count = |f: fn(&Verdict) -> bool| candidates.iter().filter(|c| f(&c.verdict)).count();
    let approved = count(|v| matches!(v, Verdict::Approve));
    let amended = count(|v| matches!(v, Verdict::Amend { .. }));
    let vetoed = count(|v| matches!(v, Verdict::Veto { .. }));
    let ms: u64 = candidates.iter().map(|c| c.response.latency_ms).sum();
    let backend = candidates
        .first()
        .map_or("?", |c| c.response.backend.as_str());
    let mut line = format!(
        "planner {backend}: {} candidate(s), {approved} approved unchanged, {amended} amended, \
{vetoed} vetoed; {:.1} s ({:.1} s per plan)",
        candidates.len(),
        ms as f64 / 1000.0,
        ms as f64 / 1000.0 / candidates.len().max(1) as f64
    );
    let reasons: Vec<&str> = candidates
        .iter()
        .filter_map(|c| match &c.verdict {
            Verdict::Veto { reasons } | Verdict::Amend { reasons, .. } => reasons.first(),
            Verdict::Approve => None,
        })
        .map(String::as_str)
        .collect();
    if !reasons.is_empty() {
        line.push_str(&format!(" [{}]", reasons.join("; ")));
    }
    line
}
