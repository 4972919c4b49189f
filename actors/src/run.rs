//! The entry point the CLI (and later the daemon) calls: [`run_pruning`] loads or
//! resumes a run, starts the Supervisor with its six actors, waits for the end, and
//! optionally measures the final perplexity on the `[evaluation.final]` text.
//!
//! A run lives in `<runs_dir>/<run id>/`; its sled database is `checkpoint.sled`
//! inside. Resuming reads the run's own stored config (so it continues exactly as
//! started), rebuilds the masks from the committed deltas in order, restores the
//! iteration memory and the last gradients, and continues at the next iteration.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use config::Config;
use kernels::{Mask, MaskDelta};
use llm::PlannerBackend;
use model::text::TextSource;
use model::Perplexity;
use protocol::{
    ActorTimings, IterationRecord, LayerDelta, RunId, RunMeta, RunState, RunSummary, StopReason,
};
use ractor::Actor;
use serde::{Deserialize, Serialize};

use crate::checkpointer::load_run;
use crate::engine::Engine;
use crate::store::TextPpl;
use crate::supervisor::{StartPoint, Supervisor, SupervisorMsg};
use crate::util::{blocking, Faults};

/// What the run reports while it goes (the CLI draws progress from it).
#[derive(Debug, Clone)]
pub enum ProgressEvent {
    /// Loading done; `next_iteration` > 1 when resumed.
    Started {
        run_id: RunId,
        baseline_ppl: f64,
        next_iteration: u32,
    },
    Phase {
        iteration: u32,
        state: RunState,
    },
    /// An iteration was stored (committed or rolled back).
    Iteration {
        record: Box<IterationRecord>,
        timings: ActorTimings,
        delta_bytes: u64,
        /// Every reviewed candidate as stored (backend that answered — a fallback says
        /// so —, LLM latency, verdict, score), for observers such as the daemon's API.
        candidates: Vec<protocol::ReviewedCandidate>,
    },
    Finished {
        state: RunState,
        reason: StopReason,
    },
}

/// A progress callback (called from actor tasks: keep it cheap).
pub type ProgressFn = Arc<dyn Fn(&ProgressEvent) + Send + Sync>;

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
    pub faults: Faults,
    pub progress: Option<ProgressFn>,
    /// Measure dense and pruned PPL on `[evaluation.final]` after the loop.
    pub final_eval: bool,
    /// Concurrent candidate evaluations; defaults to K.
    pub eval_workers: Option<usize>,
    /// Test hook: sleep this long after entering `evaluating`, so a test can kill the
    /// process reliably in the middle of an iteration. 0 = off.
    pub pause_before_eval_ms: u64,
    /// Lets another task stop the loop at the next iteration boundary (cancel, or
    /// suspend for a shutdown); never consulted when nobody holds a clone.
    pub control: RunControl,
}

/// A stop request from outside the loop, honoured between iterations: the iteration in
/// progress always finishes (and is committed or rolled back) first, so nothing is left
/// half-done. Clones share the request.
#[derive(Debug, Clone, Default)]
pub struct RunControl(Arc<std::sync::atomic::AtomicU8>);

/// What a [`RunControl`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// End the run as `cancelled` (terminal).
    Cancel,
    /// Stop without a terminal state (process shutdown); a resume continues it.
    Suspend,
}

impl RunControl {
    const CANCEL: u8 = 1;
    const SUSPEND: u8 = 2;

