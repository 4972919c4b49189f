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
