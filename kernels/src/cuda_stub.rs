//! Stand-in for `cuda/` when the `cuda` feature is off: the same functions, each returning
//! [`KernelError::CudaNotCompiled`], so that callers never need a `cfg` (as candle's
//! `dummy_cuda_backend.rs`).

use candle_core::Tensor;

use crate::{KernelError, Mask, Result};

pub(crate) fn wanda_scores(_w: &Tensor, _sq_norms: &Tensor) -> Result<Tensor> {
    Err(KernelError::CudaNotCompiled)
}

pub(crate) fn prune_rows(_scores: &Tensor, _mask: &Mask, _per_row: usize) -> Result<Mask> {
    Err(KernelError::CudaNotCompiled)
}

pub(crate) fn nm_mask(_scores: &Tensor, _n: usize, _m: usize) -> Result<Mask> {
    Err(KernelError::CudaNotCompiled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn every_cuda_entry_point_is_a_typed_error() {
        let t = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let sq = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let not_compiled = |e: KernelError| matches!(e, KernelError::CudaNotCompiled);
        assert!(not_compiled(wanda_scores(&t, &sq).unwrap_err()));
        assert!(not_compiled(
            prune_rows(&t, &Mask::ones(2, 4), 2).unwrap_err()
        ));
        assert!(not_compiled(nm_mask(&t, 2, 4).unwrap_err()));
    }
}
