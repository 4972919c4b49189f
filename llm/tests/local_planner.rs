//! The `local` backend on the real GGUF instruct models from `assets/`: its decoder
//! must compute what candle's reference models compute, and constrained decoding must
//! turn a real profile of the tiny test model into schema-valid plans. Skipped, with
//! the reason printed, when an asset is absent (e.g. a checkout without the fetched
//! models).
//!
//! The planner model is SmolLM2-135M-Instruct unless `SECATEUR_LOCAL_PLANNER_MODEL`
//! names another GGUF (e.g. `assets/models/Qwen2.5-Coder-0.5B-Instruct.gguf`, ~4x
//! slower). With SmolLM2 the whole file takes well under a minute in a debug build on
//! two cores, so it runs by default.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use config::PromptConfig;
use llm::local::net::Net;
use llm::local::LocalBackend;
use llm::rng::splitmix64;
use llm::sim::zscore;
use llm::PlannerBackend;
use model::testing::{random_weights, tiny_config};
use model::{Architecture, Model};
use protocol::{LayerProfile, Plan, PlanRequest};

fn asset(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/models")
        .join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipped: {} is absent (run the asset fetch script)",
            p.display()
        );
        None
    }
}

fn planner_model() -> Option<PathBuf> {
    match std::env::var_os("SECATEUR_LOCAL_PLANNER_MODEL") {
        Some(p) => Some(PathBuf::from(p)),
        None => asset("SmolLM2-135M-Instruct.Q4_1.gguf"),
    }
}

/// The tiny test model's profile as the Profiler computes it: Wanda sensitivity (10th
/// percentile of |W|·‖X‖₂) from activations on random token sequences, gradient
/// importance from the backward pass, both as z-scores across layers.
fn tiny_model_request() -> PlanRequest {
    let cfg = tiny_config(Architecture::Llama);
    let weights = random_weights(&cfg, 11, &Device::Cpu).unwrap();
    let model = Model::new(&cfg, &weights, &Device::Cpu).unwrap();
    let mut rng = 5u64;
    let samples: Vec<Vec<u32>> = (0..4)
        .map(|_| {
            (0..24)
                .map(|_| (splitmix64(&mut rng) % cfg.vocab_size as u64) as u32)
                .collect()
        })
        .collect();
    model.set_stats_enabled(true);
    for s in &samples {
        let t = Tensor::new(s.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        model.forward_hidden(&t).unwrap();
    }
    model.set_stats_enabled(false);
    let stats = model.take_stats();
    let grads = model.gradient_importance_means(&samples).unwrap();
    let layers = model.prunable_layers();
    let sens: Vec<f64> = layers
        .iter()
        .map(|l| {
            let sq = stats[&l.name]
                .sum_sq
                .to_dtype(candle_core::DType::F32)
                .unwrap();
            let scores = kernels::wanda_scores(&model.layer_weight(&l.name).unwrap(), &sq).unwrap();
            let all = kernels::Mask::ones(l.out_features, l.in_features);
            kernels::layer_sensitivity(&scores, &all, kernels::SENSITIVITY_PERCENTILE).unwrap()
        })
        .collect();
    let grad: Vec<f64> = layers.iter().map(|l| grads[&l.name]).collect();
    let (zs, zg) = (zscore(&sens), zscore(&grad));
    let profiles: Vec<LayerProfile> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| LayerProfile {
            name: l.name.clone(),
            z_sens: zs[i],
            z_grad: zg[i],
            sparsity: 0.0,
            params: (l.out_features * l.in_features) as u64,
            cost: Vec::new(),
        })
        .collect();
    assert_eq!(profiles.len(), 14, "2 blocks x 7 projections");
    PlanRequest::new(1, 20, profiles, 0.5, 12.0, 12.0, 0.15)
}

#[test]
fn local_planner_produces_schema_valid_plans_for_a_real_tiny_profile() {
    let Some(path) = planner_model() else {
        return;
    };
    let backend = LocalBackend::load(&path, 0.5, 1024, PromptConfig::default(), 7).unwrap();
    let req = tiny_model_request();
    let names = req.layer_names();
    let out = backend.propose(&req, 2).unwrap();
    assert_eq!(out.len(), 2);
    for r in &out {
        assert_eq!(r.backend, "local");
        assert!(r.plan.validate(&names).is_empty(), "{}", r.raw_response);
        assert_eq!(Plan::from_json(&r.raw_response).unwrap(), r.plan);
        let (input, output) = (r.input_tokens.unwrap(), r.output_tokens.unwrap());
        assert!(input > 300 && output > 10, "{input} / {output}");
        assert!(r.user_prompt.contains("candidate"), "K = 2 asks for styles");
    }
    // The second candidate's prompt differs from the first only after the layer table,
    // so it resumed the cached prefix: it cost far fewer prompt computations.
    eprintln!(
        "{}: plan 1 in {} ms ({} prompt + {} answer tokens), plan 2 in {} ms; plan 1: {}",
        path.display(),
        out[0].latency_ms,
        out[0].input_tokens.unwrap(),
        out[0].output_tokens.unwrap(),
        out[1].latency_ms,
        out[0].raw_response
    );
}

