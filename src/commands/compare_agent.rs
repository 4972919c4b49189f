//! The agent row of `secateur compare`: the committed masks of a finished `secateur
//! prune` run (`--agent-run`), or of a run that compare starts itself with the default
//! offline planner, so that one command really compares the agent loop with the
//! baselines on the same model, target and calibration source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use baselines::Pruned;
use candle_core::{Device, Tensor};

/// Where the agent row's masks come from.
pub enum AgentSource<'a> {
    /// A finished run folder.
    Run(&'a Path),
    /// Run the loop now with this prune config (`None`: the `default` preset).
    Loop {
        config: Option<&'a Path>,
        model: &'a Path,
        sparsity: f64,
        calib: &'a str,
        /// Calibration windows skipped first (`calibration.offset`).
        calib_offset: usize,
        /// `--knowledge-share`, replacing the config's `calibration.knowledge.share`.
        knowledge_share: Option<f64>,
        runs_dir: PathBuf,
        /// The baselines' device, so that every row of the table ran on the same one.
        device: config::Device,
        quiet: bool,
    },
}

/// The agent's masks and what its pruning cost (as the run's own report recorded it
/// when it is read from a folder: 0 s wall and no CPU time when the report lacks them).
pub fn agent_result(source: AgentSource<'_>) -> Result<(Pruned, actors::Usage)> {
    match source {
        AgentSource::Run(dir) => {
            let run = actors::RunFolder::find(&dir.to_string_lossy(), Path::new(""))?;
            Ok((committed_model(&run)?, recorded_usage(dir)))
        }
        AgentSource::Loop {
            config,
            model: model_path,
            sparsity,
            calib,
            calib_offset,
            knowledge_share,
            runs_dir,
            device,
            quiet,
        } => {
            let mut cfg = loop_config(config, model_path, sparsity, calib, runs_dir)?;
            cfg.calibration.offset = calib_offset;
            if let Some(share) = knowledge_share {
                cfg.calibration.knowledge.share = share;
            }
            cfg.model.device = device;
            if !quiet {
                eprintln!(
                    "agent: running the pruning loop ({} planner) to {sparsity} in {}",
                    cfg.planner.backend.name(),
                    cfg.run.runs_dir.display()
                );
            }
            let clock = super::common::Stopwatch::start();
            let out = actors::run_pruning_blocking(
                cfg,
                actors::RunOptions {
                    final_eval: false,
                    ..Default::default()
                },
            )?;
            let usage = clock.usage();
            if let Some(f) = &out.summary.failure {
                bail!("agent run {} failed: {f}", out.summary.run_id);
            }
            // The run folder gets its own report and masks.bin, like `prune` writes.
            out.write_outputs(usage)?;
            Ok((committed_model(&out.folder)?, usage))
        }
    }
}

/// A run's committed model as compare evaluates it: only committed iterations' deltas
/// count, and a run that repaired its kept weights brings them (not `W ⊙ M` of the
/// dense weights).
fn committed_model(run: &actors::RunFolder) -> Result<Pruned> {
    let committed = run.pruned_model()?;
    let mut weights = BTreeMap::new();
    for (name, mask) in &committed.masks {
        if let Some(values) = committed.weights.get(name) {
            let t = Tensor::from_slice(values, (mask.rows(), mask.cols()), &Device::Cpu)?;
            weights.insert(name.clone(), t);
        }
    }
    Ok(Pruned {
        masks: committed.masks.into_iter().collect(),
        weights,
    })
}

/// The prune config of the loop compare runs: the given file or the default preset, with
/// this comparison's model, target and calibration source.
pub fn loop_config(
    config: Option<&Path>,
    model: &Path,
    sparsity: f64,
    calib: &str,
    runs_dir: PathBuf,
) -> Result<config::Config> {
    let mut cfg = match config {
        Some(p) => config::Config::load(p)?,
        None => config::Config::default(),
    };
    cfg.model.path = model.to_path_buf();
    cfg.pruning.target_sparsity = sparsity;
    let (path, field) = ::eval::data::split_spec(calib);
    let json = ::eval::data::is_json_lines(&path);
    // compare reads JSON lines' `text` field when none is named; so does the loop here.
    cfg.calibration.field = field.or_else(|| json.then(|| "text".to_string()));
    cfg.calibration.path = path;
    cfg.run.runs_dir = runs_dir;
    cfg.validate().context("agent loop configuration")?;
    Ok(cfg)
}

/// `wall_seconds` (0 when missing) and `cpu_seconds` of the run's `report.json`. A
/// resumed run's report counts the last process only.
fn recorded_usage(run_dir: &Path) -> actors::Usage {
    let report = std::fs::read(run_dir.join("report.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let field = |name: &str| report.as_ref().and_then(|v| v.get(name)?.as_f64());
    actors::Usage {
        wall_seconds: field("wall_seconds").unwrap_or(0.0),
        cpu_seconds: field("cpu_seconds"),
        peak_rss_bytes: None,
    }
}
