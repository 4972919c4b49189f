//! The one error type of this crate.

/// Everything a kernel can refuse. Bad arguments are errors, never panics.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A CUDA tensor was given but this build has no `cuda` feature.
    #[error("kernels was not compiled with CUDA (enable the `cuda` feature)")]
    CudaNotCompiled,
    /// A device these kernels have no implementation for (e.g. Metal).
    #[error("unsupported device: {0}")]
    UnsupportedDevice(String),
    /// Two arguments whose shapes must agree do not.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A sparsity outside [0, 1], or a target below the mask's current sparsity.
    #[error("invalid sparsity: {0}")]
    Sparsity(String),
    /// Invalid N:M pattern (needs 0 < N < M, and M dividing the column count).
    #[error("invalid N:M pattern {n}:{m}: {reason}")]
    NM { n: usize, m: usize, reason: String },
    /// A NaN among the scores or values.
    #[error("NaN in {0}")]
    NaN(&'static str),
    /// Any other argument out of range (percentile k, empty inputs, ...).
    #[error("invalid argument: {0}")]
    Argument(String),
    /// A mask or mask delta that does not fit what it is applied to or compared with.
    #[error("mask: {0}")]
    Mask(String),
    /// Serialised mask delta that cannot be read (bad magic, version, checksum, truncation).
    #[error("corrupt mask delta: {0}")]
    CorruptDelta(String),
    /// Error from candle itself.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with [`KernelError`].
pub type Result<T> = std::result::Result<T, KernelError>;
