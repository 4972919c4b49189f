//! The entry point the CLI and the daemon call: [`run_pruning`] loads or resumes a
//! run, starts the Supervisor with its six actors, waits for the end, and optionally
//! measures the final perplexity on the `[evaluation.final]` text.
//!
//! A run lives in its [`RunFolder`]. Resuming reads the run's own stored config (so it
//! continues exactly as started), rebuilds the masks from the committed deltas in
//! order and prunes the model to them, restores the iteration memory and the last
//! gradients, and continues at the next iteration.

use std::collections::HashMap;
use std::sync::Arc;

use config::Config;
use kernels::Mask;
use llm::PlannerBackend;
use model::text::TextSource;
use model::Perplexity;
use protocol::{IterationRecord, LayerDelta, RunId, RunMeta, RunState, RunSummary};
use ractor::Actor;
use serde::{Deserialize, Serialize};

use crate::crew::CrewSpec;
use crate::engine::Engine;
use crate::error::FailureKind;
use crate::events::{ProgressFn, RunControl};
use crate::faults::Faults;
use crate::folder::{touched_layers, Committed, RunFolder};
use crate::state::PruningState;
use crate::store::TextPpl;
use crate::supervisor::{Ended, StartPoint, Supervisor, SupervisorMsg};
use crate::util::blocking;

/// How to run, beyond the config.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Continue this stored run (its stored config wins over the given one, except
    /// `run.runs_dir`, which says where to find it).
    pub resume: Option<RunId>,
    /// Id of a new run; generated (UTC timestamp + short hash) when `None`.
    pub run_id: Option<RunId>,
    /// Planner backend; the deterministic heuristic of `[heuristic]` when `None`.
    pub planner: Option<Arc<dyn PlannerBackend>>,
    /// Fault-injection points for tests ([`crate::faults`]); none by default.
    pub faults: Faults,
    pub progress: Option<ProgressFn>,
    /// Measure dense and pruned PPL on `[evaluation.final]` after the loop.
    pub final_eval: bool,
    /// Concurrent candidate evaluations; defaults to K.
    pub eval_workers: Option<usize>,
    /// Lets another task stop the loop at the next iteration boundary (cancel, or
    /// suspend for a shutdown); never consulted when nobody holds a clone.
    pub control: RunControl,
}

/// Perplexity of the dense and the pruned model on the final text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalEval {
    pub text: String,
    pub texts: usize,
    pub window: usize,
    pub tokens_scored: usize,
    pub dense_ppl: f64,
    pub pruned_ppl: f64,
    pub seconds: f64,
}

/// Everything a run produced.
pub struct RunOutput {
    pub summary: RunSummary,
    /// For a failed run: whether running it again may succeed.
    pub failure_kind: Option<FailureKind>,
    /// Final masks, one per prunable layer in model order, as deltas from all-kept.
    pub masks: Vec<LayerDelta>,
    pub folder: RunFolder,
    pub final_eval: Option<FinalEval>,
    /// The config the run used (the stored one when resumed).
    pub config: Config,
    /// f32 size of the model's weights, for the report's ratios.
    pub model_f32_bytes: u64,
}

impl RunOutput {
    /// The report's extras for this run: model, sizes, final PPL, and what the run cost
    /// as the caller measured it.
    pub fn extras(&self, usage: report::Usage) -> report::Extras {
        report::Extras {
            model: self.config.model.path.display().to_string(),
            model_f32_bytes: self.model_f32_bytes,
            wall_seconds: usage.wall_seconds,
            cpu_seconds: usage.cpu_seconds,
            peak_rss_bytes: usage.peak_rss_bytes,
            final_ppl: self.final_eval.as_ref().map(|f| report::FinalPpl {
                text: f.text.clone(),
                tokens_scored: f.tokens_scored,
                dense_ppl: f.dense_ppl,
                pruned_ppl: f.pruned_ppl,
            }),
        }
    }

