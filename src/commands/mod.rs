//! One module per subcommand; `common` holds the model-loading steps they share.

pub mod bench;
pub mod common;
pub mod compare;
pub mod compare_agent;
pub mod daemon;
pub mod eval;
pub mod export;
pub mod fetch;
pub mod generate;
pub mod inspect;
pub mod prune;
pub mod runs;
