//! The target LLM: loading (GGUF, HF safetensors), tokenizer and chat template,
//! a forward pass whose prunable linears collect Wanda statistics and take masks,
//! gradient importance through candle's backprop, generation and perplexity.
//!
//! This crate knows nothing of actors, async runtimes, storage or HTTP.

pub mod arch;
pub mod bench;
mod blockwise;
pub mod chat;
mod decoder;
pub mod error;
pub mod families;
mod generate;
mod grad;
mod linear;
pub mod load;
mod overlay;
mod perplexity;
mod reconstruct;
pub mod testing;
pub mod text;
mod transformer;

pub use arch::{Architecture, ModelConfig};
pub use blockwise::gram_source;
pub use chat::{ChatMessage, ChatTemplate};
pub use error::{ModelError, Result};
pub use grad::{GradImportance, GradientProfile};
pub use linear::{ActivationGram, ActivationStats, LayerInfo};
pub use load::{gguf_header, load_checkpoint, Checkpoint, GgufHeader, SourceFormat, TensorSummary};
pub use overlay::WeightOverlay;
pub use perplexity::{Perplexity, DEFAULT_PPL_WINDOW, FORWARD_BATCH};
pub use reconstruct::{BlockWeight, ReconstructOptions, ReconstructStats};
pub use transformer::Model;