    /// Write `masks.bin` and the report files into the run folder.
    pub fn write_outputs(
        &self,
        usage: report::Usage,
    ) -> Result<Vec<std::path::PathBuf>, crate::folder::FolderError> {
        let extras = self.extras(usage);
        self.folder
            .write_outputs(&self.summary, &self.masks, &extras)
    }
}

/// Errors that prevent a run from starting or finishing normally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Setup(String),
    #[error("checkpoint: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Folder(#[from] crate::folder::FolderError),
    #[error("actor system: {0}")]
    Actors(String),
    /// `--resume` of a run that already finished and wrote its outputs: nothing to do.
    #[error("run `{run}` already finished ({reason}); its report is in {}", dir.display())]
    Finished {
        run: String,
        reason: protocol::StopReason,
        dir: std::path::PathBuf,
    },
}

/// Run (or resume) the agent-guided pruning loop to its end.
pub async fn run_pruning(cfg: Config, opts: RunOptions) -> Result<RunOutput, RunError> {
    let runs_dir = cfg.run.runs_dir.clone();
    let (cfg, folder, stored) = match &opts.resume {
        Some(id) => {
            let folder = RunFolder::new(&runs_dir, id);
            if !folder.has_checkpoint() {
                return Err(RunError::Setup(format!(
                    "run `{id}`: no checkpoint at {}",
                    folder.db_dir().display()
                )));
            }
            let f = folder.clone();
            let stored = blocking(move || f.committed())
                .await
                .map_err(|e| never_recorded(e, &folder))?;
            if let Some(reason) = finished(&stored) {
                if folder.has_outputs() {
                    return Err(RunError::Finished {
                        run: id.clone(),
                        reason,
                        dir: folder.dir().to_path_buf(),
                    });
                }
            }
            let mut cfg = stored.config.clone();
            cfg.run.runs_dir = runs_dir.clone();
            (cfg, folder, Some(stored))
        }
        None => {
            cfg.validate().map_err(|e| RunError::Setup(e.to_string()))?;
            let id = opts.run_id.clone().unwrap_or_else(|| new_run_id(&cfg));
            (cfg, RunFolder::new(&runs_dir, &id), None)
        }
    };
    let run_dir = folder.dir().to_path_buf();
    let run_id = folder.id().to_string();
    // Everything that can fail at set-up (model, texts, planner backend) fails before
    // the run folder exists: a bad config leaves nothing behind.
    let engine = Arc::new(
        blocking({
            let cfg = cfg.clone();
            move || Engine::load(&cfg)
        })
        .await
        .map_err(RunError::Setup)?,
    );
    let backend: Arc<dyn PlannerBackend> = match &opts.planner {
        Some(p) => p.clone(),
        // The config names the backend (heuristic, remote LLMs, local GGUF) and its
        // fallback; a missing API key or model file fails here, before any work.
        None => Arc::from(
            llm::build_planner(&cfg).map_err(|e| RunError::Setup(format!("planner: {e}")))?,
        ),
    };
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| RunError::Setup(format!("{}: {e}", run_dir.display())))?;
    // A new run is recorded (config, layers; no baseline yet) before anything else is
    // stored, so a run killed at any later point can be resumed: from iteration 1 when
    // it never committed one.
    let fresh = match &stored {
        Some(s) if !never_started(s) => None,
        Some(s) => Some(s.run.meta.clone()),
        None => Some(new_meta(&cfg, &engine, &run_id)),
    };
    if let (Some(meta), None) = (&fresh, &stored) {
        let (db, meta) = (folder.db_dir(), meta.clone());
        blocking(move || crate::store::Store::open(&db)?.create_run(&meta, &created())).await?;
    }
    // The dense final PPL is measured now, while the model is still dense (commits
    // prune it in place, also the stored masks of a resumed run), and stored with the
    // run, so neither the end of this run nor a resume needs the dense weights.
    let dense_final = if opts.final_eval {
        let loaded = stored.as_ref().map(|s| &s.run);
        Some(dense_final_ppl(&cfg, &engine, &folder, loaded).await?)
    } else {
        None
    };
    let start = match (stored, fresh) {
        (_, Some(meta)) => new_start(meta),
        (Some(s), None) => {
            // Weight files a kill left beside the committed ones go before any write.
            let (files, touched) = (folder.weight_files(), touched_layers(&s.run));
            blocking(move || files.tidy(&touched)).await?;
            resume_point(&engine, s).await?
        }
        (None, None) => unreachable!("a new run always has fresh meta"),
    };
    let sup = Supervisor {
        spec: Arc::new(CrewSpec {
            cfg: cfg.clone(),
            engine: engine.clone(),
            backend,
            db_dir: folder.db_dir(),
            weight_files: folder.weight_files(),
            run_id: run_id.clone(),
            faults: opts.faults.clone(),
            workers: opts.eval_workers.unwrap_or(cfg.pruning.candidates).max(1),
        }),
        progress: opts.progress.clone(),
        control: opts.control.clone(),
    };
    let (sup_ref, handle) = Actor::spawn(None, sup, start)
        .await
        .map_err(|e| RunError::Actors(e.to_string()))?;
    let ended: Ended = match sup_ref.call(SupervisorMsg::Run, None).await {
        Ok(ractor::rpc::CallResult::Success(s)) => s,
        Ok(_) => {
            return Err(RunError::Actors(
                "the supervisor stopped without a summary".into(),
            ))
        }
        Err(e) => return Err(RunError::Actors(e.to_string())),
    };
    let masks = match sup_ref.call(SupervisorMsg::Masks, None).await {
        Ok(ractor::rpc::CallResult::Success(m)) => m,
        _ => Vec::new(),
    };
    // Wait for the children to stop: the Checkpointer's sled lock must be released
    // before this returns (a resume or a reader may open the database right away).
    sup_ref.stop_children_and_wait(None, None).await;
    let _ = sup_ref.stop_and_wait(None, None).await;
    let _ = handle.await;
    let summary = ended.summary;
    let final_eval = match dense_final {
        Some(dense) if summary.state == RunState::Finished => {
            let (cfg2, engine2) = (cfg.clone(), engine.clone());
            Some(
                blocking(move || final_ppl(&cfg2, &engine2, &dense))
                    .await
                    .map_err(RunError::Setup)?,
            )
        }
        _ => None,
    };
    Ok(RunOutput {
        summary,
        failure_kind: ended.failure_kind,
        masks,
        folder,
        final_eval,
        config: cfg,
        model_f32_bytes: engine.f32_bytes,
    })
}

