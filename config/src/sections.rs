//! The run-level sections: `[run]`, `[model]`, `[calibration]`, `[evaluation]`,
//! `[pruning]`. Defaults are the offline default preset, so an empty file runs
//! SmolLM2-135M on a small CPU in minutes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::check::{at, Checker};
use crate::reconstruct::ReconstructConfig;

/// `[run]`: identity and reproducibility of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Seeds every random choice (sample order, heuristic candidate variants), so two
    /// runs with the same config and model are identical.
    pub seed: u64,
    /// Folder holding run databases, reports and exports (created on demand).
    pub runs_dir: PathBuf,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            runs_dir: PathBuf::from("runs"),
        }
    }
}

impl RunConfig {
    pub(crate) fn check(&self, c: &mut Checker) {
        c.non_empty("run.runs_dir", &self.runs_dir.to_string_lossy());
    }
}

/// Where tensors live: `auto`, `cpu`, `cuda` (device 0) or `cuda:N`. `auto` takes CUDA
/// device 0 when the binary was built with CUDA and a device answers, else the CPU.
/// Written as a string in TOML (`model.device = "cuda:1"`) and on the command line
/// (`--device cuda:1`); [`FromStr`](std::str::FromStr) is the one parser of both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    /// A CUDA device by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a device: expected auto, cpu, cuda or cuda:N");
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                // Digits only: `usize::from_str` would also take a leading `+`.
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                n.parse().map(Self::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// TOML reads `model.device` through this; the message names the field, because the
/// parser's own position points at the value only.
impl TryFrom<String> for Device {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse().map_err(|e| format!("model.device: {e}"))
    }
}

impl From<Device> for String {
    fn from(d: Device) -> String {
        d.to_string()
    }
}

/// `[model]`: the model being pruned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// A GGUF file or an HF directory (config.json + *.safetensors + tokenizer.json).
    pub path: PathBuf,
    pub device: Device,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(crate::assets::MODEL),
            device: Device::Auto,
        }
    }
}

impl ModelConfig {
    pub(crate) fn check(&self, c: &mut Checker) {
        c.non_empty("model.path", &self.path.to_string_lossy());
    }
}

/// `[calibration]`: texts for activation statistics and gradients (paper: 128 × 2048
/// tokens of C4, 16 samples for activations, 8 for gradients). The in-loop perplexity
/// uses the *next* `evaluation.ppl_samples` texts of the same source, so the two sets
/// are disjoint by construction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalibrationConfig {
    /// Plain text file, JSONL, or C4-style json(.gz).
    pub path: PathBuf,
    /// JSONL field holding the text; unset reads a plain text file whole.
    pub field: Option<String>,
    /// Size of the calibration pool: the first `samples` texts of the source.
    pub samples: usize,
    /// Tokens per calibration sequence.
    pub seq_len: usize,
    /// Sequences of the pool used for activation statistics (each iteration).
    pub activation_samples: usize,
    /// Sequences of the pool used for gradient importance (every `pruning.gradient_every`).
    pub gradient_samples: usize,
    /// Windows of `seq_len` tokens skipped at the start of the source before the pool
    /// (0: the pool is the first `samples` windows). Picks another calibration slice of
    /// the same text, e.g. 16 for the second 16 × 256 block; the held-out slice follows
    /// the pool as always.
    pub offset: usize,
    /// Answered factual questions mixed into the pool.
    pub knowledge: KnowledgeCalibration,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(crate::assets::CALIBRATION),
            field: Some(crate::assets::CALIBRATION_FIELD.into()),
            samples: 16,
            seq_len: 256,
            activation_samples: 16,
            gradient_samples: 4,
            offset: 0,
            knowledge: KnowledgeCalibration::default(),
        }
    }
}

/// `[calibration.knowledge]`: a share of the calibration pool made of answered factual
/// questions, written as the QA evaluation asks them, spread evenly through the pool
/// (so the gradient samples, the pool's first windows, hold their share too). News
/// text alone never exercises recalling a fact; with these windows the statistics,
/// the measured layer costs and the OBS repair also see it. Questions the in-loop
/// probe asks are left out, so the probe stays an unseen measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KnowledgeCalibration {
    /// Share of the pool's windows (0 = off, at most 0.5); rounded to whole windows.
    pub share: f64,
    /// Factual QA file (NQ-open style JSONL or FreebaseQA json).
    pub path: PathBuf,
}

impl Default for KnowledgeCalibration {
    fn default() -> Self {
        Self {
            share: 0.0,
            path: PathBuf::from(crate::assets::FACTS_PROBE),
        }
    }
}

impl KnowledgeCalibration {
    /// Knowledge windows in a pool of `samples`.
    pub fn windows(&self, samples: usize) -> usize {
        (self.share * samples as f64).round() as usize
    }
}

/// Longest sequence we accept: longer windows than any supported model's context
/// are a typo, not a setting.
const MAX_SEQ_LEN: u64 = 131_072;

