//! GGUF loader (llama.cpp files): metadata → [`ModelConfig`], tensors dequantised to
//! f32 by candle (`QTensor::dequantize`, no hand-written block decoding), llama.cpp
//! names mapped to HF names, tokenizer built from the GGUF vocabulary by candle's
//! `TokenizerFromGguf`.
//!
//! The one non-obvious step is [`unpermute_rope_rows`]: llama.cpp's converter
//! reorders the rows of q_proj / k_proj of *llama*-architecture models so that its
//! interleaved RoPE (pairs 2i, 2i+1) computes what HF's rotate-half RoPE (pairs
//! i, i + d/2) computes on the original rows. Our forward pass uses HF's RoPE on HF
//! layouts, so those rows are put back. Qwen2/Qwen3 files are converted without the
//! permutation (llama.cpp runs them with NEOX = rotate-half RoPE) and are left as is.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;

use super::{validate, Checkpoint, SourceFormat};
use crate::{Architecture, ModelConfig, ModelError, Result};

/// Whether the file starts with the GGUF magic (lets `load_checkpoint` accept a GGUF
/// file whatever its extension).
pub(crate) fn has_gguf_magic(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// Load a `.gguf` file into a validated [`Checkpoint`].
pub(crate) fn load_gguf(path: &Path) -> Result<Checkpoint> {
    let file = File::open(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| malformed(path, e.to_string()))?;

    let arch_name = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .ok_or_else(|| field(path, "general.architecture", "missing or not a string"))?
        .clone();
    let arch = match Architecture::from_name(&arch_name) {
        Some(a @ (Architecture::Llama | Architecture::Qwen2 | Architecture::Qwen3)) => a,
        _ => {
            return Err(ModelError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                arch: arch_name,
            })
        }
    };
    let config = config_from_metadata(path, &content, &arch_name, arch)?;
    validate::check_config(path, &config)?;

    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = HashMap::with_capacity(names.len());
    let mut source_dtypes = HashMap::with_capacity(names.len());
    for gguf_name in names {
        let hf = hf_name(gguf_name).ok_or_else(|| ModelError::UnsupportedTensor {
            path: path.to_path_buf(),
            tensor: gguf_name.clone(),
            reason: unknown_tensor_reason(gguf_name),
        })?;
        let dtype = content.tensor_infos[gguf_name].ggml_dtype;
        let dtype_name =
            supported_dtype_name(dtype).ok_or_else(|| ModelError::UnsupportedDtype {
                path: path.to_path_buf(),
                tensor: gguf_name.clone(),
                dtype: format!("{dtype:?}"),
            })?;
        let tensor_err =
            |e: candle_core::Error| malformed(path, format!("tensor `{gguf_name}`: {e}"));
        let qt = content
            .tensor(&mut reader, gguf_name, &Device::Cpu)
            .map_err(tensor_err)?;
        let mut t = qt
            .dequantize(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(tensor_err)?;
        if arch == Architecture::Llama {
            let n_head = if hf.contains(".q_proj.") {
                Some(config.num_attention_heads)
            } else if hf.contains(".k_proj.") {
                Some(config.num_key_value_heads)
            } else {
                None
            };
            if let Some(n_head) = n_head {
                // Fails only when the rows do not split into heads, i.e. the shape is
                // wrong: report it as the shape error validation would give.
                t = unpermute_rope_rows(&t, n_head).map_err(|_| {
                    let mut expected = t.dims().to_vec();
                    match expected.first_mut() {
                        Some(rows) => *rows = n_head * config.head_dim,
                        None => expected.push(n_head * config.head_dim),
                    }
                    ModelError::ShapeMismatch {
                        path: path.to_path_buf(),
                        tensor: hf.clone(),
                        expected,
                        actual: t.dims().to_vec(),
                    }
                })?;
            }
        }
        source_dtypes.insert(hf.clone(), dtype_name.to_string());
        tensors.insert(hf, t);
    }
    validate::validate_checkpoint(path, &config, &tensors)?;

    let tokenizer = gguf_tokenizer(path, &content)?;
    let chat_template = gguf_chat_template(&content);
    Ok(Checkpoint {
        path: path.to_path_buf(),
        format: SourceFormat::Gguf,
        config,
        tensors,
        source_dtypes,
        tokenizer,
        chat_template,
    })
}

/// What a GGUF file says about the model without its tensors.
pub struct GgufHeader {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    /// Jinja chat template from `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// Config, tokenizer and chat template of an already-read GGUF `content`, without
/// dequantising any tensor: for callers that run the file through another engine (the
/// local planner runs candle's quantized models), which would otherwise turn every
/// weight into f32 (2.5 GB and ~7 s for Qwen2.5-0.5B) only to drop them.
pub fn gguf_header(path: &Path, content: &Content) -> Result<GgufHeader> {
    let arch_name = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .ok_or_else(|| field(path, "general.architecture", "missing or not a string"))?;
    let arch =
        Architecture::from_name(arch_name).ok_or_else(|| ModelError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            arch: arch_name.clone(),
        })?;
    let config = config_from_metadata(path, content, arch_name, arch)?;
    validate::check_config(path, &config)?;
    Ok(GgufHeader {
        config,
        tokenizer: gguf_tokenizer(path, content)?,
        chat_template: gguf_chat_template(content),
    })
}

fn gguf_tokenizer(path: &Path, content: &Content) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::from_gguf(content).map_err(|e| ModelError::Tokenizer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    fix_pre_tokenizer(&mut tokenizer, content);
    Ok(tokenizer)
}

fn gguf_chat_template(content: &Content) -> Option<String> {
    content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned()
}

/// Pre-tokenizers that candle's `TokenizerFromGguf` does not special-case fall back to
/// `ByteLevel::default()`, which *adds a prefix space* ("Hello" → "ĠHello"). HF byte-level
/// BPE tokenizers (GPT-2, SmolLM) do not, and llama.cpp only does when
/// `tokenizer.ggml.add_space_prefix` is true; with the default the token ids differ from
/// the ones the model was trained on and decode(encode(x)) gains a leading space.
/// SmolLM additionally splits digits one by one before the byte-level step (its HF
/// `tokenizer.json`: `Sequence[Digits(individual_digits), ByteLevel]`).
fn fix_pre_tokenizer(tokenizer: &mut Tokenizer, content: &Content) {
    use tokenizers::pre_tokenizers::{
        byte_level::ByteLevel, digits::Digits, sequence::Sequence, PreTokenizerWrapper,
    };
    let md = &content.metadata;
    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map(|s| s.as_str())
        .unwrap_or("gpt2");
    // The pipelines candle builds on purpose for these names are right as they are.
    if matches!(pre, "qwen2" | "llama3" | "smaug-bpe" | "lfm2") {
        return;
    }
    let add_prefix_space = md
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    let byte_level = ByteLevel::new(add_prefix_space, true, true);
    let pre_tokenizer: PreTokenizerWrapper = if pre == "smollm" {
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
    } else {
        byte_level.into()
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
}

/// Undo llama.cpp's q/k row permutation for `n_head` heads.
///
/// The converter computes, per head of `d` rows,
/// `w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2).reshape(w.shape)`, i.e. GGUF row
/// `2i + j` of a head is HF row `j·d/2 + i` (interleaving the two halves). The
/// inverse reads the rows as `(n_head, d/2, 2, ...)` and swaps the middle axes back.
/// Works for weights `[n_head·d, in]` and biases `[n_head·d]`.
pub fn unpermute_rope_rows(t: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims.first().copied().unwrap_or(0);
    if n_head == 0
        || rows == 0
        || !rows.is_multiple_of(n_head)
        || !(rows / n_head).is_multiple_of(2)
    {
        candle_core::bail!("{rows} rows do not split into {n_head} heads of even size");
    }
    let mut split = vec![n_head, rows / n_head / 2, 2];
    split.extend_from_slice(&dims[1..]);
    t.reshape(split)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// llama.cpp's q/k row permutation (convert_hf_to_gguf.py `permute`), the inverse of
/// [`unpermute_rope_rows`]: HF row `j·d/2 + i` of a head becomes GGUF row `2i + j`.
/// Needed to write llama q/k weights back into a GGUF file.
pub fn permute_rope_rows(t: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims.first().copied().unwrap_or(0);
    if n_head == 0
        || rows == 0
        || !rows.is_multiple_of(n_head)
        || !(rows / n_head).is_multiple_of(2)
    {
        candle_core::bail!("{rows} rows do not split into {n_head} heads of even size");
    }
    let mut split = vec![n_head, 2, rows / n_head / 2];
    split.extend_from_slice(&dims[1..]);
    t.reshape(split)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// Storage types we dequantise, with their display name; `None` for the rest
/// (intermediate dot-product formats never written to files by llama.cpp).
fn supported_dtype_name(dtype: GgmlDType) -> Option<&'static str> {
    Some(match dtype {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        _ => return None,
    })
}

/// llama.cpp tensor name → HF checkpoint name, `None` when the engine has no use for it.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf_module = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_module}.{suffix}"))
}

fn unknown_tensor_reason(name: &str) -> String {
    if name.starts_with("rope_freqs") {
        "llama3-style RoPE frequency scaling is not implemented".into()
    } else {
        "not a tensor of the llama / qwen2 / qwen3 layouts this engine implements".into()
    }
}

/// Build the config from `{arch}.*` and `tokenizer.ggml.*` metadata.
fn config_from_metadata(
    path: &Path,
    content: &Content,
    prefix: &str,
    arch: Architecture,
) -> Result<ModelConfig> {
    let md = &content.metadata;
    let key = |k: &str| format!("{prefix}.{k}");
    let req_usize = |k: &str| -> Result<usize> {
        let k = key(k);
        let v = md.get(&k).ok_or_else(|| field(path, &k, "missing"))?;
        as_u64(v).map(|v| v as usize).ok_or_else(|| {
            field(
                path,
                &k,
                &format!("expected an unsigned integer, got {v:?}"),
            )
        })
    };
    let opt_usize = |k: &str| -> Result<Option<usize>> {
        if md.contains_key(&key(k)) {
            req_usize(k).map(Some)
        } else {
            Ok(None)
        }
    };
    let opt_f64 = |k: &str| -> Result<Option<f64>> {
        let k = key(k);
        match md.get(&k) {
            None => Ok(None),
            Some(v) => as_f64(v)
                .map(Some)
                .ok_or_else(|| field(path, &k, &format!("expected a number, got {v:?}"))),
        }
    };

    if let Some(v) = md.get(&key("rope.scaling.type")) {
        let kind = v.to_string().map(|s| s.as_str()).unwrap_or("?");
        if kind != "none" {
            return Err(field(
                path,
                &key("rope.scaling.type"),
                &format!("RoPE scaling `{kind}` is not implemented"),
            ));
        }
    }

    let hidden_size = req_usize("embedding_length")?;
    let num_attention_heads = req_usize("attention.head_count")?;
    let num_key_value_heads = opt_usize("attention.head_count_kv")?.unwrap_or(num_attention_heads);
    let head_dim = match opt_usize("attention.key_length")? {
        Some(d) => d,
        None if num_attention_heads > 0 => hidden_size / num_attention_heads,
        None => 0, // rejected by check_config, naming the head count
    };
    let rms_norm_eps = opt_f64("attention.layer_norm_rms_epsilon")?
        .ok_or_else(|| field(path, &key("attention.layer_norm_rms_epsilon"), "missing"))?;

    // The embedding matrix is what the model computes over; the token list can be
    // shorter (padded vocabularies), so prefer the tensor's row count.
    let vocab_size = match content.tensor_infos.get("token_embd.weight") {
        Some(info) => info.shape.dims().first().copied().unwrap_or(0),
        None => match opt_usize("vocab_size")? {
            Some(v) => v,
            None => md
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.len())
                .ok_or_else(|| field(path, &key("vocab_size"), "missing, and no token list"))?,
        },
    };
    let token_id = |k: &str| -> Result<Option<u32>> {
        match md.get(k) {
            None => Ok(None),
            Some(v) => as_u64(v)
                .and_then(|v| u32::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| field(path, k, &format!("expected a token id, got {v:?}"))),
        }
    };

    Ok(ModelConfig {
        architecture: arch,
        vocab_size,
        hidden_size,
        intermediate_size: req_usize("feed_forward_length")?,
        num_hidden_layers: req_usize("block_count")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps,
        rope_theta: opt_f64("rope.freq_base")?.unwrap_or(10_000.0),
        max_position_embeddings: req_usize("context_length")?,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        attention_bias: arch == Architecture::Qwen2,
        qk_norm: arch == Architecture::Qwen3,
        bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: token_id("tokenizer.ggml.eos_token_id")?,
    })
}

/// Any non-negative integer metadata value (writers differ in the width they use).
fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::F32(x) => Some(*x as f64),
        Value::F64(x) => Some(*x),
        other => as_u64(other).map(|x| x as f64),
    }
}

