//! Helpers the actors share: running tensor work off the async executor, and the
//! test-only fault hooks.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

/// Run `f` on tokio's blocking pool (heavy tensor work never runs on the executor).
/// A panic inside `f` is re-raised in the calling actor, so the actor fails and its
/// supervisor sees it (and restarts it) exactly as if the handler itself had panicked.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            // Only happens when the runtime shuts down under us.
            Err(e) => std::panic::panic_any(format!("blocking task cancelled: {e}")),
        },
    }
}

/// Faults to inject, for tests of the supervision paths. Each fires at most once per
/// run (the flag is shared by restarted actors), so a restarted actor succeeds.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Panic in the Profiler while profiling this iteration.
    pub profiler_panic_at: Option<u32>,
    /// Panic in the Evaluator while scoring this iteration's candidates.
    pub evaluator_panic_at: Option<u32>,
    /// Make the Checkpointer's write of this iteration fail.
    pub checkpointer_fail_at: Option<u32>,
    /// Faults that fired so far, shared by restarted actors (leave it default).
    pub fired_set: Arc<Mutex<HashSet<&'static str>>>,
}

impl Faults {
    /// True (once) when fault `which` is set for `iteration`.
    pub fn fire(&self, which: &'static str, at: Option<u32>, iteration: u32) -> bool {
        at == Some(iteration)
            && self
                .fired_set
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(which)
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

/// Milliseconds since `t`.
pub fn ms(t: std::time::Instant) -> u64 {
    t.elapsed().as_millis() as u64
}
