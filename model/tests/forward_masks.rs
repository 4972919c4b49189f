//! Masks, overlays and sharing: a committed mask equals multiplying the weight by
//! the mask; an overlay equals committing the same mask; overlays used from two
//! threads give the sequential results; bad masks and overlays are typed errors.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use model::testing::{random_weights, tiny_config};
use model::{Architecture, Model, ModelConfig, ModelError, WeightOverlay};

/// Deterministic 0/1 mask (about half kept) for a `[out, in]` weight.
fn mask_for(w: &Tensor, salt: u64) -> Tensor {
    let (out, inp) = w.dims2().unwrap();
    let v: Vec<f32> = (0..(out * inp) as u64)
        .map(|i| (((i + salt).wrapping_mul(2_654_435_761) >> 7) % 2) as f32)
        .collect();
    Tensor::from_vec(v, (out, inp), &Device::Cpu).unwrap()
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

fn setup(arch: Architecture) -> (ModelConfig, HashMap<String, Tensor>, Model) {
    let cfg = tiny_config(arch);
    let w = random_weights(&cfg, 7, &Device::Cpu).unwrap();
    let m = Model::new(&cfg, &w, &Device::Cpu).unwrap();
    (cfg, w, m)
}

const MASKED: [&str; 3] = [
    "model.layers.0.self_attn.k_proj",
    "model.layers.1.mlp.down_proj",
    "model.layers.0.mlp.gate_proj",
];

#[test]
fn prunable_layers_are_the_seven_projections_in_order() {
    let (cfg, _, m) = setup(Architecture::Qwen3);
    let layers = m.prunable_layers();
    assert_eq!(layers.len(), 7 * cfg.num_hidden_layers);
    let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        &names[..8],
        &[
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.k_proj",
            "model.layers.0.self_attn.v_proj",
            "model.layers.0.self_attn.o_proj",
            "model.layers.0.mlp.gate_proj",
            "model.layers.0.mlp.up_proj",
            "model.layers.0.mlp.down_proj",
            "model.layers.1.self_attn.q_proj",
        ]
    );
    // Qwen3 tiny: 4 heads × head_dim 16 = 64 ≠ hidden 32.
    let q = &layers[0];
    assert_eq!((q.out_features, q.in_features), (64, 32));
    let o = &layers[3];
    assert_eq!((o.out_features, o.in_features), (32, 64));
    let down = &layers[6];
    assert_eq!((down.out_features, down.in_features), (32, 48));
}

#[test]
fn committed_mask_equals_masked_weights() {
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ] {
        let (cfg, mut w, m) = setup(arch);
        let dense = m.forward(&tokens()).unwrap();
        for (i, name) in MASKED.iter().enumerate() {
            let key = format!("{name}.weight");
            let mask = mask_for(&w[&key], i as u64);
            m.set_mask(name, Some(&mask)).unwrap();
            let masked = (&w[&key] * &mask).unwrap();
            w.insert(key, masked);
        }
        let by_hand = Model::new(&cfg, &w, &Device::Cpu).unwrap();
        let a = m.forward(&tokens()).unwrap();
        let b = by_hand.forward(&tokens()).unwrap();
        assert!(max_diff(&a, &b) < 1e-6, "{arch:?}: {}", max_diff(&a, &b));
        assert!(max_diff(&a, &dense) > 1e-3, "{arch:?}: mask had no effect");

        // Dense weight untouched; mask readable as u8; clearing restores dense output.
        let name = MASKED[0];
        let dense_w = m.layer_weight(name).unwrap();
        let orig = Model::new(
            &cfg,
            &random_weights(&cfg, 7, &Device::Cpu).unwrap(),
            &Device::Cpu,
        )
        .unwrap()
        .layer_weight(name)
        .unwrap();
        assert_eq!(max_diff(&dense_w, &orig), 0.0);
        let stored = m.layer_mask(name).unwrap().expect("mask committed");
        assert_eq!(stored.dtype(), DType::U8);
        let expected = mask_for(&dense_w, 0);
        assert_eq!(
            max_diff(&stored.to_dtype(DType::F32).unwrap(), &expected),
            0.0
        );
        for name in MASKED {
            m.set_mask(name, None).unwrap();
        }
        assert!(m.layer_mask(name).unwrap().is_none());
        assert_eq!(max_diff(&m.forward(&tokens()).unwrap(), &dense), 0.0);
    }
}

