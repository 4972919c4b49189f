//! In-place pruning and lazily masked overlays: pruning in place equals a model built
//! from `W ⊙ M`, is monotone, composes with non-destructive masks in the documented
//! order; mask overlays equal full-weight overlays, also concurrently.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use kernels::Mask;
use model::testing::{random_weights, tiny_config};
use model::{Architecture, Model, ModelError, WeightOverlay};

const LAYERS: [&str; 3] = [
    "model.layers.0.self_attn.k_proj",
    "model.layers.1.mlp.down_proj",
    "model.layers.0.mlp.gate_proj",
];

/// Deterministic bits (about `1 − 1/period` kept) for layer `name` of `m`.
fn bits(m: &Model, name: &str, salt: u64, period: u64) -> Mask {
    let info = m
        .prunable_layers()
        .into_iter()
        .find(|l| l.name == name)
        .unwrap();
    let kept: Vec<bool> = (0..(info.out_features * info.in_features) as u64)
        .map(|i| (i + salt).wrapping_mul(2_654_435_761) >> 7 & 0xff >= 256 / period)
        .collect();
    Mask::from_bools(info.out_features, info.in_features, &kept).unwrap()
}

/// Bits kept by both masks.
fn and(a: &Mask, b: &Mask) -> Mask {
    let words = a
        .words()
        .iter()
        .zip(b.words())
        .map(|(x, y)| x & y)
        .collect();
    Mask::from_words(a.rows(), a.cols(), words).unwrap()
}

fn tokens() -> Tensor {
    Tensor::new(
        &[[3u32, 14, 15, 9, 26, 5], [35, 8, 9, 7, 9, 32]],
        &Device::Cpu,
    )
    .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn setup(arch: Architecture) -> (HashMap<String, Tensor>, Model) {
    let cfg = tiny_config(arch);
    let w = random_weights(&cfg, 7, &Device::Cpu).unwrap();
    let m = Model::new(&cfg, &w, &Device::Cpu).unwrap();
    (w, m)
}

/// A model whose listed layers hold `W ⊙ M` from the start.
fn by_hand(arch: Architecture, w: &HashMap<String, Tensor>, masks: &[(&str, &Mask)]) -> Model {
    let mut w = w.clone();
    for (name, keep) in masks {
        let key = format!("{name}.weight");
        let masked = keep.apply(&w[&key]).unwrap();
        w.insert(key, masked);
    }
    Model::new(&tiny_config(arch), &w, &Device::Cpu).unwrap()
}

#[test]
fn prune_in_place_equals_a_model_built_from_masked_weights() {
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ] {
        let (w, m) = setup(arch);
        let dense = m.forward(&tokens()).unwrap();
        let masks: Vec<Mask> = LAYERS
            .iter()
            .enumerate()
            .map(|(i, n)| bits(&m, n, i as u64, 2))
            .collect();
        for (name, keep) in LAYERS.iter().zip(&masks) {
            m.prune_in_place(name, keep).unwrap();
        }
        let pairs: Vec<(&str, &Mask)> = LAYERS.iter().copied().zip(&masks).collect();
        let want = by_hand(arch, &w, &pairs).forward(&tokens()).unwrap();
        let got = m.forward(&tokens()).unwrap();
        assert_eq!(max_diff(&got, &want), 0.0, "{arch:?}");
        assert!(
            max_diff(&got, &dense) > 1e-3,
            "{arch:?}: pruning had no effect"
        );
        for (name, keep) in LAYERS.iter().zip(&masks) {
            let key = format!("{name}.weight");
            // The stored weight is W ⊙ M; the bits come back; no non-destructive mask.
            let stored = m.layer_weight(name).unwrap();
            assert_eq!(max_diff(&stored, &keep.apply(&w[&key]).unwrap()), 0.0);
            assert_eq!(max_diff(&m.effective_weight(name).unwrap(), &stored), 0.0);
            assert_eq!(m.pruned_mask(name).unwrap().as_deref(), Some(keep));
            assert!(m.layer_mask(name).unwrap().is_none());
            // The caller's tensor was replaced in the model, never written into.
            let fresh = random_weights(&tiny_config(arch), 7, &Device::Cpu).unwrap();
            assert_eq!(max_diff(&w[&key], &fresh[&key]), 0.0);
        }
        assert!(m
            .pruned_mask("model.layers.1.self_attn.q_proj")
            .unwrap()
            .is_none());
    }
}

