//! The Checkpointer actor: the run's durable memory in sled ([`crate::store`]). It
//! stores the run (config, baseline), the state machine, every finished iteration (plan,
//! verdicts, outcome, prompts and responses) and each committed iteration's mask delta
//! and the knowledge probe's points. Each iteration is one transaction + flush. With
//! `pruning.repair = "obs"` a commit also stores the touched layers' repaired weights
//! as files beside the database ([`WeightFiles`]): written before the transaction,
//! superseded versions removed after it, so a kill at any point leaves the weights of
//! the last committed iteration readable.
//!
//! Write errors are replied, not raised: the Supervisor then stops the run as `failed`
//! with the reason (the database may be unusable, so nothing more is attempted).

use std::path::PathBuf;
use std::time::Instant;

use protocol::{LayerDelta, ProbePoint, RunMeta, RunStatus, StoredIteration};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::error::ActorError;
use crate::faults::Faults;
use crate::folder::{FolderError, WeightFiles};
use crate::repair::RepairedWeights;
use crate::store::{LoadedRun, Store, StoreError};
use crate::util::blocking;

/// Immutable setup: where the database lives.
pub struct Checkpointer {
    pub dir: PathBuf,
    pub weight_files: WeightFiles,
    pub run_id: String,
    pub faults: Faults,
}

/// Messages the Checkpointer answers. Every reply is an [`ActorError::Store`] on a
/// write failure.
pub enum CheckpointerMsg {
    /// Record a new run.
    Create {
        meta: Box<RunMeta>,
        status: RunStatus,
        reply: RpcReplyPort<Result<(), ActorError>>,
    },
    /// Move the state machine.
    SetStatus {
        status: RunStatus,
        reply: RpcReplyPort<Result<(), ActorError>>,
    },
    /// Store a finished iteration with its deltas (empty on rollback), the committed
    /// candidate's repaired weights when it has them, and the new status atomically.
    /// Replies with the milliseconds spent.
    Commit {
        stored: Box<StoredIteration>,
        deltas: Vec<LayerDelta>,
        repaired: Option<RepairedWeights>,
        status: RunStatus,
        reply: RpcReplyPort<Result<u64, ActorError>>,
    },
    /// Store the final model's knowledge-probe point (taken after the last iteration
    /// was committed, so it cannot join that iteration's transaction).
    SetFinalProbe {
        point: ProbePoint,
        reply: RpcReplyPort<Result<(), ActorError>>,
    },
}

/// Mutable state: the open database (shared with its blocking writes).
pub struct CheckpointerState {
    store: std::sync::Arc<Store>,
}

/// Read a stored run (used before the actors start, to resume). Opens and closes the
/// database, so call it before spawning the Checkpointer.
pub fn load_run(dir: &std::path::Path, run_id: &str) -> Result<LoadedRun, StoreError> {
    Store::open(dir)?.load_run(run_id)
}

impl Actor for Checkpointer {
    type Msg = CheckpointerMsg;
    type State = CheckpointerState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let dir = self.dir.clone();
        let store = blocking(move || Store::open(&dir)).await?;
        Ok(CheckpointerState {
            store: std::sync::Arc::new(store),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let store = state.store.clone();
        let run = self.run_id.clone();
        match msg {
            CheckpointerMsg::Create {
                meta,
                status,
                reply,
            } => {
                let out = blocking(move || store.create_run(&meta, &status)).await;
                let _ = reply.send(out.map_err(ActorError::from));
            }
            CheckpointerMsg::SetStatus { status, reply } => {
                let out = blocking(move || store.set_status(&run, &status)).await;
                let _ = reply.send(out.map_err(ActorError::from));
            }
            CheckpointerMsg::SetFinalProbe { point, reply } => {
                let out = blocking(move || store.set_final_probe(&run, &point)).await;
                let _ = reply.send(out.map_err(ActorError::from));
            }
            CheckpointerMsg::Commit {
                stored,
                deltas,
                repaired,
                status,
                reply,
            } => {
                let it = stored.record.outcome.iteration;
                if self
                    .faults
                    .fire("checkpointer", self.faults.checkpointer_fail_at, it)
                {
                    let _ = reply.send(Err(StoreError::Injected(it).into()));
                    return Ok(());
                }
                let start = Instant::now();
                let files = self.weight_files.clone();
                let out = blocking(move || {
                    let layers = match &repaired {
                        Some(r) => write_weights(&files, it, r)?,
                        None => Vec::new(),
                    };
                    store.commit_iteration(&run, &stored, &deltas, &status)?;
                    files.retire(it, &layers).map_err(weights_error)
                })
                .await;
                let _ = reply.send(
                    out.map(|()| start.elapsed().as_millis() as u64)
                        .map_err(ActorError::from),
                );
            }
        }
        Ok(())
    }
}

/// The repaired layers of iteration `it` as weight files (durable on return); their
/// names, for retiring the versions they supersede once the iteration is committed.
fn write_weights(
    files: &WeightFiles,
    it: u32,
    repaired: &RepairedWeights,
) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::with_capacity(repaired.masks.len());
    for (layer, mask) in &repaired.masks {
        let err = |reason: String| {
            StoreError::Weights(format!("{}: `{layer}`: {reason}", files.dir().display()))
        };
        let w = repaired
            .weights
            .get(layer)
            .ok_or_else(|| err("no repaired weight".into()))?;
        let values: Vec<f32> = w
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(|e| err(e.to_string()))?;
        files
            .write(it, layer, mask, &values)
            .map_err(weights_error)?;
        names.push(layer.clone());
    }
    Ok(names)
}

fn weights_error(e: FolderError) -> StoreError {
    StoreError::Weights(e.to_string())
}
