//! The daemon's own configuration (`secateur daemon --config FILE`): `[daemon]` (where it
//! listens, where it keeps its state, who may talk to it, which files submitted runs may
//! read) and `[telemetry]` (where traces go). It is a separate document from a run's
//! [`crate::Config`]: a submitted run must never be able to change how the daemon is
//! secured, and a run's stored config should not carry daemon settings.
//!
//! Secrets never live here: the bearer token is read from the environment variable
//! `daemon.token_env` NAMES, like the planners' API keys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::check::Checker;
use crate::error::ConfigError;

/// The daemon's whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    pub daemon: DaemonSection,
    pub telemetry: TelemetryConfig,
}

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonSection {
    /// Address to bind. Loopback by default; any other address requires a token.
    pub listen: String,
    /// The daemon's state: `registry/` (one JSON record per submitted run) and `runs/`
    /// (each run's checkpoint database and outputs). Submitted configs' `run.runs_dir`
    /// is replaced by `<data_dir>/runs`.
    pub data_dir: PathBuf,
    /// Runs executed at the same time; further runs wait in the queue (one per device
    /// is the sensible value: concurrent runs share the same CPU or GPU).
    pub concurrency: usize,
    /// NAME of the environment variable holding the bearer token. When that variable is
    /// set, every request must carry `Authorization: Bearer <token>`; binding to a
    /// non-loopback address without it is refused.
    pub token_env: String,
    /// Largest accepted request body, in bytes (larger bodies get 413).
    pub max_body_bytes: usize,
    /// Runs waiting or running at most; submissions beyond get 429.
    pub max_pending: usize,
    /// Model files (`model.path`, a local planner's GGUF) of submitted runs must lie
    /// under one of these folders, after resolving symlinks and `..`.
    pub model_roots: Vec<PathBuf>,
    /// Text files (calibration, final perplexity) of submitted runs must lie under one
    /// of these folders, after resolving symlinks and `..`.
    pub data_roots: Vec<PathBuf>,
    /// On SIGTERM, how long running iterations may take to finish before they are
    /// abandoned (they then resume from their last committed iteration at restart).
    pub shutdown_grace_secs: u64,
    /// NAMES of the environment variables a submitted run config may give as an
    /// `api_key_env` (planner, critic reflection, their fallbacks). Empty by default: a
    /// config someone submits must not be able to read whatever the daemon's
    /// environment holds and send it to a server, so the operator lists the provider
    /// keys runs may use (e.g. `["OPENAI_API_KEY"]`). `token_env` can never be listed.
    pub allowed_api_key_envs: Vec<String>,
    /// Hosts a submitted config's `base_url` may name (exact names, case-insensitive,
    /// no scheme or port). Default: the official API hosts of the hosted backends.
    pub allowed_base_url_hosts: Vec<String>,
    /// Whether a submitted `base_url` may point at this machine (`localhost`,
    /// 127.0.0.0/8, `::1`, `0.0.0.0`), e.g. a local vLLM or Ollama. Off by default: the
    /// daemon itself and other local services listen there.
    pub allow_loopback_base_urls: bool,
    /// A connection that has not sent a request's complete headers within this time is
    /// closed (also an idle keep-alive connection), so slow or half-open clients cannot
    /// hold the daemon.
    pub header_read_timeout_ms: u64,
    /// A request body that sends no data for this long is abandoned (408).
    pub body_read_timeout_ms: u64,
    /// Open connections at most; further clients wait in the listen backlog.
    pub max_connections: usize,
}

/// The official API hosts of the hosted backends (`openai`, `gemini`, `anthropic`):
/// where a `base_url` may point by default.
pub const OFFICIAL_API_HOSTS: [&str; 3] = [
    "api.openai.com",
    "generativelanguage.googleapis.com",
    "api.anthropic.com",
];

