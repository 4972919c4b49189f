//! How long evaluations report progress. The suite and windowed perplexity take minutes
//! on a CPU, so the `secateur` binary shows terminal bars; this crate stays free of any
//! terminal library and only says how many steps a task has and when one is done.

/// Whoever shows progress: the binary's terminal bars, or [`NoProgress`].
pub trait Progress {
    /// A new task of `len` steps named `what` (`"wanda MMLU"`, `"dense perplexity"`).
    fn task(&self, len: u64, what: &str) -> Box<dyn Task>;
}

/// The steps of one task.
pub trait Task {
    /// `steps` more steps are done.
    fn advance(&self, steps: u64);
    /// The task completed (a terminal bar is cleared). A failed task is dropped
    /// without it, so a bar shows where the work stopped.
    fn finish(&self);
}

/// Progress that nobody watches: library callers and tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn task(&self, _len: u64, _what: &str) -> Box<dyn Task> {
        Box::new(NoProgress)
    }
}

impl Task for NoProgress {
    fn advance(&self, _steps: u64) {}
    fn finish(&self) {}
}
