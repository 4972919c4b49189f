//! The loop with `pruning.repair = "obs"` on the tiny fixture: the Executor's commits
//! change the kept weights (not only the masks), the checkpoint stores them, and a run
//! cut short by a failed write and resumed ends with bit-identical weights and masks.

use std::collections::HashMap;

use actors::faults::Faults;
use actors::testing::{fixture_config, write_fixture};
use actors::{run_pruning, RunOptions};
use candle_core::Device;
use protocol::{RunState, StopReason};

/// A block fit that lowers the fixture's block errors: its weights are small, so the
/// default step (sized for SmolLM2) would raise them and every block would keep its
/// OBS weights.
fn fixture_fit() -> config::ReconstructConfig {
    config::ReconstructConfig {
        epochs: 3,
        lr: 1e-5,
    }
}

fn opts(id: &str, resume: bool, faults: Faults) -> RunOptions {
    RunOptions {
        run_id: Some(id.to_string()),
        resume: resume.then(|| id.to_string()),
        faults,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repaired_weights_are_committed_stored_and_resumed_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), 11, 24, 48).unwrap();
    let runs = dir.path().join("runs");
    let mut cfg = fixture_config(&fx, &runs);
    cfg.pruning.target_sparsity = 0.3;
    cfg.pruning.repair = config::Repair::Obs;
    cfg.pruning.reconstruct = fixture_fit();

    let whole = run_pruning(cfg.clone(), opts("whole", false, Faults::default()))
        .await
        .unwrap();
    assert_eq!(whole.summary.stop_reason, StopReason::TargetReached);
    let committed = whole.folder.pruned_model().unwrap();
    assert!(
        committed.committed_iterations() >= 2,
        "needs several commits"
    );
    // Every committed layer has stored weights; each commit's checkpoint bytes count
    // them (a weight file per touched layer is far larger than its mask delta).
    let masks: HashMap<_, _> = committed.masks.iter().cloned().collect();
    let touched: Vec<_> = masks.iter().filter(|(_, m)| m.count_pruned() > 0).collect();
    assert!(!touched.is_empty());
    for (name, _) in &touched {
        assert!(
            committed.weights.contains_key(*name),
            "no weights for {name}"
        );
    }
    let stored = whole.folder.load().unwrap();
    for it in stored.iterations.iter().filter(|s| s.committed.is_some()) {
        assert!(
            it.weight_bytes > it.delta_bytes,
            "iteration {:?}",
            it.weight_bytes
        );
    }
    assert_eq!(
        whole.summary.delta_bytes.len(),
        committed.committed_iterations()
    );

    // The kept weights moved: the repair is not W ⊙ M of the dense weights.
    let ckpt = model::load_checkpoint(&fx.model_dir).unwrap();
    let mut moved = 0usize;
    for (name, mask) in &touched {
        let dense: Vec<f32> = ckpt.tensors[&format!("{name}.weight")]
            .to_device(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let repaired = &committed.weights[*name];
        let keep = mask.to_bools();
        for ((d, r), k) in dense.iter().zip(repaired).zip(&keep) {
            if *k {
                moved += usize::from(d != r);
            } else {
                assert_eq!(*r, 0.0, "{name}: a pruned weight is not zero");
            }
        }
    }
    assert!(moved > 0, "no kept weight was updated");

    // Cut at iteration 2 (its write fails: nothing of it is committed), then resumed.
    let cut = Faults {
        checkpointer_fail_at: Some(2),
        ..Default::default()
    };
    let failed = run_pruning(cfg.clone(), opts("cut", false, cut))
        .await
        .unwrap();
    assert_eq!(failed.summary.state, RunState::Failed);
    let resumed = run_pruning(cfg, opts("cut", true, Faults::default()))
        .await
        .unwrap();
    assert_eq!(resumed.summary.stop_reason, StopReason::TargetReached);
    assert_eq!(
        resumed.masks, whole.masks,
        "same masks as the uninterrupted run"
    );
    let again = resumed.folder.pruned_model().unwrap();
    assert_eq!(again.weights.len(), committed.weights.len());
    for (name, w) in &committed.weights {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&again.weights[name]),
            bits(w),
            "{name}: weights differ"
        );
    }
    assert_eq!(resumed.summary.final_ppl, whole.summary.final_ppl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_block_fit_changes_the_final_weights_not_the_masks() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), 11, 24, 48).unwrap();
    let mut cfg = fixture_config(&fx, &dir.path().join("runs"));
    cfg.pruning.target_sparsity = 0.3;
    cfg.pruning.repair = config::Repair::Obs;
    cfg.pruning.reconstruct.epochs = 0;
    let plain = run_pruning(cfg.clone(), opts("plain", false, Faults::default()))
        .await
        .unwrap();
    cfg.pruning.reconstruct = fixture_fit();
    let fitted = run_pruning(cfg, opts("fitted", false, Faults::default()))
        .await
        .unwrap();
    assert_eq!(plain.summary.stop_reason, StopReason::TargetReached);
    assert_eq!(fitted.summary.stop_reason, StopReason::TargetReached);
    assert_eq!(fitted.masks, plain.masks, "the fit only moves kept weights");
    let (p, f) = (
        plain.folder.pruned_model().unwrap(),
        fitted.folder.pruned_model().unwrap(),
    );
    let masks: HashMap<_, _> = f.masks.iter().cloned().collect();
    let mut moved = 0usize;
    for (name, w) in &f.weights {
        let keep = masks[name].to_bools();
        let before = p.weights.get(name);
        for (i, (x, k)) in w.iter().zip(&keep).enumerate() {
            if !k {
                assert_eq!(*x, 0.0, "{name}: a pruned weight is not zero");
            } else if before.is_some_and(|b| b[i] != *x) {
                moved += 1;
            }
        }
    }
    assert!(moved > 0, "the fit changed no weight");
    assert_ne!(fitted.summary.final_ppl, plain.summary.final_ppl);
}
