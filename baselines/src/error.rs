//! The error type of the baselines.

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, BaselineError>;

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// Invalid method, sparsity or option.
    #[error("invalid argument: {0}")]
    Argument(String),
    /// A numerical failure (e.g. a Hessian that is not positive definite even after
    /// dampening).
    #[error("numerics: {0}")]
    Numerics(String),
    #[error(transparent)]
    Kernel(#[from] kernels::KernelError),
    #[error(transparent)]
    Model(#[from] model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
