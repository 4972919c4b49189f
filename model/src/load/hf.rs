//! HF checkpoint directory loader: `config.json`, `*.safetensors` (single file or
//! shards listed in `model.safetensors.index.json`), `tokenizer.json`, and the chat
//! template from `tokenizer_config.json` (or `chat_template.jinja`, where newer
//! `transformers` versions put it).
//!
//! Safetensors files are memory-mapped and each tensor is converted to f32 once, so
//! the peak memory is the f32 model plus one mapped shard.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::{validate, Checkpoint, SourceFormat};
use crate::{Architecture, ModelConfig, ModelError, Result};

/// Load an HF directory into a validated [`Checkpoint`].
pub(crate) fn load_hf_dir(dir: &Path) -> Result<Checkpoint> {
    let config_path = dir.join("config.json");
    let config = parse_config(&config_path, &read_json(&config_path)?)?;
    validate::check_config(&config_path, &config)?;

    let mut tensors = HashMap::new();
    let mut source_dtypes = HashMap::new();
    for (shard, expected_names) in weight_files(dir)? {
        load_shard(&shard, &mut tensors, &mut source_dtypes)?;
        for name in expected_names {
            if !source_dtypes.contains_key(&name) {
                return Err(ModelError::MissingTensor {
                    path: shard,
                    tensor: name,
                });
            }
        }
    }
    validate::validate_checkpoint(dir, &config, &tensors)?;

    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(ModelError::Tokenizer {
            path: tokenizer_path,
            reason: "file not found".into(),
        });
    }
    let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| ModelError::Tokenizer {
        path: tokenizer_path.clone(),
        reason: e.to_string(),
    })?;
    let chat_template = read_chat_template(dir)?;
    Ok(Checkpoint {
        path: dir.to_path_buf(),
        format: SourceFormat::Safetensors,
        config,
        tensors,
        source_dtypes,
        tokenizer,
        chat_template,
    })
}

/// Parse `config.json`; every error names the key at fault.
pub(crate) fn parse_config(path: &Path, json: &Value) -> Result<ModelConfig> {
    let field = |k: &str, reason: String| ModelError::Field {
        path: path.to_path_buf(),
        field: k.to_string(),
        reason,
    };
    let get = |k: &str| json.get(k).filter(|v| !v.is_null());
    let req_usize = |k: &str| -> Result<usize> {
        let v = get(k).ok_or_else(|| field(k, "missing".into()))?;
        v.as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| field(k, format!("expected an unsigned integer, got {v}")))
    };
    let opt_usize = |k: &str| -> Result<Option<usize>> {
        if get(k).is_some() {
            req_usize(k).map(Some)
        } else {
            Ok(None)
        }
    };
    let opt_f64 = |k: &str| -> Result<Option<f64>> {
        match get(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| field(k, format!("expected a number, got {v}"))),
        }
    };
    let opt_bool = |k: &str| -> Result<Option<bool>> {
        match get(k) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| field(k, format!("expected true or false, got {v}"))),
        }
    };
    // `eos_token_id` is a list in some configs (Llama 3): the first is the primary one.
    let token_id = |k: &str| -> Result<Option<u32>> {
        let v = match get(k) {
            None => return Ok(None),
            Some(Value::Array(a)) => match a.first() {
                None => return Ok(None),
                Some(v) => v,
            },
            Some(v) => v,
        };
        v.as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| field(k, format!("expected a token id, got {v}")))
    };

    let model_type = get("model_type")
        .ok_or_else(|| field("model_type", "missing".into()))?
        .as_str()
        .ok_or_else(|| field("model_type", "expected a string".into()))?;
    let architecture =
        Architecture::from_name(model_type).ok_or_else(|| ModelError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            arch: model_type.to_string(),
        })?;
    // Only plain RoPE is implemented; scaled variants (llama3, yarn, linear, dynamic)
    // would silently compute a different model. transformers >= 5 moves the kind and
    // theta into `rope_parameters`, older versions write `rope_scaling` + `rope_theta`.
    for key in ["rope_scaling", "rope_parameters"] {
        if let Some(rope) = get(key) {
            let kind = rope
                .get("rope_type")
                .or_else(|| rope.get("type"))
                .and_then(|v| v.as_str());
            let plain = match kind {
                Some(kind) => kind == "default",
                None => key == "rope_parameters", // theta only
            };
            if !plain {
                return Err(field(
                    key,
                    format!("RoPE scaling {rope} is not implemented"),
                ));
            }
        }
    }
    let rope_theta = match opt_f64("rope_theta")? {
        Some(theta) => theta,
        None => match get("rope_parameters").and_then(|p| p.get("rope_theta")) {
            Some(v) => v.as_f64().ok_or_else(|| {
                field(
                    "rope_parameters.rope_theta",
                    format!("expected a number, got {v}"),
                )
            })?,
            None => 10_000.0,
        },
    };

    let hidden_size = req_usize("hidden_size")?;
    let num_attention_heads = req_usize("num_attention_heads")?;
    let head_dim = match opt_usize("head_dim")? {
        Some(d) => d,
        None if num_attention_heads > 0 => hidden_size / num_attention_heads,
        None => 0, // rejected by check_config, naming the head count
    };
    Ok(ModelConfig {
        architecture,
        vocab_size: req_usize("vocab_size")?,
        hidden_size,
        intermediate_size: req_usize("intermediate_size")?,
        num_hidden_layers: req_usize("num_hidden_layers")?,
        num_attention_heads,
        num_key_value_heads: opt_usize("num_key_value_heads")?.unwrap_or(num_attention_heads),
        head_dim,
        rms_norm_eps: opt_f64("rms_norm_eps")?
            .ok_or_else(|| field("rms_norm_eps", "missing".into()))?,
        rope_theta,
        max_position_embeddings: req_usize("max_position_embeddings")?,
        tie_word_embeddings: opt_bool("tie_word_embeddings")?.unwrap_or(false),
        // transformers' Qwen2 always builds q/k/v with bias and has no switch for it.
        attention_bias: architecture == Architecture::Qwen2
            || opt_bool("attention_bias")?.unwrap_or(false),
        qk_norm: architecture == Architecture::Qwen3,
        bos_token_id: token_id("bos_token_id")?,
        eos_token_id: token_id("eos_token_id")?,
    })
}

