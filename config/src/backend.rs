//! `[planner]`, `[planner.fallback]` and `[critic.reflection]`: which chat backend an
//! actor uses. Data only: the `llm` crate implements the backends; keeping their
//! settings here lets planner and critic run different models from one file.

use serde::{Deserialize, Serialize};

use crate::check::{at, Checker};

/// Which backend answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Deterministic policy, no LLM (the offline default). For the critic's reflection:
    /// the built-in template.
    #[default]
    Heuristic,
    /// OpenAI-compatible chat completions (also vLLM, llama.cpp server, Ollama, LM Studio).
    Openai,
    /// Google Gemini generateContent.
    Gemini,
    /// Anthropic messages API.
    Anthropic,
    /// A GGUF instruct model run in-process; `model` is its path.
    Local,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Heuristic => "heuristic",
            Self::Openai => "openai",
            Self::Gemini => "gemini",
            Self::Anthropic => "anthropic",
            Self::Local => "local",
        }
    }

    /// Backends that talk HTTP to a hosted model need a model name; `local` needs a path.
    fn needs_model(self) -> bool {
        !matches!(self, Self::Heuristic)
    }

    /// Hosted APIs that always authenticate. OpenAI-compatible servers often run locally
    /// without a key, so for `openai` the key is optional.
    fn needs_api_key(self) -> bool {
        matches!(self, Self::Gemini | Self::Anthropic)
    }
}

/// One backend's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    pub backend: BackendKind,
    /// Model name (hosted backends) or GGUF path (`local`).
    pub model: Option<String>,
    /// API root; unset uses the backend's public endpoint.
    pub base_url: Option<String>,
    /// NAME of the environment variable holding the API key, never the key itself:
    /// keys stay out of files, logs and run records.
    pub api_key_env: Option<String>,
    /// Sampling temperature (paper: 0.5).
    pub temperature: f64,
    /// Cap on generated tokens per answer.
    pub max_tokens: u32,
    /// Per-request timeout. A request that timed out is not sent again (a server still
    /// working on it would get a second, concurrent one); a CPU-hosted model needs minutes.
    pub timeout_secs: u64,
    /// Extra attempts after a 429/5xx or a failed connection, with backoff.
    pub retries: u32,
    /// Backend used when this one fails after its retries. One level only.
    pub fallback: Option<Box<BackendConfig>>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Heuristic,
            model: None,
            base_url: None,
            api_key_env: None,
            temperature: 0.5,
            max_tokens: 4096,
            timeout_secs: 600,
            retries: 2,
            fallback: None,
        }
    }
}

/// `NAME` of an environment variable: letters, digits and `_`, not starting with a digit.
pub(crate) fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl BackendConfig {
    /// Validate under `prefix` (e.g. `planner`, `critic.reflection`).
    pub(crate) fn check(&self, prefix: &str, c: &mut Checker) {
        self.check_inner(prefix, c, true);
    }

    fn check_inner(&self, prefix: &str, c: &mut Checker, allow_fallback: bool) {
        let kind = self.backend.name();
        match &self.model {
            None if self.backend.needs_model() => c.fail(
                &at(prefix, "model"),
                "(unset)",
                format!("required when {} = \"{kind}\"", at(prefix, "backend")),
            ),
            Some(m) if m.trim().is_empty() => {
                c.fail(&at(prefix, "model"), "\"\"", "must not be empty")
            }
            _ => {}
        }
        match &self.api_key_env {
            None if self.backend.needs_api_key() => c.fail(
                &at(prefix, "api_key_env"),
                "(unset)",
                format!(
                    "required when {} = \"{kind}\": name the environment variable holding the key",
                    at(prefix, "backend")
                ),
            ),
            // Never echo something that may be a pasted key.
            Some(v) if !is_env_name(v) => c.fail(
                &at(prefix, "api_key_env"),
                format!("<redacted, {} chars>", v.chars().count()),
                "must be the NAME of an environment variable (letters, digits, _), not the key itself",
            ),
            _ => {}
        }
        if let Some(url) = &self.base_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                c.fail(
                    &at(prefix, "base_url"),
                    format!("\"{url}\""),
                    "must start with http:// or https://",
                );
            }
        }
        c.closed(&at(prefix, "temperature"), self.temperature, 0.0, 2.0);
        c.int_range(
            &at(prefix, "max_tokens"),
            self.max_tokens.into(),
            16,
            1_000_000,
        );
        c.int_range(&at(prefix, "timeout_secs"), self.timeout_secs, 1, 3600);
        c.int_range(&at(prefix, "retries"), self.retries.into(), 0, 10);
        if let Some(fb) = &self.fallback {
            let p = at(prefix, "fallback");
            if allow_fallback {
                fb.check_inner(&p, c, false);
            } else {
                c.fail(&p, "[table]", "a fallback cannot have its own fallback");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        assert!(is_env_name("GEMINI_API_KEY"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("1ABC"));
        assert!(!is_env_name("sk-abc"));
        assert!(!is_env_name(""));
    }
}
