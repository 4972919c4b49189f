//! CUDA implementations (feature `cuda`) of the score, per-row selection and N:M kernels.
//! The sources in `prune.cu` are compiled once per process with NVRTC and loaded through
//! candle's device, so they run on the tensors' own stream. Results equal the CPU kernels'.
//! Arguments are already checked by the callers in `prune.rs`.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, DType, Device, Storage, Tensor};
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};

use crate::{KernelError, Mask, Result};

const SOURCE: &str = include_str!("prune.cu");
const MODULE: &str = "secateur_kernels_prune";
const THREADS: u32 = 256;

/// The PTX of `prune.cu`, compiled on first use.
fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let ptx = PTX.get_or_init(|| {
        cudarc::nvrtc::compile_ptx(SOURCE)
            .map(|p| p.to_src())
            .map_err(|e| format!("{e:?}"))
    });
    ptx.as_deref()
        .map_err(|e| cuda_error(format!("NVRTC compile of prune.cu: {e}")))
}

fn cuda_error(msg: String) -> KernelError {
    KernelError::Candle(candle_core::Error::Msg(msg))
}

/// Runs `f` on the f32 device data of a CUDA tensor (converted to contiguous f32 first).
fn with_view<R>(
    t: &Tensor,
    f: impl FnOnce(&CudaDevice, CudaView<'_, f32>) -> Result<R>,
) -> Result<R> {
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cuda) = &*storage else {
        return Err(KernelError::UnsupportedDevice(
            "expected a CUDA tensor".into(),
        ));
    };
    let (start, end) = layout
        .contiguous_offsets()
        .expect("contiguous() gives contiguous offsets");
    f(
        cuda.device(),
        cuda.as_cuda_slice::<f32>()?.slice(start..end),
    )
}

fn grid_for(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn check_nan(dev: &CudaDevice, flag: &CudaSlice<i32>) -> Result<()> {
    if dev.clone_dtoh(flag)?[0] != 0 {
        return Err(KernelError::NaN("scores"));
    }
    Ok(())
}

pub(crate) fn wanda_scores(w: &Tensor, sq_norms: &Tensor) -> Result<Tensor> {
    let sq_host = sq_norms
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec1::<f32>()?;
    if sq_host.iter().any(|v| v.is_nan() || *v < 0.0) {
        return Err(KernelError::Argument(
            "sq_norms has a negative or NaN entry".into(),
        ));
    }
    let (rows, cols) = w.dims2()?;
    let out = with_view(w, |dev, w| {
        with_view(sq_norms, |_, sq| {
            let func = dev.get_or_load_custom_func("wanda_scores", MODULE, ptx()?)?;
            let mut out = dev.alloc_zeros::<f32>(rows * cols)?;
            let (r, c) = (rows as u64, cols as u64);
            let mut b = func.builder();
            b.arg(&w).arg(&sq).arg(&mut out).arg(&r).arg(&c);
            // SAFETY: argument types and counts match `wanda_scores` in prune.cu; buffers hold
            // rows * cols (w, out) and cols (sq) f32.
            unsafe { b.launch(grid_for(rows * cols)) }.map_err(|e| cuda_error(e.to_string()))?;
            Ok(candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()))
        })
    })?;
    Ok(Tensor::from_storage(
        Storage::Cuda(out),
        (rows, cols),
        BackpropOp::none(),
        false,
    ))
}

pub(crate) fn prune_rows(scores: &Tensor, mask: &Mask, per_row: usize) -> Result<Mask> {
    let (rows, cols) = (mask.rows(), mask.cols());
    let words = with_view(scores, |dev, s| {
        let func = dev.get_or_load_custom_func("prune_rows", MODULE, ptx()?)?;
        let input = dev.clone_htod(mask.words())?;
        let mut out = dev.alloc_zeros::<u64>(mask.words().len())?;
        let mut nan = dev.alloc_zeros::<i32>(1)?;
        let grid = u32::try_from(rows).map_err(|_| cuda_error(format!("{rows} rows")))?;
        let (c, target) = (cols as u64, per_row as u64);
        let mut b = func.builder();
        b.arg(&s)
            .arg(&input)
            .arg(&mut out)
            .arg(&c)
            .arg(&target)
            .arg(&mut nan);
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument types match `prune_rows` in prune.cu; one block per row, s holds
        // rows * cols f32, input and out rows * words_per_row u64, THREADS <= MAX_THREADS.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_error(e.to_string()))?;
        check_nan(dev, &nan)?;
        Ok(dev.clone_dtoh(&out)?)
    })?;
    Mask::from_words(rows, cols, words)
}

pub(crate) fn nm_mask(scores: &Tensor, n: usize, m: usize) -> Result<Mask> {
    let (rows, cols) = scores.dims2()?;
    let n_words = rows * cols.div_ceil(64);
    let words = with_view(scores, |dev, s| {
        let func = dev.get_or_load_custom_func("nm_mask", MODULE, ptx()?)?;
        let mut out = dev.alloc_zeros::<u64>(n_words)?;
        let mut nan = dev.alloc_zeros::<i32>(1)?;
        let (r, c, n, m) = (rows as u64, cols as u64, n as u32, m as u32);
        let mut b = func.builder();
        b.arg(&s)
            .arg(&mut out)
            .arg(&r)
            .arg(&c)
            .arg(&n)
            .arg(&m)
            .arg(&mut nan);
        // SAFETY: argument types match `nm_mask` in prune.cu; out holds one u64 per mask word.
        unsafe { b.launch(grid_for(n_words)) }.map_err(|e| cuda_error(e.to_string()))?;
        check_nan(dev, &nan)?;
        Ok(dev.clone_dtoh(&out)?)
    })?;
    Mask::from_words(rows, cols, words)
}
