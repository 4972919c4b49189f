//! The error every actor replies with, and what a caller may do about it.
//!
//! Errors are values at every actor boundary (a handler that returned `Err` would kill
//! its actor); the Supervisor ends a run on the first one, and [`ActorError::is_retryable`]
//! tells the daemon whether running the same run again may succeed (a planner service
//! that answered 429 or timed out) or not (a corrupt store, a model that does not load).

/// Why an actor could not do what it was asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActorError {
    /// The checkpoint database refused a read or write.
    #[error("{0}")]
    Store(String),
    /// The planner backend produced no usable plan (after its own retries and fallback).
    #[error("planner ({backend}): {source}")]
    Planner {
        backend: String,
        #[source]
        source: llm::LlmError,
    },
    /// Model or tensor work failed (forward, statistics, weights).
    #[error("{0}")]
    Model(String),
    /// A pruning kernel refused its input (shapes, masks, NaN scores).
    #[error("{0}")]
    Kernel(String),
    /// Set-up of the run's inputs failed (texts, tokenizer, probe questions, device).
    #[error("{0}")]
    Setup(String),
    /// A child stopped while answering and could not be restarted (or is not
    /// restartable: the Executor and the Checkpointer hold state).
    #[error("the {0} actor stopped while answering")]
    Stopped(&'static str),
    /// A child could not be started again after a failure.
    #[error("restarting {child}: {reason}")]
    Restart { child: &'static str, reason: String },
    /// A commit named a candidate the Executor does not hold.
    #[error("commit: no pending candidate {0}")]
    UnknownCandidate(u32),
}

impl ActorError {
    /// Whether the same run may succeed when tried again later: only failures of an
    /// outside service (the planner's transport or a malformed answer) qualify.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Planner {
                source: llm::LlmError::Backend { .. } | llm::LlmError::InvalidAnswer { .. },
                ..
            }
        )
    }

    /// The kind stored with a failed run's summary.
    pub fn kind(&self) -> FailureKind {
        if self.is_retryable() {
            FailureKind::Retryable
        } else {
            FailureKind::Fatal
        }
    }
}

impl From<crate::store::StoreError> for ActorError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Store(e.to_string())
    }
}

impl From<kernels::KernelError> for ActorError {
    fn from(e: kernels::KernelError) -> Self {
        Self::Kernel(e.to_string())
    }
}

/// Model and tensor errors carry context (the layer, the phase) as text.
pub fn model_err(context: &str) -> impl Fn(&dyn std::fmt::Display) -> ActorError + '_ {
    move |e| ActorError::Model(format!("{context}: {e}"))
}

/// Whether a failed run may succeed when run again (see [`ActorError::is_retryable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Retryable,
    Fatal,
}

pub type Result<T, E = ActorError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outside_service_failures_are_retryable() {
        let backend = |source| ActorError::Planner {
            backend: "openai".into(),
            source,
        };
        let busy = backend(llm::LlmError::Backend {
            backend: "openai".into(),
            message: "HTTP 429".into(),
        });
        assert!(busy.is_retryable());
        assert_eq!(busy.kind(), FailureKind::Retryable);
        assert!(!backend(llm::LlmError::InvalidRequest("k = 0".into())).is_retryable());
        assert!(!ActorError::Store("corrupt record".into()).is_retryable());
        assert_eq!(ActorError::Model("nan".into()).kind(), FailureKind::Fatal);
        assert_eq!(
            ActorError::Stopped("executor").to_string(),
            "the executor actor stopped while answering"
        );
    }
}
