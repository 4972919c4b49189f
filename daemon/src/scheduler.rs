//! The run queue: up to `daemon.concurrency` runs execute at once, each as
//! `actors::run_pruning` (a Supervisor with its six actors), oldest submission first,
//! runs interrupted by a restart before any queued run.
//!
//! A run interrupted by a crash or a shutdown is resumed from its checkpoint database
//! (the actors rebuild the masks from the committed deltas), so no committed iteration
//! is lost or repeated. A run whose database already says it ended (the daemon died
//! between the actors' last write and its own) takes that ending instead of running on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actors::{ProgressEvent, RunOptions, RunOutput};
use config::Config;
use protocol::{RunState, StopReason};
use tokio::task::JoinSet;

use crate::registry::Ending;
use crate::types::{FinalPpl, HistoryItem, JobState};
use crate::Shared;

/// Drive the queue until shutdown, then ask running runs to stop after their current
/// iteration and wait up to the grace period for them.
pub(crate) async fn schedule(shared: Arc<Shared>) {
    let mut tasks = JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    loop {
        if *shutdown.borrow() {
            break;
        }
        while tasks.len() < shared.cfg.daemon.concurrency {
            let Some((id, config_toml, control)) = shared.registry.take_next() else {
                break;
            };
            tasks.spawn(execute(shared.clone(), id, config_toml, control));
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = shutdown.changed() => {}
        }
    }
    shared.registry.suspend_all();
    let grace = std::time::Duration::from_secs(shared.cfg.daemon.shutdown_grace_secs);
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            running = tasks.len(),
            "shutdown grace period over; abandoning running iterations (they resume at restart)"
        );
        tasks.abort_all();
    }
}

fn runs_dir(shared: &Shared) -> PathBuf {
    shared.cfg.daemon.data_dir.join("runs")
}

/// Execute (or resume) one run to its end and record how it ended.
async fn execute(
    shared: Arc<Shared>,
    id: String,
    config_toml: String,
    control: actors::RunControl,
) {
    let started = std::time::Instant::now();
    let ending = match prepare_and_run(&shared, &id, &config_toml, control).await {
        Ok(ending) => ending,
        Err(reason) => {
            discard_if_never_started(&shared, &id).await;
            Some(Ending {
                state: JobState::Failed,
                reason: Some(reason),
                stop_reason: Some(StopReason::Failed),
                sparsity: None,
                final_ppl: None,
                retryable: false,
            })
        }
    };
    match &ending {
        Some(e) => tracing::info!(run = %id, state = ?e.state, reason = ?e.reason,
            seconds = started.elapsed().as_secs_f64(), "run ended"),
        None => tracing::info!(run = %id, "run interrupted by shutdown; resumes at restart"),
    }
    shared.registry.end(&id, ending);
    if let Err(e) = shared.registry.persist(&id).await {
        tracing::error!(run = %id, %e, "cannot write the run record");
    }
    shared.wake.notify_one();
}

/// A run that failed before its checkpoint database held the run (bad model file,
/// missing API key, …) leaves no folder behind: it holds nothing to resume or export,
/// and the run's record keeps the state `failed` and the reason. A run with stored
/// iterations is never touched.
async fn discard_if_never_started(shared: &Shared, id: &str) {
    let dir = runs_dir(shared).join(id);
    if !dir.exists()
        || !matches!(
            read_checkpoint(&actors::folder::db_dir(&dir), id).await,
            Ok(None)
        )
    {
        return;
    }
    let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await;
    if !matches!(removed, Ok(Ok(()))) {
        tracing::warn!(run = %id, "cannot remove the folder of a run that never started");
    }
}

