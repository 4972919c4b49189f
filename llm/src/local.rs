//! The `local` planner: a GGUF instruct model (llama or qwen2 family, e.g.
//! SmolLM2-135M-Instruct, Qwen2.5-Coder-0.5B-Instruct) run in-process with candle's
//! quantized kernels, prompted through the chat template in the GGUF metadata, with
//! decoding constrained by [`PlanGrammar`] so every answer parses and validates.
//!
//! The weights stay quantized (candle's `quantized_llama`/`quantized_qwen2`, which keep
//! a KV cache), and the tokenizer and template come from `model::load_checkpoint`.
//! `propose` is blocking and CPU-heavy; the Planner actor already calls it from
//! `spawn_blocking`. One model instance serves one generation at a time (its KV cache
//! is inside it), hence the mutex.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2};
use config::PromptConfig;
use model::{Architecture, ChatMessage, ChatTemplate};
use protocol::{Plan, PlanRequest, PlanResponse};
use tokenizers::Tokenizer;

use crate::constrained::{GrammarState, PlanGrammar, Vocab};
use crate::error::{LlmError, Result};
use crate::planner::{check_request, PlannerBackend};
use crate::prompt::build_prompt;

/// Longest reasoning the grammar lets a small model write (characters).
pub const MAX_REASONING: usize = 400;
/// Most decisions in one local plan.
pub const MAX_DECISIONS: usize = 16;

enum Weights {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
}

impl Weights {
    fn forward(&mut self, x: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        match self {
            Self::Llama(m) => m.forward(x, pos),
            Self::Qwen2(m) => m.forward(x, pos),
        }
    }
}

struct Loaded {
    weights: Weights,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    vocab: Vocab,
    context: usize,
}

/// Throughput of the last plan, for the measurements the issue asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LocalStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub seconds: f64,
}

/// A planner running a local GGUF model.
pub struct LocalBackend {
    path: PathBuf,
    model_name: String,
    temperature: f64,
    max_tokens: usize,
    prompt: PromptConfig,
    inner: Mutex<(Loaded, u64, LocalStats)>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("path", &self.path)
            .field("temperature", &self.temperature)
            .finish_non_exhaustive()
    }
}

fn err(m: impl std::fmt::Display) -> LlmError {
    LlmError::Backend {
        backend: "local".into(),
        message: m.to_string(),
    }
}

