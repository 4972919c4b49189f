//! Which implementation a tensor's device gets, and zero-copy access to CPU tensor data.

use candle_core::{DType, Device, Storage, Tensor};

use crate::{KernelError, Result};

/// The implementation a tensor's device is served by.
pub(crate) enum Backend {
    Cpu,
    Cuda,
}

/// The backend of `t`, checking that every other tensor in `others` is on the same device.
pub(crate) fn backend(t: &Tensor, others: &[&Tensor]) -> Result<Backend> {
    if let Some(o) = others.iter().find(|o| !o.device().same_device(t.device())) {
        return Err(KernelError::Shape(format!(
            "tensors on different devices: {:?} and {:?}",
            t.device().location(),
            o.device().location()
        )));
    }
    match t.device() {
        Device::Cpu => Ok(Backend::Cpu),
        Device::Cuda(_) => Ok(Backend::Cuda),
        d => Err(KernelError::UnsupportedDevice(format!(
            "{:?}",
            d.location()
        ))),
    }
}

/// Runs `f` on the contiguous row-major f32 data of `t` without copying when `t` is a
/// contiguous f32 CPU tensor (other dtypes are converted first). Tensors on a CUDA device are
/// copied to the host when this build has CUDA, and refused with
/// [`KernelError::CudaNotCompiled`] otherwise.
pub(crate) fn with_host_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = match backend(t, &[])? {
        Backend::Cpu => t.clone(),
        Backend::Cuda if cfg!(feature = "cuda") => t.to_device(&Device::Cpu)?,
        Backend::Cuda => return Err(KernelError::CudaNotCompiled),
    };
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(KernelError::UnsupportedDevice(
            "expected CPU storage".into(),
        ));
    };
    let (start, end) = layout
        .contiguous_offsets()
        .expect("contiguous() gives contiguous offsets");
    f(&cpu.as_slice::<f32>()?[start..end])
}

/// `(rows, cols)` of a non-empty rank-2 tensor whose columns fit the 32-bit column index used
/// by the selection kernels.
pub(crate) fn matrix_dims(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    let dims = t.dims();
    match *dims {
        [rows, cols] if rows > 0 && cols > 0 && u32::try_from(cols).is_ok() => Ok((rows, cols)),
        _ => Err(KernelError::Shape(format!(
            "{what} must be a non-empty [rows, cols] matrix with cols < 2^32, got {dims:?}"
        ))),
    }
}

/// A zeroed host buffer of `n` f32 for a kernel's output, advised to the kernel as
/// transparent huge pages (Linux).
///
/// Why: an output of a weight's size (180 MB for 4096 x 11008) is a fresh mmap of the
/// allocator on every call, and its first writes fault it in 4 KiB at a time: ~44,000 page
/// faults, which were most of [`crate::wanda_scores`]' time on the CPU. Advised, the region
/// faults in 2 MiB at a time where the system's THP setting is `madvise` or `always`.
/// It is only advice: elsewhere, or with THP off, the buffer is the same.
pub(crate) fn output_f32(n: usize) -> Vec<f32> {
    // alloc_zeroed: for a large buffer, fresh pages that nothing has touched yet.
    let mut v = vec![0f32; n];
    advise_huge_pages(&mut v);
    v
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(v: &mut [f32]) {
    const HUGE: usize = 2 << 20;
    let start = v.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(v);
    let (lo, hi) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
    if hi > lo {
        // SAFETY: whole pages inside `v`'s allocation; MADV_HUGEPAGE changes no contents and
        // its result (advice taken or not) does not matter.
        unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: &mut [f32]) {}
