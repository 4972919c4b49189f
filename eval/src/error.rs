//! The error type of the evaluation crate.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, EvalError>;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record (line, row, entry) that cannot be used; names the file and record.
    #[error("{path}: {reason}")]
    BadData { path: PathBuf, reason: String },
    /// Invalid arguments (e.g. more shots than the shot split holds).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Tokeniser failure.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Model(#[from] model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl EvalError {
    pub(crate) fn bad(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Self::BadData {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