impl Default for DaemonSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7878".into(),
            data_dir: PathBuf::from("daemon"),
            concurrency: 1,
            token_env: "SECATEUR_DAEMON_TOKEN".into(),
            max_body_bytes: 256 * 1024,
            max_pending: 1000,
            model_roots: vec![PathBuf::from(crate::assets::MODELS_DIR)],
            data_roots: vec![PathBuf::from(crate::assets::DATA_DIR)],
            shutdown_grace_secs: 30,
            allowed_api_key_envs: Vec::new(),
            allowed_base_url_hosts: OFFICIAL_API_HOSTS.iter().map(|h| h.to_string()).collect(),
            allow_loopback_base_urls: false,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_connections: 256,
        }
    }
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP endpoint (e.g. `http://127.0.0.1:4318`, Jaeger's native input); traces
    /// go to `<endpoint>/v1/traces`. The environment variable
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` overrides it. Unset (and no variable): nothing is
    /// exported.
    pub otlp_endpoint: Option<String>,
}

impl DaemonSection {
    /// The allow-lists hold names, never secrets or URLs, and never the token's variable.
    fn check_allow_lists(&self, c: &mut Checker) {
        for name in &self.allowed_api_key_envs {
            if !crate::backend::is_env_name(name) {
                c.fail(
                    "daemon.allowed_api_key_envs",
                    format!("<redacted, {} chars>", name.chars().count()),
                    "must hold NAMES of environment variables (letters, digits, _), not keys",
                );
            } else if *name == self.token_env {
                c.fail(
                    "daemon.allowed_api_key_envs",
                    format!("\"{name}\""),
                    "must not hold daemon.token_env: the bearer token is never an API key",
                );
            }
        }
        for host in &self.allowed_base_url_hosts {
            let plain = !host.is_empty()
                && host
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-'));
            if !plain {
                c.fail(
                    "daemon.allowed_base_url_hosts",
                    format!("\"{host}\""),
                    "must hold host names only (letters, digits, `.`, `-`; no scheme, port or path)",
                );
            }
        }
    }
}

impl DaemonConfig {
    /// Parse and validate a TOML document.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, "<string>")
    }

    /// Read, parse and validate a TOML file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Self =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(origin, text, &e))?;
        cfg.validate().map_err(|e| e.with_origin(origin))?;
        Ok(cfg)
    }

    /// Check every value; returns all problems, each naming its field and value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut c = Checker::default();
        let d = &self.daemon;
        if d.listen.parse::<SocketAddr>().is_err() {
            c.fail(
                "daemon.listen",
                format!("\"{}\"", d.listen),
                "must be IP:PORT, e.g. 127.0.0.1:7878",
            );
        }
        c.non_empty("daemon.data_dir", &d.data_dir.to_string_lossy());
        c.int_range("daemon.concurrency", d.concurrency as u64, 1, 64);
        if !crate::backend::is_env_name(&d.token_env) {
            c.fail(
                "daemon.token_env",
                format!("<redacted, {} chars>", d.token_env.chars().count()),
                "must be the NAME of an environment variable (letters, digits, _), not the token",
            );
        }
        c.int_range(
            "daemon.max_body_bytes",
            d.max_body_bytes as u64,
            1024,
            64 * 1024 * 1024,
        );
        c.int_range("daemon.max_pending", d.max_pending as u64, 1, 1_000_000);
        for (field, roots) in [
            ("daemon.model_roots", &d.model_roots),
            ("daemon.data_roots", &d.data_roots),
        ] {
            for r in roots {
                c.non_empty(field, &r.to_string_lossy());
            }
        }
        c.int_range("daemon.shutdown_grace_secs", d.shutdown_grace_secs, 0, 3600);
        d.check_allow_lists(&mut c);
        c.int_range(
            "daemon.header_read_timeout_ms",
            d.header_read_timeout_ms,
            10,
            3_600_000,
        );
        c.int_range(
            "daemon.body_read_timeout_ms",
            d.body_read_timeout_ms,
            10,
            3_600_000,
        );
        c.int_range(
            "daemon.max_connections",
            d.max_connections as u64,
            1,
            1_000_000,
        );
        if let Some(url) = &self.telemetry.otlp_endpoint {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                c.fail(
                    "telemetry.otlp_endpoint",
                    format!("\"{url}\""),
                    "must start with http:// or https://",
                );
            }
        }
        if c.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: "daemon config".into(),
                errors: c.errors,
            })
        }
    }

    /// The configuration as TOML.
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_loopback() {
        let c = DaemonConfig::from_toml_str("").unwrap();
        assert_eq!(c, DaemonConfig::default());
        let addr: SocketAddr = c.daemon.listen.parse().unwrap();
        assert!(addr.ip().is_loopback());
        assert_eq!(c.daemon.concurrency, 1);
        assert_eq!(c.telemetry.otlp_endpoint, None);
        let back = DaemonConfig::from_toml_str(&c.to_toml_string()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn bad_values_name_their_fields_and_never_echo_a_token() {
        let e = DaemonConfig::from_toml_str(
            "[daemon]\nlisten = \"localhost\"\nconcurrency = 0\ntoken_env = \"s3cr3t-token-value\"\n\
             max_body_bytes = 10\n[telemetry]\notlp_endpoint = \"grpc://x\"\n",
        )
        .unwrap_err();
        let fields: Vec<&str> = e.field_errors().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "daemon.listen",
                "daemon.concurrency",
                "daemon.token_env",
                "daemon.max_body_bytes",
                "telemetry.otlp_endpoint"
            ]
        );
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        assert!(DaemonConfig::from_toml_str("[daemon]\nport = 1\n").is_err());
    }

    #[test]
    fn allow_lists_hold_names_and_never_the_token_variable() {
        let d = DaemonConfig::default().daemon;
        assert!(d.allowed_api_key_envs.is_empty());
        assert_eq!(d.allowed_base_url_hosts, OFFICIAL_API_HOSTS);
        assert!(!d.allow_loopback_base_urls);
        let e = DaemonConfig::from_toml_str(
            "[daemon]\nallowed_api_key_envs = [\"OPENAI_API_KEY\", \"SECATEUR_DAEMON_TOKEN\", \"sk-live-123\"]\n\
             allowed_base_url_hosts = [\"api.openai.com\", \"http://evil.example\", \"h:80\"]\n",
        )
        .unwrap_err();
        let errs = e.field_errors();
        let fields: Vec<&str> = errs.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "daemon.allowed_api_key_envs",
                "daemon.allowed_api_key_envs",
                "daemon.allowed_base_url_hosts",
                "daemon.allowed_base_url_hosts"
            ]
        );
        assert!(
            errs[0].to_string().contains("never an API key"),
            "{}",
            errs[0]
        );
        assert!(!e.to_string().contains("sk-live-123"), "{e}");
        // The token variable is refused whatever it is called.
        let e = DaemonConfig::from_toml_str(
            "[daemon]\ntoken_env = \"MY_TOKEN\"\nallowed_api_key_envs = [\"MY_TOKEN\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.field_errors()[0].field, "daemon.allowed_api_key_envs");
        let ok = DaemonConfig::from_toml_str(
            "[daemon]\nallowed_api_key_envs = [\"OPENAI_API_KEY\"]\nallowed_base_url_hosts = [\"vllm.internal\"]\n",
        )
        .unwrap();
        assert_eq!(ok.daemon.allowed_api_key_envs, ["OPENAI_API_KEY"]);
    }
}
