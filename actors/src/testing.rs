//! A tiny model fixture on disk, for tests of the loop and of the `secateur` binary:
//! an HF directory (config.json + model.safetensors + a word-level tokenizer.json) with
//! deterministic random weights, and JSONL texts **sampled from that model**.
//!
//! Sampling the texts from the dense model makes it the best predictor of them, so
//! pruning raises its perplexity the way it does for a real model on real text (a
//! random model on unrelated text would often *improve* when pruned).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use model::{Architecture, Model, ModelConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Paths of a written fixture.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub model_dir: PathBuf,
    /// JSONL with field `text`: calibration and held-out texts.
    pub calib: PathBuf,
    /// JSONL with field `text`: the final-perplexity text.
    pub final_text: PathBuf,
}

/// Vocabulary size of the fixture (words `w0` … `w63`).
pub const VOCAB: usize = 64;

/// The fixture's architecture: 2 Llama blocks, hidden 64, 14 prunable layers.
pub fn tiny_model_config() -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: VOCAB,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        attention_bias: false,
        qk_norm: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

fn tokenizer_json() -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..VOCAB)
        .map(|i| (format!("w{i}"), serde_json::json!(i)))
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "unk_token": "w0", "vocab": vocab}
    })
    .to_string()
}

fn config_json(c: &ModelConfig) -> String {
    serde_json::json!({
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": 1,
        "eos_token_id": 2,
    })
    .to_string()
}

/// Write the fixture into `dir`: the model, `texts` calibration texts and 8 final texts
/// of `words` words each, sampled at temperature 1 with `seed`.
pub fn write_fixture(dir: &Path, seed: u64, texts: usize, words: usize) -> Result<Fixture, String> {
    let err = |e: &dyn std::fmt::Display| format!("fixture: {e}");
    let cfg = tiny_model_config();
    let weights: HashMap<String, Tensor> =
        model::testing::random_weights(&cfg, seed, &Device::Cpu).map_err(|e| err(&e))?;
    let model_dir = dir.join("tiny-model");
    std::fs::create_dir_all(&model_dir).map_err(|e| err(&e))?;
    std::fs::write(model_dir.join("config.json"), config_json(&cfg)).map_err(|e| err(&e))?;
    std::fs::write(model_dir.join("tokenizer.json"), tokenizer_json()).map_err(|e| err(&e))?;
    candle_core::safetensors::save(&weights, model_dir.join("model.safetensors"))
        .map_err(|e| err(&e))?;
    let model = Model::new(&cfg, &weights, &Device::Cpu).map_err(|e| err(&e))?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut write_texts = |path: &Path, n: usize| -> Result<(), String> {
        let mut out = String::new();
        for _ in 0..n {
            let ids = sample(&model, &mut rng, words)?;
            let text: Vec<String> = ids.iter().map(|i| format!("w{i}")).collect();
            out.push_str(&serde_json::json!({ "text": text.join(" ") }).to_string());
            out.push('\n');
        }
        std::fs::write(path, out).map_err(|e| err(&e))
    };
    let calib = dir.join("calib.jsonl");
    let final_text = dir.join("final.jsonl");
    write_texts(&calib, texts)?;
    write_texts(&final_text, 8)?;
    Ok(Fixture {
        model_dir,
        calib,
        final_text,
    })
}

/// `n` tokens sampled from `model` at temperature 1, from a random first token.
fn sample(model: &Model, rng: &mut StdRng, n: usize) -> Result<Vec<u32>, String> {
    let err = |e: &dyn std::fmt::Display| format!("fixture sampling: {e}");
    let mut ids = vec![rng.random_range(3..VOCAB as u32)];
    while ids.len() < n {
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .map_err(|e| err(&e))?;
        let logits = model.forward(&input).map_err(|e| err(&e))?;
        let last: Vec<f32> = logits
            .squeeze(0)
            .and_then(|l| l.get(ids.len() - 1))
            .and_then(|l| l.to_vec1())
            .map_err(|e| err(&e))?;
        let max = last.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let probs: Vec<f64> = last.iter().map(|l| f64::from((l - max).exp())).collect();
        let total: f64 = probs.iter().sum();
        let mut u = rng.random::<f64>() * total;
        let mut pick = probs.len() - 1;
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                pick = i;
                break;
            }
            u -= p;
        }
        ids.push(pick as u32);
    }
    Ok(ids)
}

