//! CUDA kernels against the CPU kernels, on the first CUDA device (feature `cuda`; skipped with
//! a printed reason when no device can be opened). Results must be identical, bit for bit.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{Device, Tensor};
use common::*;
use kernels::{KernelError, Mask};
use rand::Rng;

fn cuda() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipping CUDA test: no CUDA device ({e})");
            None
        }
    }
}

#[test]
fn cuda_kernels_equal_cpu_kernels() {
    let Some(dev) = cuda() else { return };
    let mut rng = rng(31);
    for (rows, cols) in [
        (1, 1),
        (3, 7),
        (5, 64),
        (4, 65),
        (17, 130),
        (9, 1000),
        (64, 11008),
    ] {
        for kind in ALL_SCORES {
            let w = scores(kind, rows, cols, &mut rng);
            let sq: Vec<f32> = (0..cols).map(|_| rng.random_range(0.0..10.0)).collect();
            let sq = Tensor::new(sq, &Device::Cpu).unwrap();
            let (wg, sqg) = (w.to_device(&dev).unwrap(), sq.to_device(&dev).unwrap());
            let s = kernels::wanda_scores(&w, &sq).unwrap();
            let sg = kernels::wanda_scores(&wg, &sqg).unwrap();
            assert!(sg.device().is_cuda());
            let sg_host = sg.to_device(&Device::Cpu).unwrap();
            assert_eq!(
                sg_host.to_vec2::<f32>().unwrap(),
                s.to_vec2::<f32>().unwrap()
            );

            let partial = random_mask(rows, cols, 0.3, &mut rng);
            for (mask, rho) in [
                (Mask::ones(rows, cols), 0.0),
                (Mask::ones(rows, cols), 0.5),
                (partial.clone(), (partial.sparsity() + 0.05).min(1.0)),
                (partial, 1.0),
            ] {
                // Raw w as scores too: negative values and -0.0 exercise the key order.
                for scores in [(&s, &sg), (&w, &wg)] {
                    let cpu = kernels::prune_rows_incremental(scores.0, &mask, rho).unwrap();
                    let gpu = kernels::prune_rows_incremental(scores.1, &mask, rho).unwrap();
                    assert_eq!(gpu, cpu, "{kind:?} {rows}x{cols} rho {rho}");
                }
                // The fused kernel: on CUDA the two kernels composed, on the CPU the fused
                // host path; both equal to scores then selection.
                let cpu = kernels::wanda_prune_rows(&w, &sq, &mask, rho).unwrap();
                let gpu = kernels::wanda_prune_rows(&wg, &sqg, &mask, rho).unwrap();
                assert_eq!(
                    gpu, cpu,
                    "wanda_prune_rows {kind:?} {rows}x{cols} rho {rho}"
                );
                assert_eq!(
                    cpu,
                    kernels::prune_rows_incremental(&s, &mask, rho).unwrap()
                );
            }
            for (n, m) in [(2, 4), (4, 8), (1, 1 + cols % 2)] {
                if n < m && cols % m == 0 {
                    assert_eq!(
                        kernels::nm_mask(&wg, n, m).unwrap(),
                        kernels::nm_mask(&w, n, m).unwrap()
                    );
                }
            }
            // Functions without a CUDA kernel copy to the host.
            let ones = Mask::ones(rows, cols);
            assert_eq!(
                kernels::layer_sensitivity(&sg, &ones, 10.0).unwrap(),
                kernels::layer_sensitivity(&s, &ones, 10.0).unwrap()
            );
        }
    }
    let nan = tensor(1, 4, vec![1., f32::NAN, 2., 3.])
        .to_device(&dev)
        .unwrap();
    let err = kernels::prune_rows_incremental(&nan, &Mask::ones(1, 4), 0.5).unwrap_err();
    assert!(matches!(err, KernelError::NaN(_)));
    let sq = Tensor::new(&[1f32; 4], &Device::Cpu)
        .unwrap()
        .to_device(&dev)
        .unwrap();
    let err = kernels::wanda_prune_rows(&nan, &sq, &Mask::ones(1, 4), 0.5).unwrap_err();
    assert!(matches!(err, KernelError::NaN(_)));
    assert!(matches!(
        kernels::nm_mask(&nan, 2, 4),
        Err(KernelError::NaN(_))
    ));
}