/// The record of a new run: config and layers; PPL₀ is measured and recorded with the
/// meta again before iteration 1.
fn new_meta(cfg: &Config, engine: &Engine, run_id: &str) -> RunMeta {
    RunMeta {
        run_id: run_id.to_string(),
        config_toml: cfg.to_toml_string(),
        created_unix: now_unix(),
        baseline_ppl: f64::NAN,
        layers: engine
            .layers
            .iter()
            .map(|l| (l.name.clone(), [l.out_features, l.in_features]))
            .collect(),
        baseline_probe: None,
    }
}

/// The status of a run recorded but not yet started.
fn created() -> protocol::RunStatus {
    protocol::RunStatus {
        state: RunState::Created,
        iteration: 1,
        stored_iterations: 0,
        reason: None,
        stop_reason: None,
    }
}

/// A stored run that never measured its baseline (killed during set-up): it starts
/// again from iteration 1 with its stored config.
fn never_started(s: &Committed) -> bool {
    s.run.iterations.is_empty() && s.run.meta.baseline_ppl.is_nan()
}

/// How the loop of a stored run ended, if it did (a finished run resumed after a kill
/// during its final evaluation ends again the same way, without another iteration).
fn finished(s: &Committed) -> Option<protocol::StopReason> {
    s.run
        .status
        .as_ref()
        .filter(|st| st.state == RunState::Finished)
        .and_then(|st| st.stop_reason)
}

