//! The target LLM: loading (GGUF, HF safetensors), tokenizer and chat template,
//! a forward pass whose prunable linears collect Wanda statistics and take masks,
//! gradient importance through candle's backprop, generation and perplexity.
//!
//! This crate knows nothing of actors, async runtimes, storage or HTTP.

pub mod arch;
pub mod error;
pub mod load;

pub use arch::{Architecture, ModelConfig};
pub use error::{ModelError, Result};
pub use load::{load_checkpoint, Checkpoint, SourceFormat};
