//! Perplexity: a model with uniform logits has ppl = vocab size; window and token
//! counting follow the non-overlapping-window protocol; a random model's value
//! equals the NLL recomputed by hand from `forward` logits.

use candle_core::{Device, Tensor};
use model::testing::{random_weights, tiny_config};
use model::{Architecture, Model, ModelError, Perplexity};

fn uniform_model() -> Model {
    // Mistral tiny is untied: zero lm_head ⇒ all logits 0 ⇒ uniform distribution.
    let cfg = tiny_config(Architecture::Mistral);
    let mut w = random_weights(&cfg, 3, &Device::Cpu).unwrap();
    let head = w["lm_head.weight"].zeros_like().unwrap();
    w.insert("lm_head.weight".into(), head);
    Model::new(&cfg, &w, &Device::Cpu).unwrap()
}

fn stream(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 5) % 64).collect()
}

#[test]
fn uniform_logits_give_vocab_size() {
    let m = uniform_model();
    let p = m.perplexity(&stream(10), 4).unwrap();
    assert!((p.ppl - 64.0).abs() < 1e-6 * 64.0, "{p:?}");
    assert!((p.mean_nll - 64f64.ln()).abs() < 1e-6);
    // Windows [4, 4, 2] score 3 + 3 + 1 tokens.
    assert_eq!((p.windows, p.tokens_scored), (3, 7));
}

#[test]
fn window_and_token_arithmetic() {
    let m = uniform_model();
    let cases = [
        // (tokens, window, windows, scored)
        (9, 4, 2, 6),       // [4, 4, 1]: the lone last token has nothing to score
        (8, 4, 2, 6),       // [4, 4]
        (2, 512, 1, 1),     // one short window
        (300, 128, 3, 297), // [128, 128, 44], 128 = the tiny context
        (5, 2, 2, 2),       // [2, 2, 1]
    ];
    for (n, window, windows, scored) in cases {
        let p = m.perplexity(&stream(n), window).unwrap();
        assert_eq!(
            (p.windows, p.tokens_scored),
            (windows, scored),
            "n={n} window={window}"
        );
    }
}

/// Windows of 5 tokens, and of 128 (the tiny context), whose 127 scored rows span
/// two of the row chunks the logits are built in.
#[test]
fn random_model_matches_hand_computed_nll() {
    let cfg = tiny_config(Architecture::Qwen2);
    let w = random_weights(&cfg, 4, &Device::Cpu).unwrap();
    let m = Model::new(&cfg, &w, &Device::Cpu).unwrap();
    for (n, window, windows) in [(13, 5, 3), (300, 128, 3)] {
        let tokens = stream(n);
        let mut nll = 0f64;
        let mut scored = 0;
        for chunk in tokens.chunks(window).filter(|c| c.len() >= 2) {
            let logits = m
                .forward(
                    &Tensor::new(chunk, &Device::Cpu)
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap(),
                )
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for (pos, target) in chunk.iter().enumerate().skip(1) {
                let row: Vec<f64> = logits[pos - 1].iter().map(|v| f64::from(*v)).collect();
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let log_z = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                nll += log_z - row[*target as usize];
                scored += 1;
            }
        }
        let p = m.perplexity(&tokens, window).unwrap();
        assert_eq!(p.tokens_scored, scored);
        assert_eq!(p.windows, windows);
        let want = nll / scored as f64;
        assert!((p.mean_nll - want).abs() < 1e-5, "{} vs {want}", p.mean_nll);
        assert!((p.ppl - want.exp()).abs() < 1e-5 * want.exp());
        // A random model is far from uniform here.
        assert!((p.ppl - 64.0).abs() > 1.0, "{p:?}");
    }
}

#[test]
fn overlay_perplexity_equals_committed_mask() {
    let cfg = tiny_config(Architecture::Llama);
    let w = random_weights(&cfg, 5, &Device::Cpu).unwrap();
    let m = Model::new(&cfg, &w, &Device::Cpu).unwrap();
    let name = "model.layers.1.mlp.up_proj";
    let mask = w[&format!("{name}.weight")].ge(0.0).unwrap();
    let overlay = m.overlay_from_masks([(name, &mask)]).unwrap();
    let tokens = stream(40);
    let dense = m.perplexity(&tokens, 16).unwrap();
    let via_overlay = m.perplexity_with(&tokens, 16, Some(&overlay)).unwrap();
    m.set_mask(name, Some(&mask)).unwrap();
    let committed = m.perplexity(&tokens, 16).unwrap();
    assert!((via_overlay.mean_nll - committed.mean_nll).abs() < 1e-6);
    assert!((via_overlay.mean_nll - dense.mean_nll).abs() > 1e-4);
}

