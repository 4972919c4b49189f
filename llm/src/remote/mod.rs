//! Hosted planner backends (`openai`, `gemini`, `anthropic`): one [`RemoteBackend`]
//! generic over the API's [`Wire`] format, so retries, timeouts, the repair round and
//! the recorded prompt/answer behave identically whichever service answers.
//!
//! Per candidate: build the prompt, call (with [`Transport`]'s retries), parse and
//! validate the plan against the request's layer names; when the answer is not valid
//! JSON, violates the schema or names unknown layers or out-of-range δs, send the
//! errors back once (the repair round). A candidate that still fails fails the whole
//! call, so the configured fallback backend (see [`crate::factory`]) answers instead of
//! a partial, unaudited mix.
//!
//! Structured output: the request asks for the portable plan schema
//! ([`protocol::plan_schema`]). When a server refuses it anyway (a 400 naming the
//! response format, the schema or its grammar, or a 500 naming the response format,
//! [`Wire::refuses_schema`]), the call is sent again in [`JsonMode::ObjectSchema`]
//! (`json_object` with the schema, which llama.cpp-based servers enforce, plus the
//! schema in the prompt), then in [`JsonMode::Object`] (the schema in the prompt only),
//! and the answer goes through the same check and repair round. The backend
//! remembers the mode, so later plans do not pay the refused request again, and
//! records it in `PlanResponse::backend` (`openai (json_object mode: …)`), which the
//! per-iteration planner line of `secateur prune` and report.json show.

pub mod transport;
pub mod wire;

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use config::{BackendConfig, PromptConfig};
use protocol::{
    plan_json_schema, target_reached, Plan, PlanError, PlanRequest, PlanResponse, PlanSchema,
};

use crate::error::{LlmError, Result};
use crate::planner::{check_request, PlannerBackend};
use crate::prompt::{build_prompt_listing, listing};
pub use transport::{CallError, RetryPolicy, Secret, Transport};
pub use wire::{Answer, Anthropic, Conversation, Gemini, JsonMode, OpenAi, Sampling, Wire};

/// A planner that asks a hosted model through API `W`.
pub struct RemoteBackend<W: Wire> {
    wire: W,
    base_url: String,
    sampling: Sampling,
    prompt: PromptConfig,
    transport: Transport,
    /// How far down the [`JsonMode`] ladder the server's refusals have sent this
    /// backend (0 = schema); every later call starts there (per backend, i.e. per
    /// planner).
    mode: AtomicU8,
}

impl<W: Wire> fmt::Debug for RemoteBackend<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteBackend")
            .field("api", &self.wire.name())
            .field("base_url", &self.base_url)
            .field("sampling", &self.sampling)
            .field("transport", &self.transport)
            .field("mode", &self.mode())
            .finish()
    }
}

/// The outcome of one candidate: the accepted plan and the exchange that produced it.
struct Exchange {
    plan: Plan,
    raw: String,
    repair_note: Option<String>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

/// Token counts of both calls of a repair round: the sum when both reported one.
fn add_tokens(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        _ => None,
    }
}

impl<W: Wire> RemoteBackend<W> {
    /// Backend for `cfg` with an already resolved key (see [`crate::factory`], which
    /// reads it from the environment variable the config names) and retry policy.
    pub fn new(
        wire: W,
        cfg: &BackendConfig,
        prompt: PromptConfig,
        key: Secret,
        policy: RetryPolicy,
        seed: u64,
    ) -> Self {
        Self::with_timeout(
            wire,
            cfg,
            prompt,
            key,
            policy,
            Duration::from_secs(cfg.timeout_secs.max(1)),
            seed,
        )
    }

