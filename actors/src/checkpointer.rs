//! The Checkpointer actor: the run's durable memory in sled ([`crate::store`]). It
//! stores the run (config, baseline), the state machine, every finished iteration (plan,
//! verdicts, outcome, prompts and responses) and each committed iteration's mask delta
//! — never weight copies — and the knowledge probe's points. Each iteration is one
//! transaction + flush.
//!
//! Write errors are replied, not raised: the Supervisor then stops the run as `failed`
//! with the reason (the database may be unusable, so nothing more is attempted).

use std::path::PathBuf;
use std::time::Instant;

use protocol::{LayerDelta, ProbePoint, RunMeta, RunStatus, StoredIteration};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::error::ActorError;
use crate::faults::Faults;
use crate::store::{LoadedRun, Store, StoreError};
use crate::util::blocking;

/// Immutable setup: where the database lives.
pub struct Checkpointer {
    pub dir: PathBuf,
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
    /// Store a finished iteration with its deltas (empty on rollback) and the new
    /// status atomically. Replies with the milliseconds spent.
    Commit {
        stored: Box<StoredIteration>,
        deltas: Vec<LayerDelta>,
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
                let out =
                    blocking(move || store.commit_iteration(&run, &stored, &deltas, &status)).await;
                let _ = reply.send(
                    out.map(|()| start.elapsed().as_millis() as u64)
                        .map_err(ActorError::from),
                );
            }
        }
        Ok(())
    }
}
