//! The `local` planner: a GGUF instruct model (llama or qwen2 family, e.g.
//! SmolLM2-135M-Instruct, Qwen2.5-Coder-0.5B-Instruct) run in-process on the CPU,
//! prompted through the chat template in the GGUF metadata, with decoding constrained
//! by [`PlanGrammar`] so every answer parses and validates.
//!
//! The weights stay quantized ([`net`]); only the header of the file (config, tokenizer,
//! template) goes through `model`, so no weight is dequantized to f32 just to be
//! dropped. A generation cuts the KV cache back to the prefix the new prompt shares
//! with what the cache holds (the system prompt across iterations; for K candidates of
//! one iteration, everything before the candidate line), prefills the rest in chunks,
//! then decodes one token per forward pass, choosing each with [`Vocab::pick`].
//!
//! `propose` is blocking and CPU-heavy; the Planner actor calls it from
//! `spawn_blocking`, off the async executor. One model instance serves one generation
//! at a time (its cache is shared state), hence the mutex.

pub mod choose;
#[cfg(feature = "llguidance")]
pub mod llg;
pub mod net;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use config::PromptConfig;
use model::{ChatMessage, ChatTemplate};
use protocol::{Plan, PlanRequest, PlanResponse};
use tokenizers::Tokenizer;

use crate::constrained::PlanGrammar;
use crate::error::{LlmError, Result};
use crate::planner::{check_request, PlannerBackend};
use crate::prompt::{build_prompt_listing, listing, Prompt};
use crate::vocab::Vocab;
use choose::{Chooser, GrammarChooser, Tokens};
use net::Net;

/// The planner model `secateur prune --planner local` uses when none is named.
pub const DEFAULT_MODEL: &str = "assets/models/Qwen2.5-Coder-0.5B-Instruct.gguf";
/// Longest reasoning the grammar lets a small model write (characters).
pub const MAX_REASONING: usize = 400;

/// Where the time of one plan went, for the measurements the issue asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LocalStats {
    pub prompt_tokens: usize,
    /// Prompt tokens resumed from the cache instead of computed.
    pub cached_tokens: usize,
    /// Computing the prompt's other tokens.
    pub prefill_seconds: f64,
    pub generated_tokens: usize,
    /// Of those, tokens of text the grammar fixed, fed without asking the model.
    pub forced_tokens: usize,
    /// Forward passes while generating (one per chosen token or forced batch).
    pub decode_passes: usize,
    /// Generating the answer (forward passes and token choice).
    pub decode_seconds: f64,
    /// The part of `decode_seconds` spent choosing tokens (scores, grammar, trie,
    /// tokenizing forced text).
    pub pick_seconds: f64,
    /// The whole plan, from prompt to answer.
    pub seconds: f64,
}

impl LocalStats {
    /// Prompt tokens computed per second.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        (self.prompt_tokens - self.cached_tokens) as f64 / self.prefill_seconds.max(1e-9)
    }

    /// Answer tokens per second.
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.generated_tokens as f64 / self.decode_seconds.max(1e-9)
    }
}

/// The model and what one generation at a time uses.
struct State {
    net: Net,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    vocab: Vocab,
    rng: u64,
    /// The tokens whose keys and values the cache holds, in order.
    cached: Vec<u32>,
}