    /// As [`Self::new`] with an explicit per-request timeout (tests use sub-second ones).
    pub fn with_timeout(
        wire: W,
        cfg: &BackendConfig,
        prompt: PromptConfig,
        key: Secret,
        policy: RetryPolicy,
        timeout: Duration,
        seed: u64,
    ) -> Self {
        let base_url = cfg
            .base_url
            .clone()
            .unwrap_or_else(|| wire.default_base_url().to_string());
        Self {
            sampling: Sampling {
                model: cfg.model.clone().unwrap_or_default(),
                temperature: cfg.temperature,
                max_tokens: cfg.max_tokens,
            },
            wire,
            base_url,
            prompt,
            transport: Transport::new(timeout, policy, key, seed),
            mode: AtomicU8::new(0),
        }
    }

    /// The JSON mode calls use now.
    pub fn mode(&self) -> JsonMode {
        match self.mode.load(Ordering::Relaxed) {
            0 => JsonMode::Schema,
            1 => JsonMode::ObjectSchema,
            _ => JsonMode::Object,
        }
    }

    fn set_mode(&self, mode: JsonMode) {
        let step = match mode {
            JsonMode::Schema => 0,
            JsonMode::ObjectSchema => 1,
            JsonMode::Object => 2,
        };
        self.mode.store(step, Ordering::Relaxed);
    }

    /// `PlanResponse::backend`: the API's name, and the JSON mode when it is not the
    /// default one.
    fn recorded_name(&self) -> String {
        match self.mode() {
            JsonMode::Schema => self.wire.name().to_string(),
            m => format!("{} ({})", self.wire.name(), m.label()),
        }
    }

    fn backend_err(&self, message: String) -> LlmError {
        LlmError::Backend {
            backend: self.wire.name().to_string(),
            message,
        }
    }

    /// One model call: the answer text, or a transport/service error. A refusal of the
    /// schema moves this backend one step down the [`JsonMode`] ladder and sends the
    /// call again, until a mode is accepted or none is left.
    fn ask(&self, conv: &Conversation, schema: &PlanSchema) -> Result<Answer> {
        let mut mode = self.mode();
        let mut refusals: Vec<String> = Vec::new();
        let body = loop {
            match self.send(conv, schema, mode) {
                Ok(body) => break body,
                Err(CallError::Refused { status, body })
                    if self.wire.refuses_schema(status, &body) && mode.next().is_some() =>
                {
                    refusals.push(format!("{} refused with HTTP {status}", mode.name()));
                    mode = mode.next().unwrap_or(mode);
                    self.set_mode(mode);
                }
                Err(e) if refusals.is_empty() => return Err(self.backend_err(e.to_string())),
                Err(e) => {
                    return Err(self.backend_err(format!(
                        "{e} ({}, after: {})",
                        mode.name(),
                        refusals.join("; ")
                    )))
                }
            }
        };
        self.read(&body)
    }

    fn send(
        &self,
        conv: &Conversation,
        schema: &PlanSchema,
        mode: JsonMode,
    ) -> std::result::Result<serde_json::Value, CallError> {
        let call = self.wire.request(
            &self.base_url,
            self.transport.key(),
            &self.sampling,
            conv,
            schema,
            mode,
        );
        // While a mode is left to try, a 5xx that refuses the schema goes to `ask` at once
        // (not retried).
        let refused = |status: u16, body: &str| {
            mode.next().is_some() && self.wire.refuses_schema(status, body)
        };
        self.transport.post_json(&call, &refused)
    }

    fn read(&self, body: &serde_json::Value) -> Result<Answer> {
        self.wire
            .answer(body)
            .map_err(|m| self.backend_err(self.transport.key().scrub(&m)))
    }

