//! The whole loop on the tiny fixture model: target reached, sparsity counted on the
//! weights, reports consistent with the store.

use actors::testing::{fixture_config, write_fixture};
use actors::{run_pruning, RunOptions};
use protocol::{RunState, StopReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_loop_reaches_the_target_and_counts_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), 7, 24, 48).unwrap();
    let cfg = fixture_config(&fx, &dir.path().join("runs"));
    let out = run_pruning(
        cfg.clone(),
        RunOptions {
            run_id: Some("t1".into()),
            final_eval: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let s = &out.summary;
    assert_eq!(s.state, RunState::Finished, "{:?}", s.failure);
    assert_eq!(s.stop_reason, StopReason::TargetReached);
    assert!(
        (s.final_sparsity - 0.5).abs() <= 0.01,
        "{}",
        s.final_sparsity
    );
    assert_eq!(out.masks.len(), 14);
    // The reported sparsity is the count of zeros in the masked weights.
    let ck = model::load_checkpoint(&fx.model_dir).unwrap();
    let m = model::Model::new(&ck.config, &ck.tensors, &candle_core::Device::Cpu).unwrap();
    let (mut zeros, mut total) = (0usize, 0usize);
    for (info, d) in m.prunable_layers().iter().zip(&out.masks) {
        assert_eq!(info.name, d.layer);
        let mut mask = kernels::Mask::ones(info.out_features, info.in_features);
        kernels::MaskDelta::from_bytes(&d.bytes)
            .unwrap()
            .apply_to(&mut mask)
            .unwrap();
        let t = mask
            .to_tensor(candle_core::DType::U8, &candle_core::Device::Cpu)
            .unwrap();
        m.set_mask(&info.name, Some(&t)).unwrap();
        let w: Vec<f32> = m
            .effective_weight(&info.name)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        zeros += w.iter().filter(|v| **v == 0.0).count();
        total += w.len();
    }
    assert_eq!(zeros as f64 / total as f64, s.final_sparsity);
    assert_eq!(
        s.records.last().unwrap().outcome.sparsity_after,
        s.final_sparsity
    );
    let per_layer: f64 = s
        .layer_sparsity
        .iter()
        .map(|(_, sp, n)| sp * *n as f64)
        .sum();
    assert!((per_layer / total as f64 - s.final_sparsity).abs() < 1e-12);
    let fe = out.final_eval.as_ref().unwrap();
    assert!(fe.pruned_ppl > fe.dense_ppl, "{fe:?}");
    assert!(s.final_ppl > s.baseline_ppl);
}
