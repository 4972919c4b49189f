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
    /// A shot split smaller than the shots each question takes; names the scored file
    /// and the flag that asked for the shots (`--shots`, `--qa-shots`).
    #[error("{path}: the {set} shot split has {have} questions, {flag} is {shots}")]
    ShotSplit {
        path: PathBuf,
        set: &'static str,
        have: usize,
        flag: &'static str,
        shots: usize,
    },
    /// Every question of a set went to its shot split (`MMLU`, `QA`): nothing would be
    /// scored, and an accuracy over no questions means nothing.
    #[error("{set}: no questions left to score after taking the shots")]
    NothingToScore { set: &'static str },
    /// A perplexity window shorter than two tokens scores no token (`--window`).
    #[error("--window {0}: must be at least 2 tokens")]
    Window(usize),
    /// Scoring one set of the suite (`MMLU`, `factual QA`) failed; the message starts
    /// with the set so a reader knows which evaluation broke.
    #[error("{set}: {source}")]
    Suite {
        set: &'static str,
        source: Box<EvalError>,
    },
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