/// A planner running a local GGUF model.
pub struct LocalBackend {
    path: PathBuf,
    model_name: String,
    temperature: f64,
    max_tokens: usize,
    prompt: PromptConfig,
    requantized: usize,
    context: usize,
    inner: Mutex<State>,
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

fn poisoned() -> LlmError {
    err("model lock poisoned by an earlier panic")
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
        let named = |e: &dyn std::fmt::Display| err(format!("{}: {e}", path.display()));
        let mut file = std::fs::File::open(path).map_err(|e| named(&e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| named(&e))?;
        let header = model::gguf_header(path, &content).map_err(err)?;
        let template = ChatTemplate::from_parts(
            header.chat_template.as_deref(),
            &header.tokenizer,
            &header.config,
            path,
        )
        .map_err(err)?;
        let net = Net::load(&header.config, &content, &mut file).map_err(|e| named(&e))?;
        let vocab = vocab_of(&header.tokenizer);
        Ok(Self {
            path: path.to_path_buf(),
            model_name: path.file_name().map_or_else(
                || path.display().to_string(),
                |f| f.to_string_lossy().into_owned(),
            ),
            temperature,
            max_tokens: max_tokens as usize,
            prompt,
            requantized: net.requantized,
            context: net.context,
            inner: Mutex::new(State {
                net,
                tokenizer: header.tokenizer,
                template,
                vocab,
                rng: seed ^ 0x10CA1,
                cached: Vec::new(),
            }),
        })
    }

    /// List `n` layers in the prompt instead of `[prompt] listed_layers` (0 = all).
    pub fn with_listed_layers(mut self, n: usize) -> Self {
        self.prompt.listed_layers = n;
        self
    }

    /// The prompt for candidate `candidate` of `k` and the layers its answer may name:
    /// the [`listing`] of the request's layers (a shortlist by default).
    pub fn plan_prompt(
        &self,
        request: &PlanRequest,
        candidate: usize,
        k: usize,
    ) -> (Prompt, Vec<String>) {
        let listed = listing(request, &self.prompt);
        let prompt = build_prompt_listing(request, &self.prompt, candidate, k, &listed);
        (prompt, listed.into_iter().map(|p| p.name).collect())
    }

    /// Tensors re-encoded as Q8_0 at load.
    pub fn requantized(&self) -> usize {
        self.requantized
    }

    /// Longest prompt + answer the model takes, in tokens.
    pub fn context(&self) -> usize {
        self.context
    }

    /// The length of `system` + `user` as the model sees it, in tokens.
    pub fn prompt_tokens(&self, system: &str, user: &str) -> Result<usize> {
        let st = self.inner.lock().map_err(|_| poisoned())?;
        Ok(st.encode(system, user)?.len())
    }

    /// One answer to `system` + `user` constrained by `grammar` (see [`plan_grammar`]):
    /// the plan's JSON text, and where the time went.
    pub fn generate(
        &self,
        system: &str,
        user: &str,
        grammar: &PlanGrammar,
    ) -> Result<(String, LocalStats)> {
        self.generate_with(system, user, &mut GrammarChooser::new(grammar))
    }

    /// One answer to `system` + `user` whose tokens `chooser` picks.
    pub fn generate_with(
        &self,
        system: &str,
        user: &str,
        chooser: &mut dyn Chooser,
    ) -> Result<(String, LocalStats)> {
        let mut guard = self.inner.lock().map_err(|_| poisoned())?;
        let st = &mut *guard;
        let start = Instant::now();
        let ids = st.encode(system, user)?;
        if ids.is_empty() || ids.len() >= self.context {
            return Err(err(format!(
                "the prompt has {} tokens, the model's context {}",
                ids.len(),
                self.context
            )));
        }
        let (mut logits, cached) = st.prefill(&ids)?;
        let prefill_seconds = start.elapsed().as_secs_f64();

        let decode_start = Instant::now();
        let mut out = String::new();
        let (mut generated, mut forced, mut passes, mut pick_seconds) = (0, 0, 0, 0.0);
        while !chooser.is_done() {
            if generated >= self.max_tokens || ids.len() + generated >= self.context {
                return Err(err(format!(
                    "no complete plan within {generated} tokens (max_tokens {}, context {})",
                    self.max_tokens, self.context
                )));
            }
            let t = Instant::now();
            let tokens = Tokens {
                vocab: &st.vocab,
                tokenizer: &st.tokenizer,
            };
            let step = chooser
                .next(&tokens, &logits, self.temperature, &mut st.rng)?
                .ok_or_else(|| err("no vocabulary token continues the plan"))?;
            if step.forced {
                forced += step.ids.len();
            }
            out.push_str(&step.text);
            pick_seconds += t.elapsed().as_secs_f64();
            generated += step.ids.len();
            if !chooser.is_done() {
                logits = st.step(&step.ids)?;
                passes += 1;
            }
        }
        let stats = LocalStats {
            prompt_tokens: ids.len(),
            cached_tokens: cached,
            prefill_seconds,
            generated_tokens: generated,
            forced_tokens: forced,
            decode_passes: passes,
            decode_seconds: decode_start.elapsed().as_secs_f64(),
            pick_seconds,
            seconds: start.elapsed().as_secs_f64(),
        };
        Ok((out, stats))
    }
}

/// Each token's text as the tokenizer decodes it alone; special tokens get none (the
/// grammar never needs them, and an end-of-turn token must not end a plan early).
fn vocab_of(tokenizer: &Tokenizer) -> Vocab {
    let special: std::collections::HashSet<u32> = tokenizer
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id)
        .collect();
    let n = tokenizer.get_vocab_size(true);
    Vocab::new(
        (0..n as u32)
            .map(|id| {
                if special.contains(&id) {
                    None
                } else {
                    tokenizer.decode(&[id], false).ok()
                }
            })
            .collect(),
    )
}