async fn prepare_and_run(
    shared: &Arc<Shared>,
    id: &str,
    config_toml: &str,
    control: actors::RunControl,
) -> Result<Option<Ending>, String> {
    if let Err(e) = shared.registry.persist(id).await {
        return Err(format!("cannot write the run record: {e}"));
    }
    let runs = runs_dir(shared);
    let db = actors::folder::db_dir(&runs.join(id));
    let stored = read_checkpoint(&db, id).await?;
    let resume = stored.is_some();
    if let Some((history, ended)) = stored {
        shared.registry.set_history(id, history, true);
        if let Some(ending) = ended {
            return Ok(Some(ending));
        }
        tracing::info!(run = %id, since_daemon_start_ms = shared.started.elapsed().as_millis() as u64,
            "resuming run from its checkpoint");
    }
    let mut cfg = Config::from_toml_str(config_toml).map_err(|e| format!("stored config: {e}"))?;
    // The allow-lists may have been narrowed since the run was submitted.
    crate::submit::check_policy(&cfg, &shared.cfg.daemon)
        .map_err(|r| format!("{}: {}", r.error, r.details.join("; ")))?;
    cfg.run.runs_dir = runs.clone();
    let progress: actors::ProgressFn = {
        let (shared, id) = (shared.clone(), id.to_string());
        Arc::new(move |e: &ProgressEvent| shared.registry.on_progress(&id, e))
    };
    let opts = RunOptions {
        resume: resume.then(|| id.to_string()),
        run_id: Some(id.to_string()),
        faults: shared.hooks.faults.clone(),
        progress: Some(progress),
        final_eval: true,
        control,
        ..Default::default()
    };
    // A task of its own, so a panic anywhere in the run fails this run only.
    let started = std::time::Instant::now();
    let out = match tokio::spawn(actors::run_pruning(cfg, opts))
        .await
        .map_err(|e| format!("the run crashed: {e}"))?
    {
        Ok(out) => out,
        // Killed after its outputs were written, before this record was: it ended.
        Err(actors::RunError::Finished { reason, .. }) => {
            return Ok(Some(Ending {
                state: JobState::Finished,
                reason: Some(stop_name(reason)),
                stop_reason: Some(reason),
                sparsity: None,
                final_ppl: None,
                retryable: false,
            }))
        }
        Err(e) => return Err(e.to_string()),
    };
    if out.summary.stop_reason == StopReason::Interrupted {
        return Ok(None);
    }
    write_outputs(&out, started.elapsed().as_secs_f64()).await;
    let s = &out.summary;
    Ok(Some(Ending {
        state: match s.state {
            RunState::Finished => JobState::Finished,
            RunState::Cancelled => JobState::Cancelled,
            _ => JobState::Failed,
        },
        reason: s.failure.clone().or_else(|| Some(stop_name(s.stop_reason))),
        stop_reason: Some(s.stop_reason),
        sparsity: Some(s.final_sparsity),
        final_ppl: out.final_eval.as_ref().map(|f| FinalPpl {
            dense: f.dense_ppl,
            pruned: f.pruned_ppl,
            tokens_scored: f.tokens_scored,
        }),
        retryable: out.failure_kind == Some(actors::FailureKind::Retryable),
    }))
}

/// The stop reason as the API spells it everywhere else (`target_reached`): its serde
/// name, not its Debug name lowercased (`targetreached`).
fn stop_name(r: StopReason) -> String {
    match serde_json::to_value(r) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{r:?}"),
    }
}

/// The run's stored history and, when its database says it already ended, that ending.
/// `None` when there is no stored run (never started, or killed before its first write).
async fn read_checkpoint(
    db: &Path,
    id: &str,
) -> Result<Option<(Vec<HistoryItem>, Option<Ending>)>, String> {
    if !db.exists() {
        return Ok(None);
    }
    let (db, id) = (db.to_path_buf(), id.to_string());
    let loaded = tokio::task::spawn_blocking(move || actors::checkpointer::load_run(&db, &id))
        .await
        .map_err(|e| format!("reading the checkpoint: {e}"))?;
    let run = match loaded {
        Ok(run) => run,
        Err(actors::store::StoreError::UnknownRun(_)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let history: Vec<HistoryItem> = run
        .iterations
        .iter()
        .map(|s| HistoryItem::new(s.record.clone(), s.timings, s.delta_bytes, &s.candidates))
        .collect();
    let ended = run.status.as_ref().and_then(|st| {
        let state = match st.state {
            RunState::Failed => JobState::Failed,
            RunState::Cancelled => JobState::Cancelled,
            // A finished run is resumed: it stops at once and writes its outputs.
            _ => return None,
        };
        Some(Ending {
            state,
            reason: st.reason.clone(),
            stop_reason: Some(if state == JobState::Failed {
                StopReason::Failed
            } else {
                StopReason::Cancelled
            }),
            sparsity: None,
            final_ppl: None,
            retryable: false,
        })
    });
    Ok(Some((history, ended)))
}

/// The run folder's outputs, as `secateur prune` writes them (`masks.bin`,
/// `report.json`, `report.md`, plots), plus `summary.json` (the summary and the final
/// evaluation as the API reports them).
async fn write_outputs(out: &RunOutput, wall_seconds: f64) {
    let summary = serde_json::to_vec_pretty(&serde_json::json!({
        "summary": out.summary,
        "final_eval": out.final_eval,
    }))
    .unwrap_or_default();
    let (folder, run, masks) = (out.folder.clone(), out.summary.clone(), out.masks.clone());
    // The daemon's process runs several jobs at once: its CPU time is no one run's.
    let extras = out.extras(actors::Usage {
        wall_seconds,
        ..Default::default()
    });
    let written = tokio::task::spawn_blocking(move || -> Result<(), String> {
        folder
            .write_outputs(&run, &masks, &extras)
            .map_err(|e| e.to_string())?;
        let path = folder.dir().join("summary.json");
        std::fs::write(&path, summary).map_err(|e| format!("{}: {e}", path.display()))
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(run = %out.summary.run_id, error = %e, "cannot write the run's outputs")
        }
        Err(e) => {
            tracing::error!(run = %out.summary.run_id, error = %e, "writing the run's outputs crashed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_read_as_their_json_names() {
        assert_eq!(stop_name(StopReason::TargetReached), "target_reached");
        assert_eq!(
            stop_name(StopReason::NoAcceptablePlan),
            "no_acceptable_plan"
        );
        assert_eq!(stop_name(StopReason::MaxIterations), "max_iterations");
    }
}
