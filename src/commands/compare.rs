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
//! when every evaluation setting matches.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ::eval::suite::{describe_suite, perplexity, run_suite, Sets, SuiteResult, SuiteSpec};
use ::eval::verdict::Verdict;
use ::eval::Target;
use anyhow::{bail, Context, Result};
use baselines::Method;
use model::{Model, WeightOverlay};
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
    /// Perplexity text (must not be the calibration text).
    #[arg(long, default_value = config::assets::PPL_TEXT_SPEC)]
    ppl: String,
    /// Score perplexity on the first this-many tokens of the text (0 = all).
    #[arg(long, default_value_t = 4096)]
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

/// Relative change `(x − ref) / ref` of each metric.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rel {
    pub ppl: Option<f64>,
    pub mmlu: Option<f64>,
    pub qa: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub method: String,
    /// `ok`, or `not run: <reason>`.
    pub status: String,
    pub sparsity: Option<f64>,
    pub ppl: Option<f64>,
    pub mmlu: Option<f64>,
    pub qa: Option<f64>,
    pub prune_seconds: f64,
    pub eval_seconds: f64,
    pub vs_dense: Rel,
    pub vs_best_baseline: Rel,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<SuiteResult>,
}

impl Row {
    fn not_run(method: &str, reason: String) -> Self {
        Self {
            method: method.into(),
            status: format!("not run: {reason}"),
            sparsity: None,
            ppl: None,
            mmlu: None,
            qa: None,
            prune_seconds: 0.0,
            eval_seconds: 0.0,
            vs_dense: Rel::default(),
            vs_best_baseline: Rel::default(),
            detail: None,
        }
    }
}

#[derive(Serialize)]
struct Table {
    model: PathBuf,
    target_sparsity: f64,
    calibration: String,
    calibration_windows: usize,
    calibration_len: usize,
    ppl_text: String,
    ppl_tokens: usize,
    window: usize,
    suite: SuiteSpec,
    mmlu_questions: Option<usize>,
    qa_questions: Option<usize>,
    dense_mmlu: Option<Verdict>,
    dense_qa: Option<Verdict>,
    best_baseline: Option<String>,
    rows: Vec<Row>,
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
        prune_seconds: f64,
    ) -> Result<Row> {
        let start = Instant::now();
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
            prune_seconds,
            eval_seconds: start.elapsed().as_secs_f64(),
            vs_dense: Rel::default(),
            vs_best_baseline: Rel::default(),
            detail: Some(suite),
        })
    }
}

fn rel(x: Option<f64>, reference: Option<f64>) -> Option<f64> {
    match (x, reference) {
        (Some(x), Some(r)) if r != 0.0 => Some((x - r) / r),
        _ => None,
    }
}

/// The best baseline: the lowest perplexity among the rows that ran.
fn best_baseline(rows: &[Row]) -> Option<&Row> {
    rows.iter()
        .filter(|r| r.method != "dense" && r.method != "agent" && r.ppl.is_some())
        .min_by(|a, b| {
            a.ppl
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.ppl.unwrap_or(f64::INFINITY))
        })
}