    /// Ask for a cancel; wins over an earlier suspend.
    pub fn cancel(&self) {
        self.0
            .store(Self::CANCEL, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ask for a suspend, unless a cancel is already requested.
    pub fn suspend(&self) {
        let _ = self.0.compare_exchange(
            0,
            Self::SUSPEND,
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// The pending request, if any.
    pub fn requested(&self) -> Option<StopRequest> {
        match self.0.load(std::sync::atomic::Ordering::SeqCst) {
            Self::CANCEL => Some(StopRequest::Cancel),
            Self::SUSPEND => Some(StopRequest::Suspend),
            _ => None,
        }
    }
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
    /// Final masks, one per prunable layer in model order, as deltas from all-kept.
    pub masks: Vec<LayerDelta>,
    pub run_dir: PathBuf,
    pub final_eval: Option<FinalEval>,
    /// The config the run used (the stored one when resumed).
    pub config: Config,
    /// f32 size of the model's weights, for the report's ratios.
    pub model_f32_bytes: u64,
}

/// Errors that prevent a run from starting or finishing normally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Setup(String),
    #[error("checkpoint: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("actor system: {0}")]
    Actors(String),
}

/// The sled directory of a run.
pub fn db_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoint.sled")
}

/// Run (or resume) the agent-guided pruning loop to its end.
pub async fn run_pruning(cfg: Config, opts: RunOptions) -> Result<RunOutput, RunError> {
    let runs_dir = cfg.run.runs_dir.clone();
    let (cfg, run_id, loaded) = match &opts.resume {
        Some(id) => {
            let dir = db_dir(&runs_dir.join(id));
            if !dir.exists() {
                return Err(RunError::Setup(format!(
                    "run `{id}`: no checkpoint at {}",
                    dir.display()
                )));
            }
            let loaded = blocking({
                let id = id.clone();
                move || load_run(&dir, &id)
            })
            .await?;
            let mut stored = Config::from_toml_str(&loaded.meta.config_toml)
                .map_err(|e| RunError::Setup(format!("run `{id}`: stored config: {e}")))?;
            stored.run.runs_dir = runs_dir.clone();
            (stored, id.clone(), Some(loaded))
        }
        None => {
            cfg.validate().map_err(|e| RunError::Setup(e.to_string()))?;
            let id = opts.run_id.clone().unwrap_or_else(|| new_run_id(&cfg));
            (cfg, id, None)
        }
    };
    let run_dir = runs_dir.join(&run_id);
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| RunError::Setup(format!("{}: {e}", run_dir.display())))?;

    let engine = Arc::new(
        blocking({
            let cfg = cfg.clone();
            move || Engine::load(&cfg)
        })
        .await
        .map_err(RunError::Setup)?,
    );
    // The dense final PPL is measured now, while the model is still dense (the Executor
    // prunes it in place, also the stored masks of a resumed run), and stored with the
    // run, so neither the end of this run nor a resume needs the dense weights.
    let dense_final = if opts.final_eval {
        Some(dense_final_ppl(&cfg, &engine, &run_dir, &run_id, loaded.as_ref()).await?)
    } else {
        None
    };
    let start = match loaded {
        Some(l) => resume_point(&engine, l)?,
        None => StartPoint {
            new_meta: Some(RunMeta {
                run_id: run_id.clone(),
                config_toml: cfg.to_toml_string(),
                created_unix: now_unix(),
                baseline_ppl: f64::NAN,
                layers: engine
                    .layers
                    .iter()
                    .map(|l| (l.name.clone(), [l.out_features, l.in_features]))
                    .collect(),
                baseline_probe: None,
            }),
            baseline_ppl: None,
            history: Vec::new(),
            current_ppl: None,
            next_iteration: 1,
            raw_grad: None,
            masks: None,
            delta_bytes: Vec::new(),
            stored_iterations: 0,
            probe_points: Vec::new(),
            final_probe: None,
        },
    };
    let backend: Arc<dyn PlannerBackend> = match &opts.planner {
        Some(p) => p.clone(),
        // The config names the backend (heuristic, remote LLMs, local GGUF) and its
        // fallback; a missing API key or model file fails here, before any work.
        None => Arc::from(
            llm::build_planner(&cfg).map_err(|e| RunError::Setup(format!("planner: {e}")))?,
        ),
    };
    let sup = Supervisor {
        cfg: cfg.clone(),
        engine: engine.clone(),
        backend,
        db_dir: db_dir(&run_dir),
        run_id: run_id.clone(),
        faults: opts.faults.clone(),
        progress: opts.progress.clone(),
        workers: opts.eval_workers.unwrap_or(cfg.pruning.candidates).max(1),
        pause_before_eval_ms: opts.pause_before_eval_ms,
        control: opts.control.clone(),
    };
    let (sup_ref, handle) = Actor::spawn(None, sup, start)
        .await
        .map_err(|e| RunError::Actors(e.to_string()))?;
    let summary = match sup_ref.call(SupervisorMsg::Run, None).await {
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
        masks,
        run_dir,
        final_eval,
        config: cfg,
        model_f32_bytes: engine.f32_bytes,
    })
}

