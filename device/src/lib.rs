//! The configured device (`model.device`, `--device`) resolved once to a candle
//! [`Device`], and the weight dtype that goes with it.
//!
//! A crate of its own: `model` knows nothing of `config`, and the `secateur` commands
//! that build a model outside a run (eval, bench, generate, compare) call the same
//! [`resolve`] as the actors without pulling in the actor system.
//!
//! **CUDA and threads.** candle's `Device::new_cuda` issues every launch to CUDA's
//! per-thread default stream, so each host thread that runs tensor work gets a stream
//! of its own while all share the one device (and the weights on it). Work queued by
//! one thread is not ordered before another thread's: whoever writes device state that
//! another thread reads next (the loaded model, a commit's pruned weights) calls
//! [`settle`] before handing over.

use candle_core::{DType, Device};

/// What a build without the `cuda` feature says when CUDA is asked for.
pub const NOT_COMPILED: &str = "built without CUDA: rebuild with --features cuda (see README)";

/// The candle device for `want`: `cpu` the CPU; `cuda:N` that GPU, or an error (no
/// driver or device, or a build without CUDA: [`NOT_COMPILED`]); `auto` CUDA device 0
/// when this build has CUDA and the device opens, else the CPU.
pub fn resolve(want: config::Device) -> Result<Device, String> {
    match want {
        config::Device::Cpu => Ok(Device::Cpu),
        config::Device::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                return Err(NOT_COMPILED.to_string());
            }
            Device::new_cuda(n).map_err(|e| format!("{want}: cannot open the CUDA device: {e}"))
        }
        config::Device::Auto => Ok(if candle_core::utils::cuda_is_available() {
            Device::new_cuda(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
    }
}

/// The dtype the model's weights take on `device`: bf16 on a GPU (half the memory and
/// bandwidth, tensor-core matmuls), f32 on the CPU (candle's CPU bf16 matmul is slow,
/// and the CPU results of every earlier run are f32). Perplexities are scored in f32
/// either way (`model`'s NLL upcasts).
pub fn weight_dtype(device: &Device) -> DType {
    if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    }
}

/// `cpu` or `cuda:N`, for messages.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Waits until the work this thread queued on `device` is done (a no-op on the CPU):
/// called before another thread, on its own stream, reads what this one wrote.
pub fn settle(device: &Device) -> Result<(), String> {
    device
        .synchronize()
        .map_err(|e| format!("{}: synchronize: {e}", name(device)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_the_cpu_in_f32() {
        let d = resolve(config::Device::Cpu).unwrap();
        assert!(d.is_cpu());
        assert_eq!(weight_dtype(&d), DType::F32);
        assert_eq!(name(&d), "cpu");
        settle(&d).unwrap();
    }

    #[test]
    fn cuda_without_the_feature_is_a_clear_error_and_auto_falls_back() {
        if candle_core::utils::cuda_is_available() {
            // A CUDA build: what `cuda` gives depends on the machine's driver.
            return;
        }
        for want in [config::Device::Cuda(0), config::Device::Cuda(1)] {
            assert_eq!(resolve(want).unwrap_err(), NOT_COMPILED);
        }
        assert!(resolve(config::Device::Auto).unwrap().is_cpu());
    }
}