#[test]
fn in_place_pruning_is_monotone() {
    let (w, m) = setup(Architecture::Llama);
    let name = LAYERS[1];
    let first = bits(&m, name, 1, 4);
    m.prune_in_place(name, &first).unwrap();
    let after_first = m.forward(&tokens()).unwrap();
    // The same mask again changes nothing.
    m.prune_in_place(name, &first).unwrap();
    assert_eq!(max_diff(&m.forward(&tokens()).unwrap(), &after_first), 0.0);
    // A subset prunes further, as if both masks had been applied at once.
    let second = and(&first, &bits(&m, name, 2, 2));
    assert!(second.count_pruned() > first.count_pruned());
    m.prune_in_place(name, &second).unwrap();
    let want = by_hand(Architecture::Llama, &w, &[(name, &second)]);
    assert_eq!(
        max_diff(
            &m.forward(&tokens()).unwrap(),
            &want.forward(&tokens()).unwrap()
        ),
        0.0
    );
    // Re-enabling pruned weights is refused and leaves everything as it was.
    let before = m.forward(&tokens()).unwrap();
    let err = m
        .prune_in_place(name, &Mask::ones(second.rows(), second.cols()))
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(name) && msg.contains("stay pruned"), "{msg}");
    assert!(
        msg.contains(&second.count_pruned().to_string()),
        "the error counts the weights: {msg}"
    );
    assert_eq!(m.pruned_mask(name).unwrap().as_deref(), Some(&second));
    assert_eq!(max_diff(&m.forward(&tokens()).unwrap(), &before), 0.0);
}

#[test]
fn non_destructive_masks_compose_on_top_of_in_place_pruning_only() {
    let (w, m) = setup(Architecture::Qwen2);
    let name = LAYERS[0];
    let in_place = bits(&m, name, 3, 2);
    let on_top = bits(&m, name, 4, 2);
    let on_top_t = on_top.to_tensor(DType::F32, &Device::Cpu).unwrap();
    // A committed non-destructive mask blocks in-place pruning (its cache would go
    // stale); the refusal changes nothing.
    m.set_mask(name, Some(&on_top_t)).unwrap();
    let err = m.prune_in_place(name, &in_place).unwrap_err();
    assert!(err.to_string().contains("set_mask(None)"), "{err}");
    assert!(m.pruned_mask(name).unwrap().is_none());
    assert_eq!(
        max_diff(
            &m.layer_weight(name).unwrap(),
            &w[&format!("{name}.weight")]
        ),
        0.0
    );
    // Cleared, in-place pruning works; a non-destructive mask on top is the AND.
    m.set_mask(name, None).unwrap();
    m.prune_in_place(name, &in_place).unwrap();
    let pruned_only = m.forward(&tokens()).unwrap();
    m.set_mask(name, Some(&on_top_t)).unwrap();
    let both = and(&in_place, &on_top);
    let want = by_hand(Architecture::Qwen2, &w, &[(name, &both)]);
    assert_eq!(
        max_diff(
            &m.forward(&tokens()).unwrap(),
            &want.forward(&tokens()).unwrap()
        ),
        0.0
    );
    // Clearing the non-destructive mask returns to the in-place state.
    m.set_mask(name, None).unwrap();
    assert_eq!(max_diff(&m.forward(&tokens()).unwrap(), &pruned_only), 0.0);
}

