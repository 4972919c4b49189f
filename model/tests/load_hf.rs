//! HF directory loading on fixtures written by the test: single and sharded
//! safetensors, f32 / bf16 / f16 storage, config defaults, tokenizer and chat template.

mod load_support;

use candle_core::DType;
use load_support::*;
use model::{load_checkpoint, Architecture, ChatMessage, ChatTemplate, SourceFormat};

#[test]
fn single_and_sharded_f32_load_the_same_exact_tensors() {
    let spec = Spec::qwen2();
    let hf = hf_weights(&spec, 1);
    let root = tempfile::tempdir().unwrap();
    for shards in [1, 3] {
        let dir = root.path().join(format!("s{shards}"));
        write_hf_dir(&dir, &hf_config(&spec), &hf, DType::F32, shards);
        assert_eq!(
            dir.join("model.safetensors.index.json").is_file(),
            shards > 1
        );
        let ck = load_checkpoint(&dir).unwrap();
        assert_eq!(ck.format, SourceFormat::Safetensors);
        assert_eq!(ck.tensors.len(), hf.len());
        for (name, t) in &hf {
            assert_eq!(
                values(&ck.tensors[name]),
                values(t),
                "{shards} shards: {name}"
            );
            assert_eq!(ck.source_dtypes[name], "f32");
        }
    }
}

#[test]
fn bf16_and_f16_convert_to_f32_exactly() {
    let spec = Spec::llama();
    let hf = hf_weights(&spec, 2);
    let root = tempfile::tempdir().unwrap();
    for (dtype, name) in [(DType::BF16, "bf16"), (DType::F16, "f16")] {
        let dir = root.path().join(name);
        write_hf_dir(&dir, &hf_config(&spec), &hf, dtype, 2);
        let ck = load_checkpoint(&dir).unwrap();
        for (n, t) in &hf {
            let want = t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
            assert_eq!(values(&ck.tensors[n]), values(&want), "{name} {n}");
            assert_eq!(ck.source_dtypes[n], name);
        }
        // Rounding happened (the fixture is not trivially representable)...
        let w = "model.layers.0.mlp.up_proj.weight";
        assert_ne!(values(&ck.tensors[w]), values(&hf[w]));
        // ...but within the format's precision.
        assert!(rel_err(&ck.tensors[w], &hf[w]) < 4e-3);
    }
}

#[test]
fn config_fields_and_defaults() {
    let spec = Spec::qwen2();
    let hf = hf_weights(&spec, 3);
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), &hf_config(&spec), &hf, DType::F32, 1);
    let c = load_checkpoint(dir.path()).unwrap().config;
    assert_eq!(c.architecture, Architecture::Qwen2);
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.intermediate_size),
        (32, 64, 96)
    );
    assert_eq!(
        (
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (2, 4, 2)
    );
    assert_eq!(c.head_dim, 16, "head_dim defaults to hidden / heads");
    assert!(c.attention_bias, "qwen2 always has q/k/v bias");
    assert!(!c.tie_word_embeddings && !c.qk_norm);
    assert_eq!(
        (c.bos_token_id, c.eos_token_id),
        (Some(1), Some(2)),
        "first of an eos list"
    );

    // Llama with the optional keys absent: kv heads = heads, theta 10000, untied.
    let spec = Spec {
        kv_heads: 4,
        tied: false,
        ..Spec::llama()
    };
    let hf = hf_weights(&spec, 4);
    let mut cfg = hf_config(&spec);
    for k in [
        "num_key_value_heads",
        "rope_theta",
        "tie_word_embeddings",
        "bos_token_id",
    ] {
        cfg.as_object_mut().unwrap().remove(k);
    }
    cfg["eos_token_id"] = 2.into();
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), &cfg, &hf, DType::F32, 1);
    let c = load_checkpoint(dir.path()).unwrap().config;
    assert_eq!(c.num_key_value_heads, 4);
    assert_eq!(c.rope_theta, 10_000.0);
    assert!(!c.tie_word_embeddings && !c.attention_bias);
    assert_eq!((c.bos_token_id, c.eos_token_id), (None, Some(2)));

    // transformers >= 5 layout: theta inside `rope_parameters`, kind "default".
    cfg["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 5e5});
    cfg["rope_scaling"] = serde_json::json!({"rope_type": "default"});
    write_hf_dir(dir.path(), &cfg, &hf, DType::F32, 1);
    assert_eq!(load_checkpoint(dir.path()).unwrap().config.rope_theta, 5e5);
}