impl LocalBackend {
    /// Load the model at `path` (llama- or qwen2-family GGUF) on the CPU.
    pub fn load(
        path: &Path,
        temperature: f64,
        max_tokens: u32,
        prompt: PromptConfig,
        seed: u64,
    ) -> Result<Self> {
        let ckpt = model::load_checkpoint(path).map_err(err)?;
        let template = ChatTemplate::for_checkpoint(&ckpt).map_err(err)?;
        let device = Device::Cpu;
        let mut file =
            std::fs::File::open(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let content = gguf_file::Content::read(&mut file).map_err(err)?;
        let weights = match ckpt.config.architecture {
            Architecture::Llama | Architecture::Mistral => Weights::Llama(
                quantized_llama::ModelWeights::from_gguf(content, &mut file, &device)
                    .map_err(err)?,
            ),
            Architecture::Qwen2 => Weights::Qwen2(
                quantized_qwen2::ModelWeights::from_gguf(content, &mut file, &device)
                    .map_err(err)?,
            ),
            other => {
                return Err(err(format!(
                    "{other:?} GGUF is not supported by the local planner (llama, qwen2)"
                )))
            }
        };
        // candle's quantized llama precomputes RoPE for MAX_SEQ_LEN positions only.
        let context = match weights {
            Weights::Llama(_) => ckpt
                .config
                .max_position_embeddings
                .min(quantized_llama::MAX_SEQ_LEN),
            Weights::Qwen2(_) => ckpt.config.max_position_embeddings,
        };
        let tokenizer = ckpt.tokenizer;
        let special: std::collections::HashSet<u32> = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        let n = tokenizer.get_vocab_size(true);
        let pieces = (0..n as u32)
            .map(|id| {
                if special.contains(&id) {
                    None
                } else {
                    tokenizer.decode(&[id], false).ok()
                }
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            model_name: path.file_name().map_or_else(
                || path.display().to_string(),
                |f| f.to_string_lossy().into_owned(),
            ),
            temperature,
            max_tokens: max_tokens as usize,
            prompt,
            inner: Mutex::new((
                Loaded {
                    weights,
                    tokenizer,
                    template,
                    vocab: Vocab::new(pieces),
                    context,
                },
                seed ^ 0x10CA1,
                LocalStats::default(),
            )),
        })
    }

    /// Tokens and time of the most recent candidate.
    pub fn last_stats(&self) -> LocalStats {
        self.inner.lock().map(|g| g.2).unwrap_or_default()
    }

    fn generate(
        &self,
        system: &str,
        user: &str,
        layers: &[String],
    ) -> Result<(String, LocalStats)> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| err("model lock poisoned by an earlier panic"))?;
        let (m, rng, stats) = &mut *guard;
        let text = match &m.template {
            Some(t) => t
                .render(&[ChatMessage::system(system), ChatMessage::user(user)])
                .map_err(err)?,
            None => format!("{system}\n\n{user}\n"),
        };
        let ids = m
            .tokenizer
            .encode(text, false)
            .map_err(err)?
            .get_ids()
            .to_vec();
        let grammar = PlanGrammar::new(layers.to_vec(), MAX_REASONING, MAX_DECISIONS);
        let mut state: GrammarState = grammar.start();
        let start = Instant::now();
        let mut out = String::new();
        let mut input = ids.clone();
        let mut pos = 0;
        let mut generated = 0;
        while !state.is_done() {
            if generated >= self.max_tokens || pos + input.len() > m.context {
                return Err(err(format!(
                    "no complete plan within {generated} tokens (max_tokens {}, context {})",
                    self.max_tokens, m.context
                )));
            }
            let x = Tensor::new(input.as_slice(), &Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .map_err(err)?;
            let logits = m
                .weights
                .forward(&x, pos)
                .and_then(|l| l.flatten_all())
                .and_then(|l| l.to_dtype(DType::F32))
                .and_then(|l| l.to_vec1::<f32>())
                .map_err(err)?;
            pos += input.len();
            let (id, next) = m
                .vocab
                .pick(&grammar, &state, &logits, self.temperature, rng)
                .ok_or_else(|| err("no vocabulary token continues the plan"))?;
            out.push_str(&m.tokenizer.decode(&[id], false).map_err(err)?);
            state = next;
            input = vec![id];
            generated += 1;
        }
        *stats = LocalStats {
            prompt_tokens: ids.len(),
            generated_tokens: generated,
            seconds: start.elapsed().as_secs_f64(),
        };
        Ok((out, *stats))
    }
}

impl PlannerBackend for LocalBackend {
    fn name(&self) -> &str {
        "local"
    }

    fn propose(&self, request: &PlanRequest, k: usize) -> Result<Vec<PlanResponse>> {
        check_request(request, k)?;
        let layers: Vec<String> = request.profiles.iter().map(|p| p.name.clone()).collect();
        let names: Vec<&str> = layers.iter().map(String::as_str).collect();
        let mut out = Vec::with_capacity(k);
        for i in 0..k {
            let prompt = build_prompt(request, &self.prompt, i, k);
            let start = Instant::now();
            let (text, stats) = self.generate(&prompt.system, &prompt.user, &layers)?;
            // The grammar guarantees this; checking keeps a grammar bug from slipping through.
            let plan = Plan::from_json(&text)
                .ok()
                .filter(|p| p.validate(&names).is_empty())
                .ok_or_else(|| LlmError::InvalidAnswer {
                    backend: "local".into(),
                    reason: format!("constrained decoding produced an invalid plan: {text}"),
                })?;
            out.push(PlanResponse {
                plan,
                backend: "local".into(),
                model: Some(self.model_name.clone()),
                system_prompt: prompt.system,
                user_prompt: prompt.user,
                raw_response: text,
                latency_ms: start.elapsed().as_millis() as u64,
                input_tokens: Some(stats.prompt_tokens as u64),
                output_tokens: Some(stats.generated_tokens as u64),
            });
        }
        Ok(out)
    }
}
