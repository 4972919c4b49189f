//! Activation statistics: Σx² per input column of every prunable linear equals the
//! value computed directly from its inputs, which this test recomputes in plain f64
//! Rust from the weights (single-token sequences, where attention is the identity on
//! v, so every layer's input is hand-computable without a second attention code).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use model::testing::{random_weights, tiny_config};
use model::{Architecture, Model, ModelConfig};

type Weights = HashMap<String, Tensor>;

fn vec1(t: &Tensor) -> Vec<f64> {
    t.to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn linear(w: &Weights, name: &str, x: &[f64]) -> Vec<f64> {
    let rows = w[&format!("{name}.weight")].to_vec2::<f32>().unwrap();
    let bias = w.get(&format!("{name}.bias")).map(vec1);
    rows.iter()
        .enumerate()
        .map(|(o, r)| {
            let dot: f64 = r.iter().zip(x).map(|(a, b)| f64::from(*a) * b).sum();
            dot + bias.as_ref().map_or(0.0, |b| b[o])
        })
        .collect()
}

fn rms(x: &[f64], weight: &Tensor, eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let scale = 1.0 / (ms + eps).sqrt();
    x.iter()
        .zip(vec1(weight))
        .map(|(v, g)| v * scale * g)
        .collect()
}

fn add_sq(acc: &mut HashMap<String, Vec<f64>>, name: String, x: &[f64]) {
    let e = acc.entry(name).or_insert_with(|| vec![0.0; x.len()]);
    for (a, v) in e.iter_mut().zip(x) {
        *a += v * v;
    }
}

/// Σx² of every prunable layer's input for single-token sequences `ids`.
fn expected_single_token(cfg: &ModelConfig, w: &Weights, ids: &[u32]) -> HashMap<String, Vec<f64>> {
    let embed = w["model.embed_tokens.weight"].to_vec2::<f32>().unwrap();
    let (d, group) = (
        cfg.head_dim,
        cfg.num_attention_heads / cfg.num_key_value_heads,
    );
    let mut acc = HashMap::new();
    for &id in ids {
        let mut x: Vec<f64> = embed[id as usize].iter().map(|v| f64::from(*v)).collect();
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let h = rms(
                &x,
                &w[&format!("{p}.input_layernorm.weight")],
                cfg.rms_norm_eps,
            );
            for proj in ["q_proj", "k_proj", "v_proj"] {
                add_sq(&mut acc, format!("{p}.self_attn.{proj}"), &h);
            }
            // One position: softmax over a single key is 1, so each head's context is
            // the value vector of its kv head.
            let v = linear(w, &format!("{p}.self_attn.v_proj"), &h);
            let ctx: Vec<f64> = (0..cfg.num_attention_heads)
                .flat_map(|head| v[(head / group) * d..(head / group + 1) * d].to_vec())
                .collect();
            add_sq(&mut acc, format!("{p}.self_attn.o_proj"), &ctx);
            let attn = linear(w, &format!("{p}.self_attn.o_proj"), &ctx);
            x.iter_mut().zip(&attn).for_each(|(a, b)| *a += b);
            let h2 = rms(
                &x,
                &w[&format!("{p}.post_attention_layernorm.weight")],
                cfg.rms_norm_eps,
            );
            add_sq(&mut acc, format!("{p}.mlp.gate_proj"), &h2);
            add_sq(&mut acc, format!("{p}.mlp.up_proj"), &h2);
            let gate = linear(w, &format!("{p}.mlp.gate_proj"), &h2);
            let up = linear(w, &format!("{p}.mlp.up_proj"), &h2);
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            add_sq(&mut acc, format!("{p}.mlp.down_proj"), &act);
            let down = linear(w, &format!("{p}.mlp.down_proj"), &act);
            x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
    }
    acc
}

fn assert_close(name: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{name}");
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs() + 1e-7,
            "{name} column {j}: got {g}, want {w}"
        );
    }
}

