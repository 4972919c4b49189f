//! `secateur compare`: the dense model, every baseline and the agent loop's result at
//! one target sparsity, on the same calibration and evaluation data. Writes
//! `compare.md`, `compare.json` and `compare.png` (paper Figures 3–6 style: one bar
//! panel per metric) into `--out`.
//!
//! Baselines come from the `baselines` crate and are evaluated as weight overlays on
//! one shared dense model. The agent row (`compare_agent`) runs the pruning loop with
//! the default offline planner (or `--agent-config`) on the same model, target and
//! calibration source, or reads the committed masks of a finished `secateur prune` run
//! (`--agent-run RUN_DIR`). Dense results are cached in `--out/dense.json` and reused
//! when every evaluation setting matches. `--sweep` repeats the comparison at several
//! targets (dense evaluated once) and adds the trade-off of every method across them
//! (`report::sweep`).
//!
//! This file parses the flags, loads the model and data, and runs the rows; the table,
//! its relative changes and its files' contents are `report::compare`'s.

use std::path::PathBuf;

use ::eval::suite::{perplexity, run_suite, Sets, SuiteSpec};
use ::eval::Target;
use anyhow::{bail, Context, Result};
use baselines::Method;
use model::{Model, WeightOverlay};
use report::compare::{fill_relative, markdown, plot, Rel, Row, Table};
use report::sweep::{sweep_markdown, sweep_plot, Sweep};
use serde::{Deserialize, Serialize};

use super::common;
use super::compare_agent::{agent_result, AgentSource};
use super::eval::SuiteArgs;

#[derive(clap::Args)]
pub struct CompareArgs {
    /// GGUF file or HF directory (default: the fetched SmolLM2-135M-Instruct).
    model: Option<PathBuf>,
    /// Target sparsity of every method (N:M methods have N/M whatever the target).
    #[arg(long, default_value_t = 0.5)]
    sparsity: f64,
    /// Methods, comma-separated, or `all` (magnitude, wanda, magnitude-2:4, wanda-2:4,
    /// magnitude-4:8, wanda-4:8, owl, sparsegpt). Wanda, OWL and SparseGPT calibrate
    /// sequentially (block by block on the pruned prefix, as their reference code);
    /// append `-oneshot` (wanda-oneshot, owl-oneshot, sparsegpt-oneshot) for one pass
    /// of dense statistics instead.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    methods: Vec<String>,
    /// Calibration text (`FILE.jsonl:FIELD`, plain text or C4 json[.gz]).
    #[arg(long, default_value = "assets/data/xsum/test.jsonl:document")]
    calib: String,
    /// Calibration windows (consecutive windows of the tokenised text). 16 × 256 is
    /// the default preset's calibration, so baselines and agent see the same amount.
    #[arg(long, default_value_t = 16)]
    calib_samples: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 256)]
    calib_len: usize,
    /// Calibration windows skipped first: another slice of the same text (16 with the
    /// defaults = the second 16 × 256 block). The agent loop gets the same slice
    /// (`calibration.offset`).
    #[arg(long, default_value_t = 0)]
    calib_offset: usize,
    /// Share of every row's calibration windows made of answered factual questions
    /// (`[calibration.knowledge]` of the agent's config, at this share), so baselines
    /// and agent see the same calibration. Unset: baselines get none and the agent its
    /// config's.
    #[arg(long)]
    knowledge_share: Option<f64>,
    /// Perplexity text (must not be the calibration text).
    #[arg(long, default_value = config::assets::PPL_TEXT_SPEC)]
    ppl: String,
    /// Score perplexity on the first this-many tokens of the text (0 = all). 60
    /// windows of 512: differences of a few percent between methods are above the
    /// noise of the text sample.
    #[arg(long, default_value_t = 30_720)]
    ppl_tokens: usize,
    /// Perplexity window length.
    #[arg(long, default_value_t = 512)]
    window: usize,
    #[command(flatten)]
    suite: SuiteArgs,
    /// Every row runs on this device, the agent loop compare starts included.
    #[command(flatten)]
    device: common::DeviceArg,
    /// A finished `secateur prune` run directory whose committed masks form the agent row
    /// (its recorded wall time is the row's prune time). Without it compare runs the loop.
    #[arg(long, conflicts_with_all = ["agent_config", "no_agent"])]
    agent_run: Option<PathBuf>,
    /// Prune config (TOML) of the loop compare runs for the agent row (default: the
    /// `default` preset: heuristic planner). Its model, target sparsity and calibration
    /// text are replaced by this command's; the run folder goes to `--out/agent-runs/`.
    #[arg(long, conflicts_with = "no_agent")]
    agent_config: Option<PathBuf>,
    /// Leave the agent row out (it is listed as not run).
    #[arg(long)]
    no_agent: bool,
    /// Output folder.
    #[arg(long, default_value = "runs/compare")]
    out: PathBuf,
    /// Recompute the dense row even when `--out/dense.json` matches.
    #[arg(long)]
    no_cache: bool,
    /// Print the JSON table instead of the markdown one.
    #[arg(long)]
    json: bool,
    /// Compare at each of these sparsities instead of `--sparsity` (comma-separated,
    /// e.g. 0.1,0.2,0.3,0.4,0.5): one comparison per target in
    /// `--out/sparsity-0.30/…`, then the perplexity–knowledge trade-off of every method
    /// as `sweep.md`, `sweep.json` and `sweep.png` in `--out` (add `--qa` for the
    /// knowledge axis, e.g. `--qa assets/data/facts/test.jsonl --qa-limit 0`).
    #[arg(long, value_delimiter = ',', conflicts_with = "agent_run")]
    sweep: Vec<f64>,
}