pub fn run(args: CompareArgs) -> Result<()> {
    if !(0.0..1.0).contains(&args.sparsity) {
        bail!("--sparsity {}: must be in [0, 1)", args.sparsity);
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
    let path = common::model_path(args.model.clone())?;
    let suite = args.suite.spec();
    let sets = suite.load()?;
    let calib_texts = ::eval::data::read_texts(&args.calib, Some(args.calib_samples.max(1) * 4))?;
    let ppl_texts = ::eval::data::read_texts(&args.ppl, None)?;
    let device = args.device.resolve()?;
    let ckpt = common::load(&path)?;
    let model = common::build(&ckpt, &device)?;
    let template = model::ChatTemplate::for_checkpoint(&ckpt)?;
    let stops = super::generate::stop_tokens(&ckpt);
    let calib_tokens = common::encode(&ckpt, &calib_texts.join("\n\n"))?;
    let windows = baselines::calibration_windows(&calib_tokens, args.calib_len, args.calib_samples);
    if windows.is_empty() {
        bail!(
            "{}: fewer than {} calibration tokens",
            args.calib,
            args.calib_len
        );
    }
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
            let row = bench.evaluate("dense", None, 0.0, 0.0)?;
            let cache = DenseCache {
                key,
                row: row.clone(),
            };
            std::fs::write(&cache_path, serde_json::to_vec_pretty(&cache)?)
                .with_context(|| format!("{}: cannot write", cache_path.display()))?;
            row
        }
    };
    let mut rows = vec![dense];
    for method in &methods {
        let name = method.name();
        eprintln!("{name}: pruning to {}", args.sparsity);
        let start = Instant::now();
        let pruned = match baselines::prune(&model, method, args.sparsity, &windows) {
            Ok(p) => p,
            Err(e) => {
                rows.push(Row::not_run(&name, e.to_string()));
                continue;
            }
        };
        let prune_seconds = start.elapsed().as_secs_f64();
        let overlay = pruned.overlay(&model)?;
        rows.push(bench.evaluate(&name, Some(&overlay), pruned.sparsity(), prune_seconds)?);
    }
    let source = match &args.agent_run {
        Some(dir) => Some(AgentSource::Run(dir)),
        None if args.no_agent => None,
        None => Some(AgentSource::Loop {
            config: args.agent_config.as_deref(),
            model: &path,
            sparsity: args.sparsity,
            calib: &args.calib,
            runs_dir: args.out.join("agent-runs"),
            device: args.device.device,
            quiet: args.json,
        }),
    };
    rows.push(match source {
        None => Row::not_run("agent", "--no-agent".into()),
        Some(source) => match agent_result(source) {
            Ok((p, prune_seconds)) => {
                let overlay = p.overlay(&model)?;
                bench.evaluate("agent", Some(&overlay), p.sparsity(), prune_seconds)?
            }
            Err(e) => Row::not_run("agent", format!("{e:#}")),
        },
    });
    let best = best_baseline(&rows).cloned();
    let dense_row = rows[0].clone();
    for r in rows.iter_mut() {
        r.vs_dense = Rel {
            ppl: rel(r.ppl, dense_row.ppl),
            mmlu: rel(r.mmlu, dense_row.mmlu),
            qa: rel(r.qa, dense_row.qa),
        };
        if let Some(b) = &best {
            r.vs_best_baseline = Rel {
                ppl: rel(r.ppl, b.ppl),
                mmlu: rel(r.mmlu, b.mmlu),
                qa: rel(r.qa, b.qa),
            };
        }
    }
    let detail = dense_row.detail.clone().unwrap_or_default();
    let table = Table {
        model: path,
        target_sparsity: args.sparsity,
        calibration: args.calib.clone(),
        calibration_windows: windows.len(),
        calibration_len: args.calib_len,
        ppl_text: args.ppl.clone(),
        ppl_tokens: ppl_tokens.len(),
        window: args.window,
        suite,
        mmlu_questions: sets.mmlu.as_ref().map(|m| m.0.len()),
        qa_questions: sets.qa.as_ref().map(|q| q.0.len()),
        dense_mmlu: detail.mmlu_verdict(),
        dense_qa: detail.qa_verdict(),
        best_baseline: best.map(|b| b.method),
        rows,
    };
    let md = markdown(&table, &detail);
    std::fs::write(
        args.out.join("compare.json"),
        serde_json::to_vec_pretty(&table)?,
    )?;
    std::fs::write(args.out.join("compare.md"), &md)?;
    plot(&args.out.join("compare.png"), &table).context("compare.png")?;
    if args.json {
        common::print(&serde_json::to_string_pretty(&table)?)
    } else {
        common::print(&md)
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:.1} %", 100.0 * v))
}

fn change(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:+.1} %", 100.0 * v))
}

fn markdown(t: &Table, dense: &SuiteResult) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# secateur compare — target sparsity {:.0} %\n",
        100.0 * t.target_sparsity
    );
    let _ = writeln!(s, "- model: `{}`", t.model.display());
    let _ = writeln!(
        s,
        "- calibration: {} windows × {} tokens of `{}`",
        t.calibration_windows, t.calibration_len, t.calibration
    );
    let _ = writeln!(
        s,
        "- perplexity: first {} tokens of `{}`, windows of {}",
        t.ppl_tokens, t.ppl_text, t.window
    );
    if let Some(n) = t.mmlu_questions {
        let _ = writeln!(
            s,
            "- MMLU: {n} questions, {}-shot, {} prompt",
            t.suite.shots,
            t.suite.mmlu_style.name()
        );
    }
    if let Some(n) = t.qa_questions {
        let _ = writeln!(
            s,
            "- factual QA: {n} questions, {}-shot, ≤{} new tokens",
            t.suite.qa_shots, t.suite.max_new_tokens
        );
    }
    for line in describe_suite(dense) {
        if !line.starts_with("  e.g.") {
            let _ = writeln!(s, "- dense {line}");
        }
    }
    let _ = writeln!(
        s,
        "- best baseline (lowest PPL): {}\n",
        t.best_baseline.as_deref().unwrap_or("–")
    );
    let _ = writeln!(
        s,
        "| method | sparsity | PPL | MMLU | QA | Δ PPL vs dense | Δ MMLU vs dense | Δ QA vs dense | Δ PPL vs best | Δ MMLU vs best | Δ QA vs best | prune s | eval s | status |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &t.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} |",
            r.method,
            pct(r.sparsity),
            r.ppl.map_or("–".into(), |p| format!("{p:.2}")),
            pct(r.mmlu),
            pct(r.qa),
            change(r.vs_dense.ppl),
            change(r.vs_dense.mmlu),
            change(r.vs_dense.qa),
            change(r.vs_best_baseline.ppl),
            change(r.vs_best_baseline.mmlu),
            change(r.vs_best_baseline.qa),
            r.prune_seconds,
            r.eval_seconds,
            r.status
        );
    }
    s
}

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../report/fonts/DejaVuSans.ttf");

