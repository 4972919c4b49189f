//! Baselines: SparseGPT numerics and reconstruction error, N:M patterns, OWL
//! allocations, and every method on a tiny model at 50 %.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use baselines::sparsegpt::{cholesky, inverse_hessian_factor, prune_layer};
use baselines::{owl, prune, Method, ALL_METHODS, ONESHOT_METHODS};
use kernels::Mask;
use model::testing::{random_weights, tiny_config};
use model::{Architecture, Model};

/// `n × d` inputs with strongly correlated columns (a few latent factors plus noise),
/// the regime where OBS updates pay off.
fn correlated_inputs(n: usize, d: usize, rng: &mut StdRng) -> Vec<f64> {
    let factors = 4;
    let mix: Vec<f64> = (0..factors * d)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let mut x = vec![0.0; n * d];
    for r in 0..n {
        let z: Vec<f64> = (0..factors).map(|_| rng.random_range(-1.0..1.0)).collect();
        for c in 0..d {
            let s: f64 = (0..factors).map(|f| z[f] * mix[f * d + c]).sum();
            x[r * d + c] = s + 0.1 * rng.random_range(-1.0..1.0);
        }
    }
    x
}

fn gram(x: &[f64], n: usize, d: usize) -> Vec<f64> {
    let mut g = vec![0.0; d * d];
    for r in 0..n {
        let row = &x[r * d..(r + 1) * d];
        for i in 0..d {
            for j in 0..d {
                g[i * d + j] += row[i] * row[j];
            }
        }
    }
    g
}

/// ‖W Xᵀ − Ŵ Xᵀ‖² for `[rows, d]` weights and `[n, d]` inputs.
fn recon_error(w: &[f64], w_hat: &[f64], x: &[f64], rows: usize, n: usize, d: usize) -> f64 {
    let mut e = 0.0;
    for r in 0..rows {
        for t in 0..n {
            let diff: f64 = (0..d)
                .map(|c| (w[r * d + c] - w_hat[r * d + c]) * x[t * d + c])
                .sum();
            e += diff * diff;
        }
    }
    e
}

#[test]
fn cholesky_and_inverse_factor_are_exact() {
    let mut rng = StdRng::seed_from_u64(1);
    let (n, d) = (64, 12);
    let x = correlated_inputs(n, d, &mut rng);
    let mut h = gram(&x, n, d);
    for i in 0..d {
        h[i * d + i] += 0.01;
    }
    let mut l = h.clone();
    cholesky(&mut l, d).unwrap();
    for i in 0..d {
        for j in 0..d {
            let v: f64 = (0..d).map(|k| l[i * d + k] * l[j * d + k]).sum();
            assert!((v - h[i * d + j]).abs() < 1e-9 * (1.0 + h[i * d + j].abs()));
        }
    }
    // UᵀU = H⁻¹, so UᵀU·H = I.
    let u = inverse_hessian_factor(h.clone(), d).unwrap();
    for i in 0..d {
        for j in 0..d {
            let v: f64 = (0..d)
                .map(|k| (0..d).map(|m| u[m * d + i] * u[m * d + k]).sum::<f64>() * h[k * d + j])
                .sum();
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((v - want).abs() < 1e-6, "({i},{j}) {v}");
        }
        for j in 0..i {
            assert_eq!(u[i * d + j], 0.0, "U is upper triangular");
        }
    }
    let mut bad = vec![1.0, 2.0, 2.0, 1.0];
    assert!(cholesky(&mut bad, 2).is_err());
}