/// Rebuild the state of a stored run: masks from the committed deltas in order, the
/// iteration memory, the last PPL, the last gradients and the knowledge-probe points.
fn resume_point(engine: &Engine, l: crate::store::LoadedRun) -> Result<StartPoint, RunError> {
    let index: std::collections::HashMap<&str, usize> = engine
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.as_str(), i))
        .collect();
    let mut masks: Vec<Mask> = engine
        .layers
        .iter()
        .map(|l| Mask::ones(l.out_features, l.in_features))
        .collect();
    let committed: std::collections::HashSet<u32> = l
        .iterations
        .iter()
        .filter(|s| s.committed.is_some())
        .map(|s| s.record.outcome.iteration)
        .collect();
    let mut delta_bytes = Vec::new();
    for (it, deltas) in &l.deltas {
        if !committed.contains(it) {
            continue; // deltas without their record cannot exist (one transaction)
        }
        let mut bytes = 0u64;
        for d in deltas {
            let i = *index.get(d.layer.as_str()).ok_or_else(|| {
                RunError::Setup(format!("stored delta for unknown layer `{}`", d.layer))
            })?;
            let delta = MaskDelta::from_bytes(&d.bytes)
                .and_then(|delta| delta.apply_to(&mut masks[i]))
                .map_err(|e| RunError::Setup(format!("stored delta `{}`: {e}", d.layer)));
            delta?;
            bytes += d.bytes.len() as u64;
        }
        delta_bytes.push(bytes);
    }
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
        masks: Some(masks),
        delta_bytes,
        stored_iterations: history.len() as u32,
        history,
        probe_points,
        final_probe: l.final_probe,
    })
}

/// The dense model's PPL on `[evaluation.final]`: the stored value of a resumed run,
/// else measured on `engine` — which must still be dense: a new run, or a run stored
/// before this value was kept (its engine was just loaded from the checkpoint and the
/// stored masks are applied later, by the Executor) — and stored with the run.
async fn dense_final_ppl(
    cfg: &Config,
    engine: &Arc<Engine>,
    run_dir: &Path,
    run_id: &str,
    loaded: Option<&crate::store::LoadedRun>,
) -> Result<TextPpl, RunError> {
    if let Some(d) = loaded.and_then(|l| l.dense_final.clone()) {
        return Ok(d);
    }
    let (cfg2, engine2) = (cfg.clone(), engine.clone());
    let dense = blocking(move || final_text_ppl(&cfg2, &engine2))
        .await
        .map_err(RunError::Setup)?;
    let (db, id, d) = (db_dir(run_dir), run_id.to_string(), dense.clone());
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

/// The final masks as one file: `b"SCMK"`, u32 LE layer count, then per layer u16 LE
/// name length, the name, u32 LE byte length and the `MaskDelta` bytes (from all-kept).
pub fn masks_file(masks: &[LayerDelta]) -> Vec<u8> {
    let mut out = b"SCMK".to_vec();
    out.extend((masks.len() as u32).to_le_bytes());
    for m in masks {
        out.extend((m.layer.len() as u16).to_le_bytes());
        out.extend(m.layer.as_bytes());
        out.extend((m.bytes.len() as u32).to_le_bytes());
        out.extend(&m.bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_wins_over_a_suspend_and_clones_share_the_request() {
        let c = RunControl::default();
        assert_eq!(c.requested(), None);
        let seen_by_the_loop = c.clone();
        c.suspend();
        assert_eq!(seen_by_the_loop.requested(), Some(StopRequest::Suspend));
        c.cancel();
        c.suspend();
        assert_eq!(seen_by_the_loop.requested(), Some(StopRequest::Cancel));
    }

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