#[test]
fn combine_weights_by_scored_tokens() {
    let a = Perplexity {
        ppl: 1f64.exp(),
        mean_nll: 1.0,
        tokens_scored: 3,
        windows: 1,
    };
    let b = Perplexity {
        ppl: 3f64.exp(),
        mean_nll: 3.0,
        tokens_scored: 1,
        windows: 2,
    };
    let c = Perplexity::combine(&[a, b]).unwrap();
    assert!((c.mean_nll - 1.5).abs() < 1e-12);
    assert!((c.ppl - 1.5f64.exp()).abs() < 1e-12);
    assert_eq!((c.tokens_scored, c.windows), (4, 3));
    assert!(Perplexity::combine(&[]).is_err());
}

#[test]
fn bad_arguments_are_errors() {
    let m = uniform_model();
    assert!(matches!(
        m.perplexity(&stream(10), 1).unwrap_err(),
        ModelError::InvalidArgument(_)
    ));
    assert!(matches!(
        m.perplexity(&[3], 8).unwrap_err(),
        ModelError::InvalidArgument(_)
    ));
    assert!(matches!(
        m.perplexity(&[], 8).unwrap_err(),
        ModelError::InvalidArgument(_)
    ));
    let err = m.perplexity(&[3, 64], 8).unwrap_err();
    assert!(err.to_string().contains("64"), "{err}");
    // Tiny context is 128: a 129-token window is refused, 129 tokens in 128-windows not.
    let err = m.perplexity(&stream(129), 129).unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
    assert_eq!(m.perplexity(&stream(129), 128).unwrap().tokens_scored, 127);
}

/// Batched windows give each window's own perplexity: equal-length runs share a
/// forward (here batches of 3 and 2 of the 16-token windows, then the 7-token tail
/// alone), masked through an overlay as well, and every value matches the window
/// scored alone.
#[test]
fn batched_windows_equal_one_at_a_time() {
    let cfg = tiny_config(Architecture::Llama);
    let w = random_weights(&cfg, 6, &Device::Cpu).unwrap();
    let m = Model::new(&cfg, &w, &Device::Cpu).unwrap();
    let name = "model.layers.0.self_attn.v_proj";
    let mask = w[&format!("{name}.weight")].ge(0.0).unwrap();
    let overlay = m.overlay_from_masks([(name, &mask)]).unwrap();
    let tokens = stream(87);
    let windows: Vec<&[u32]> = tokens.chunks(16).collect();
    assert_eq!(windows.last().unwrap().len(), 7);
    for ov in [None, Some(&overlay)] {
        for batch in [1, 3, 8] {
            let each = m.perplexity_each(&windows, batch, ov).unwrap();
            assert_eq!(each.len(), windows.len());
            for (p, win) in each.iter().zip(&windows) {
                let alone = m.perplexity_with(win, win.len(), ov).unwrap();
                assert_eq!((p.tokens_scored, p.windows), (win.len() - 1, 1));
                assert!(
                    (p.mean_nll - alone.mean_nll).abs() <= 1e-6 * alone.mean_nll,
                    "batch {batch}: {p:?} vs {alone:?}"
                );
            }
        }
    }
    // Same windows, same pooled value as the streamed protocol.
    let pooled = Perplexity::combine(&m.perplexity_each(&windows, 4, None).unwrap()).unwrap();
    let streamed = m.perplexity(&tokens, 16).unwrap();
    assert_eq!(pooled.tokens_scored, streamed.tokens_scored);
    assert!((pooled.mean_nll - streamed.mean_nll).abs() <= 1e-6 * streamed.mean_nll);
}

#[test]
fn batched_bad_arguments_are_errors() {
    let m = uniform_model();
    let ok = stream(8);
    for (windows, batch, needle) in [
        (vec![&ok[..], &[3][..]], 2, "at least 2"),
        (vec![&ok[..]], 0, "batch"),
        (vec![&[3, 64][..]], 1, "64"),
    ] {
        let err = m.perplexity_each(&windows, batch, None).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
    let long = stream(129);
    let err = m.perplexity_each(&[&long[..]], 1, None).unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
    assert!(m.perplexity_each(&[], 4, None).unwrap().is_empty());
}