/// One bar panel per metric (PPL, MMLU, QA), one bar per method that ran, the dense
/// value as a horizontal line: the layout of the paper's Figures 3–6.
/// Three significant figures at most: 1.23, 45.6, 789.
fn short(x: f64) -> String {
    match x.abs() {
        a if a < 10.0 => format!("{x:.2}"),
        a if a < 100.0 => format!("{x:.1}"),
        _ => format!("{x:.0}"),
    }
}

fn plot(path: &Path, t: &Table) -> Result<()> {
    use plotters::prelude::*;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
    let e = |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: {e}", path.display());
    type Pick = fn(&Row) -> Option<f64>;
    let metrics: [(&str, Pick); 3] = [
        ("Perplexity (lower is better)", |r| r.ppl),
        ("MMLU accuracy %", |r| r.mmlu.map(|v| 100.0 * v)),
        ("Factual QA accuracy %", |r| r.qa.map(|v| 100.0 * v)),
    ];
    let root = BitMapBackend::new(path, (1500, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let panels = root.split_evenly((1, 3));
    let rows: Vec<&Row> = t.rows.iter().filter(|r| r.status == "ok").collect();
    let palette = [
        BLUE,
        RED,
        GREEN,
        MAGENTA,
        CYAN,
        RGBColor(230, 140, 0),
        RGBColor(120, 60, 160),
        BLACK,
        RGBColor(90, 90, 90),
        RGBColor(0, 120, 120),
    ];
    let names: Vec<String> = rows.iter().map(|r| r.method.clone()).collect();
    let n = rows.len() as f64;
    // Horizontal bars: method names read left of their bar and never overlap; the
    // first row (dense) is on top. The dense value is a vertical reference line.
    let y_of = |i: usize| n - 1.0 - i as f64;
    for (k, (area, (title, pick))) in panels.iter().zip(metrics).enumerate() {
        let vals: Vec<(usize, f64)> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| pick(r).map(|v| (i, v)))
            .collect();
        let dense = rows.first().and_then(|r| pick(r));
        let label = |y: &f64| {
            let i = n - 1.0 - y.round();
            if (y - y.round()).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let bars = |v: f64, base: f64, i: usize| {
            let y = y_of(i);
            Rectangle::new(
                [(base, y - 0.35), (v, y + 0.35)],
                palette[i % palette.len()].filled(),
            )
        };
        let builder = |area| {
            let mut b = ChartBuilder::on(area);
            b.caption(title, (FONT, 22))
                .margin(10)
                .margin_right(25)
                .x_label_area_size(40)
                .y_label_area_size(130);
            b
        };
        if k == 0 {
            // Perplexities span orders of magnitude (dense ≈ 30, magnitude 2:4 > 1000):
            // a log axis keeps the good methods distinguishable.
            let lo = vals.iter().map(|v| v.1).fold(f64::MAX, f64::min).max(1e-3) / 1.5;
            let hi = vals.iter().map(|v| v.1).fold(lo * 2.0, f64::max) * 1.5;
            let mut c = builder(area)
                .build_cartesian_2d((lo..hi).log_scale(), -0.5..(n - 0.5))
                .map_err(|x| e(&x))?;
            c.configure_mesh()
                .disable_y_mesh()
                .y_labels(rows.len().max(1))
                .y_label_formatter(&label)
                .x_label_formatter(&|x| short(*x))
                .label_style((FONT, 14))
                .draw()
                .map_err(|x| e(&x))?;
            c.draw_series(vals.iter().map(|&(i, v)| bars(v, lo, i)))
                .map_err(|x| e(&x))?;
            c.draw_series(
                vals.iter()
                    .map(|&(i, v)| Text::new(short(v), (v, y_of(i) + 0.2), (FONT, 13))),
            )
            .map_err(|x| e(&x))?;
            if let Some(d) = dense {
                c.draw_series(LineSeries::new(
                    vec![(d, -0.5), (d, n - 0.5)],
                    BLACK.stroke_width(1),
                ))
                .map_err(|x| e(&x))?;
            }
        } else {
            // Accuracies in %, from 0; at least 0..10 so an all-zero panel has an axis.
            let hi = (vals.iter().map(|v| v.1).fold(0.0, f64::max) * 1.15).max(10.0);
            let mut c = builder(area)
                .build_cartesian_2d(0.0..hi, -0.5..(n - 0.5))
                .map_err(|x| e(&x))?;
            c.configure_mesh()
                .disable_y_mesh()
                .y_labels(rows.len().max(1))
                .y_label_formatter(&label)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .label_style((FONT, 14))
                .draw()
                .map_err(|x| e(&x))?;
            c.draw_series(vals.iter().map(|&(i, v)| bars(v, 0.0, i)))
                .map_err(|x| e(&x))?;
            c.draw_series(
                vals.iter()
                    .map(|&(i, v)| Text::new(short(v), (v, y_of(i) + 0.2), (FONT, 13))),
            )
            .map_err(|x| e(&x))?;
            if let Some(d) = dense {
                c.draw_series(LineSeries::new(
                    vec![(d, -0.5), (d, n - 0.5)],
                    BLACK.stroke_width(1),
                ))
                .map_err(|x| e(&x))?;
            }
        }
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