#[test]
fn u8_mask_equals_f32_mask() {
    let (_, w, m) = setup(Architecture::Llama);
    let name = MASKED[1];
    let mask = mask_for(&w[&format!("{name}.weight")], 3);
    m.set_mask(name, Some(&mask)).unwrap();
    let a = m.forward(&tokens()).unwrap();
    m.set_mask(name, Some(&mask.to_dtype(DType::U8).unwrap()))
        .unwrap();
    let b = m.forward(&tokens()).unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);
}

#[test]
fn overlay_equals_committed_mask_and_leaves_model_unchanged() {
    let (_, w, m) = setup(Architecture::Qwen2);
    let dense = m.forward(&tokens()).unwrap();
    let masks: Vec<(&str, Tensor)> = MASKED
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, mask_for(&w[&format!("{n}.weight")], i as u64)))
        .collect();
    let overlay = m
        .overlay_from_masks(masks.iter().map(|(n, t)| (*n, t)))
        .unwrap();
    assert_eq!(overlay.len(), 3);
    let via_overlay = m.forward_with(&tokens(), Some(&overlay)).unwrap();
    assert_eq!(max_diff(&m.forward(&tokens()).unwrap(), &dense), 0.0);
    for (n, t) in &masks {
        m.set_mask(n, Some(t)).unwrap();
    }
    let committed = m.forward(&tokens()).unwrap();
    assert!(max_diff(&via_overlay, &committed) < 1e-6);
    assert!(max_diff(&via_overlay, &dense) > 1e-3);
}

#[test]
fn overlay_replaces_a_committed_mask_for_its_layer_only() {
    let (_, w, m) = setup(Architecture::Llama);
    let (a, b) = (MASKED[0], MASKED[1]);
    let mask_a = mask_for(&w[&format!("{a}.weight")], 1);
    let mask_b = mask_for(&w[&format!("{b}.weight")], 2);
    m.set_mask(a, Some(&mask_a)).unwrap();
    // Overlay on b only: a keeps its committed mask.
    let overlay = m.overlay_from_masks([(b, &mask_b)]).unwrap();
    let with_overlay = m.forward_with(&tokens(), Some(&overlay)).unwrap();
    m.set_mask(b, Some(&mask_b)).unwrap();
    assert!(max_diff(&with_overlay, &m.forward(&tokens()).unwrap()) < 1e-6);
}