impl State {
    fn encode(&self, system: &str, user: &str) -> Result<Vec<u32>> {
        let text = match &self.template {
            Some(t) => t
                .render(&[ChatMessage::system(system), ChatMessage::user(user)])
                .map_err(err)?,
            None => format!("{system}\n\n{user}\n"),
        };
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(err)?
            .get_ids()
            .to_vec())
    }

    /// Bring the cache to `ids` (keeping the prefix it shares with them, at least one
    /// token short so there are logits to return): the logits for the next token, and
    /// how many prompt tokens were reused.
    fn prefill(&mut self, ids: &[u32]) -> Result<(Vec<f32>, usize)> {
        let shared = self
            .cached
            .iter()
            .zip(ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len() - 1);
        self.net.truncate(shared);
        self.cached.truncate(shared);
        let logits = self.net.prefill(&ids[shared..]);
        // On failure the cache may hold part of the new tokens: start afresh next time.
        let logits = logits.inspect_err(|_| self.reset()).map_err(err)?;
        self.cached.extend_from_slice(&ids[shared..]);
        Ok((logits, shared))
    }

    /// Feed generated tokens; the logits for the next.
    fn step(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let logits = self.net.forward(ids);
        let logits = logits.inspect_err(|_| self.reset()).map_err(err)?;
        self.cached.extend_from_slice(ids);
        Ok(logits)
    }

    fn reset(&mut self) {
        self.net.truncate(0);
        self.cached.clear();
    }
}

/// The grammar of a plan for `request` over the listed `layers`: any of them, each at
/// most once, `stop_pruning` only when [`may_stop`], and at least the critic's minimum
/// gain (`constraints.min_gain`, δs counted up to the layer cap as the critic amends
/// them), so a schema-valid answer is never vetoed for too little progress.
pub fn plan_grammar(request: &PlanRequest, layers: &[String]) -> PlanGrammar {
    let by_name: std::collections::HashMap<&str, &protocol::LayerProfile> = request
        .profiles
        .iter()
        .map(|p| (p.name.as_str(), p))
        .collect();
    let cap = request.constraints.max_layer_sparsity.min(1.0);
    let weights: Vec<(u64, f64)> = layers
        .iter()
        .map(|l| {
            by_name
                .get(l.as_str())
                .map_or((0, 0.0), |p| (p.params, cap - p.sparsity))
        })
        .collect();
    let total = request.profiles.iter().map(|p| p.params).sum();
    let grammar = PlanGrammar::new(layers.to_vec(), MAX_REASONING, layers.len()).with_min_gain(
        &weights,
        total,
        request.constraints.min_gain,
    );
    if may_stop(request) {
        grammar
    } else {
        grammar.without_stop()
    }
}

/// Whether a local plan may say `stop_pruning`: only once the target is reached. A small
/// model says it at random (3 of 6 SmolLM2-135M and 4 of 5 Qwen2.5-0.5B plans in the
/// bench, all far from the target), and Algorithm 1 ends the run on it.
pub fn may_stop(request: &PlanRequest) -> bool {
    protocol::target_reached(request.current_sparsity, request.target_sparsity)
}

impl PlannerBackend for LocalBackend {
    fn name(&self) -> &str {
        "local"
    }

    fn propose(&self, request: &PlanRequest, k: usize) -> Result<Vec<PlanResponse>> {
        check_request(request, k)?;
        let names = request.layer_names();
        let mut out = Vec::with_capacity(k);
        for i in 0..k {
            let (prompt, layers) = self.plan_prompt(request, i, k);
            let start = Instant::now();
            let grammar = plan_grammar(request, &layers);
            let (text, stats) = self.generate(&prompt.system, &prompt.user, &grammar)?;
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
