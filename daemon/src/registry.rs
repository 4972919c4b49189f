//! Every run the daemon knows: a small JSON record per run in `<data_dir>/registry/`
//! (its life-cycle state, config, timestamps, outcome) plus, in memory, its live phase,
//! iteration history and event channel.
//!
//! The record is the daemon's own bookkeeping — queue position and whether a run was
//! queued, running or ended — written atomically (temp file, fsync, rename) at every
//! life-cycle change. The run's iterations and masks are the actors' business and live
//! in the run's own checkpoint database (`<data_dir>/runs/<id>/checkpoint.sled`); the
//! daemon reads them back through `actors` after a restart and never writes them, so
//! the two stores cannot disagree about an iteration.
//!
//! Locks: one `std::sync::Mutex` around the map, never held across an `.await`; record
//! writes are serialised by an async mutex so a later snapshot always lands last.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use actors::{ProgressEvent, RunControl};
use protocol::{RunState, StopReason};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::types::{FinalPpl, HistoryItem, JobState, RunDetail, RunView};

/// Events a subscriber may fall behind by before it gets `lagged` (about 5 per iteration).
const EVENT_BUFFER: usize = 256;

/// Events a run's subscribers (SSE streams) receive.
#[derive(Debug, Clone)]
pub enum JobEvent {
    Status(RunView),
    Iteration(Box<HistoryItem>),
    /// The run reached a terminal state; the stream ends after this.
    End(RunView),
}

/// What is persisted per run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    /// Submission order (the queue is FIFO by it).
    pub seq: u64,
    pub state: JobState,
    pub submitted_unix: u64,
    pub started_unix: Option<u64>,
    pub finished_unix: Option<u64>,
    /// The validated config (paths canonical, `run.runs_dir` the daemon's).
    pub config_toml: String,
    pub target_sparsity: f64,
    pub reason: Option<String>,
    pub stop_reason: Option<StopReason>,
    pub resumes: u32,
    pub final_sparsity: Option<f64>,
    pub final_ppl: Option<FinalPpl>,
    /// A cancel was asked for while the run was running. Stored (before the API answers
    /// 202) so that a run interrupted by a crash or a shutdown before it could stop is
    /// cancelled when it resumes, instead of running to its end. Absent in records
    /// written before this field existed.
    #[serde(default)]
    pub cancel_requested: bool,
    /// A failed run may succeed when submitted again (its planner service failed:
    /// HTTP 429, a timeout, an unusable answer); `false` for every other ending.
    #[serde(default)]
    pub retryable: bool,
}

/// How a run ended, as the scheduler reports it.
pub struct Ending {
    pub state: JobState,
    pub reason: Option<String>,
    pub stop_reason: Option<StopReason>,
    pub sparsity: Option<f64>,
    pub final_ppl: Option<FinalPpl>,
    /// See [`RunRecord::retryable`].
    pub retryable: bool,
}

/// Result of a cancel request.
pub enum Cancel {
    /// Cancelled now (it was waiting).
    Done(RunView),
    /// Takes effect after the iteration in progress.
    Requested(RunView),
    /// Already ended.
    Ended(RunView),
    NotFound,
}

struct Job {
    record: RunRecord,
    phase: Option<RunState>,
    iteration: u32,
    baseline_ppl: Option<f64>,
    history: Vec<HistoryItem>,
    /// A task is executing the run right now.
    active: bool,
    control: RunControl,
    /// Created on the first subscription: most runs are never watched live, and a
    /// channel preallocates its whole ring.
    events: Option<broadcast::Sender<JobEvent>>,
}

impl Job {
    fn new(record: RunRecord) -> Self {
        Self {
            record,
            phase: None,
            iteration: 0,
            baseline_ppl: None,
            history: Vec::new(),
            active: false,
            control: RunControl::default(),
            events: None,
        }
    }

    fn view(&self) -> RunView {
        let r = &self.record;
        let last = self
            .history
            .iter()
            .rev()
            .find(|h| !h.record.outcome.rolled_back);
        let last_iteration = self.history.last().map_or(0, |h| h.iteration);
        RunView {
            id: r.id.clone(),
            state: r.state,
            phase: if r.state == JobState::Running && self.active {
                self.phase
            } else {
                None
            },
            iteration: self.iteration.max(last_iteration),
            iterations: self.history.len() as u32,
            submitted_unix: r.submitted_unix,
            started_unix: r.started_unix,
            finished_unix: r.finished_unix,
            reason: r.reason.clone(),
            stop_reason: r.stop_reason,
            cancel_requested: r.cancel_requested,
            retryable: r.retryable,
            resumes: r.resumes,
            target_sparsity: r.target_sparsity,
            sparsity: r
                .final_sparsity
                .or(last.map(|h| h.record.outcome.sparsity_after))
                .unwrap_or(0.0),
            baseline_ppl: self.baseline_ppl,
            ppl: last
                .map(|h| h.record.outcome.ppl_after)
                .or(self.baseline_ppl),
            final_ppl: r.final_ppl.clone(),
        }
    }

