//! Sequential calibration on a tiny model: block 0 sees the dense inputs (so its
//! masks equal the one-shot ones), block 1 sees the outputs of the pruned block 0
//! (checked against statistics recomputed by hand through an overlay), and
//! SparseGPT's updated weights reconstruct a layer's output better than its mask alone.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use kernels::Mask;
use model::testing::{random_weights, tiny_config};
use model::{Architecture, Model, WeightOverlay};

use baselines::{prune, Pruned};

fn tiny_model() -> Model {
    let cfg = tiny_config(Architecture::Llama);
    Model::new(
        &cfg,
        &random_weights(&cfg, 9, &Device::Cpu).unwrap(),
        &Device::Cpu,
    )
    .unwrap()
}

/// Four windows of 32 tokens: one batch of the sequential driver.
fn windows() -> Vec<Vec<u32>> {
    (0..4u32)
        .map(|w| (0..32).map(|i| (i * 7 + w * 13 + i * i % 5) % 64).collect())
        .collect()
}

fn batch(windows: &[Vec<u32>]) -> Tensor {
    let flat: Vec<u32> = windows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (windows.len(), windows[0].len()), &Device::Cpu).unwrap()
}

/// The overlay of `p`'s layers in blocks `0..upto`.
fn prefix_overlay(m: &Model, p: &Pruned, upto: usize) -> WeightOverlay {
    let in_prefix = |name: &str| (0..upto).any(|b| name.starts_with(&format!("model.layers.{b}.")));
    let part = Pruned {
        masks: p
            .masks
            .iter()
            .filter(|(k, _)| in_prefix(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        weights: p
            .weights
            .iter()
            .filter(|(k, _)| in_prefix(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    part.overlay(m).unwrap()
}

#[test]
fn sequential_wanda_differs_from_oneshot_only_after_block_0() {
    let m = tiny_model();
    let cal = windows();
    let seq = prune(&m, &"wanda".parse().unwrap(), 0.5, &cal).unwrap();
    let one = prune(&m, &"wanda-oneshot".parse().unwrap(), 0.5, &cal).unwrap();
    let mut differ = 0;
    for (name, mask) in &seq.masks {
        let same = one.masks[name].to_bools() == mask.to_bools();
        if name.starts_with("model.layers.0.") {
            assert!(same, "{name}: block 0 sees the dense inputs");
        } else if !same {
            differ += 1;
        }
    }
    assert!(differ >= 1, "block 1 sees the pruned block 0's outputs");

    // Block 1's masks are Wanda on statistics of the model with block 0 pruned (and
    // block 1 dense), recomputed here through a plain forward with an overlay.
    let overlay = prefix_overlay(&m, &seq, 1);
    m.set_stats_enabled(true);
    m.forward_with(&batch(&cal), Some(&overlay)).unwrap();
    let stats = m.take_stats();
    m.set_stats_enabled(false);
    for l in m.block_layers(1).unwrap() {
        let sq = stats[&l.name].sum_sq.to_dtype(DType::F32).unwrap();
        let scores = kernels::wanda_scores(&m.layer_weight(&l.name).unwrap(), &sq).unwrap();
        let ones = Mask::ones(l.out_features, l.in_features);
        let want = kernels::prune_rows_incremental(&scores, &ones, 0.5).unwrap();
        assert_eq!(want.to_bools(), seq.masks[&l.name].to_bools(), "{}", l.name);
    }
}

/// `tr((W − Ŵ) G (W − Ŵ)ᵀ)`: the squared output error of `Ŵ` on inputs with Gram `G`.
fn output_error(w: &Tensor, w_hat: &Tensor, gram: &Tensor) -> f64 {
    let d = (w.to_dtype(DType::F64).unwrap() - w_hat.to_dtype(DType::F64).unwrap()).unwrap();
    d.matmul(gram)
        .unwrap()
        .mul(&d)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn sequential_sparsegpt_updates_beat_masking_alone() {
    let m = tiny_model();
    let cal = windows();
    let p = prune(&m, &"sparsegpt".parse().unwrap(), 0.5, &cal).unwrap();
    assert!((p.sparsity() - 0.5).abs() < 1e-9);
    // Inputs each block's layers saw during calibration: earlier blocks pruned (with
    // their updates), the block itself dense.
    let mut ratios: HashMap<String, f64> = HashMap::new();
    for block in 0..m.num_blocks() {
        let overlay = prefix_overlay(&m, &p, block);
        let layers = m.block_layers(block).unwrap();
        for l in &layers {
            m.set_gram_enabled(&l.name, true).unwrap();
        }
        m.forward_with(&batch(&cal), Some(&overlay)).unwrap();
        for l in &layers {
            m.set_gram_enabled(&l.name, false).unwrap();
            let gram = m.take_gram(&l.name).unwrap().unwrap().gram;
            let w = m.layer_weight(&l.name).unwrap();
            let keep = p.masks[&l.name]
                .to_tensor(DType::F32, &Device::Cpu)
                .unwrap();
            let masked = (&w * &keep).unwrap();
            let updated = &p.weights[&l.name];
            // Pruned weights are exactly zero, kept ones moved.
            let zero_where_pruned = (updated * keep.affine(-1.0, 1.0).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(zero_where_pruned, 0.0, "{}", l.name);
            let e_update = output_error(&w, updated, &gram);
            let e_mask = output_error(&w, &masked, &gram);
            ratios.insert(l.name.clone(), e_update / e_mask);
        }
    }
    assert_eq!(ratios.len(), 14);
    for (name, r) in &ratios {
        assert!(*r < 0.9, "{name}: update/mask error ratio {r}");
    }
}