    fn candidate(
        &self,
        system: &str,
        user: &str,
        layers: &[&str],
        schema: &PlanSchema,
    ) -> Result<Exchange> {
        let first = self.ask(
            &Conversation {
                system,
                user,
                repair: None,
            },
            schema,
        )?;
        let errors = match check_answer(&first.text, layers) {
            Ok(plan) => {
                return Ok(Exchange {
                    plan,
                    raw: first.text,
                    repair_note: None,
                    input_tokens: first.input_tokens,
                    output_tokens: first.output_tokens,
                })
            }
            Err(errors) => errors,
        };
        let repair = repair_message(&errors);
        let second = self.ask(
            &Conversation {
                system,
                user,
                repair: Some((&first.text, &repair)),
            },
            schema,
        )?;
        match check_answer(&second.text, layers) {
            Ok(plan) => Ok(Exchange {
                plan,
                raw: second.text,
                repair_note: Some(format!(
                    "\n\n[repair round]\n[assistant]\n{}\n[user]\n{repair}",
                    first.text
                )),
                input_tokens: add_tokens(first.input_tokens, second.input_tokens),
                output_tokens: add_tokens(first.output_tokens, second.output_tokens),
            }),
            Err(again) => Err(LlmError::InvalidAnswer {
                backend: self.wire.name().to_string(),
                reason: format!("after one repair round: {}", again.join("; ")),
            }),
        }
    }
}

/// The names the schema's `layer` enum offers: the layers the constraints allow (a
/// model picks from the enum, and a forbidden or full layer would only be dropped by
/// the critic). Answers are still validated against every layer, so the critic, not
/// the parser, deals with a disallowed one. All layers when none is allowed (an empty
/// enum is not valid JSON Schema).
pub fn allowed_layers(request: &PlanRequest) -> Vec<&str> {
    let allowed: Vec<&str> = request
        .profiles
        .iter()
        .filter(|p| request.constraints.allows(p))
        .map(|p| p.name.as_str())
        .collect();
    if allowed.is_empty() {
        request.profiles.iter().map(|p| p.name.as_str()).collect()
    } else {
        allowed
    }
}

/// Parse and validate an answer; every problem found, as text for the repair prompt.
/// A δ outside [`protocol::DELTA_MIN`], [`protocol::DELTA_MAX`] is not one: the schema
/// carries no numeric bounds (servers refuse them), and the critic's `delta_bounds`
/// rule clamps it (or vetoes, as configured) with the reason in its verdict, where a
/// repair round cost Qwen2.5-0.5B on a CPU server another six minutes and still came
/// back with δs of 0.17–0.88.
pub fn check_answer(text: &str, layers: &[&str]) -> std::result::Result<Plan, Vec<String>> {
    let plan = Plan::from_json(&escape_controls_in_strings(strip_fences(text)))
        .map_err(|e| vec![e.to_string()])?;
    let errors: Vec<PlanError> = plan
        .validate(layers)
        .into_iter()
        .filter(|e| !matches!(e, PlanError::DeltaOutOfRange { .. }))
        .collect();
    if errors.is_empty() {
        Ok(plan)
    } else {
        Err(errors.iter().map(ToString::to_string).collect())
    }
}

/// Some OpenAI-compatible servers ignore `response_format` and wrap JSON in a
/// Markdown code fence; accept that rather than spend the repair round on it.
fn strip_fences(text: &str) -> &str {
    let t = text.trim();
    match t.strip_prefix("```") {
        Some(rest) => {
            let rest = rest.strip_prefix("json").unwrap_or(rest);
            rest.strip_suffix("```").unwrap_or(rest).trim()
        }
        None => t,
    }
}

/// `text` with raw control characters inside JSON strings escaped (`\n`, `\u0001`).
/// Small models behind a `json_object` grammar write line breaks inside `reasoning`;
/// JSON forbids them there, and a repair round (six minutes on a CPU server) brought
/// another one back. Outside strings they are whitespace and stay as they are.
fn escape_controls_in_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string && !escaped && (c as u32) < 0x20 {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c => out.push_str(&format!("\\u{:04x}", c as u32)),
            }
            continue;
        }
        out.push(c);
        if escaped {
            escaped = false;
        } else if in_string && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_string = !in_string;
        }
    }
    out
}