/// Every setting that changes the dense numbers; the cache is reused only on equality.
#[derive(Serialize, Deserialize, PartialEq)]
struct CacheKey {
    model: PathBuf,
    model_bytes: u64,
    ppl: String,
    ppl_tokens: usize,
    window: usize,
    suite: SuiteSpec,
    /// `cpu` or `cuda:N`: the GPU's bf16 weights give other numbers than the CPU's f32.
    device: String,
}

#[derive(Serialize, Deserialize)]
struct DenseCache {
    key: CacheKey,
    row: Row,
}

/// What every row is evaluated on.
struct Bench<'a> {
    model: &'a Model,
    ckpt: &'a model::Checkpoint,
    template: Option<&'a model::ChatTemplate>,
    stops: &'a [u32],
    ppl_tokens: &'a [u32],
    window: usize,
    sets: &'a Sets,
    suite: &'a SuiteSpec,
    bars: common::Bars,
}

impl Bench<'_> {
    fn evaluate(
        &self,
        method: &str,
        overlay: Option<&WeightOverlay>,
        sparsity: f64,
        pruning: actors::Usage,
    ) -> Result<Row> {
        let clock = common::Stopwatch::start();
        let ppl = perplexity(
            self.model,
            overlay,
            self.ppl_tokens,
            self.window,
            method,
            &self.bars,
        )?;
        let target = Target {
            model: self.model,
            overlay,
            codec: &self.ckpt.tokenizer,
            template: self.template,
            stop_tokens: self.stops,
        };
        let suite = run_suite(&target, self.sets, self.suite, method, &self.bars)?;
        Ok(Row {
            method: method.into(),
            status: "ok".into(),
            sparsity: Some(sparsity),
            ppl: Some(ppl.ppl),
            mmlu: suite.mmlu.as_ref().map(|m| m.accuracy),
            qa: suite.qa.as_ref().map(|q| q.accuracy),
            prune_seconds: pruning.wall_seconds,
            eval_seconds: clock.wall_seconds(),
            prune_cpu_seconds: pruning.cpu_seconds,
            eval_cpu_seconds: clock.cpu_seconds(),
            vs_dense: Rel::default(),
            vs_best_baseline: Rel::default(),
            detail: Some(suite),
        })
    }
}

/// `--knowledge-share`: the agent's config with `[calibration.knowledge]` at that share
/// and compare's pool size, validated before the (slow) model load.
fn knowledge_config(args: &CompareArgs) -> Result<Option<config::Config>> {
    let Some(share) = args.knowledge_share else {
        return Ok(None);
    };
    let mut cfg = match &args.agent_config {
        Some(p) => config::Config::load(p)?,
        None => config::Config::default(),
    };
    cfg.calibration.samples = args.calib_samples;
    cfg.calibration.seq_len = args.calib_len;
    cfg.calibration.knowledge.share = share;
    cfg.validate().context("--knowledge-share")?;
    Ok(Some(cfg))
}