#[test]
fn sparsegpt_reconstructs_better_than_the_wanda_mask() {
    let mut rng = StdRng::seed_from_u64(7);
    let (rows, d, n) = (16, 32, 256);
    let x = correlated_inputs(n, d, &mut rng);
    let w: Vec<f64> = (0..rows * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let g = gram(&x, n, d);
    let mut h: Vec<f64> = g.iter().map(|v| v / n as f64).collect();
    let mean_diag = (0..d).map(|i| h[i * d + i]).sum::<f64>() / d as f64;
    for i in 0..d {
        h[i * d + i] += 0.01 * mean_diag;
    }
    let u = inverse_hessian_factor(h, d).unwrap();
    let mut w_sgpt = w.clone();
    let kept = prune_layer(&mut w_sgpt, rows, d, &u, 0.5, None, 8).unwrap();
    assert_eq!(kept.iter().filter(|k| !**k).count(), rows * d / 2);
    for (k, v) in kept.iter().zip(&w_sgpt) {
        if !k {
            assert_eq!(*v, 0.0);
        }
    }
    // Wanda at the same sparsity: per row, lowest |W|·‖X_j‖ pruned, no update.
    let wt = Tensor::from_vec(
        w.iter().map(|v| *v as f32).collect::<Vec<_>>(),
        (rows, d),
        &Device::Cpu,
    )
    .unwrap();
    let sq: Vec<f32> = (0..d).map(|c| g[c * d + c] as f32).collect();
    let scores =
        kernels::wanda_scores(&wt, &Tensor::new(sq.as_slice(), &Device::Cpu).unwrap()).unwrap();
    let mask = kernels::prune_rows_incremental(&scores, &Mask::ones(rows, d), 0.5).unwrap();
    let w_wanda: Vec<f64> = w
        .iter()
        .zip(mask.to_bools())
        .map(|(v, k)| if k { *v } else { 0.0 })
        .collect();
    let e_sgpt = recon_error(&w, &w_sgpt, &x, rows, n, d);
    let e_wanda = recon_error(&w, &w_wanda, &x, rows, n, d);
    assert!(
        e_sgpt < 0.8 * e_wanda,
        "SparseGPT {e_sgpt} vs Wanda {e_wanda}"
    );
}

fn assert_nm(mask: &Mask, n: usize, m: usize) {
    let kept = mask.to_bools();
    for row in kept.chunks(mask.cols()) {
        for group in row.chunks(m) {
            assert_eq!(
                group.iter().filter(|k| !**k).count(),
                n,
                "{n}:{m} group {group:?}"
            );
        }
    }
}

fn tiny_model() -> Model {
    let cfg = tiny_config(Architecture::Llama);
    Model::new(
        &cfg,
        &random_weights(&cfg, 9, &Device::Cpu).unwrap(),
        &Device::Cpu,
    )
    .unwrap()
}

fn windows() -> Vec<Vec<u32>> {
    (0..4u32)
        .map(|w| (0..32).map(|i| (i * 7 + w * 13) % 64).collect())
        .collect()
}

#[test]
fn every_method_on_a_tiny_model_hits_the_target() {
    let m = tiny_model();
    let cal = windows();
    for name in ALL_METHODS.iter().chain(ONESHOT_METHODS).chain(&[
        "sparsegpt-2:4",
        "sparsegpt-4:8",
        "wanda-2:4-oneshot",
        "sparsegpt-2:4-oneshot",
    ]) {
        let method: Method = name.parse().unwrap();
        assert_eq!(&method.name(), name);
        let p = prune(&m, &method, 0.5, &cal).unwrap();
        assert_eq!(p.masks.len(), m.prunable_layers().len());
        assert!(
            (p.sparsity() - 0.5).abs() <= 0.01,
            "{name}: {}",
            p.sparsity()
        );
        let base = name.trim_end_matches("-oneshot");
        if let Some(pattern) = base.split_once('-').map(|(_, p)| p) {
            let (n, mm) = pattern.split_once(':').unwrap();
            for mask in p.masks.values() {
                assert_nm(mask, n.parse().unwrap(), mm.parse().unwrap());
            }
        }
        let overlay = p.overlay(&m).unwrap();
        for (layer, mask) in &p.masks {
            let w: Vec<f32> = overlay
                .get(layer)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (v, k) in w.iter().zip(mask.to_bools()) {
                if !k {
                    assert_eq!(*v, 0.0, "{name} {layer}");
                }
            }
        }
        // SparseGPT changes kept weights; mask-only methods never do.
        let dense: Vec<f32> = m
            .layer_weight("model.layers.0.mlp.down_proj")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let eff: Vec<f32> = overlay
            .get("model.layers.0.mlp.down_proj")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let changed = dense.iter().zip(&eff).any(|(a, b)| *b != 0.0 && a != b);
        assert_eq!(changed, name.starts_with("sparsegpt"), "{name}");
    }
    assert!("wanda-4:2".parse::<Method>().is_err());
    assert!("magnitude-oneshot".parse::<Method>().is_err());
    assert!("owl-2:4".parse::<Method>().is_err());
    assert!("wanda-oneshot-2:4".parse::<Method>().is_err());
    assert!("sgd"
        .parse::<Method>()
        .unwrap_err()
        .to_string()
        .contains("known: magnitude"));
    for name in [
        "wanda",
        "wanda-oneshot",
        "owl",
        "sparsegpt",
        "sparsegpt-oneshot",
    ] {
        assert!(
            prune(&m, &name.parse().unwrap(), 0.5, &[]).is_err(),
            "{name}"
        );
    }
}

#[test]
fn wanda_prunes_each_row_to_the_target() {
    let m = tiny_model();
    for name in ["wanda", "wanda-oneshot"] {
        let p = prune(&m, &name.parse().unwrap(), 0.5, &windows()).unwrap();
        for mask in p.masks.values() {
            assert!(mask.pruned_per_row().iter().all(|&c| c == mask.cols() / 2));
        }
    }
}

#[test]
fn owl_allocations_average_to_the_target_within_bounds() {
    let ratios = [0.01, 0.05, 0.02, 0.09, 0.03];
    let s = owl::allocate(&ratios, 0.5, 0.08).unwrap();
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    assert!((mean - 0.5).abs() < 1e-12);
    let (lo, hi) = s
        .iter()
        .fold((1.0f64, 0.0f64), |(a, b), &v| (a.min(v), b.max(v)));
    assert!((hi - lo - 0.16).abs() < 1e-12, "spread is 2λ");
    assert!(s.iter().all(|v| (0.5 - 0.16..=0.5 + 0.16).contains(v)));
    // More outliers → lower sparsity.
    assert!(s[3] < s[1] && s[1] < s[4] && s[0] == hi);
    assert_eq!(
        owl::allocate(&[0.1, 0.1], 0.5, 0.08).unwrap(),
        vec![0.5, 0.5]
    );
    assert!(owl::allocate(&[0.0, 1.0], 0.05, 0.2).is_err());
    // Mean 3.9, so only 30 lies above 5 × mean.
    let scores = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 30.0];
    assert_eq!(owl::outlier_ratio(&scores, 5.0), 0.1);

    let m = tiny_model();
    let cal = windows();
    let stats = baselines::calibration_stats(&m, &cal).unwrap();
    let alloc = owl::owl_allocation(&m, &stats, 0.5, &owl::OwlOptions::default()).unwrap();
    for method in ["owl", "owl-oneshot"] {
        let p = prune(&m, &method.parse().unwrap(), 0.5, &cal).unwrap();
        for (name, mask) in &p.masks {
            let want = alloc.for_layer(name).unwrap();
            assert!(
                (mask.sparsity() - want).abs() <= 0.5 / mask.cols() as f64 + 1e-9,
                "{method} {name}"
            );
        }
    }
}
