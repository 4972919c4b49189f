//! The Hugging Face directory: `config.json` of the architecture, generation config,
//! tokenizer files and sharded safetensors weights.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Tensor;
use model::{Architecture, Checkpoint, ModelConfig};
use serde_json::{json, Value};

use crate::{tensor_bytes, ExportDtype, ExportError, Result};

/// `save_pretrained`'s default shard limit (5 GB).
pub const DEFAULT_SHARD_BYTES: u64 = 5_000_000_000;

/// A tensor's bytes ready for `safetensors::serialize_to_file`.
pub(crate) struct Raw {
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl safetensors::View for &Raw {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// `config.json` for `cfg` in transformers' terms. GGUF inputs get one too: their
/// [`ModelConfig`] was derived from the GGUF metadata by the loader.
pub fn config_json(cfg: &ModelConfig, dtype: ExportDtype) -> Value {
    let class = match cfg.architecture {
        Architecture::Llama => "LlamaForCausalLM",
        Architecture::Mistral => "MistralForCausalLM",
        Architecture::Qwen2 => "Qwen2ForCausalLM",
        Architecture::Qwen3 => "Qwen3ForCausalLM",
    };
    let mut c = json!({
        "architectures": [class],
        "model_type": cfg.architecture.name(),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": true,
        "torch_dtype": dtype.torch_name(),
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
    });
    let obj = c.as_object_mut().expect("json! of an object literal");
    match cfg.architecture {
        Architecture::Llama => {
            obj.insert("attention_bias".into(), json!(cfg.attention_bias));
            obj.insert("mlp_bias".into(), json!(false));
            obj.insert("pretraining_tp".into(), json!(1));
        }
        Architecture::Mistral => {
            obj.insert("sliding_window".into(), Value::Null);
        }
        Architecture::Qwen2 | Architecture::Qwen3 => {
            obj.insert("use_sliding_window".into(), json!(false));
            obj.insert("sliding_window".into(), Value::Null);
            if cfg.architecture == Architecture::Qwen3 {
                obj.insert("attention_bias".into(), json!(cfg.attention_bias));
            }
        }
    }
    c
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("a serde_json Value always serialises");
    std::fs::write(path, text + "\n").map_err(|source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// config.json, generation_config.json, tokenizer.json and tokenizer_config.json.
pub(crate) fn write_metadata_files(
    ckpt: &Checkpoint,
    dtype: ExportDtype,
    dir: &Path,
) -> Result<()> {
    let cfg = &ckpt.config;
    write_json(&dir.join("config.json"), &config_json(cfg, dtype))?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({
            "_from_model_config": true,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
        }),
    )?;
    let tok_path = dir.join("tokenizer.json");
    let text = ckpt
        .tokenizer
        .to_string(true)
        .map_err(|e| ExportError::Tensor {
            name: "tokenizer".into(),
            reason: e.to_string(),
        })?;
    std::fs::write(&tok_path, text).map_err(|source| ExportError::Io {
        path: tok_path,
        source,
    })?;
    let token = |id: Option<u32>| id.and_then(|id| ckpt.tokenizer.id_to_token(id));
    let mut tc = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.max_position_embeddings,
        "clean_up_tokenization_spaces": false,
        "bos_token": token(cfg.bos_token_id),
        "eos_token": token(cfg.eos_token_id),
    });
    if let Some(t) = &ckpt.chat_template {
        tc["chat_template"] = json!(t);
    }
    write_json(&dir.join("tokenizer_config.json"), &tc)
}

/// The weights as `model.safetensors`, or as `model-0000i-of-0000n.safetensors` shards
/// plus `model.safetensors.index.json` when they pass `max_shard_bytes`. Tensors go in
/// name order; a tensor larger than the limit gets a shard of its own. Returns the
/// weight files' names.
pub(crate) fn write_weights(
    tensors: &HashMap<String, Tensor>,
    dtype: ExportDtype,
    max_shard_bytes: u64,
    dir: &Path,
) -> Result<Vec<String>> {
    // Plan the shards from sizes alone, then convert one shard at a time, so the peak
    // memory is the masked f32 model plus one shard of bytes.
    let sorted: BTreeMap<&String, &Tensor> = tensors.iter().collect();
    let elem = dtype.bytes_per_value() as u64;
    let mut shards: Vec<Vec<&String>> = vec![Vec::new()];
    let mut current = 0u64;
    let mut total = 0u64;
    for (name, t) in &sorted {
        let len = t.elem_count() as u64 * elem;
        let last = shards.last_mut().expect("shards starts non-empty");
        if !last.is_empty() && current + len > max_shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        current += len;
        total += len;
        shards
            .last_mut()
            .expect("shards starts non-empty")
            .push(name);
    }
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let n = shards.len();
    let file_name = |i: usize| {
        if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
        }
    };
    let mut weight_map = serde_json::Map::new();
    let mut files = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = file_name(i);
        let path = dir.join(&file);
        let raws = shard
            .iter()
            .map(|name| {
                let t = sorted[name];
                Ok((
                    name.as_str(),
                    Raw {
                        dtype: dtype.safetensors(),
                        shape: t.dims().to_vec(),
                        data: tensor_bytes(name, t, dtype)?,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize_to_file(
            raws.iter().map(|(k, v)| (*k, v)),
            Some(meta.clone()),
            &path,
        )
        .map_err(|e| safetensors_err(&path, e))?;
        for name in shard {
            weight_map.insert((*name).clone(), json!(file));
        }
        files.push(file);
    }
    if n > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
        files.push("model.safetensors.index.json".into());
    }
    Ok(files)
}

/// Safetensors' I/O errors keep their `std::io::Error` so the message says "No space
/// left on device" rather than a debug dump.
pub(crate) fn safetensors_err(path: &Path, e: safetensors::SafeTensorError) -> ExportError {
    match e {
        safetensors::SafeTensorError::IoError(source) => ExportError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => ExportError::Safetensors(format!("{}: {other}", path.display())),
    }
}