/// A folder whose database holds no run (a process killed between creating the
/// database and recording the run, before this version recorded runs first) says so.
fn never_recorded(e: crate::folder::FolderError, folder: &RunFolder) -> RunError {
    match e {
        crate::folder::FolderError::Store {
            source: crate::store::StoreError::UnknownRun(_),
            ..
        } => RunError::Setup(format!(
            "run `{}` was stopped before it recorded anything, so there is nothing to \
resume: start it again with `secateur prune` (remove {} first)",
            folder.id(),
            folder.dir().display()
        )),
        other => other.into(),
    }
}

/// The start of a new run (or of a recorded one that never measured its baseline).
fn new_start(meta: RunMeta) -> StartPoint {
    StartPoint {
        new_meta: Some(meta),
        baseline_ppl: None,
        history: Vec::new(),
        current_ppl: None,
        next_iteration: 1,
        raw_grad: None,
        delta_bytes: Vec::new(),
        stored_iterations: 0,
        probe_points: Vec::new(),
        final_probe: None,
        finished: None,
    }
}

/// Continue a stored run: prune the model to its committed masks, and restore the
/// iteration memory, the last PPL, the last gradients and the knowledge-probe points.
async fn resume_point(engine: &Arc<Engine>, s: Committed) -> Result<StartPoint, RunError> {
    let ended = finished(&s);
    let mut by_name: std::collections::HashMap<String, Mask> = s.masks.into_iter().collect();
    let mut masks = Vec::with_capacity(engine.layers.len());
    for l in &engine.layers {
        let m = by_name
            .remove(&l.name)
            .unwrap_or_else(|| Mask::ones(l.out_features, l.in_features));
        masks.push(m);
    }
    if let Some(name) = by_name.keys().next() {
        return Err(RunError::Setup(format!(
            "stored delta for unknown layer `{name}`"
        )));
    }
    let state = PruningState::new(engine.clone());
    let (weights, eng) = (s.weights, engine.clone());
    blocking(move || {
        let weights = repaired_tensors(&eng, weights)?;
        state.restore(&masks, &weights).map_err(|e| e.to_string())
    })
    .await
    .map_err(RunError::Setup)?;
    let l = s.run;
    let history: Vec<IterationRecord> = l.iterations.iter().map(|s| s.record.clone()).collect();
    let current_ppl = history
        .iter()
        .rev()
        .find(|r| !r.outcome.rolled_back)
        .map(|r| r.outcome.ppl_after)
        .unwrap_or(l.meta.baseline_ppl);
    let next = history.last().map_or(1, |r| r.outcome.iteration + 1);
    let probe_points = l
        .meta
        .baseline_probe
        .iter()
        .chain(l.iterations.iter().filter_map(|s| s.probe.as_ref()))
        .cloned()
        .collect();
    Ok(StartPoint {
        new_meta: None,
        baseline_ppl: Some(l.meta.baseline_ppl),
        current_ppl: Some(current_ppl),
        next_iteration: next,
        raw_grad: l.iterations.last().map(|s| s.raw_grad.clone()),
        delta_bytes: s.delta_bytes,
        stored_iterations: history.len() as u32,
        history,
        probe_points,
        final_probe: l.final_probe,
        finished: ended,
    })
}

/// A resumed run's stored repaired weights as tensors in the model's dtype and on its
/// device (f32 values from bf16 weights convert back exactly).
fn repaired_tensors(
    engine: &Engine,
    weights: HashMap<String, Vec<f32>>,
) -> Result<HashMap<String, candle_core::Tensor>, String> {
    let model = &engine.model;
    weights
        .into_iter()
        .map(|(name, values)| {
            let info = engine
                .layers
                .iter()
                .find(|l| l.name == name)
                .ok_or_else(|| format!("stored weights for unknown layer `{name}`"))?;
            let shape = (info.out_features, info.in_features);
            let t = candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu)
                .and_then(|t| t.to_dtype(model.dtype()))
                .and_then(|t| t.to_device(model.device()))
                .map_err(|e| format!("stored weights of `{name}`: {e}"))?;
            Ok((name, t))
        })
        .collect()
}

