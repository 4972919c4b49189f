//! Post-load checks shared by the GGUF and HF loaders: the config is usable, every
//! tensor the architecture needs is present in the shape the config implies, and no
//! weight is NaN or infinite (the only symptom a flipped byte in the data region can
//! have, since neither format carries checksums).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Storage, Tensor};

use crate::{ModelConfig, ModelError, Result};

/// Reject configs the forward pass cannot run (zero sizes, heads that do not divide
/// into key/value groups) before anything divides by them.
pub(crate) fn check_config(path: &Path, cfg: &ModelConfig) -> Result<()> {
    let field = |field: &str, reason: String| ModelError::Field {
        path: path.to_path_buf(),
        field: field.to_string(),
        reason,
    };
    for (name, value) in [
        ("vocab_size", cfg.vocab_size),
        ("hidden_size", cfg.hidden_size),
        ("intermediate_size", cfg.intermediate_size),
        ("num_hidden_layers", cfg.num_hidden_layers),
        ("num_attention_heads", cfg.num_attention_heads),
        ("num_key_value_heads", cfg.num_key_value_heads),
        ("head_dim", cfg.head_dim),
        ("max_position_embeddings", cfg.max_position_embeddings),
    ] {
        if value == 0 {
            return Err(field(name, "must be positive".into()));
        }
    }
    if !cfg
        .num_attention_heads
        .is_multiple_of(cfg.num_key_value_heads)
    {
        return Err(field(
            "num_key_value_heads",
            format!(
                "{} does not divide num_attention_heads = {}",
                cfg.num_key_value_heads, cfg.num_attention_heads
            ),
        ));
    }
    if !cfg.head_dim.is_multiple_of(2) {
        return Err(field(
            "head_dim",
            format!("{} is odd; rotary embeddings need pairs", cfg.head_dim),
        ));
    }
    if !(cfg.rms_norm_eps.is_finite() && cfg.rms_norm_eps > 0.0) {
        return Err(field(
            "rms_norm_eps",
            format!("{} is not a positive number", cfg.rms_norm_eps),
        ));
    }
    if !(cfg.rope_theta.is_finite() && cfg.rope_theta > 0.0) {
        return Err(field(
            "rope_theta",
            format!("{} is not a positive number", cfg.rope_theta),
        ));
    }
    Ok(())
}

/// Every tensor the architecture needs, with the shape the config implies, in HF names.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let inter = cfg.intermediate_size;
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, h],
    )];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        if cfg.attention_bias {
            out.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
            out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        }
        if cfg.qk_norm {
            out.push((format!("{p}.self_attn.q_norm.weight"), vec![cfg.head_dim]));
            out.push((format!("{p}.self_attn.k_norm.weight"), vec![cfg.head_dim]));
        }
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![inter, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![inter, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, inter]));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    out
}

/// Check presence, shape, dtype (f32 on the CPU) and finiteness of every needed
/// tensor. Extra tensors are allowed (an `lm_head.weight` saved next to tied
/// embeddings is checked for shape too, since a forward pass might pick it up).
pub(crate) fn validate_checkpoint(
    path: &Path,
    cfg: &ModelConfig,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    check_config(path, cfg)?;
    let mut expected = expected_tensors(cfg);
    if cfg.tie_word_embeddings && tensors.contains_key("lm_head.weight") {
        expected.push((
            "lm_head.weight".to_string(),
            vec![cfg.vocab_size, cfg.hidden_size],
        ));
    }
    for (name, shape) in &expected {
        let t = tensors.get(name).ok_or_else(|| ModelError::MissingTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
        })?;
        if t.dims() != shape.as_slice() {
            return Err(ModelError::ShapeMismatch {
                path: path.to_path_buf(),
                tensor: name.clone(),
                expected: shape.clone(),
                actual: t.dims().to_vec(),
            });
        }
    }
    for (name, t) in tensors {
        check_finite(path, name, t)?;
    }
    Ok(())
}

