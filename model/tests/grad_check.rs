//! Gradient importance against central finite differences of the same loss (the
//! sample's mean next-token NLL, which `perplexity_with` reports as `mean_nll` for a
//! single window). The check runs in f64 so ε can be small and the comparison tight;
//! a second test shows the f32 model computes the same gradients.
//!
//! Entries of layer-0 q_proj and k_proj are included on purpose: their gradient
//! passes through RoPE, the attention softmax and RMSNorm, the ops whose fast candle
//! kernels drop gradients silently.

use candle_core::{DType, Device, Tensor};
use model::testing::{random_weights, tiny_config};
use model::{Architecture, Model, ModelError, WeightOverlay};

const SAMPLE: [u32; 9] = [3, 17, 42, 8, 8, 61, 25, 0, 33];

fn f64_model(arch: Architecture, seed: u64) -> Model {
    let cfg = tiny_config(arch);
    let w = random_weights(&cfg, seed, &Device::Cpu).unwrap();
    Model::new_with_dtype(&cfg, &w, &Device::Cpu, DType::F64).unwrap()
}

/// Loss with entry (i, j) of layer `name` moved by `delta` from its effective weight.
fn loss_with(m: &Model, sample: &[u32], name: &str, i: usize, j: usize, delta: f64) -> f64 {
    let w = m.effective_weight(name).unwrap();
    let (out, inp) = w.dims2().unwrap();
    let mut bump = vec![0f64; out * inp];
    bump[i * inp + j] = delta;
    let bumped = (w + Tensor::from_vec(bump, (out, inp), &Device::Cpu).unwrap()).unwrap();
    let mut overlay = WeightOverlay::new();
    overlay.insert(name, bumped);
    m.perplexity_with(sample, sample.len(), Some(&overlay))
        .unwrap()
        .mean_nll
}

fn finite_difference(m: &Model, sample: &[u32], name: &str, i: usize, j: usize) -> f64 {
    let eps = 1e-5;
    (loss_with(m, sample, name, i, j, eps) - loss_with(m, sample, name, i, j, -eps)) / (2.0 * eps)
}

/// Check a few entries per layer: the largest-gradient entry and a spread of others.
fn check_layers(m: &Model, layers: &[&str]) -> usize {
    check_layers_on(m, &SAMPLE, layers)
}

fn check_layers_on(m: &Model, sample: &[u32], layers: &[&str]) -> usize {
    let grads = m.gradient_importance(&[sample.to_vec()]).unwrap();
    let (mut checked, mut worst) = (0, 0f64);
    for name in layers {
        let g = grads[*name].mean_abs.to_vec2::<f64>().unwrap();
        let (rows, cols) = (g.len(), g[0].len());
        let mut entries = vec![(0, 0), (rows - 1, cols - 1), (rows / 2, cols / 3)];
        let flat_max = (0..rows * cols)
            .max_by(|a, b| g[a / cols][a % cols].total_cmp(&g[b / cols][b % cols]))
            .unwrap();
        entries.push((flat_max / cols, flat_max % cols));
        // Where a committed mask pruned an entry, ∂L/∂W is 0 by design while moving
        // the effective weight still changes the loss: compare kept entries only.
        let kept = m
            .layer_mask(name)
            .unwrap()
            .map(|k| k.to_vec2::<u8>().unwrap())
            .or_else(|| {
                m.pruned_mask(name).unwrap().map(|k| {
                    k.to_tensor(DType::U8, &Device::Cpu)
                        .unwrap()
                        .to_vec2::<u8>()
                        .unwrap()
                })
            });
        if let Some(k) = &kept {
            entries.extend((0..rows * cols).map(|e| (e / cols, e % cols)).take(8));
            entries.retain(|&(i, j)| k[i][j] == 1);
            entries.truncate(4);
        }
        for (i, j) in entries {
            let fd = finite_difference(m, sample, name, i, j).abs();
            let bp = g[i][j];
            let rel = (fd - bp).abs() / fd.max(bp).max(1e-12);
            assert!(
                rel < 1e-2 || (fd - bp).abs() < 1e-9,
                "{name}[{i},{j}]: backprop {bp:e} vs finite difference {fd:e}"
            );
            checked += 1;
            worst = worst.max(rel);
        }
    }
    println!("{checked} entries, worst relative error {worst:e}");
    checked
}

#[test]
fn gradients_match_finite_differences() {
    let cases = [
        (Architecture::Llama, 50),
        (Architecture::Qwen2, 51),
        (Architecture::Qwen3, 52),
    ];
    for (arch, seed) in cases {
        let m = f64_model(arch, seed);
        let checked = check_layers(
            &m,
            &[
                "model.layers.0.self_attn.q_proj",
                "model.layers.0.self_attn.k_proj",
                "model.layers.0.self_attn.v_proj",
                "model.layers.1.self_attn.o_proj",
                "model.layers.0.mlp.gate_proj",
                "model.layers.1.mlp.down_proj",
            ],
        );
        assert_eq!(checked, 24, "{arch:?}");
    }
}

/// 100 tokens: the loss gradient at the head is built in two row chunks.
#[test]
fn long_samples_match_finite_differences() {
    let m = f64_model(Architecture::Llama, 59);
    let sample: Vec<u32> = (0..100u32).map(|i| (i * 29 + 3) % 64).collect();
    let checked = check_layers_on(
        &m,
        &sample,
        &[
            "model.layers.1.mlp.down_proj",
            "model.layers.0.self_attn.q_proj",
        ],
    );
    assert_eq!(checked, 8);
}