#[test]
fn bad_in_place_masks_are_typed_errors() {
    let (_, m) = setup(Architecture::Llama);
    let name = LAYERS[0];
    let keep = bits(&m, name, 0, 2);
    assert!(matches!(
        m.prune_in_place("model.layers.9.mlp.up_proj", &keep)
            .unwrap_err(),
        ModelError::UnknownLayer { .. }
    ));
    let err = m
        .prune_in_place(name, &Mask::ones(keep.cols(), keep.rows()))
        .unwrap_err();
    assert!(
        matches!(err, ModelError::WeightShape { ref tensor, .. } if tensor.contains(name)),
        "{err}"
    );
    assert!(m.pruned_mask(name).unwrap().is_none());
    let mut overlay = WeightOverlay::new();
    overlay.insert_mask(name, Arc::new(Mask::ones(keep.cols(), keep.rows())));
    assert!(matches!(
        m.forward_with(&tokens(), Some(&overlay)).unwrap_err(),
        ModelError::WeightShape { .. }
    ));
}

#[test]
fn mask_overlays_equal_full_weight_overlays() {
    let (_, m) = setup(Architecture::Qwen3);
    // On a model already pruned in place, a candidate is committed ∧ new bits, as the
    // Evaluator builds it.
    let committed = bits(&m, LAYERS[1], 5, 4);
    m.prune_in_place(LAYERS[1], &committed).unwrap();
    let committed_out = m.forward(&tokens()).unwrap();
    let candidates: Vec<(&str, Mask)> = vec![
        (LAYERS[0], bits(&m, LAYERS[0], 6, 2)),
        (LAYERS[1], and(&committed, &bits(&m, LAYERS[1], 7, 2))),
    ];
    let mut lazy = WeightOverlay::new();
    for (n, k) in &candidates {
        lazy.insert_mask(*n, Arc::new(k.clone()));
    }
    let tensors: Vec<(&str, Tensor)> = candidates
        .iter()
        .map(|(n, k)| (*n, k.to_tensor(DType::U8, &Device::Cpu).unwrap()))
        .collect();
    let full = m
        .overlay_from_masks(tensors.iter().map(|(n, t)| (*n, t)))
        .unwrap();
    assert_eq!((lazy.len(), full.len()), (2, 2));
    assert!(lazy.get(LAYERS[0]).is_none() && lazy.mask(LAYERS[0]).is_some());
    assert!(full.get(LAYERS[0]).is_some() && full.mask(LAYERS[0]).is_none());
    let a = m.forward_with(&tokens(), Some(&lazy)).unwrap();
    let b = m.forward_with(&tokens(), Some(&full)).unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);
    assert!(max_diff(&a, &committed_out) > 1e-3);
    // The model is untouched by either.
    assert_eq!(
        max_diff(&m.forward(&tokens()).unwrap(), &committed_out),
        0.0
    );
    assert_eq!(
        m.pruned_mask(LAYERS[1]).unwrap().as_deref(),
        Some(&committed)
    );
    // Perplexity takes the same overlays.
    let ids = [3u32, 14, 15, 9, 26, 5, 35, 8];
    let p_lazy = m.perplexity_with(&ids, 8, Some(&lazy)).unwrap();
    let p_full = m.perplexity_with(&ids, 8, Some(&full)).unwrap();
    assert_eq!(p_lazy.mean_nll, p_full.mean_nll);
    // A full-weight entry replaces a mask entry of the same layer.
    let w = m.layer_weight(LAYERS[0]).unwrap();
    lazy.insert(LAYERS[0], w.clone());
    assert!(lazy.mask(LAYERS[0]).is_none());
    assert_eq!(max_diff(lazy.get(LAYERS[0]).unwrap(), &w), 0.0);
}