/// Fail on the first NaN or infinity, naming the tensor and the flat index.
fn check_finite(path: &Path, name: &str, t: &Tensor) -> Result<()> {
    let malformed = |reason: String| ModelError::Malformed {
        path: path.to_path_buf(),
        format: "checkpoint",
        reason,
    };
    if t.dtype() != DType::F32 || !t.is_contiguous() {
        return Err(malformed(format!(
            "tensor `{name}` was not converted to a contiguous f32 tensor"
        )));
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(malformed(format!("tensor `{name}` is not on the CPU")));
    };
    let all = cpu
        .as_slice::<f32>()
        .map_err(|e| malformed(e.to_string()))?;
    let data = &all[layout.start_offset()..layout.start_offset() + t.elem_count()];
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(malformed(format!(
            "tensor `{name}` holds a non-finite value ({}) at flat index {i}",
            data[i]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Architecture;

    fn cfg() -> ModelConfig {
        ModelConfig {
            architecture: Architecture::Qwen3,
            vocab_size: 10,
            hidden_size: 8,
            intermediate_size: 12,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 4,
            rms_norm_eps: 1e-6,
            rope_theta: 1e4,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            attention_bias: false,
            qk_norm: true,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    #[test]
    fn expected_tensor_list_follows_the_switches() {
        let c = cfg();
        let e: HashMap<_, _> = expected_tensors(&c).into_iter().collect();
        // embed + norm + 2 layers * (2 norms + 4 attn + 2 qk-norm + 3 mlp)
        assert_eq!(e.len(), 2 + 2 * 11);
        assert_eq!(e["model.layers.1.self_attn.q_proj.weight"], vec![16, 8]);
        assert_eq!(e["model.layers.1.self_attn.k_proj.weight"], vec![8, 8]);
        assert_eq!(e["model.layers.1.self_attn.o_proj.weight"], vec![8, 16]);
        assert_eq!(e["model.layers.0.self_attn.k_norm.weight"], vec![4]);
        assert_eq!(e["model.layers.0.mlp.down_proj.weight"], vec![8, 12]);
        assert!(!e.contains_key("lm_head.weight"));
        let c = ModelConfig {
            tie_word_embeddings: false,
            attention_bias: true,
            qk_norm: false,
            ..cfg()
        };
        let e: HashMap<_, _> = expected_tensors(&c).into_iter().collect();
        assert_eq!(e["lm_head.weight"], vec![10, 8]);
        assert_eq!(e["model.layers.0.self_attn.v_proj.bias"], vec![8]);
        assert!(!e.contains_key("model.layers.0.self_attn.q_norm.weight"));
    }

    #[test]
    fn bad_configs_name_the_field() {
        let p = Path::new("x");
        let bad = ModelConfig {
            num_key_value_heads: 3,
            ..cfg()
        };
        match check_config(p, &bad) {
            Err(ModelError::Field { field, .. }) => assert_eq!(field, "num_key_value_heads"),
            other => panic!("unexpected {other:?}"),
        }
        let bad = ModelConfig {
            hidden_size: 0,
            ..cfg()
        };
        match check_config(p, &bad) {
            Err(ModelError::Field { field, .. }) => assert_eq!(field, "hidden_size"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(check_config(p, &cfg()).is_ok());
    }

    #[test]
    fn non_finite_weights_are_reported_with_their_index() {
        let p = Path::new("w.safetensors");
        let t = Tensor::new(&[1f32, 2.0, f32::NAN, 4.0], &candle_core::Device::Cpu).unwrap();
        let err = check_finite(p, "a.weight", &t).unwrap_err().to_string();
        assert!(err.contains("a.weight") && err.contains("index 2"), "{err}");
        let t = Tensor::new(&[1f32, 2.0], &candle_core::Device::Cpu).unwrap();
        assert!(check_finite(p, "a.weight", &t).is_ok());
    }
}