impl CalibrationConfig {
    pub(crate) fn check(&self, c: &mut Checker) {
        let p = "calibration";
        c.non_empty(&at(p, "path"), &self.path.to_string_lossy());
        check_field(c, &at(p, "field"), self.field.as_deref());
        c.int_range(&at(p, "samples"), self.samples as u64, 1, 100_000);
        c.int_range(&at(p, "seq_len"), self.seq_len as u64, 2, MAX_SEQ_LEN);
        c.int_range(&at(p, "offset"), self.offset as u64, 0, 100_000);
        c.int_range(
            &at(p, "activation_samples"),
            self.activation_samples as u64,
            1,
            self.samples.max(1) as u64,
        );
        // Zero disables gradient importance (z_grad is then 0 for every layer).
        c.int_range(
            &at(p, "gradient_samples"),
            self.gradient_samples as u64,
            0,
            self.samples.max(1) as u64,
        );
        let k = &self.knowledge;
        c.closed(&at(p, "knowledge.share"), k.share, 0.0, 0.5);
        if k.share > 0.0 {
            c.non_empty(&at(p, "knowledge.path"), &k.path.to_string_lossy());
        }
    }
}

fn check_field(c: &mut Checker, name: &str, field: Option<&str>) {
    if let Some(f) = field {
        if f.trim().is_empty() {
            c.fail(
                name,
                "\"\"",
                "must not be empty (omit it to read a plain text file)",
            );
        }
    }
}

/// `[evaluation.final]`: perplexity after the run over a whole text (WikiText-2 protocol:
/// texts joined, non-overlapping windows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinalPplConfig {
    pub path: PathBuf,
    /// JSONL field holding the text; unset reads a plain text file whole.
    pub field: Option<String>,
    /// Tokens per non-overlapping window.
    pub window: usize,
    /// Use at most this many texts of a JSONL source (0 = all).
    pub max_texts: usize,
}

impl Default for FinalPplConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(crate::assets::PPL_TEXT),
            field: Some(crate::assets::PPL_TEXT_FIELD.into()),
            window: 512,
            max_texts: 50,
        }
    }
}

/// `[evaluation]`: perplexity measured inside the loop (paper: 32 samples).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluationConfig {
    /// Held-out sequences of the calibration source, taken after the calibration pool.
    pub ppl_samples: usize,
    /// Tokens per in-loop perplexity sequence.
    pub ppl_seq_len: usize,
    #[serde(rename = "final")]
    pub final_ppl: FinalPplConfig,
    pub probe: ProbeConfig,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        Self {
            ppl_samples: 16,
            ppl_seq_len: 256,
            final_ppl: FinalPplConfig::default(),
            probe: ProbeConfig::default(),
        }
    }
}

/// How probe questions are put to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeStyle {
    /// `chat` when the model has a chat template, `raw` otherwise.
    Auto,
    /// The LLM-KICK prompt, for base models.
    Raw,
    /// The question wrapped in the model's chat template.
    Chat,
}

/// `[evaluation.probe]`: the in-loop knowledge probe. Perplexity hides knowledge loss
/// (the paper's motivation), so the loop can answer a fixed set of factual questions
/// on the committed model every few iterations and plot the accuracy next to PPL.
/// On by default with the probe split of the generated facts, which the default model
/// answers well above zero (NQ-open is ≈ 4 % on SmolLM2-135M: uninformative).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Run the probe on the dense model, after every `every`-th iteration (on the
    /// committed model) and on the final model (0 = never).
    pub every: u32,
    /// Factual QA file: NQ-open style JSONL (`question`, `answer` list) or FreebaseQA.
    pub path: PathBuf,
    /// Questions asked, spread evenly over the file: the same set each time.
    pub questions: usize,
    pub style: ProbeStyle,
    /// Tokens generated per answer.
    pub max_new_tokens: usize,
    /// Knowledge guard: at a probe point, a step whose candidate answers less than
    /// `(1 − guard)` × the accuracy of the previous point (the committed model's) is
    /// rolled back like a step over τ, and the planner is told why (0 = off; at most
    /// 0.9).
    pub guard: f64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            every: 3,
            path: PathBuf::from(crate::assets::FACTS_PROBE),
            questions: 200,
            style: ProbeStyle::Auto,
            max_new_tokens: 16,
            guard: 0.0,
        }
    }
}