#[test]
fn qwen3_needs_qk_norm_and_honours_explicit_head_dim() {
    // head_dim 32 with 4 heads on hidden 64: q_proj is [128, 64], o_proj [64, 128].
    let spec = Spec {
        arch: Architecture::Qwen3,
        head_dim: 32,
        ..Spec::llama()
    };
    let mut hf = hf_weights(&spec, 6);
    assert!(hf.contains_key("model.layers.1.self_attn.k_norm.weight"));
    let mut cfg = hf_config(&spec);
    cfg["head_dim"] = 32.into();
    cfg["attention_bias"] = false.into();
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), &cfg, &hf, DType::F32, 1);
    let ck = load_checkpoint(dir.path()).unwrap();
    assert!(ck.config.qk_norm && ck.config.tie_word_embeddings);
    assert_eq!(ck.config.head_dim, 32);
    assert_eq!(
        ck.tensors["model.layers.1.self_attn.o_proj.weight"].dims(),
        [64, 128]
    );

    // Without the q/k norms the checkpoint is incomplete for qwen3.
    hf.retain(|k, _| !k.ends_with("k_norm.weight"));
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), &cfg, &hf, DType::F32, 1);
    let err = load_checkpoint(dir.path()).err().unwrap().to_string();
    assert!(err.contains("self_attn.k_norm.weight"), "{err}");
}

#[test]
fn tokenizer_and_chat_template_variants() {
    let spec = Spec::llama();
    let hf = hf_weights(&spec, 8);
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), &hf_config(&spec), &hf, DType::F32, 1);
    let ck = load_checkpoint(dir.path()).unwrap();
    let enc = ck.tokenizer.encode("hello world", false).unwrap();
    assert_eq!(enc.get_ids(), [3, 4]);
    assert!(ck.chat_template.is_none());
    assert!(ChatTemplate::for_checkpoint(&ck).unwrap().is_none());

    // A plain string in tokenizer_config.json; bos/eos come from the tokenizer.
    let tpl = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}";
    let tc = serde_json::json!({ "chat_template": tpl });
    std::fs::write(dir.path().join("tokenizer_config.json"), tc.to_string()).unwrap();
    let ck = load_checkpoint(dir.path()).unwrap();
    assert_eq!(ck.chat_template.as_deref(), Some(tpl));
    let chat = ChatTemplate::for_checkpoint(&ck).unwrap().unwrap();
    assert_eq!(chat.render(&[ChatMessage::user("x")]).unwrap(), "<s>x</s>");

    // A list of named templates: "default" is used.
    let tc = serde_json::json!({ "chat_template": [
        {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}
    ]});
    std::fs::write(dir.path().join("tokenizer_config.json"), tc.to_string()).unwrap();
    assert_eq!(
        load_checkpoint(dir.path())
            .unwrap()
            .chat_template
            .as_deref(),
        Some("D")
    );

    // Newer transformers: chat_template.jinja next to a config without the key.
    std::fs::write(dir.path().join("tokenizer_config.json"), "{}").unwrap();
    std::fs::write(dir.path().join("chat_template.jinja"), "J").unwrap();
    assert_eq!(
        load_checkpoint(dir.path())
            .unwrap()
            .chat_template
            .as_deref(),
        Some("J")
    );
}