/// Write an NQ-open style question file (`question`, `answer` list) for the fixture's
/// model: `n` questions of random words. Two in three get as their answer the first
/// word the dense model generates for them through the raw LLM-KICK prompt (the probe's
/// style on this template-less model), the others a random word. The dense model thus
/// answers most of them and pruning can change that, so a probe on this file measures
/// something rather than sitting at zero.
pub fn write_qa_fixture(
    f: &Fixture,
    seed: u64,
    n: usize,
    answer_tokens: usize,
) -> Result<PathBuf, String> {
    let err = |e: &dyn std::fmt::Display| format!("QA fixture: {e}");
    let ckpt = model::load_checkpoint(&f.model_dir).map_err(|e| err(&e))?;
    let model = Model::new(&ckpt.config, &ckpt.tensors, &Device::Cpu).map_err(|e| err(&e))?;
    let stops = eval::stop_tokens(&ckpt);
    let target = eval::Target {
        model: &model,
        overlay: None,
        codec: &ckpt.tokenizer,
        template: None,
        stop_tokens: &stops,
    };
    let opts = eval::qa::QaOptions {
        style: eval::qa::PromptStyle::Raw,
        max_new_tokens: answer_tokens,
        ..Default::default()
    };
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9a);
    let word = |rng: &mut StdRng| format!("w{}", rng.random_range(3..VOCAB as u32));
    let mut out = String::new();
    for i in 0..n {
        let len = rng.random_range(3..7);
        let question: Vec<String> = (0..len).map(|_| word(&mut rng)).collect();
        let item = eval::data::QaItem {
            question: question.join(" "),
            answers: vec!["unused".into()],
        };
        let said = eval::qa::answer(&target, &item, &[], &opts).map_err(|e| err(&e))?;
        let words: Vec<&str> = said.continuation.split_whitespace().collect();
        let answer = if i % 3 != 2 && !words.is_empty() {
            words.join(" ")
        } else {
            word(&mut rng)
        };
        out.push_str(
            &serde_json::json!({ "question": item.question, "answer": [answer] }).to_string(),
        );
        out.push('\n');
    }
    let path = f.model_dir.with_file_name("qa.jsonl");
    std::fs::write(&path, out).map_err(|e| err(&e))?;
    Ok(path)
}

/// A config for the fixture: small samples, the loop's defaults otherwise.
pub fn fixture_config(f: &Fixture, runs_dir: &Path) -> config::Config {
    let mut c = config::Config::default();
    c.run.runs_dir = runs_dir.to_path_buf();
    c.model.path = f.model_dir.clone();
    c.model.device = config::Device::Cpu;
    // The masks-only Executor and the level allocation without measured costs: most
    // loop tests are about the loop, and their numbers were written for it; tests of
    // the repair and of the costs opt in.
    c.pruning.repair = config::Repair::None;
    c.pruning.layer_costs = false;
    c.heuristic.allocation = config::Allocation::Level;
    // No knowledge probe: the tiny model answers nothing; probe tests opt in.
    c.evaluation.probe.every = 0;
    c.calibration.path = f.calib.clone();
    c.calibration.field = Some("text".into());
    c.calibration.samples = 4;
    c.calibration.seq_len = 48;
    c.calibration.activation_samples = 4;
    c.calibration.gradient_samples = 2;
    c.evaluation.ppl_samples = 4;
    c.evaluation.ppl_seq_len = 48;
    c.evaluation.final_ppl.path = f.final_text.clone();
    c.evaluation.final_ppl.field = Some("text".into());
    c.evaluation.final_ppl.window = 48;
    c
}