impl EvaluationConfig {
    pub(crate) fn check(&self, c: &mut Checker) {
        c.int_range(
            "evaluation.ppl_samples",
            self.ppl_samples as u64,
            1,
            100_000,
        );
        c.int_range(
            "evaluation.ppl_seq_len",
            self.ppl_seq_len as u64,
            2,
            MAX_SEQ_LEN,
        );
        let f = &self.final_ppl;
        c.non_empty("evaluation.final.path", &f.path.to_string_lossy());
        check_field(c, "evaluation.final.field", f.field.as_deref());
        c.int_range("evaluation.final.window", f.window as u64, 2, MAX_SEQ_LEN);
        let p = &self.probe;
        c.int_range("evaluation.probe.every", u64::from(p.every), 0, 1000);
        if p.every > 0 {
            c.non_empty("evaluation.probe.path", &p.path.to_string_lossy());
            c.int_range("evaluation.probe.questions", p.questions as u64, 1, 100_000);
            c.int_range(
                "evaluation.probe.max_new_tokens",
                p.max_new_tokens as u64,
                1,
                512,
            );
            c.closed("evaluation.probe.guard", p.guard, 0.0, 0.9);
        }
    }
}

/// `[pruning]`: the loop of Algorithm 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PruningConfig {
    /// Global (parameter-weighted) sparsity at which the run stops.
    pub target_sparsity: f64,
    /// Rollback threshold τ: an iteration raising PPL by more than this fraction is undone.
    pub tau: f64,
    /// Sparsity gain τ applies to: a step gaining `k·tau_span` of global sparsity may
    /// raise the PPL by `(1 + τ)^k − 1` (never less than τ); 0 = τ per iteration
    /// whatever the step, as in the paper. Few large repaired steps end better than
    /// many small ones, and their PPL rise grows with their size.
    pub tau_span: f64,
    /// Hard cap on iterations, whatever the planner says.
    pub max_iterations: u32,
    /// Recollect gradients every this many iterations (paper: 3); activations each one.
    pub gradient_every: u32,
    /// Percentile k of the active Wanda scores used as a layer's sensitivity (paper: 10).
    pub sensitivity_percentile: f64,
    /// Candidate plans the planner proposes per iteration (K); each surviving one is
    /// evaluated and the best within τ is committed.
    pub candidates: usize,
    /// What the Executor does to the weights it keeps when it prunes a layer further.
    pub repair: Repair,
    /// Dampening of the repair's Hessian: this fraction of its mean diagonal is added
    /// to the diagonal (SparseGPT's `percdamp`, 0.01).
    pub repair_damp: f64,
    /// The Profiler measures, for every layer, the expected rise of the calibration loss
    /// for each next δ (0.01 … 0.15): the repair's OBS saliency (or, masks only, the
    /// Wanda key) of the weights that would go, weighted per output row by the layer's
    /// output Fisher. Costs one Gram pass and one backward pass per iteration; needs
    /// `calibration.gradient_samples` > 0.
    pub layer_costs: bool,
    /// `[pruning.reconstruct]`: the block fit of the candidate that reaches the target.
    pub reconstruct: ReconstructConfig,
}

/// `pruning.repair`: the Executor's weight update when it prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Repair {
    /// Masks only: the kept weights keep their values (per-row Wanda selection).
    None,
    /// OBS/SparseGPT update: the layer's new pruned weights are chosen by the OBS key
    /// and the kept ones updated so the layer's output on the calibration inputs,
    /// computed block by block through the already repaired blocks, moves least.
    /// The default: on SmolLM2-135M at 50 % it ends at 2.05x the dense QuAC PPL where
    /// the masks-only loop ends at 2.26x (for 1.6x the CPU time).
    #[default]
    Obs,
}

impl Repair {
    pub fn name(self) -> &'static str {
        match self {
            Repair::None => "none",
            Repair::Obs => "obs",
        }
    }
}

impl Default for PruningConfig {
    fn default() -> Self {
        Self {
            target_sparsity: 0.5,
            tau: 0.15,
            tau_span: 0.02,
            max_iterations: 40,
            gradient_every: 3,
            sensitivity_percentile: 10.0,
            candidates: 1,
            repair: Repair::Obs,
            repair_damp: 0.01,
            layer_costs: true,
            reconstruct: ReconstructConfig::default(),
        }
    }
}

/// More candidates than this would multiply evaluation cost beyond any budget we run.
pub const MAX_CANDIDATES: usize = 16;

impl PruningConfig {
    pub(crate) fn check(&self, c: &mut Checker) {
        c.open("pruning.target_sparsity", self.target_sparsity, 0.0, 1.0);
        c.open_closed("pruning.tau", self.tau, 0.0, 1.0);
        c.closed("pruning.tau_span", self.tau_span, 0.0, 0.5);
        c.int_range(
            "pruning.max_iterations",
            self.max_iterations.into(),
            1,
            10_000,
        );
        c.int_range(
            "pruning.gradient_every",
            self.gradient_every.into(),
            1,
            10_000,
        );
        c.open(
            "pruning.sensitivity_percentile",
            self.sensitivity_percentile,
            0.0,
            100.0,
        );
        c.int_range(
            "pruning.candidates",
            self.candidates as u64,
            1,
            MAX_CANDIDATES as u64,
        );
        c.open_closed("pruning.repair_damp", self.repair_damp, 0.0, 1.0);
        self.reconstruct.check(c);
    }
}