#[test]
fn concurrent_overlays_match_sequential() {
    let (_, w, m) = setup(Architecture::Qwen3);
    let m = Arc::new(m);
    let overlays: Vec<WeightOverlay> = (0..2u64)
        .map(|k| {
            let name = MASKED[k as usize];
            let mask = mask_for(&w[&format!("{name}.weight")], 10 + k);
            m.overlay_from_masks([(name, &mask)]).unwrap()
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
                    // Several rounds so the two threads really overlap.
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
fn bad_masks_overlays_and_tokens_are_typed_errors() {
    let (cfg, w, m) = setup(Architecture::Llama);
    let name = MASKED[0];
    let good = mask_for(&w[&format!("{name}.weight")], 0);

    let err = m
        .set_mask("model.layers.9.mlp.up_proj", Some(&good))
        .unwrap_err();
    assert!(
        matches!(err, ModelError::UnknownLayer { ref name } if name == "model.layers.9.mlp.up_proj")
    );
    assert!(matches!(
        m.layer_weight("lm_head").unwrap_err(),
        ModelError::UnknownLayer { .. }
    ));

    let err = m.set_mask(name, Some(&good.t().unwrap())).unwrap_err();
    assert!(
        matches!(err, ModelError::WeightShape { ref tensor, .. } if tensor.contains(name)),
        "{err}"
    );

    let twos = (&good * 2.0).unwrap();
    let err = m.set_mask(name, Some(&twos)).unwrap_err();
    assert!(err.to_string().contains("other than 0 and 1"), "{err}");
    assert!(
        m.layer_mask(name).unwrap().is_none(),
        "a rejected mask must not be committed"
    );

    let mut overlay = WeightOverlay::new();
    overlay.insert("model.layers.0.self_attn.nope", good.clone());
    assert!(matches!(
        m.forward_with(&tokens(), Some(&overlay)).unwrap_err(),
        ModelError::UnknownLayer { .. }
    ));
    let mut overlay = WeightOverlay::new();
    overlay.insert(name, good.t().unwrap());
    assert!(matches!(
        m.forward_with(&tokens(), Some(&overlay)).unwrap_err(),
        ModelError::WeightShape { .. }
    ));
    let mut overlay = WeightOverlay::new();
    overlay.insert(name, good.to_dtype(DType::F64).unwrap());
    assert!(m.forward_with(&tokens(), Some(&overlay)).is_err());

    let out_of_vocab = Tensor::new(&[[1u32, cfg.vocab_size as u32]], &Device::Cpu).unwrap();
    let err = m.forward(&out_of_vocab).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    let wrong_dtype = Tensor::new(&[[1i64, 2]], &Device::Cpu).unwrap();
    assert!(matches!(
        m.forward(&wrong_dtype).unwrap_err(),
        ModelError::InvalidArgument(_)
    ));
    let too_long = Tensor::zeros(
        (1, cfg.max_position_embeddings + 1),
        DType::U32,
        &Device::Cpu,
    )
    .unwrap();
    assert!(m
        .forward(&too_long)
        .unwrap_err()
        .to_string()
        .contains("context"));
    let one_d = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
    assert!(matches!(
        m.forward(&one_d).unwrap_err(),
        ModelError::InvalidArgument(_)
    ));
}

#[test]
fn missing_or_misshaped_weights_are_named() {
    let cfg = tiny_config(Architecture::Qwen2);
    let mut w = random_weights(&cfg, 1, &Device::Cpu).unwrap();
    w.remove("model.layers.1.self_attn.k_proj.bias");
    let err = Model::new(&cfg, &w, &Device::Cpu).err().expect("must fail");
    assert!(
        matches!(err, ModelError::MissingWeight { ref tensor } if tensor == "model.layers.1.self_attn.k_proj.bias"),
        "{err}"
    );

    let mut w = random_weights(&cfg, 1, &Device::Cpu).unwrap();
    w.insert(
        "model.layers.0.mlp.up_proj.weight".into(),
        Tensor::zeros((48, 31), DType::F32, &Device::Cpu).unwrap(),
    );
    let err = Model::new(&cfg, &w, &Device::Cpu).err().expect("must fail");
    match err {
        ModelError::WeightShape {
            tensor,
            expected,
            actual,
        } => {
            assert_eq!(tensor, "model.layers.0.mlp.up_proj.weight");
            assert_eq!(expected, vec![48, 32]);
            assert_eq!(actual, vec![48, 31]);
        }
        other => panic!("unexpected error {other}"),
    }

    let bad = ModelConfig {
        num_key_value_heads: 3,
        ..cfg.clone()
    };
    let err = Model::new(
        &bad,
        &random_weights(&cfg, 1, &Device::Cpu).unwrap(),
        &Device::Cpu,
    )
    .err()
    .expect("must fail");
    assert!(err.to_string().contains("num_key_value_heads"), "{err}");

    let llama_with_qk_norm = ModelConfig {
        qk_norm: true,
        ..tiny_config(Architecture::Llama)
    };
    let err = Model::new(&llama_with_qk_norm, &HashMap::new(), &Device::Cpu)
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("qk_norm"), "{err}");
}
