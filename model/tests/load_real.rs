//! The real default model (assets/models/SmolLM2-135M-Instruct.Q4_1.gguf) and, when
//! fetched, the Qwen2.5-Coder-0.5B GGUF. Each test skips with a printed reason when
//! its asset is absent (`scripts/fetch-assets.sh` fetches them).
//!
//! Beyond config, tokenizer and template checks, each model's loaded f32 weights are
//! run through candle-transformers' HF-layout model and compared with candle's own
//! GGUF model on the same file: this is the end-to-end proof that the llama q/k
//! unpermute is right and that Qwen2 must not be unpermuted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use model::load::unpermute_rope_rows;
use model::{load_checkpoint, Architecture, ChatMessage, ChatTemplate, Checkpoint};

fn asset(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/models")
        .join(name);
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "skipping: {} is absent (run scripts/fetch-assets.sh)",
            p.display()
        );
        None
    }
}

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const QWEN: &str = "Qwen2.5-Coder-0.5B-Instruct.gguf";

/// Loaded once per test binary: dequantising 135 M weights is the slow part.
fn smollm2() -> Option<&'static Checkpoint> {
    static CK: OnceLock<Option<Checkpoint>> = OnceLock::new();
    CK.get_or_init(|| asset(SMOLLM2).map(|p| load_checkpoint(&p).unwrap()))
        .as_ref()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (flat(a), flat(b));
    let num: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

fn argmax(t: &Tensor) -> usize {
    let v = flat(t);
    (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap()
}

#[test]
fn smollm2_config_and_tensors() {
    let Some(ck) = smollm2() else { return };
    let c = &ck.config;
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!(c.num_hidden_layers, 30);
    assert_eq!(c.hidden_size, 576);
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (9, 3, 64)
    );
    assert_eq!(c.intermediate_size, 1536);
    assert_eq!(c.vocab_size, 49152);
    assert!(c.tie_word_embeddings && !c.attention_bias && !c.qk_norm);
    assert_eq!(c.rope_theta, 100_000.0);
    assert_eq!(c.max_position_embeddings, 8192);
    assert_eq!((c.bos_token_id, c.eos_token_id), (Some(1), Some(2)));
    // 49152·576 embeddings + 30 · 3 540 096 per layer + 576 final norm.
    assert_eq!(ck.parameter_count(), 134_515_008);
    assert_eq!(ck.source_dtypes["model.embed_tokens.weight"], "q8_0");
    assert_eq!(
        ck.source_dtypes["model.layers.29.mlp.down_proj.weight"],
        "q4_1"
    );
    assert_eq!(
        ck.source_dtypes["model.layers.0.input_layernorm.weight"],
        "f32"
    );
    let summary = ck.tensor_summary();
    assert_eq!(summary.len(), 1 + 30 * 9 + 1);
    assert_eq!(summary[3].name, "model.layers.0.self_attn.k_proj.weight");
    assert_eq!(summary[3].shape, vec![192, 576]);
}

#[test]
fn smollm2_tokenizer_round_trips() {
    let Some(ck) = smollm2() else { return };
    for text in [
        "Hello world",
        "The year 2024 had 366 days.",
        "  leading spaces, tabs\tand\nnewlines\n",
        "Ünïcödé — emojis 🌱 and 中文",
        "fn main() { println!(\"{}\", 1 + 1); }",
    ] {
        let enc = ck.tokenizer.encode(text, false).unwrap();
        assert!(!enc.get_ids().is_empty());
        assert_eq!(ck.tokenizer.decode(enc.get_ids(), false).unwrap(), text);
    }
    // No prefix space on the first word; digits one by one (SmolLM's pre-tokenizer).
    let enc = ck.tokenizer.encode("Hello world 2024", false).unwrap();
    assert_eq!(
        enc.get_tokens(),
        ["Hello", "Ġworld", "Ġ", "2", "0", "2", "4"]
    );
    // Special tokens are single ids.
    let enc = ck.tokenizer.encode("<|im_start|>user", false).unwrap();
    assert_eq!(enc.get_ids()[0], 1);
}