fn malformed(path: &Path, reason: String) -> ModelError {
    ModelError::Malformed {
        path: path.to_path_buf(),
        format: "GGUF",
        reason,
    }
}

fn field(path: &Path, key: &str, reason: &str) -> ModelError {
    ModelError::Field {
        path: path.to_path_buf(),
        field: key.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's `permute` from convert_hf_to_gguf.py, written independently of the
    /// inverse: `w.reshape(n_head, 2, d/2, in).swapaxes(1, 2).reshape(w.shape)`.
    fn permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
        let half = rows / n_head / 2;
        let mut out = vec![0f32; w.len()];
        // out index (h, i, j) <- in index (h, j, i)
        for h in 0..n_head {
            for i in 0..half {
                for j in 0..2 {
                    let dst = h * 2 * half + i * 2 + j;
                    let src = h * 2 * half + j * half + i;
                    out[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_the_converter_permutation() {
        for (n_head, head_dim, cols) in [(3usize, 8usize, 5usize), (1, 2, 1), (4, 64, 3)] {
            let rows = n_head * head_dim;
            let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            let gguf = permute(&hf, rows, cols, n_head);
            if head_dim > 2 {
                assert_ne!(gguf, hf, "the permutation must move rows for head_dim > 2");
            }
            let t = Tensor::from_vec(gguf, (rows, cols), &Device::Cpu).unwrap();
            let back = unpermute_rope_rows(&t, n_head).unwrap();
            assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), hf);
        }
    }

    #[test]
    fn permute_is_the_converter_permutation_and_inverts_unpermute() {
        let (rows, cols, n_head) = (16, 3, 2);
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let t = Tensor::from_vec(hf.clone(), (rows, cols), &Device::Cpu).unwrap();
        let ours = permute_rope_rows(&t, n_head).unwrap();
        let theirs = permute(&hf, rows, cols, n_head);
        assert_eq!(
            ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            theirs
        );
        let back = unpermute_rope_rows(&ours, n_head).unwrap();
        assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), hf);
        assert!(permute_rope_rows(&t, 3).is_err());
    }

    #[test]
    fn unpermute_row_mapping_is_the_documented_one() {
        // One head of 6 rows: GGUF rows are [h0, h3, h1, h4, h2, h5] of HF.
        let gguf = Tensor::new(&[0f32, 3., 1., 4., 2., 5.], &Device::Cpu).unwrap();
        let hf = unpermute_rope_rows(&gguf, 1).unwrap();
        assert_eq!(hf.to_vec1::<f32>().unwrap(), vec![0., 1., 2., 3., 4., 5.]);
        assert!(unpermute_rope_rows(&gguf, 4).is_err());
    }

    #[test]
    fn names_map_to_hf() {
        for (g, h) in [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            (
                "blk.12.attn_q.bias",
                "model.layers.12.self_attn.q_proj.bias",
            ),
            (
                "blk.0.attn_output.weight",
                "model.layers.0.self_attn.o_proj.weight",
            ),
            (
                "blk.3.ffn_down.weight",
                "model.layers.3.mlp.down_proj.weight",
            ),
            (
                "blk.3.attn_norm.weight",
                "model.layers.3.input_layernorm.weight",
            ),
            (
                "blk.3.ffn_norm.weight",
                "model.layers.3.post_attention_layernorm.weight",
            ),
            (
                "blk.1.attn_k_norm.weight",
                "model.layers.1.self_attn.k_norm.weight",
            ),
        ] {
            assert_eq!(hf_name(g).as_deref(), Some(h), "{g}");
        }
        for g in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk.1.attn_q.scale",
        ] {
            assert_eq!(hf_name(g), None, "{g}");
        }
    }
}