#[test]
fn masked_layers_have_zero_gradient_where_pruned() {
    let m = f64_model(Architecture::Llama, 53);
    let name = "model.layers.0.self_attn.k_proj";
    let mask = m.layer_weight(name).unwrap().ge(0.0).unwrap();
    m.set_mask(name, Some(&mask)).unwrap();
    let grads = m.gradient_importance(&[SAMPLE.to_vec()]).unwrap();
    let g = grads[name].mean_abs.to_vec2::<f64>().unwrap();
    let keep = mask.to_vec2::<u8>().unwrap();
    let mut kept_nonzero = 0;
    for (i, row) in keep.iter().enumerate() {
        for (j, k) in row.iter().enumerate() {
            if *k == 0 {
                assert_eq!(g[i][j], 0.0, "pruned entry [{i},{j}] has a gradient");
            } else if g[i][j] > 0.0 {
                kept_nonzero += 1;
            }
        }
    }
    assert!(kept_nonzero > 0);
    // Kept entries still match finite differences of the masked model.
    assert_eq!(check_layers(&m, &[name]), 4);
}

#[test]
fn in_place_pruned_layers_have_zero_gradient_where_pruned() {
    let m = f64_model(Architecture::Qwen2, 58);
    let name = "model.layers.0.self_attn.q_proj";
    let keep = kernels::Mask::from_tensor(&m.layer_weight(name).unwrap().ge(0.0).unwrap()).unwrap();
    m.prune_in_place(name, &keep).unwrap();
    let grads = m.gradient_importance(&[SAMPLE.to_vec()]).unwrap();
    let g = grads[name].mean_abs.to_vec2::<f64>().unwrap();
    let mut kept_nonzero = 0;
    for (i, row) in g.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            if keep.get(i, j) == Some(false) {
                assert_eq!(*v, 0.0, "pruned entry [{i},{j}] has a gradient");
            } else if *v > 0.0 {
                kept_nonzero += 1;
            }
        }
    }
    assert!(kept_nonzero > 0);
    // Kept entries match finite differences of the pruned model, here and in a layer
    // whose input comes through the pruned one.
    assert_eq!(check_layers(&m, &[name, "model.layers.1.mlp.up_proj"]), 8);
}

#[test]
fn mean_over_samples_and_scalar_mean() {
    let m = f64_model(Architecture::Qwen3, 54);
    let a = SAMPLE.to_vec();
    let b = vec![9, 9, 1, 40, 2];
    let both = m.gradient_importance(&[a.clone(), b.clone()]).unwrap();
    let only_a = m.gradient_importance(&[a]).unwrap();
    let only_b = m.gradient_importance(&[b]).unwrap();
    assert_eq!(both.len(), m.prunable_layers().len());
    for layer in m.prunable_layers() {
        let n = &layer.name;
        let want = ((&only_a[n].mean_abs + &only_b[n].mean_abs).unwrap() / 2.0).unwrap();
        let diff = (&both[n].mean_abs - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(diff < 1e-12, "{n}: {diff}");
        let mean = both[n]
            .mean_abs
            .mean_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((both[n].mean - mean).abs() < 1e-15 && mean > 0.0, "{n}");
    }
}

#[test]
fn f32_gradients_agree_with_f64() {
    let cfg = tiny_config(Architecture::Qwen2);
    let w = random_weights(&cfg, 55, &Device::Cpu).unwrap();
    let m32 = Model::new(&cfg, &w, &Device::Cpu).unwrap();
    let m64 = Model::new_with_dtype(&cfg, &w, &Device::Cpu, DType::F64).unwrap();
    let g32 = m32.gradient_importance(&[SAMPLE.to_vec()]).unwrap();
    let g64 = m64.gradient_importance(&[SAMPLE.to_vec()]).unwrap();
    for layer in m32.prunable_layers() {
        let a = g32[&layer.name].mean_abs.to_dtype(DType::F64).unwrap();
        let b = &g64[&layer.name].mean_abs;
        let err = (&a - b)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .sqrt()
            .unwrap();
        let norm = b.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
        let rel = (err / norm).unwrap().to_scalar::<f64>().unwrap();
        assert!(rel < 1e-3, "{}: relative error {rel:e}", layer.name);
    }
}

#[test]
fn gradient_pass_leaves_the_model_unchanged() {
    let cfg = tiny_config(Architecture::Llama);
    let w = random_weights(&cfg, 56, &Device::Cpu).unwrap();
    let m = Model::new(&cfg, &w, &Device::Cpu).unwrap();
    let tokens = Tensor::new(&[SAMPLE], &Device::Cpu).unwrap();
    let before = m.forward(&tokens).unwrap();
    m.gradient_importance(&[SAMPLE.to_vec()]).unwrap();
    let after = m.forward(&tokens).unwrap();
    let diff = (before - after).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn bad_samples_are_errors() {
    let m = f64_model(Architecture::Llama, 57);
    assert!(matches!(
        m.gradient_importance(&[]).unwrap_err(),
        ModelError::InvalidArgument(_)
    ));
    let err = m
        .gradient_importance(&[SAMPLE.to_vec(), vec![4]])
        .unwrap_err();
    assert!(err.to_string().contains("sample 1"), "{err}");
    assert!(m.gradient_importance(&[vec![1, 99]]).is_err());
    let too_long = vec![1; m.config().max_position_embeddings + 1];
    assert!(m.gradient_importance(&[too_long]).is_err());
}
