//! Errors of planner/critic backends. The Planner actor turns them into a reply (or a
//! fallback backend call), never into a crash.

/// Why a backend produced no plan.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// The request itself is unusable (no layers, NaN statistics, k = 0, …).
    #[error("invalid plan request: {0}")]
    InvalidRequest(String),
    /// The backend answered, but not with a usable plan (after any repair round).
    #[error("{backend}: answer is not a valid plan: {reason}")]
    InvalidAnswer { backend: String, reason: String },
    /// Transport or service failure after the configured retries.
    #[error("{backend}: {message}")]
    Backend { backend: String, message: String },
}

pub type Result<T, E = LlmError> = std::result::Result<T, E>;
