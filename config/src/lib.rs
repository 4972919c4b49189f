//! Typed configuration: one TOML file → a validated runtime [`Config`].
//!
//! - Every field has a default (the offline `default` preset), so an empty file is valid.
//! - Unknown fields are errors (`deny_unknown_fields`): a typo must not silently fall
//!   back to a default.
//! - [`Config::validate`] reports every out-of-range value at once, naming the dotted
//!   field and the value (`pruning.tau = 1.7: must be in (0, 1]`).
//! - Presets live in `config/presets/*.toml` and are embedded in the binary.
//!
//! Depends only on `protocol` (for δ bounds and the plan constraints it builds).

pub mod assets;
mod backend;
mod check;
mod critic;
mod daemon;
mod error;
mod planning;
mod reconstruct;
mod sections;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use backend::{BackendConfig, BackendKind};
pub use critic::{AssessmentThresholds, CriticConfig, CriticRules, PaceRule, RuleAction};
pub use daemon::{DaemonConfig, DaemonSection, TelemetryConfig, OFFICIAL_API_HOSTS};
pub use error::{ConfigError, FieldError};
pub use planning::{Allocation, HeuristicConfig, PromptConfig};
pub use protocol;
pub use reconstruct::ReconstructConfig;
pub use sections::{
    CalibrationConfig, Device, EvaluationConfig, FinalPplConfig, KnowledgeCalibration, ModelConfig,
    ProbeConfig, ProbeStyle, PruningConfig, Repair, RunConfig, MAX_CANDIDATES,
};

/// The whole configuration of a run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub run: RunConfig,
    pub model: ModelConfig,
    pub calibration: CalibrationConfig,
    pub evaluation: EvaluationConfig,
    pub pruning: PruningConfig,
    /// The planner's backend (`heuristic` offline).
    pub planner: BackendConfig,
    pub heuristic: HeuristicConfig,
    pub prompt: PromptConfig,
    pub critic: CriticConfig,
}

/// Presets shipped with the binary: (name, TOML text).
const PRESETS: &[(&str, &str)] = &[
    ("default", include_str!("../presets/default.toml")),
    (
        "paper-qwen3-8b",
        include_str!("../presets/paper-qwen3-8b.toml"),
    ),
];

impl Config {
    /// Parse and validate a TOML document. Errors name `<string>` as the origin.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, "<string>")
    }

    /// Parse and validate a TOML document that came from `origin` (a file name, `the
    /// submitted config`): errors name it instead of `<string>`.
    pub fn from_toml_named(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Self::parse(text, origin)
    }

    /// Read, parse and validate a TOML file. Errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// A shipped preset by name (see [`Config::preset_names`]).
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let text = Self::preset_text(name)?;
        Self::parse(text, &format!("preset `{name}`"))
    }

    /// The TOML text of a preset, e.g. to write it out as a starting point.
    pub fn preset_text(name: &str) -> Result<&'static str, ConfigError> {
        PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| ConfigError::UnknownPreset {
                name: name.to_string(),
                known: Self::preset_names(),
            })
    }

    /// Names of the shipped presets.
    pub fn preset_names() -> Vec<&'static str> {
        PRESETS.iter().map(|(n, _)| *n).collect()
    }

    fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Self =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(origin, text, &e))?;
        cfg.validate().map_err(|e| e.with_origin(origin))?;
        Ok(cfg)
    }

    /// Check every value; returns all problems, each naming its field and value.
    /// Needed after building or editing a `Config` in code (parsing already calls it).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut c = check::Checker::default();
        self.run.check(&mut c);
        self.model.check(&mut c);
        self.calibration.check(&mut c);
        self.evaluation.check(&mut c);
        self.pruning.check(&mut c);
        self.planner.check("planner", &mut c);
        self.heuristic.check(&mut c);
        self.prompt.check(&mut c);
        self.critic.check(&mut c);
        // Cross-section: a layer cap below the target cannot reach the target.
        let rules = &self.critic.rules;
        let target = self.pruning.target_sparsity;
        let target_ok = target > 0.0 && target < 1.0;
        if target_ok && rules.max_layer_sparsity.is_on() && rules.layer_sparsity_cap < target {
            c.fail(
                "critic.rules.layer_sparsity_cap",
                rules.layer_sparsity_cap,
                format!(
                    "must be >= pruning.target_sparsity ({}), or no plan could reach the target",
                    self.pruning.target_sparsity
                ),
            );
        }
        if c.errors.is_empty() {
            Ok(())
        } else {
            // No origin: a config built or edited in code (e.g. from command-line
            // flags) has no file to name; parsing sets the file's name.
            Err(ConfigError::Invalid {
                origin: String::new(),
                errors: c.errors,
            })
        }
    }

    /// The configuration as TOML (e.g. stored with a run so it can be reproduced).
    pub fn to_toml_string(&self) -> String {
        // Serialising plain data structs with string keys cannot fail.
        toml::to_string(self).unwrap_or_default()
    }
}
