//! Input Gram matrices (SparseGPT's Hessian `Σ xᵀx`): off by default, recomputed by
//! hand for the first layer's q projection (its input is the normed embedding, which
//! does not depend on position), and its diagonal equals the Σx² statistics of every
//! layer collected in the same forward.

use candle_core::{Device, Tensor};
use model::testing::{random_weights, tiny_config};
use model::{Architecture, Model};

#[test]
fn gram_matches_hand_computed_inputs_and_stats_diagonal() {
    let cfg = tiny_config(Architecture::Llama);
    let w = random_weights(&cfg, 11, &Device::Cpu).unwrap();
    let m = Model::new(&cfg, &w, &Device::Cpu).unwrap();
    let ids = [3u32, 1, 4, 1, 5, 9];
    let tokens = Tensor::new(&ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();

    // Off by default: nothing is collected.
    m.forward(&tokens).unwrap();
    let q0 = "model.layers.0.self_attn.q_proj";
    assert!(m.take_gram(q0).unwrap().is_none());

    let names: Vec<String> = m.prunable_layers().into_iter().map(|l| l.name).collect();
    for n in &names {
        m.set_gram_enabled(n, true).unwrap();
    }
    m.set_stats_enabled(true);
    m.forward(&tokens).unwrap();
    m.set_stats_enabled(false);
    let stats = m.take_stats();

    // Hand computation for layer 0's q_proj: x_t = rmsnorm(embed[id_t]) ⊙ g.
    let embed = w["model.embed_tokens.weight"].to_vec2::<f32>().unwrap();
    let g = w["model.layers.0.input_layernorm.weight"]
        .to_vec1::<f32>()
        .unwrap();
    let h = cfg.hidden_size;
    let mut expected = vec![0f64; h * h];
    for &id in &ids {
        let e: Vec<f64> = embed[id as usize].iter().map(|v| f64::from(*v)).collect();
        let ms = e.iter().map(|v| v * v).sum::<f64>() / h as f64;
        let s = 1.0 / (ms + cfg.rms_norm_eps).sqrt();
        let x: Vec<f64> = e
            .iter()
            .zip(&g)
            .map(|(v, g)| v * s * f64::from(*g))
            .collect();
        for i in 0..h {
            for j in 0..h {
                expected[i * h + j] += x[i] * x[j];
            }
        }
    }
    let got = m.take_gram(q0).unwrap().unwrap();
    assert_eq!(got.tokens, ids.len() as u64);
    let got_v: Vec<f64> = got.gram.flatten_all().unwrap().to_vec1().unwrap();
    for (a, b) in got_v.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
    // Taking empties the accumulator.
    assert!(m.take_gram(q0).unwrap().is_none());

    for n in names.iter().filter(|n| n.as_str() != q0) {
        let gram = m.take_gram(n).unwrap().unwrap();
        let d = gram.gram.dim(0).unwrap();
        let gv: Vec<f64> = gram.gram.flatten_all().unwrap().to_vec1().unwrap();
        let diag: Vec<f64> = (0..d).map(|i| gv[i * d + i]).collect();
        let sq: Vec<f64> = stats[n].sum_sq.to_vec1().unwrap();
        for (a, b) in diag.iter().zip(&sq) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{n}: {a} vs {b}");
        }
        for i in 0..d {
            for j in 0..d {
                assert!((gv[i * d + j] - gv[j * d + i]).abs() < 1e-6 * (1.0 + gv[i * d + j].abs()));
            }
        }
    }
}

#[test]
fn gram_of_unknown_layer_is_an_error() {
    let cfg = tiny_config(Architecture::Qwen2);
    let w = random_weights(&cfg, 2, &Device::Cpu).unwrap();
    let m = Model::new(&cfg, &w, &Device::Cpu).unwrap();
    let err = m
        .set_gram_enabled("model.layers.9.mlp.up_proj", true)
        .unwrap_err();
    assert!(err.to_string().contains("model.layers.9.mlp.up_proj"));
    assert!(m.take_gram("nope").is_err());
}