#[test]
fn concurrent_mask_overlays_match_sequential() {
    let (_, m) = setup(Architecture::Llama);
    let m = Arc::new(m);
    m.prune_in_place(LAYERS[2], &bits(&m, LAYERS[2], 8, 4))
        .unwrap();
    let overlays: Vec<WeightOverlay> = (0..3u64)
        .map(|k| {
            let mut o = WeightOverlay::new();
            for n in LAYERS {
                let keep = match m.pruned_mask(n).unwrap() {
                    Some(c) => and(&c, &bits(&m, n, 20 + k, 2)),
                    None => bits(&m, n, 20 + k, 2),
                };
                o.insert_mask(n, Arc::new(keep));
            }
            o
        })
        .collect();
    let sequential: Vec<Tensor> = overlays
        .iter()
        .map(|o| m.forward_with(&tokens(), Some(o)).unwrap())
        .collect();
    assert!(max_diff(&sequential[0], &sequential[1]) > 1e-3);
    let concurrent: Vec<Tensor> = std::thread::scope(|s| {
        let handles: Vec<_> = overlays
            .iter()
            .map(|o| {
                let m = Arc::clone(&m);
                s.spawn(move || {
                    let mut last = None;
                    for _ in 0..5 {
                        last = Some(m.forward_with(&tokens(), Some(o)).unwrap());
                    }
                    last.unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (c, s) in concurrent.iter().zip(&sequential) {
        assert_eq!(max_diff(c, s), 0.0);
    }
}

#[test]
fn owned_construction_equals_borrowed() {
    let cfg = tiny_config(Architecture::Qwen2);
    let w = random_weights(&cfg, 9, &Device::Cpu).unwrap();
    let borrowed = Model::new(&cfg, &w, &Device::Cpu).unwrap();
    let owned = Model::new_owned(&cfg, w.clone(), &Device::Cpu).unwrap();
    assert_eq!(
        max_diff(
            &borrowed.forward(&tokens()).unwrap(),
            &owned.forward(&tokens()).unwrap()
        ),
        0.0
    );
    let mut missing = w;
    missing.remove("model.norm.weight");
    assert!(matches!(
        Model::new_owned(&cfg, missing, &Device::Cpu).err(),
        Some(ModelError::MissingWeight { ref tensor }) if tensor == "model.norm.weight"
    ));
}

#[test]
fn replace_pruned_stores_new_kept_values_and_keeps_the_rules() {
    let (w, m) = setup(Architecture::Llama);
    let name = LAYERS[2];
    let keep = bits(&m, name, 3, 3);
    // New values for every weight; the pruned positions must still end up exactly 0.
    let new = (&w[&format!("{name}.weight")] * 1.5).unwrap();
    m.replace_pruned(name, &new, &keep).unwrap();
    let stored = m.layer_weight(name).unwrap();
    assert_eq!(max_diff(&stored, &keep.apply(&new).unwrap()), 0.0);
    let mut by = w.clone();
    by.insert(format!("{name}.weight"), keep.apply(&new).unwrap());
    let want = Model::new(&tiny_config(Architecture::Llama), &by, &Device::Cpu).unwrap();
    assert_eq!(
        max_diff(
            &m.forward(&tokens()).unwrap(),
            &want.forward(&tokens()).unwrap()
        ),
        0.0
    );
    assert_eq!(m.pruned_mask(name).unwrap().as_deref(), Some(&keep));
    // Monotone like prune_in_place: reviving pruned weights is refused, nothing changes.
    let all = Mask::ones(keep.rows(), keep.cols());
    let err = m.replace_pruned(name, &new, &all).unwrap_err().to_string();
    assert!(err.contains("stay pruned"), "{err}");
    assert_eq!(max_diff(&m.layer_weight(name).unwrap(), &stored), 0.0);
    // Non-finite kept values and wrong shapes are refused.
    let nan = new.affine(0.0, f64::NAN).unwrap();
    let err = m.replace_pruned(name, &nan, &keep).unwrap_err().to_string();
    assert!(err.contains("NaN"), "{err}");
    let wrong = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(m.replace_pruned(name, &wrong, &keep).is_err());
    assert_eq!(max_diff(&m.layer_weight(name).unwrap(), &stored), 0.0);
}
