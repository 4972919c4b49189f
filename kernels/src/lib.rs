//! Numeric pruning kernels on candle tensors (DESIGN.md §2, paper §3.2).
//!
//! - [`wanda_scores`] `S = |W| ⊙ sqrt(Σx²)`, [`magnitude_scores`] `|W|`;
//! - [`wanda_prune_rows`]: Wanda scores and per-row pruning fused, without the score matrix;
//! - incremental pruning to a target sparsity, per row ([`prune_rows_incremental`],
//!   [`magnitude_mask_per_row`]) or per layer ([`prune_layer_incremental`],
//!   [`magnitude_mask_per_layer`]); N:M masks ([`nm_mask`]);
//! - layer statistics: [`percentile`], [`layer_sensitivity`], [`gradient_importance`],
//!   [`z_scores`];
//! - [`Mask`] bitsets (**1 = kept, 0 = pruned**) and [`MaskDelta`]s with a checked byte form.
//!
//! Weights are `[d_out, d_in]` like a torch `Linear`; scores are f32. The pruning order and
//! tie rule (lowest score first, then lowest column index) are in [`prune`]'s docs.
//!
//! Devices: every function takes CPU tensors. [`wanda_scores`], [`prune_rows_incremental`],
//! [`wanda_prune_rows`] and [`nm_mask`] run on CUDA tensors with the `cuda` feature; without
//! it they (like every other function given a CUDA tensor) return
//! [`KernelError::CudaNotCompiled`]. With the feature, the other functions copy CUDA inputs to
//! the host. The API is the same either way.
//!
//! Building with CUDA: `cargo check -p kernels --features cuda` needs nvcc on `PATH` (candle's
//! own kernels are compiled at build time); the PyPI wheels `nvidia-cuda-nvcc`,
//! `nvidia-cuda-runtime`, `nvidia-cuda-cccl`, `nvidia-cuda-crt`, `nvidia-nvvm` (13.0) provide it
//! with `CUDA_HOME=<target>/nvidia/cu13` and `PATH=$CUDA_HOME/bin:$PATH`. This crate's kernels
//! (`src/cuda/prune.cu`) are compiled at run time by NVRTC, so running needs only the driver
//! and libnvrtc. `cargo test -p kernels --features cuda` compares them with the CPU kernels on
//! the first CUDA device.
//!
//! Each kernel has a naive counterpart in [`reference`] that the tests compare it with.

mod delta;
mod device;
mod error;
mod mask;
pub mod obs;
pub mod prune;
pub mod reference;
mod select;
mod stats;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_stub.rs"]
mod cuda;

pub use delta::MaskDelta;
pub use error::{KernelError, Result};
pub use mask::Mask;
pub use obs::{
    hessian_factor, obs_prune, obs_prune_weighted, obs_saliency, obs_saliency_weighted,
    output_error, InverseHessian, Selection, DEFAULT_BLOCK,
};
pub use prune::{
    magnitude_mask_per_layer, magnitude_mask_per_row, magnitude_scores, nm_mask,
    prune_layer_incremental, prune_rows_incremental, wanda_prune_rows, wanda_scores,
};
pub use stats::{
    gradient_importance, layer_sensitivity, percentile, z_scores, SENSITIVITY_PERCENTILE, Z_EPSILON,
};