    fn publish(&self, e: JobEvent) {
        if let Some(tx) = &self.events {
            // No subscriber left is not an error.
            let _ = tx.send(e);
        }
    }
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Job>,
    next_seq: u64,
}

/// The daemon's runs.
pub struct Registry {
    dir: PathBuf,
    inner: Mutex<Inner>,
    write: tokio::sync::Mutex<()>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Run ids the daemon generates (and accepts from its registry folder).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Registry {
    /// Load every record in `dir` (created if missing). Blocking file IO: call it off
    /// the async executor. Unreadable records are skipped with a warning, never fatal.
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut inner = Inner::default();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".tmp") {
                // A write interrupted by a crash; the previous version is intact.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<RunRecord>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(r) if r.id == id && valid_id(id) => {
                    inner.next_seq = inner.next_seq.max(r.seq + 1);
                    inner.jobs.insert(r.id.clone(), Job::new(r));
                }
                Ok(_) => {
                    tracing::warn!(file = %path.display(), "run record names another id; skipped")
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), %e, "unreadable run record; skipped")
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            inner: Mutex::new(inner),
            write: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Write `id`'s current record durably (temp file + fsync + rename).
    pub async fn persist(&self, id: &str) -> std::io::Result<()> {
        let _serial = self.write.lock().await;
        let Some(record) = self.lock().jobs.get(id).map(|j| j.record.clone()) else {
            return Ok(());
        };
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_record(&dir, &record))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
    }

    /// Queue a new run. `make_id` proposes ids until one is unused.
    pub fn submit(
        &self,
        config_toml: String,
        target_sparsity: f64,
        mut make_id: impl FnMut() -> String,
    ) -> RunView {
        let mut inner = self.lock();
        let mut id = make_id();
        while inner.jobs.contains_key(&id) {
            id = make_id();
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let job = Job::new(RunRecord {
            id: id.clone(),
            seq,
            state: JobState::Queued,
            submitted_unix: now_unix(),
            started_unix: None,
            finished_unix: None,
            config_toml,
            target_sparsity,
            reason: None,
            stop_reason: None,
            resumes: 0,
            final_sparsity: None,
            final_ppl: None,
            cancel_requested: false,
            retryable: false,
        });
        let view = job.view();
        inner.jobs.insert(id, job);
        view
    }

    /// Runs queued or running (the submission cap counts these).
    pub fn pending(&self) -> usize {
        self.lock()
            .jobs
            .values()
            .filter(|j| !j.record.state.is_terminal())
            .count()
    }

    /// (queued, running) counts.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        let n = |s| inner.jobs.values().filter(|j| j.record.state == s).count();
        (n(JobState::Queued), n(JobState::Running))
    }

    pub fn view(&self, id: &str) -> Option<RunView> {
        self.lock().jobs.get(id).map(Job::view)
    }

    /// Every run, oldest submission first.
    pub fn list(&self) -> Vec<RunView> {
        let inner = self.lock();
        let mut jobs: Vec<&Job> = inner.jobs.values().collect();
        jobs.sort_by_key(|j| j.record.seq);
        jobs.into_iter().map(Job::view).collect()
    }

    pub fn detail(&self, id: &str) -> Option<RunDetail> {
        self.lock().jobs.get(id).map(|j| RunDetail {
            run: j.view(),
            config_toml: j.record.config_toml.clone(),
            history: j.history.clone(),
        })
    }

    /// A subscription taken together with the state it starts from (under one lock, so
    /// no event falls between the snapshot and the first received event).
    pub fn subscribe(
        &self,
        id: &str,
    ) -> Option<(RunView, Vec<HistoryItem>, broadcast::Receiver<JobEvent>)> {
        let mut inner = self.lock();
        let j = inner.jobs.get_mut(id)?;
        let rx = j
            .events
            .get_or_insert_with(|| broadcast::channel(EVENT_BUFFER).0)
            .subscribe();
        Some((j.view(), j.history.clone(), rx))
    }

    /// The next run to execute: interrupted runs (running, no task) first, then queued
    /// ones, each oldest first. Marks it active and running.
    pub fn take_next(&self) -> Option<(String, String, RunControl)> {
        let mut inner = self.lock();
        let rank = |j: &Job| match j.record.state {
            JobState::Running => 0,
            _ => 1,
        };
        let id = inner
            .jobs
            .values()
            .filter(|j| !j.active && matches!(j.record.state, JobState::Queued | JobState::Running))
            .min_by_key(|j| (rank(j), j.record.seq))?
            .record
            .id
            .clone();
        let j = inner.jobs.get_mut(&id)?;
        j.active = true;
        j.record.state = JobState::Running;
        j.record.started_unix.get_or_insert_with(now_unix);
        j.control = RunControl::default();
        if j.record.cancel_requested {
            j.control.cancel();
        }
        j.publish(JobEvent::Status(j.view()));
        Some((id, j.record.config_toml.clone(), j.control.clone()))
    }

    /// History read back from the run's checkpoint database (a resumed run).
    pub fn set_history(&self, id: &str, history: Vec<HistoryItem>, resumed: bool) {
        if let Some(j) = self.lock().jobs.get_mut(id) {
            j.iteration = history.last().map_or(0, |h| h.iteration);
            j.history = history;
            if resumed {
                j.record.resumes += 1;
            }
        }
    }

    /// Fold one progress event of a running run into its state and publish it.
    pub fn on_progress(&self, id: &str, e: &ProgressEvent) {
        let mut inner = self.lock();
        let Some(j) = inner.jobs.get_mut(id) else {
            return;
        };
        match e {
            ProgressEvent::Started {
                baseline_ppl,
                next_iteration,
                ..
            } => {
                j.baseline_ppl = Some(*baseline_ppl);
                j.iteration = *next_iteration;
            }
            ProgressEvent::Phase { iteration, state } => {
                j.iteration = *iteration;
                j.phase = Some(*state);
            }
            ProgressEvent::Iteration {
                record,
                timings,
                delta_bytes,
                candidates,
            } => {
                let mut item =
                    HistoryItem::new((**record).clone(), *timings, *delta_bytes, candidates);
                item.trace_id = current_trace_id();
                j.history.retain(|h| h.iteration != item.iteration);
                j.history.push(item.clone());
                j.phase = Some(RunState::Committed);
                j.publish(JobEvent::Iteration(Box::new(item)));
            }
            ProgressEvent::Finished { .. } => return,
        }
        j.publish(JobEvent::Status(j.view()));
    }

    /// The run's task ended with `ending` (terminal) — or, with `None`, was interrupted
    /// by a shutdown and stays `running` for the next start to resume.
    pub fn end(&self, id: &str, ending: Option<Ending>) {
        let mut inner = self.lock();
        let Some(j) = inner.jobs.get_mut(id) else {
            return;
        };
        j.active = false;
        let Some(e) = ending else {
            return;
        };
        j.record.state = e.state;
        j.record.reason = e.reason;
        j.record.stop_reason = e.stop_reason;
        j.record.final_sparsity = e.sparsity.or(j.record.final_sparsity);
        j.record.final_ppl = e.final_ppl;
        j.record.retryable = e.retryable;
        j.record.finished_unix = Some(now_unix());
        j.publish(JobEvent::End(j.view()));
    }

    /// Cancel: immediately when the run waits, after the current iteration when it runs.
    pub fn cancel(&self, id: &str) -> Cancel {
        let mut inner = self.lock();
        let Some(j) = inner.jobs.get_mut(id) else {
            return Cancel::NotFound;
        };
        if j.record.state.is_terminal() {
            return Cancel::Ended(j.view());
        }
        j.record.cancel_requested = true;
        if j.active {
            j.control.cancel();
            j.publish(JobEvent::Status(j.view()));
            return Cancel::Requested(j.view());
        }
        j.record.state = JobState::Cancelled;
        j.record.reason = Some("cancelled before it ran to the end".into());
        j.record.stop_reason = Some(StopReason::Cancelled);
        j.record.finished_unix = Some(now_unix());
        j.publish(JobEvent::End(j.view()));
        Cancel::Done(j.view())
    }

    /// Ask every active run to stop after its current iteration (shutdown).
    pub fn suspend_all(&self) {
        for j in self.lock().jobs.values().filter(|j| j.active) {
            j.control.suspend();
        }
    }

    /// Ids of runs in a terminal state.
    pub fn ended_ids(&self) -> Vec<String> {
        self.lock()
            .jobs
            .values()
            .filter(|j| j.record.state.is_terminal())
            .map(|j| j.record.id.clone())
            .collect()
    }
}

/// The trace id of the current span: progress events are emitted inside the
/// iteration's root span, so this is the iteration's trace. `None` when no span is
/// exported (no OTLP layer installed).
fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

fn write_record(dir: &Path, r: &RunRecord) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{}.json.tmp", r.id));
    let dst = dir.join(format!("{}.json", r.id));
    let bytes = serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &dst)?;
    // The rename itself must survive a crash too.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