pub fn run(args: CompareArgs) -> Result<()> {
    if !(0.0..1.0).contains(&args.sparsity) {
        bail!("--sparsity {}: must be in [0, 1)", args.sparsity);
    }
    if let Some(s) = args.sweep.iter().find(|s| !(0.0..1.0).contains(*s)) {
        bail!("--sweep {s}: every sparsity must be in [0, 1)");
    }
    let methods: Vec<Method> = if args.methods.iter().any(|m| m == "all") {
        baselines::ALL_METHODS
            .iter()
            .map(|m| m.parse())
            .collect::<Result<_, _>>()?
    } else {
        args.methods
            .iter()
            .map(|m| m.parse())
            .collect::<Result<_, _>>()?
    };
    let knowledge_cfg = knowledge_config(&args)?;
    let path = common::model_path(args.model.clone())?;
    let suite = args.suite.spec();
    let sets = suite.load()?;
    let calib_texts = ::eval::data::read_texts(
        &args.calib,
        Some(
            args.calib_offset
                .saturating_add(args.calib_samples.max(1))
                .saturating_mul(4),
        ),
    )?;
    let ppl_texts = ::eval::data::read_texts(&args.ppl, None)?;
    let device = args.device.resolve()?;
    let ckpt = common::load(&path)?;
    let model = common::build(&ckpt, &device)?;
    let template = model::ChatTemplate::for_checkpoint(&ckpt)?;
    let stops = super::generate::stop_tokens(&ckpt);
    let calib_tokens = common::encode(&ckpt, &calib_texts.join("\n\n"))?;
    let skip = args
        .calib_offset
        .saturating_mul(args.calib_len)
        .min(calib_tokens.len());
    // The baselines get the loop's knowledge windows, built by the same function.
    let knowledge = match &knowledge_cfg {
        Some(cfg) => actors::engine::knowledge_calibration(cfg, template.as_ref(), &ckpt.tokenizer)
            .map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    let text_windows = args.calib_samples.saturating_sub(knowledge.len());
    let windows =
        baselines::calibration_windows(&calib_tokens[skip..], args.calib_len, text_windows);
    if windows.is_empty() {
        bail!(
            "{}: fewer than {} calibration tokens",
            args.calib,
            args.calib_len
        );
    }
    let knowledge_count = knowledge.len();
    let windows = ::eval::knowledge::interleave(windows, knowledge);
    let mut ppl_tokens = common::encode(&ckpt, &ppl_texts.join("\n\n"))?;
    if args.ppl_tokens > 0 {
        ppl_tokens.truncate(args.ppl_tokens);
    }
    let bench = Bench {
        model: &model,
        ckpt: &ckpt,
        template: template.as_ref(),
        stops: &stops,
        ppl_tokens: &ppl_tokens,
        window: args.window,
        sets: &sets,
        suite: &suite,
        bars: common::Bars { quiet: args.json },
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create", args.out.display()))?;

    // Dense, from the cache when every setting matches.
    let key = CacheKey {
        model: path.clone(),
        model_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        ppl: args.ppl.clone(),
        ppl_tokens: args.ppl_tokens,
        window: args.window,
        suite: suite.clone(),
        device: device::name(&device),
    };
    let cache_path = args.out.join("dense.json");
    let cached = (!args.no_cache)
        .then(|| std::fs::read(&cache_path).ok())
        .flatten()
        .and_then(|b| serde_json::from_slice::<DenseCache>(&b).ok())
        .filter(|c| c.key == key);
    let dense = match cached {
        Some(c) => {
            eprintln!("dense: reusing {}", cache_path.display());
            c.row
        }
        None => {
            // Nothing to prune: no time spent.
            let none = actors::Usage {
                cpu_seconds: Some(0.0),
                ..Default::default()
            };
            let row = bench.evaluate("dense", None, 0.0, none)?;
            let cache = DenseCache {
                key,
                row: row.clone(),
            };
            std::fs::write(&cache_path, serde_json::to_vec_pretty(&cache)?)
                .with_context(|| format!("{}: cannot write", cache_path.display()))?;
            row
        }
    };
    let ctx = Point {
        args: &args,
        bench: &bench,
        methods: &methods,
        windows: &windows,
        knowledge_windows: knowledge_count,
        path: &path,
        sets: &sets,
        dense,
    };
    if args.sweep.is_empty() {
        let table = ctx.compare(args.sparsity, &args.out)?;
        return if args.json {
            common::print(&serde_json::to_string_pretty(&table)?)
        } else {
            common::print(&markdown(&table))
        };
    }
    let mut tables = Vec::new();
    for &target in &args.sweep {
        let dir = args.out.join(format!("sparsity-{target:.2}"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        tables.push(ctx.compare(target, &dir)?);
    }
    let sweep = Sweep::from_tables(&tables);
    let md = sweep_markdown(&sweep);
    std::fs::write(
        args.out.join("sweep.json"),
        serde_json::to_vec_pretty(&sweep)?,
    )?;
    std::fs::write(args.out.join("sweep.md"), &md)?;
    sweep_plot(&args.out.join("sweep.png"), &sweep).context("sweep.png")?;
    if args.json {
        common::print(&serde_json::to_string_pretty(&sweep)?)
    } else {
        common::print(&md)
    }
}

/// What every comparison of one invocation shares (one per target with `--sweep`).
struct Point<'a> {
    args: &'a CompareArgs,
    bench: &'a Bench<'a>,
    methods: &'a [Method],
    windows: &'a [Vec<u32>],
    /// Of `windows`, those of answered questions.
    knowledge_windows: usize,
    path: &'a PathBuf,
    sets: &'a Sets,
    dense: Row,
}

impl Point<'_> {
    /// Every method and the agent at `target`; writes compare.{json,md,png} to `out`.
    fn compare(&self, target: f64, out: &std::path::Path) -> Result<Table> {
        let (args, bench, windows) = (self.args, self.bench, self.windows);
        let model = bench.model;
        let mut rows = vec![self.dense.clone()];
        for method in self.methods {
            let name = method.name();
            eprintln!("{name}: pruning to {target}");
            let clock = common::Stopwatch::start();
            let pruned = match baselines::prune(model, method, target, windows) {
                Ok(p) => p,
                Err(e) => {
                    rows.push(Row::not_run(&name, e.to_string()));
                    continue;
                }
            };
            let pruning = clock.usage();
            let overlay = pruned.overlay(model)?;
            rows.push(bench.evaluate(&name, Some(&overlay), pruned.sparsity(), pruning)?);
        }
        let source = match &args.agent_run {
            Some(dir) => Some(AgentSource::Run(dir)),
            None if args.no_agent => None,
            None => Some(AgentSource::Loop {
                config: args.agent_config.as_deref(),
                model: self.path,
                sparsity: target,
                calib: &args.calib,
                calib_offset: args.calib_offset,
                knowledge_share: args.knowledge_share,
                runs_dir: out.join("agent-runs"),
                device: args.device.device,
                quiet: args.json,
            }),
        };
        rows.push(match source {
            None => Row::not_run("agent", "--no-agent".into()),
            Some(source) => match agent_result(source) {
                Ok((p, pruning)) => {
                    let overlay = p.overlay(model)?;
                    bench.evaluate("agent", Some(&overlay), p.sparsity(), pruning)?
                }
                Err(e) => Row::not_run("agent", format!("{e:#}")),
            },
        });
        let best_baseline = fill_relative(&mut rows);
        let detail = rows[0].detail.clone().unwrap_or_default();
        let table = Table {
            model: self.path.clone(),
            target_sparsity: target,
            calibration: args.calib.clone(),
            calibration_windows: windows.len(),
            calibration_len: args.calib_len,
            calibration_offset: args.calib_offset,
            calibration_knowledge: self.knowledge_windows,
            ppl_text: args.ppl.clone(),
            ppl_tokens: bench.ppl_tokens.len(),
            window: args.window,
            suite: bench.suite.clone(),
            mmlu_questions: self.sets.mmlu.as_ref().map(|m| m.0.len()),
            qa_questions: self.sets.qa.as_ref().map(|q| q.0.len()),
            dense_mmlu: detail.mmlu_verdict(),
            dense_qa: detail.qa_verdict(),
            best_baseline,
            rows,
        };
        let md = markdown(&table);
        std::fs::write(out.join("compare.json"), serde_json::to_vec_pretty(&table)?)?;
        std::fs::write(out.join("compare.md"), &md)?;
        plot(&out.join("compare.png"), &table).context("compare.png")?;
        Ok(table)
    }
}