/// The safetensors files to read, each with the tensor names the index promises in it
/// (empty for an unindexed checkpoint). Sorted, so loading is deterministic.
fn weight_files(dir: &Path) -> Result<Vec<(PathBuf, Vec<String>)>> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        let index = read_json(&index_path)?;
        let map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Field {
                path: index_path.clone(),
                field: "weight_map".into(),
                reason: "missing or not an object".into(),
            })?;
        let mut by_file: HashMap<String, Vec<String>> = HashMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| ModelError::Field {
                path: index_path.clone(),
                field: format!("weight_map.{tensor}"),
                reason: "expected a file name".into(),
            })?;
            // Shards live next to the index; refuse paths that climb out of it.
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(ModelError::Field {
                    path: index_path.clone(),
                    field: format!("weight_map.{tensor}"),
                    reason: format!("`{file}` is not a file name in the checkpoint directory"),
                });
            }
            by_file
                .entry(file.to_string())
                .or_default()
                .push(tensor.clone());
        }
        let files: BTreeSet<_> = by_file.keys().cloned().collect();
        return Ok(files
            .into_iter()
            .map(|f| {
                let names = by_file.remove(&f).unwrap_or_default();
                (dir.join(f), names)
            })
            .collect());
    }
    let entries = std::fs::read_dir(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::Io {
            path: dir.join("model.safetensors"),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no *.safetensors weights in the checkpoint directory",
            ),
        });
    }
    Ok(files.into_iter().map(|f| (f, Vec::new())).collect())
}

/// Read one safetensors file into f32 tensors, recording each tensor's stored dtype.
fn load_shard(
    path: &Path,
    tensors: &mut HashMap<String, Tensor>,
    source_dtypes: &mut HashMap<String, String>,
) -> Result<()> {
    let file = File::open(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the map is read-only and dropped before this function returns; a
    // checkpoint rewritten by another process while we load it is outside our model,
    // as it is for every mmap-based loader (candle's, transformers').
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let malformed = |reason: String| ModelError::Malformed {
        path: path.to_path_buf(),
        format: "safetensors",
        reason,
    };
    let st = SafeTensors::deserialize(&mmap).map_err(|e| malformed(e.to_string()))?;
    let mut names = st.names();
    names.sort();
    for name in names {
        let view = st
            .tensor(name)
            .map_err(|e| malformed(format!("tensor `{name}`: {e}")))?;
        let (dtype, dtype_name) = match view.dtype() {
            Dtype::F32 => (DType::F32, "f32"),
            Dtype::F16 => (DType::F16, "f16"),
            Dtype::BF16 => (DType::BF16, "bf16"),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    tensor: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| malformed(format!("tensor `{name}`: {e}")))?;
        if tensors.insert(name.to_string(), t).is_some() {
            return Err(malformed(format!(
                "tensor `{name}` appears in more than one safetensors file"
            )));
        }
        source_dtypes.insert(name.to_string(), dtype_name.to_string());
    }
    Ok(())
}

/// Chat template from `tokenizer_config.json` (`chat_template` as a string, or a list of
/// `{name, template}` of which "default" is used), else `chat_template.jinja`.
pub(crate) fn read_chat_template(dir: &Path) -> Result<Option<String>> {
    let cfg_path = dir.join("tokenizer_config.json");
    if cfg_path.is_file() {
        let json = read_json(&cfg_path)?;
        match json.get("chat_template") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => return Ok(Some(s.clone())),
            Some(Value::Array(list)) => {
                let default = list
                    .iter()
                    .find(|e| e.get("name") == Some(&"default".into()));
                return match default
                    .and_then(|e| e.get("template"))
                    .and_then(|t| t.as_str())
                {
                    Some(t) => Ok(Some(t.to_string())),
                    None => Err(ModelError::Field {
                        path: cfg_path,
                        field: "chat_template".into(),
                        reason: "a list of templates without a `default` entry".into(),
                    }),
                };
            }
            Some(other) => {
                return Err(ModelError::Field {
                    path: cfg_path,
                    field: "chat_template".into(),
                    reason: format!("expected a string or a list, got {other}"),
                })
            }
        }
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let text = std::fs::read_to_string(&jinja).map_err(|source| ModelError::Io {
            path: jinja.clone(),
            source,
        })?;
        return Ok(Some(text));
    }
    Ok(None)
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Malformed {
        path: path.to_path_buf(),
        format: "JSON",
        reason: e.to_string(),
    })
}
