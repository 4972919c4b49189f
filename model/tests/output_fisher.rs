//! The output Fisher of `gradient_profile` is built from ∂L/∂y of every projection.
//! On a 2-token sample only position 0 is scored, so ∂L/∂y₁ = 0 and the weight
//! gradient of row j is `g₀ⱼ·x₀`: `‖∂L/∂Wⱼ‖² = g₀ⱼ²·‖x₀‖²` while the Fisher is
//! `F_j = g₀ⱼ²/2` (mean over 2 tokens, N = 1). Their ratio must be the same for every
//! row of a layer (q/k excepted: with one key their gradients vanish) — a check of the captured output gradients against the weight
//! gradients, which `grad_check.rs` checks against finite differences.

use candle_core::{DType, Device};
use model::testing::{random_weights, tiny_config};
use model::{Architecture, Model};

fn f64_model(arch: Architecture) -> Model {
    let cfg = tiny_config(arch);
    let w = random_weights(&cfg, 11, &Device::Cpu).unwrap();
    Model::new_with_dtype(&cfg, &w, &Device::Cpu, DType::F64).unwrap()
}

#[test]
fn output_fisher_matches_weight_gradients_on_one_scored_token() {
    for arch in [Architecture::Llama, Architecture::Qwen2] {
        let m = f64_model(arch);
        let sample = vec![5u32, 23];
        let grads = m
            .gradient_importance(std::slice::from_ref(&sample))
            .unwrap();
        let g = m.gradient_profile(&[sample], true).unwrap();
        let (means, fisher) = (g.means, g.output_fisher);
        assert_eq!(fisher.len(), grads.len(), "{arch:?}: one Fisher per layer");
        assert_eq!(means.len(), grads.len());
        let mut checked = 0;
        for (name, g) in &grads {
            let g = g.mean_abs.to_vec2::<f64>().unwrap();
            let f = &fisher[name];
            assert_eq!(f.len(), g.len(), "{name}: one Fisher entry per output row");
            let ratios: Vec<f64> = g
                .iter()
                .zip(f)
                .filter(|(_, &fj)| fj > 1e-30)
                .map(|(row, fj)| row.iter().map(|v| v * v).sum::<f64>() / fj)
                .collect();
            if ratios.is_empty() {
                // q/k at position 0: softmax over one key is 1 whatever the key, so both
                // gradients vanish.
                let energy: f64 = g.iter().flatten().map(|v| v * v).sum();
                assert!(
                    energy < 1e-24,
                    "{arch:?} {name}: zero Fisher, gradient {energy}"
                );
                continue;
            }
            assert!(
                ratios.len() > g.len() / 2,
                "{arch:?} {name}: Fisher mostly zero"
            );
            let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
            for r in &ratios {
                assert!(
                    ((r - mean) / mean).abs() < 1e-8,
                    "{arch:?} {name}: ratio {r} against mean {mean}"
                );
            }
            checked += 1;
        }
        assert!(checked >= 10, "{arch:?}: {checked} layers checked");
    }
}

#[test]
fn output_fisher_is_off_unless_asked_and_scales_with_scored_tokens() {
    let m = f64_model(Architecture::Llama);
    let sample: Vec<u32> = vec![3, 17, 42, 8, 8, 61, 25, 0, 33];
    let g = m
        .gradient_profile(std::slice::from_ref(&sample), false)
        .unwrap();
    let (means, none) = (g.means, g.output_fisher);
    assert!(none.is_empty());
    assert_eq!(
        means,
        m.gradient_importance_means(std::slice::from_ref(&sample))
            .unwrap()
    );
    // Two copies of one sample: the same mean per token as one copy.
    let one = m
        .gradient_profile(std::slice::from_ref(&sample), true)
        .unwrap()
        .output_fisher;
    let two = m
        .gradient_profile(&[sample.clone(), sample], true)
        .unwrap()
        .output_fisher;
    for (name, f) in &one {
        for (a, b) in f.iter().zip(&two[name]) {
            assert!(
                (a - b).abs() <= 1e-12 * a.abs().max(1e-30),
                "{name}: {a} vs {b}"
            );
        }
    }
}