#[test]
fn sum_sq_matches_recomputed_inputs_in_every_layer() {
    for arch in [Architecture::Llama, Architecture::Qwen2] {
        let cfg = tiny_config(arch);
        let w = random_weights(&cfg, 21, &Device::Cpu).unwrap();
        let m = Model::new(&cfg, &w, &Device::Cpu).unwrap();
        let ids = [4u32, 61, 17];
        m.set_stats_enabled(true);
        // [3, 1]: three single-token sequences in one batch.
        m.forward(&Tensor::new(&[[ids[0]], [ids[1]], [ids[2]]], &Device::Cpu).unwrap())
            .unwrap();
        let stats = m.take_stats();
        let want = expected_single_token(&cfg, &w, &ids);
        assert_eq!(stats.len(), 7 * cfg.num_hidden_layers);
        for layer in m.prunable_layers() {
            let s = &stats[&layer.name];
            assert_eq!(s.tokens, 3, "{}", layer.name);
            assert_eq!(s.sum_sq.dims(), &[layer.in_features]);
            let got = s.sum_sq.to_vec1::<f64>().unwrap();
            assert_close(&layer.name, &got, &want[&layer.name]);
        }
        assert!(
            m.take_stats().is_empty(),
            "take_stats must empty the accumulators"
        );
    }
}

#[test]
fn sum_sq_accumulates_across_calls_and_longer_sequences() {
    let cfg = tiny_config(Architecture::Qwen3);
    let w = random_weights(&cfg, 22, &Device::Cpu).unwrap();
    let m = Model::new(&cfg, &w, &Device::Cpu).unwrap();
    let rows = [[5u32, 9, 2, 60, 33], [1, 1, 8, 13, 21]];

    // Statistics are off by default and while disabled.
    m.forward(&Tensor::new(&rows, &Device::Cpu).unwrap())
        .unwrap();
    assert!(m.take_stats().is_empty());

    m.set_stats_enabled(true);
    m.forward(&Tensor::new(&rows, &Device::Cpu).unwrap())
        .unwrap();
    m.forward(&Tensor::new(&[[7u32, 44]], &Device::Cpu).unwrap())
        .unwrap();
    m.set_stats_enabled(false);
    m.forward(&Tensor::new(&rows, &Device::Cpu).unwrap())
        .unwrap();

    // Layer 0's q/k/v input is the normed embedding, whatever attention does.
    let embed = w["model.embed_tokens.weight"].to_vec2::<f32>().unwrap();
    let mut want = HashMap::new();
    for id in rows.iter().flatten().chain(&[7, 44]) {
        let x: Vec<f64> = embed[*id as usize].iter().map(|v| f64::from(*v)).collect();
        let h = rms(
            &x,
            &w["model.layers.0.input_layernorm.weight"],
            cfg.rms_norm_eps,
        );
        add_sq(&mut want, "q".into(), &h);
    }
    let stats = m.take_stats();
    for proj in ["q_proj", "k_proj", "v_proj"] {
        let name = format!("model.layers.0.self_attn.{proj}");
        assert_eq!(stats[&name].tokens, 12);
        assert_close(
            &name,
            &stats[&name].sum_sq.to_vec1::<f64>().unwrap(),
            &want["q"],
        );
    }
    assert!(stats.values().all(|s| s.tokens == 12));

    m.set_stats_enabled(true);
    m.forward(&Tensor::new(&rows, &Device::Cpu).unwrap())
        .unwrap();
    m.reset_stats();
    assert!(m.take_stats().is_empty());
}

/// `forward_hidden` collects the same statistics as `forward` (it only skips the
/// lm_head), returns `[batch, seq, hidden]`, and checks its tokens like `forward`.
#[test]
fn forward_hidden_collects_the_same_statistics() {
    let cfg = tiny_config(Architecture::Llama);
    let w = random_weights(&cfg, 23, &Device::Cpu).unwrap();
    let m = Model::new(&cfg, &w, &Device::Cpu).unwrap();
    let tokens = Tensor::new(&[[5u32, 9, 2, 60, 33], [1, 1, 8, 13, 21]], &Device::Cpu).unwrap();
    m.set_stats_enabled(true);
    m.forward(&tokens).unwrap();
    let full = m.take_stats();
    let hidden = m.forward_hidden(&tokens).unwrap();
    let lean = m.take_stats();
    m.set_stats_enabled(false);
    assert_eq!(hidden.dims(), &[2, 5, cfg.hidden_size]);
    assert_eq!(full.len(), 14);
    for (name, s) in &full {
        assert_eq!(lean[name].tokens, s.tokens, "{name}");
        assert_eq!(
            lean[name].sum_sq.to_vec1::<f64>().unwrap(),
            s.sum_sq.to_vec1::<f64>().unwrap(),
            "{name}"
        );
    }
    assert!(m
        .forward_hidden(&Tensor::new(&[[1u32, 99]], &Device::Cpu).unwrap())
        .is_err());
}