/// The repair turn: every validation error, then the instruction to answer again.
pub fn repair_message(errors: &[String]) -> String {
    let mut m = String::from("Your answer is not a valid plan:\n");
    for e in errors {
        m.push_str("- ");
        m.push_str(e);
        m.push('\n');
    }
    m.push_str(
        "Use only layer names exactly as listed, each at most once, with delta inside the \
allowed range. Answer again with the corrected JSON object only.",
    );
    m
}

impl<W: Wire> PlannerBackend for RemoteBackend<W> {
    fn name(&self) -> &str {
        self.wire.name()
    }

    fn propose(&self, request: &PlanRequest, k: usize) -> Result<Vec<PlanResponse>> {
        check_request(request, k)?;
        // The layers the prompt lists (a shortlist by default); the schema's enum keeps
        // those of them the constraints allow.
        let listed = listing(request, &self.prompt);
        let layers: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
        let allowed: Vec<&str> = allowed_layers(request)
            .into_iter()
            .filter(|l| layers.contains(l))
            .collect();
        let schema = plan_json_schema(Some(if allowed.is_empty() {
            &layers
        } else {
            &allowed
        }))
        .with_progress_required(!target_reached(
            request.current_sparsity,
            request.target_sparsity,
        ));
        let mut out = Vec::with_capacity(k);
        for i in 0..k {
            let prompt = build_prompt_listing(request, &self.prompt, i, k, &listed);
            let start = Instant::now();
            let ex = self.candidate(&prompt.system, &prompt.user, &layers, &schema)?;
            let mut system_prompt = prompt.system;
            if self.mode() != JsonMode::Schema {
                // What was sent: the wire appends the format note in this mode.
                system_prompt.push_str(&wire::object_mode_note());
            }
            let mut user_prompt = prompt.user;
            if let Some(note) = ex.repair_note {
                user_prompt.push_str(&note);
            }
            out.push(PlanResponse {
                plan: ex.plan,
                backend: self.recorded_name(),
                model: Some(self.sampling.model.clone()),
                system_prompt,
                user_prompt,
                raw_response: ex.raw,
                latency_ms: start.elapsed().as_millis() as u64,
                input_tokens: ex.input_tokens,
                output_tokens: ex.output_tokens,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_with_every_error_listed() {
        let ok = r#"{"reasoning":"r","stop_pruning":false,"layer_decisions":[{"layer":"a","delta":0.05}]}"#;
        assert_eq!(check_answer(ok, &["a"]).unwrap().layer_decisions.len(), 1);
        let fenced = format!("```json\n{ok}\n```");
        assert!(check_answer(&fenced, &["a"]).is_ok());
        let bad = r#"{"reasoning":"r","stop_pruning":false,"layer_decisions":[{"layer":"x","delta":0.5},{"layer":"a","delta":0.05},{"layer":"a","delta":0.05}]}"#;
        let errs = check_answer(bad, &["a"]).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains("unknown layer `x`"));
        assert!(errs[1].contains("`a` appears more than once"), "{errs:?}");
        // Raw line breaks and tabs inside a string are escaped, not sent back for repair.
        let broken = "{\"reasoning\":\"line one\nline\ttwo \\\"q\\\" \u{1}\",\n\"stop_pruning\":false,\"layer_decisions\":[{\"layer\":\"a\",\"delta\":0.05}]}";
        let plan = check_answer(broken, &["a"]).unwrap();
        assert_eq!(plan.reasoning, "line one\nline\ttwo \"q\" \u{1}");
        // δ out of range is the critic's to clamp, not a reason to ask again.
        let wide = r#"{"reasoning":"r","stop_pruning":false,"layer_decisions":[{"layer":"a","delta":0.88}]}"#;
        assert_eq!(
            check_answer(wide, &["a"]).unwrap().layer_decisions[0].delta,
            0.88
        );
        let not_json = check_answer("Sure! Here is the plan", &["a"]).unwrap_err();
        assert!(not_json[0].starts_with("not a valid plan document"));
        let msg = repair_message(&errs);
        assert!(msg.contains("- layer_decisions[0]: unknown layer `x`\n"));
    }
}