/// How far `a` is from `reference`: mean |Δ| over the standard deviation of the
/// reference, how many of the reference's 10 most likely tokens `a` also ranks in its
/// top 10, and how far below the reference's best logit the reference puts `a`'s best
/// token (0 when both pick the same), in standard deviations.
fn compare(a: &[f32], reference: &[f32]) -> (f32, usize, f32) {
    assert_eq!(a.len(), reference.len());
    let n = a.len() as f32;
    let mean = reference.iter().sum::<f32>() / n;
    let sd = (reference.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
    let mad = a
        .iter()
        .zip(reference)
        .map(|(x, y)| (x - y).abs())
        .sum::<f32>()
        / n;
    let top = |v: &[f32]| {
        let mut i: Vec<usize> = (0..v.len()).collect();
        i.sort_by(|&x, &y| v[y].total_cmp(&v[x]));
        i.truncate(10);
        i
    };
    let (ta, tr) = (top(a), top(reference));
    let overlap = ta.iter().filter(|x| tr.contains(x)).count();
    (
        mad / sd,
        overlap,
        (reference[tr[0]] - reference[ta[0]]) / sd,
    )
}

/// Logits of the project's f32 model (every weight dequantized exactly) at each
/// position of `ids`.
fn reference_logits(path: &Path, ids: &[u32]) -> Vec<Vec<f32>> {
    let ckpt = model::load_checkpoint(path).unwrap();
    let m = Model::new(&ckpt.config, &ckpt.tensors, &Device::Cpu).unwrap();
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = m.forward(&x).unwrap().squeeze(0).unwrap();
    (0..ids.len())
        .map(|i| logits.get(i).unwrap().to_vec1().unwrap())
        .collect()
}

/// Our quantized decoder against the f32 model on the same file: a prefill (the
/// dequantized-GEMM path), single-token steps (Q8_0 dot products), a cut-back cache.
/// They differ by quantization noise only: the Q8_0 re-encoding and 8-bit activations
/// (candle's own quantized models are as far from the f32 model: mean |Δ| of 3–12 % of
/// a standard deviation at these positions), so the top 10 agree and the token ours
/// picks is the reference's best or a near tie, while a wrong RoPE, mask or layout
/// scrambles them.
#[test]
fn decoder_matches_the_f32_model() {
    let mut models = Vec::new();
    models.extend(asset("SmolLM2-135M-Instruct.Q4_1.gguf"));
    if std::env::var_os("SECATEUR_LOCAL_PLANNER_MODEL").is_some() {
        models.extend(planner_model());
    }
    for path in models {
        let mut f = std::fs::File::open(&path).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        let header = model::gguf_header(&path, &content).unwrap();
        let text = "The capital of France is Paris. The capital of Italy is Rome. The capital of \
                    Spain is Madrid. The capital of Germany is Berlin. The capital of Japan is";
        let ids = header
            .tokenizer
            .encode(text, false)
            .unwrap()
            .get_ids()
            .to_vec();
        let n = ids.len();
        assert!(n >= 30, "{n} tokens");
        let reference = reference_logits(&path, &ids);
        let mut net = Net::load(&header.config, &content, &mut f).unwrap();
        let check = |what: &str, ours: &[f32], i: usize| {
            let (mad, overlap, gap) = compare(ours, &reference[i]);
            eprintln!(
                "{}: {what} at {i}: mean |Δ| {mad:.3} sd, top-10 overlap {overlap}, best token {gap:.3} sd below the best",
                path.display()
            );
            assert!(mad < 0.25 && overlap >= 7 && gap < 0.1, "{what} at {i}");
        };
        // Prefill all but the last 3 tokens, then feed those one at a time.
        let prefill = net.prefill(&ids[..n - 3]).unwrap();
        check("prefill", &prefill, n - 4);
        for i in n - 3..n {
            let step = net.forward(&ids[i..=i]).unwrap();
            check("step", &step, i);
        }
        assert_eq!(net.len(), n);
        // Cut back and recompute the same positions: the same logits, as computed.
        net.truncate(10);
        assert_eq!(net.len(), 10);
        let again = net.prefill(&ids[10..n - 3]).unwrap();
        let (mad, _, _) = compare(&again, &prefill);
        assert!(mad < 1e-4, "{mad}");
        // Bad input is an error, not a panic, and leaves the cache as it was.
        assert!(net.forward(&[]).is_err());
        assert!(net.forward(&[u32::MAX]).is_err());
        assert_eq!(net.len(), n - 3);
        eprintln!(
            "{}: {} tensors re-encoded as Q8_0",
            path.display(),
            net.requantized
        );
    }
}