#[test]
fn smollm2_chat_template_renders_chatml_with_default_system_prompt() {
    let Some(ck) = smollm2() else { return };
    let chat = ChatTemplate::for_checkpoint(ck)
        .unwrap()
        .expect("SmolLM2 has a template");
    assert_eq!(
        chat.render(&[ChatMessage::user("What is the capital of France?")]).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn smollm2_hf_rope_on_loaded_weights_matches_candles_gguf_llama() {
    use candle_transformers::models::{llama, quantized_llama};
    let Some(ck) = smollm2() else { return };
    let path = asset(SMOLLM2).unwrap();
    let dev = Device::Cpu;
    let prompt = "The capital of France is Paris. The capital of Germany is";
    let ids = ck
        .tokenizer
        .encode(prompt, false)
        .unwrap()
        .get_ids()
        .to_vec();
    let ids = Tensor::new(ids.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();

    let mut f = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut reference = quantized_llama::ModelWeights::from_gguf(content, &mut f, &dev).unwrap();
    let want = reference.forward(&ids, 0).unwrap();

    let c = &ck.config;
    let cfg = llama::Config {
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        vocab_size: c.vocab_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        num_key_value_heads: c.num_key_value_heads,
        use_flash_attn: false,
        rms_norm_eps: c.rms_norm_eps,
        rope_theta: c.rope_theta as f32,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling: None,
        max_position_embeddings: c.max_position_embeddings,
        tie_word_embeddings: true,
    };
    let logits = |tensors: HashMap<String, Tensor>| {
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let m = llama::Llama::load(vb, &cfg).unwrap();
        let mut cache = llama::Cache::new(false, DType::F32, &cfg, &dev).unwrap();
        m.forward(&ids, 0, &mut cache).unwrap()
    };
    let ours = logits(ck.tensors.clone());
    // The reference quantises activations to 8 bits in its matmuls; ours is f32.
    let err = rel_err(&ours, &want);
    assert!(err < 0.05, "relative logit difference {err}");
    assert_eq!(argmax(&ours), argmax(&want));
    let top = ck.tokenizer.decode(&[argmax(&ours) as u32], false).unwrap();
    assert_eq!(top.trim(), "Berlin", "a sane model completes the prompt");

    // Control: the q/k rows as stored in the file give a different model.
    let mut stored = ck.tensors.clone();
    for (name, t) in stored.iter_mut() {
        let n_head = if name.contains(".q_proj.") {
            c.num_attention_heads
        } else if name.contains(".k_proj.") {
            c.num_key_value_heads
        } else {
            continue;
        };
        let half = t.dim(0).unwrap() / n_head / 2;
        let (rows, cols) = t.dims2().unwrap();
        *t = t
            .reshape((n_head, 2, half, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
    }
    let wrong = rel_err(&logits(stored), &want);
    eprintln!("smollm2: relative logit difference {err}, control {wrong}");
    assert!(wrong > 5.0 * err, "control: {wrong} vs {err}");
}

#[test]
fn qwen2_gguf_loads_unpermuted_and_matches_candles_gguf_qwen2() {
    use candle_transformers::models::{quantized_qwen2, qwen2};
    let Some(path) = asset(QWEN) else { return };
    let ck = load_checkpoint(&path).unwrap();
    let c = ck.config.clone();
    assert_eq!(c.architecture, Architecture::Qwen2);
    assert_eq!(
        (c.num_hidden_layers, c.hidden_size, c.intermediate_size),
        (24, 896, 4864)
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (14, 2, 64)
    );
    assert_eq!(c.vocab_size, 151_936);
    assert!(c.attention_bias && !c.tie_word_embeddings);
    let kinds: std::collections::BTreeSet<_> = ck.source_dtypes.values().cloned().collect();
    for k in ["f32", "q5_0", "q8_0", "q4_k", "q6_k"] {
        assert!(kinds.contains(k), "{k} not among {kinds:?}");
    }
    for text in ["def add(a, b):\n    return a + b\n", "Hello, 世界 123"] {
        let ids = ck.tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ck.tokenizer.decode(&ids, false).unwrap(), text);
    }
    let chat = ChatTemplate::for_checkpoint(&ck).unwrap().unwrap();
    let prompt = chat.render(&[ChatMessage::user("hi")]).unwrap();
    assert!(
        prompt.starts_with("<|im_start|>system\nYou are Qwen"),
        "{prompt}"
    );
    assert!(prompt.ends_with("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"));

    let dev = Device::Cpu;
    let text = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) +";
    let ids = ck.tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    let ids = Tensor::new(ids.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut f = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut reference = quantized_qwen2::ModelWeights::from_gguf(content, &mut f, &dev).unwrap();
    let want = reference.forward(&ids, 0).unwrap();

    let cfg = qwen2::Config {
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        num_key_value_heads: c.num_key_value_heads,
        max_position_embeddings: c.max_position_embeddings,
        sliding_window: c.max_position_embeddings,
        max_window_layers: c.num_hidden_layers,
        tie_word_embeddings: false,
        rope_theta: c.rope_theta,
        rms_norm_eps: c.rms_norm_eps,
        use_sliding_window: false,
        hidden_act: candle_nn::Activation::Silu,
    };
    let logits = |tensors: HashMap<String, Tensor>| {
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let mut m = qwen2::ModelForCausalLM::new(&cfg, vb).unwrap();
        m.forward(&ids, 0).unwrap()
    };
    let ours = logits(ck.tensors.clone());
    let err = rel_err(&ours, &want);
    assert!(err < 0.05, "relative logit difference {err}");
    assert_eq!(argmax(&ours), argmax(&want));

    // Control: unpermuting Qwen2 rows, as if it were llama, breaks the model.
    let mut wrong = ck.tensors;
    for (name, t) in wrong.iter_mut() {
        if name.contains(".q_proj.") {
            *t = unpermute_rope_rows(t, c.num_attention_heads).unwrap();
        } else if name.contains(".k_proj.") {
            *t = unpermute_rope_rows(t, c.num_key_value_heads).unwrap();
        }
    }
    let wrong = rel_err(&logits(wrong), &want);
    eprintln!("qwen2: relative logit difference {err}, control {wrong}");
    assert!(wrong > 5.0 * err, "control: {wrong} vs {err}");
}
