//! What a run tells the outside while it goes ([`ProgressEvent`]), and what the outside
//! can ask of it ([`RunControl`]): the loop's only two channels besides its result.

use std::sync::Arc;

use protocol::{ActorTimings, IterationRecord, RunId, RunState, StopReason};

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
}
