//! The per-layer gradient means the pruning loop uses equal the kernels' reduction of
//! the per-weight gradients (mean |∂L/∂W| over kept weights), with no masks, with
//! in-place pruning (a fully pruned layer included), and with a non-destructive mask
//! on top of in-place pruning.

use candle_core::Device;
use kernels::Mask;
use model::testing::{random_weights, tiny_config};
use model::{Architecture, Model};

const SAMPLES: [&[u32]; 2] = [&[3, 17, 42, 8, 8, 61, 25, 0, 33], &[9, 9, 1, 40, 2, 7]];

fn model() -> Model {
    let cfg = tiny_config(Architecture::Llama);
    let w = random_weights(&cfg, 60, &Device::Cpu).unwrap();
    Model::new(&cfg, &w, &Device::Cpu).unwrap()
}

/// Bits keeping weights ≥ `threshold` of layer `name`.
fn keep_above(m: &Model, name: &str, threshold: f64) -> Mask {
    Mask::from_tensor(&m.layer_weight(name).unwrap().ge(threshold).unwrap()).unwrap()
}

/// The kept weights of a layer: in-place bits AND the non-destructive mask.
fn kept(m: &Model, name: &str) -> Mask {
    let info = m
        .prunable_layers()
        .into_iter()
        .find(|l| l.name == name)
        .unwrap();
    let mut keep = Mask::ones(info.out_features, info.in_features);
    if let Some(p) = m.pruned_mask(name).unwrap() {
        keep = (*p).clone();
    }
    if let Some(t) = m.layer_mask(name).unwrap() {
        let nd = Mask::from_tensor(&t).unwrap();
        let words = keep
            .words()
            .iter()
            .zip(nd.words())
            .map(|(a, b)| a & b)
            .collect();
        keep = Mask::from_words(keep.rows(), keep.cols(), words).unwrap();
    }
    keep
}

/// Lean means against `kernels::gradient_importance` of the full per-weight means;
/// returns the lean means in model order (0 for a layer without an entry).
fn check(m: &Model, what: &str) -> Vec<f64> {
    let samples: Vec<Vec<u32>> = SAMPLES.iter().map(|s| s.to_vec()).collect();
    let full = m.gradient_importance(&samples).unwrap();
    let lean = m.gradient_importance_means(&samples).unwrap();
    let mut out = Vec::new();
    for layer in m.prunable_layers() {
        let n = &layer.name;
        let keep = kept(m, n);
        if keep.count_kept() == 0 {
            assert!(!lean.contains_key(n), "{what}: {n} has no kept weight");
            out.push(0.0);
            continue;
        }
        let want = kernels::gradient_importance(&full[n].mean_abs, &keep).unwrap();
        let got = lean[n];
        // Exactly 0 only where a fully pruned up_proj cuts the path (its gate is
        // multiplied by zero, its down_proj sees a zero input); relative elsewhere.
        assert!(
            (got - want).abs() <= 1e-6 * want || got == want,
            "{what}: {n}: lean {got:e} vs full {want:e}"
        );
        out.push(got);
    }
    assert!(
        out.iter().filter(|v| **v > 0.0).count() >= out.len() - 3,
        "{what}: {out:?}"
    );
    out
}

#[test]
fn lean_means_equal_the_reduced_full_gradients() {
    let m = model();
    let dense = check(&m, "no masks");
    assert_eq!(dense.len(), 14);

    let half = "model.layers.0.mlp.gate_proj";
    let most = "model.layers.1.self_attn.v_proj";
    let all = "model.layers.1.mlp.up_proj";
    m.prune_in_place(half, &keep_above(&m, half, 0.0)).unwrap();
    m.prune_in_place(most, &keep_above(&m, most, 0.3)).unwrap();
    let info = &m.prunable_layers()[12];
    assert_eq!(info.name, all);
    m.prune_in_place(all, &Mask::zeros(info.out_features, info.in_features))
        .unwrap();
    let in_place = check(&m, "in place");
    // No kept weight in up_proj (no entry); gate_proj and down_proj of that block
    // then have exactly zero gradients.
    assert_eq!(&in_place[11..], &[0.0, 0.0, 0.0]);
    // Pruning changed the gradients of the layers below the pruned ones too.
    assert!((in_place[0] - dense[0]).abs() > 1e-6 * dense[0]);

    // Non-destructive masks on top: on a layer pruned in place (the two combine by
    // AND) and on a dense one.
    for (name, bound) in [(half, 0.2), ("model.layers.0.self_attn.k_proj", 0.1)] {
        let nd = m.layer_weight(name).unwrap().le(bound).unwrap();
        m.set_mask(name, Some(&nd)).unwrap();
    }
    let both = check(&m, "in place and non-destructive");
    assert!((both[4] - in_place[4]).abs() > 1e-6 * in_place[4]);
}
