//! Build the backend a config names, with its fallback, so the Planner actor (and any
//! other caller) chooses models from the config alone and never matches on kinds.
//!
//! API keys are read here, from the environment variable the config NAMES, and go
//! straight into a [`Secret`]; the config itself never holds a key.

use std::fmt;

use config::{BackendConfig, BackendKind, Config, HeuristicConfig, PromptConfig};
use protocol::{PlanRequest, PlanResponse};

use crate::error::{LlmError, Result};
use crate::heuristic::HeuristicPlanner;
use crate::planner::PlannerBackend;
use crate::remote::{Anthropic, Gemini, OpenAi, RemoteBackend, RetryPolicy, Secret};

/// The planner of `cfg` (`[planner]`, with `[planner.fallback]`).
pub fn build_planner(cfg: &Config) -> Result<Box<dyn PlannerBackend>> {
    build_backend(&cfg.planner, &cfg.heuristic, &cfg.prompt, cfg.run.seed)
}

/// The backend `bc` describes, wrapped with its fallback when it has one. `heuristic`
/// and `prompt` configure the heuristic and the prompts LLM backends send; `seed` makes
/// the heuristic and the retry jitter reproducible.
pub fn build_backend(
    bc: &BackendConfig,
    heuristic: &HeuristicConfig,
    prompt: &PromptConfig,
    seed: u64,
) -> Result<Box<dyn PlannerBackend>> {
    build_with(bc, heuristic, prompt, seed, &|name| {
        std::env::var(name).ok()
    })
}

/// [`build_backend`] with the environment lookup injected (tests must not mutate the
/// process environment, which other threads read concurrently).
pub fn build_with(
    bc: &BackendConfig,
    heuristic: &HeuristicConfig,
    prompt: &PromptConfig,
    seed: u64,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Box<dyn PlannerBackend>> {
    let primary = build_one(bc, heuristic, prompt, seed, env)?;
    match &bc.fallback {
        None => Ok(primary),
        Some(fb) => Ok(Box::new(WithFallback {
            primary,
            fallback: build_one(fb, heuristic, prompt, seed, env)?,
        })),
    }
}

fn build_one(
    bc: &BackendConfig,
    heuristic: &HeuristicConfig,
    prompt: &PromptConfig,
    seed: u64,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Box<dyn PlannerBackend>> {
    let unusable = |m: String| LlmError::Backend {
        backend: bc.backend.name().to_string(),
        message: m,
    };
    if bc.backend == BackendKind::Heuristic {
        return Ok(Box::new(HeuristicPlanner::new(heuristic.clone(), seed)));
    }
    if bc.backend == BackendKind::Local {
        let path = bc
            .model
            .as_deref()
            .ok_or_else(|| unusable("no GGUF path configured in `model`".into()))?;
        return Ok(Box::new(crate::local::LocalBackend::load(
            std::path::Path::new(path),
            bc.temperature,
            bc.max_tokens,
            prompt.clone(),
            seed,
        )?));
    }
    if bc.model.as_deref().is_none_or(|m| m.trim().is_empty()) {
        return Err(unusable("no model configured".into()));
    }
    let key = match &bc.api_key_env {
        Some(var) => match env(var) {
            Some(k) if !k.is_empty() => Secret::new(Some(k)),
            // Name the variable, never a value.
            _ => return Err(unusable(format!("environment variable {var} is not set"))),
        },
        None if bc.backend == BackendKind::Openai => Secret::default(),
        None => return Err(unusable("api_key_env is not set".into())),
    };
    let policy = RetryPolicy::standard(bc.retries);
    let p = prompt.clone();
    Ok(match bc.backend {
        BackendKind::Openai => Box::new(RemoteBackend::new(OpenAi, bc, p, key, policy, seed)),
        BackendKind::Gemini => Box::new(RemoteBackend::new(Gemini, bc, p, key, policy, seed)),
        _ => Box::new(RemoteBackend::new(Anthropic, bc, p, key, policy, seed)),
    })
}

/// A backend that hands the request to `fallback` when `primary` fails for any reason
/// but a malformed request (which the fallback would reject too). Responses from the
/// fallback name both backends, so a run's record shows that the fallback answered.
pub struct WithFallback {
    pub primary: Box<dyn PlannerBackend>,
    pub fallback: Box<dyn PlannerBackend>,
}

impl fmt::Debug for WithFallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WithFallback({} -> {})",
            self.primary.name(),
            self.fallback.name()
        )
    }
}

impl PlannerBackend for WithFallback {
    fn name(&self) -> &str {
        self.primary.name()
    }

    fn propose(&self, request: &PlanRequest, k: usize) -> Result<Vec<PlanResponse>> {
        match self.primary.propose(request, k) {
            Ok(r) => Ok(r),
            Err(e @ LlmError::InvalidRequest(_)) => Err(e),
            Err(e) => {
                let mut out = self.fallback.propose(request, k)?;
                for r in &mut out {
                    r.backend = format!(
                        "{} (fallback; {} failed: {e})",
                        r.backend,
                        self.primary.name()
                    );
                }
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: BackendKind) -> BackendConfig {
        BackendConfig {
            backend: kind,
            model: Some("m".into()),
            api_key_env: Some("SECATEUR_TEST_KEY".into()),
            ..BackendConfig::default()
        }
    }

    fn build(
        bc: &BackendConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Box<dyn PlannerBackend>> {
        build_with(
            bc,
            &HeuristicConfig::default(),
            &PromptConfig::default(),
            1,
            env,
        )
    }

    #[test]
    fn builds_each_kind_and_names_missing_keys_without_values() {
        let key = |n: &str| (n == "SECATEUR_TEST_KEY").then(|| "k-123456".to_string());
        for (kind, name) in [
            (BackendKind::Openai, "openai"),
            (BackendKind::Gemini, "gemini"),
            (BackendKind::Anthropic, "anthropic"),
            (BackendKind::Heuristic, "heuristic"),
        ] {
            let b = build(&cfg(kind), &key).unwrap();
            assert_eq!(b.name(), name);
        }
        let none = |_: &str| None;
        let err = build(&cfg(BackendKind::Gemini), &none)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "gemini: environment variable SECATEUR_TEST_KEY is not set"
        );
        let mut open = cfg(BackendKind::Openai);
        open.api_key_env = None;
        assert_eq!(build(&open, &none).unwrap().name(), "openai");
        let mut local = cfg(BackendKind::Local);
        local.model = Some("/nonexistent/model.gguf".into());
        let e = build(&local, &key).err().unwrap().to_string();
        assert!(
            e.starts_with("local: ") && e.contains("/nonexistent/model.gguf"),
            "{e}"
        );
    }

    #[test]
    fn debug_of_a_backend_never_shows_the_key() {
        let key = |_: &str| Some("sk-top-secret-value".to_string());
        let b = RemoteBackend::new(
            Gemini,
            &cfg(BackendKind::Gemini),
            PromptConfig::default(),
            Secret::new(key("")),
            RetryPolicy::standard(0),
            0,
        );
        let d = format!("{b:?}");
        assert!(d.contains("Secret(<redacted>)"), "{d}");
        assert!(!d.contains("top-secret"), "{d}");
    }
}
