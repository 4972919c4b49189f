//! Fault-injection points, for tests of the supervision and crash paths. Nothing here
//! changes a run unless a test (or the `SECATEUR_TEST_*` variables of [`Faults::from_env`])
//! sets it; every place in the loop that consults it names the fault.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

/// The environment variable a kill-and-resume test sets to widen the `evaluating` window.
pub const PAUSE_BEFORE_EVAL_ENV: &str = "SECATEUR_TEST_PAUSE_BEFORE_EVAL_MS";

/// Faults to inject. Each panic or failure fires at most once per run (the flag is
/// shared by restarted actors), so a restarted actor succeeds.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Panic in the Profiler while profiling this iteration.
    pub profiler_panic_at: Option<u32>,
    /// Panic in the Evaluator while scoring this iteration's candidates.
    pub evaluator_panic_at: Option<u32>,
    /// Make the Checkpointer's write of this iteration fail.
    pub checkpointer_fail_at: Option<u32>,
    /// Sleep this long after entering `evaluating`, so a test can kill the process
    /// reliably in the middle of an iteration. 0 = off.
    pub pause_before_eval_ms: u64,
    /// Faults that fired so far, shared by restarted actors (leave it default).
    pub fired_set: Arc<Mutex<HashSet<&'static str>>>,
}

impl Faults {
    /// The faults the `secateur` binary's end-to-end tests set through the
    /// environment ([`PAUSE_BEFORE_EVAL_ENV`]); none in normal use.
    pub fn from_env() -> Self {
        Self {
            pause_before_eval_ms: std::env::var(PAUSE_BEFORE_EVAL_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            ..Self::default()
        }
    }

    /// True (once) when fault `which` is set for `iteration`.
    pub fn fire(&self, which: &'static str, at: Option<u32>, iteration: u32) -> bool {
        at == Some(iteration)
            && self
                .fired_set
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(which)
    }

    /// The injected pause before an evaluation, if any.
    pub async fn pause_before_eval(&self) {
        if self.pause_before_eval_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(self.pause_before_eval_ms)).await;
        }
    }

    /// Names of the faults that fired so far.
    pub fn fired(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self
            .fired_set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }
}