/// The dense model's PPL on `[evaluation.final]`: the stored value of a resumed run,
/// else measured on `engine` — which must still be dense: a new run, or a run stored
/// before this value was kept (its engine was just loaded from the checkpoint and the
/// stored masks are applied after it) — and stored with the run.
async fn dense_final_ppl(
    cfg: &Config,
    engine: &Arc<Engine>,
    folder: &RunFolder,
    loaded: Option<&crate::store::LoadedRun>,
) -> Result<TextPpl, RunError> {
    if let Some(d) = loaded.and_then(|l| l.dense_final.clone()) {
        return Ok(d);
    }
    let (cfg2, engine2) = (cfg.clone(), engine.clone());
    let dense = blocking(move || final_text_ppl(&cfg2, &engine2))
        .await
        .map_err(RunError::Setup)?;
    let (db, id, d) = (folder.db_dir(), folder.id().to_string(), dense.clone());
    blocking(move || crate::store::record_dense_final(&db, &id, &d)).await?;
    Ok(dense)
}

/// Dense vs pruned PPL on `[evaluation.final]`: the committed masks are in the model
/// (pruned in place); `dense` was measured before the run pruned anything.
pub fn final_ppl(cfg: &Config, engine: &Engine, dense: &TextPpl) -> Result<FinalEval, String> {
    let f = &cfg.evaluation.final_ppl;
    let pruned = final_text_ppl(cfg, engine)?;
    if pruned.tokens_scored != dense.tokens_scored {
        return Err(format!(
            "final PPL: {} tokens scored now, {} when the dense PPL was measured; \
the final text changed during the run",
            pruned.tokens_scored, dense.tokens_scored
        ));
    }
    Ok(FinalEval {
        text: format!(
            "{}{}",
            f.path.display(),
            f.field
                .as_deref()
                .map(|x| format!(":{x}"))
                .unwrap_or_default()
        ),
        texts: pruned.texts,
        window: f.window,
        tokens_scored: pruned.tokens_scored,
        dense_ppl: dense.ppl,
        pruned_ppl: pruned.ppl,
        seconds: dense.seconds + pruned.seconds,
    })
}

/// PPL of the model as it stands on `[evaluation.final]`: texts joined by blank
/// lines, non-overlapping windows (WikiText-2 protocol).
fn final_text_ppl(cfg: &Config, engine: &Engine) -> Result<TextPpl, String> {
    let f = &cfg.evaluation.final_ppl;
    let start = std::time::Instant::now();
    let source = TextSource {
        path: f.path.clone(),
        field: f.field.clone(),
    };
    let texts = source
        .read((f.max_texts > 0).then_some(f.max_texts))
        .map_err(|e| format!("final text: {e}"))?;
    let tokens = (engine.encode)(&texts.join("\n\n"))?;
    let windows: Vec<&[u32]> = tokens.chunks(f.window).filter(|c| c.len() >= 2).collect();
    let parts = engine
        .model
        .perplexity_each(&windows, model::FORWARD_BATCH, None)
        .map_err(|e| format!("final PPL: {e}"))?;
    let p = Perplexity::combine(&parts).map_err(|e| format!("final PPL: {e}"))?;
    Ok(TextPpl {
        ppl: p.ppl,
        tokens_scored: p.tokens_scored,
        texts: texts.len(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYYMMDD-HHMMSS-xxxx` (UTC; xxxx from the config and the clock's nanoseconds).
pub fn new_run_id(cfg: &Config) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a
    for b in cfg
        .to_toml_string()
        .bytes()
        .chain(now.subsec_nanos().to_le_bytes())
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{:04x}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        h & 0xffff
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// [`run_pruning`] on a runtime of its own, for synchronous callers (the CLI).
pub fn run_pruning_blocking(cfg: Config, opts: RunOptions) -> Result<RunOutput, RunError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| RunError::Actors(format!("tokio runtime: {e}")))?;
    rt.block_on(run_pruning(cfg, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_420), (2025, 11, 28));
        let id = new_run_id(&Config::default());
        assert_eq!(id.len(), 20, "{id}");
        assert_eq!(&id[8..9], "-");
    }
}
