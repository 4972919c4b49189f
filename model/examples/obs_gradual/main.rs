//! Issue 15's design measurement: one-shot OBS (SparseGPT) against gradual OBS repair
//! with Grams re-collected on the current, already repaired model, with and without
//! allocation by OBS saliency, on the real default model.
//!
//! ```text
//! cargo build --release --example obs_gradual -p model
//! obs_gradual METHOD SPARSITIES [SELECTION] [STEP] [WINDOWS]
//!   METHOD      oneshot | gradual | alloc-rel | alloc-abs | alloc-fisher | gradual-dense | dense
//!   SPARSITIES  comma list where PPL is measured, e.g. 0.5,0.6
//!   SELECTION   row | tile | fisher (default row; fisher: alloc-fisher only)
//!   STEP        global sparsity per gradual step (default 0.1)
//!   WINDOWS     QuAC 512-token windows for the PPL (default 60 = 30,720 tokens)
//! ```
//! Env `DENSE_PPL` skips the dense evaluation when the ratio's denominator is known;
//! env `FROM_DENSE` makes every gradual method re-solve from the dense weights, as
//! `gradual-dense` does. Env `FT_EPOCHS` > 0 fits every block's kept weights to the
//! dense block outputs before each measured PPL (`reconstruct.rs`; `FT_LR`, `FT_LOCAL`,
//! `FT_BOTH` = also measure the PPL before the fit).
//!
//! Calibration: the first 16 × 256 tokens of XSum `document`s joined by "\n\n" (as
//! `actors::engine::samples`). Gradual methods follow one trajectory of `STEP`-sized
//! global steps and evaluate at each requested sparsity on the way. Each step: one
//! forward pass over the calibration windows with the current repaired weights in a
//! `WeightOverlay` and Grams on (one per distinct layer input: q/k/v share q's, gate/up
//! share gate's), then `obs_prune` of every layer from its mask to its new target.
//! `gradual-dense` re-solves each step from the dense weights (current inputs, forced
//! current mask) instead of from the current repaired weights. Env `RESOLVE_DENSE`
//! also scores, at each requested sparsity, the gradual masks with their kept weights
//! re-solved once from the dense weights (`+resolve` rows).
//!
//! Measured 2026-12-06 on a shared 2-core CPU (dense QuAC PPL 30.026 over 60 × 512
//! tokens): one-shot per-row 63.76 (2.124×) at 50 %, 136.81 (4.556×) at 60 %; one-shot
//! tile 68.77 at 50 %; gradual uniform (0.1 steps) 62.68 (2.088×) at 50 %; alloc-rel
//! 81.13 (2.702×) at 50 %: the relative-energy normalisation misallocates.
//! `alloc-fisher` (the same greedy allocation, each row's saliency weighted by ½ × the
//! layer's output Fisher from 4 × 256 calibration tokens, i.e. an expected loss rise):
//! 59.39 (1.978×) at 50 %, 106.73 (3.555×) at 60 %, 234.18 (7.799×) at 70 %, 0.1 steps,
//! ~62 s per step on an idle 2-core CPU. The same with `FROM_DENSE` (each step re-solved
//! from the dense weights on the current inputs, SparseGPT's own target): 59.02, 106.72,
//! 263.18 — no better at 50/60 %, 12 % worse at 70 %. With selection `fisher` (each
//! layer's new pruned weights chosen layer-wide by ½F_j·w²/[H⁻¹]ᵢᵢ, rows of low output
//! Fisher giving up more): 63.07 at 50 %, 6 % worse than per-row selection.
//! Block reconstruction (`FT_EPOCHS=4 FT_LR=1e-4`, dense targets, one run on a 2-core
//! CPU shared with a build): one-shot per-row at 50 % 63.763 → 58.701 (1.955×, −7.9 %);
//! the summed per-token block error fell 7 % (block 11, where the pruned path's error
//! jumps, from 1.59e4 to 3.56e3). One epoch at lr 4e-4 (4 Adam steps of 4 × 256 tokens
//! per block) does as well: 58.749 (1.957×), fit 393 s wall (~13 s per block, shared
//! with a build; before the fitted weights were detached from the fit's graph, each
//! block's backward also walked every earlier block's and the same fit took 1,536 s).
//! At 60 % the same fit takes one-shot per-row OBS from 136.81 to 108.36 (3.609×, −20.8 %;
//! fit 255 s).
//! Measured 2026-12-07 (2-core CPU shared with other jobs): `alloc-fisher` with 0.1 steps
//! at 50 %, 59.387 again, and with the fit 57.985 (1.931×; the fit gains 2.4 % here
//! against 7.9 % after uniform one-shot OBS: the cost allocation leaves it less to
//! undo). The same allocation with 0.04 steps (the agent's base step) ends at 60.884
//! (2.028×): smaller OBS steps end worse, which is in line with the agent loop's 62.10
//! at 50 % (0.02–0.08 steps). Re-solving those 0.04-step masks' kept weights once from
//! the dense weights (`RESOLVE_DENSE`) gives 60.670: what small steps lose is in the
//! masks, not in the repaired weights.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Device, Tensor};
use kernels::obs::{
    hessian_factor, obs_prune, obs_prune_weighted, obs_saliency, obs_saliency_weighted,
    output_error, InverseHessian,
};
use kernels::{Mask, Selection, DEFAULT_BLOCK};
use model::text::TextSource;
use model::{gram_source, LayerInfo, Model, WeightOverlay};

mod reconstruct;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const DAMP: f64 = 0.01;
/// Per-layer cap on δ per step and on sparsity, for the allocating methods.
const STEP_CAP: f64 = 0.15;
const MAX_SPARSITY: f64 = 0.9;
/// Granularity of the greedy allocation.
const CHUNK: f64 = 0.01;

struct Ctx {
    m: Model,
    layers: Vec<LayerInfo>,
    calib: Vec<Vec<u32>>,
    eval: Vec<u32>,
    sel: Selection,
    t0: Instant,
    /// The dense weights, read once: `alloc-fisher` replaces the model's own.
    dense: HashMap<String, Vec<f32>>,
    /// Selection `fisher`: tile selection with each row's keys × its output Fisher
    /// (blended with the layer mean by env `FISHER_MIX`, default 1 = Fisher only).
    fisher_rows: bool,
}

/// The pruned model: repaired weights and masks of every prunable layer.
struct State {
    w: HashMap<String, Vec<f32>>,
    masks: HashMap<String, Mask>,
}

/// One Gram source, factored: the factor, and the Gram kept for output energies.
struct Input {
    factor: InverseHessian,
    gram: Vec<f64>,
    tokens: u64,
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let method = args.first().map_or("oneshot", String::as_str).to_string();
    let levels: Vec<f64> = args
        .get(1)
        .map_or("0.5,0.6", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let sel_arg = args.get(2).map_or("row", String::as_str);
    let sel = match sel_arg {
        "tile" | "fisher" => Selection::Tile,
        _ => Selection::PerRow,
    };
    let fisher_rows = sel_arg == "fisher";
    let step: f64 = args.get(3).map_or(Ok(0.1), |v| v.parse())?;
    let windows: usize = args.get(4).map_or(Ok(60), |v| v.parse())?;
    let mut ctx = load(sel, windows)?;
    ctx.fisher_rows = fisher_rows;
    let dense = match std::env::var("DENSE_PPL") {
        Ok(v) => v.parse()?,
        Err(_) => {
            let p = ppl(&ctx, None)?;
            println!(
                "| dense | - | 0.00 | {p:.3} | 1.000 | {:.0} |",
                ctx.t0.elapsed().as_secs_f64()
            );
            p
        }
    };
    let ft = reconstruct::options()?;
    let report = |name: &str, _s: f64, state: &State, t: Instant| -> Res<()> {
        let p = match ft {
            Some(opts) => {
                let mut fitted = State {
                    w: state.w.clone(),
                    masks: state.masks.clone(),
                };
                if std::env::var_os("FT_BOTH").is_some() {
                    eprintln!("  before reconstruction:");
                    ppl(&ctx, Some(&overlay(state)?))?;
                }
                reconstruct::reconstruct(&ctx, &mut fitted, opts)?;
                ppl(&ctx, Some(&overlay(&fitted)?))?
            }
            None => ppl(&ctx, Some(&overlay(state)?))?,
        };
        println!(
            "| {name} | {sel:?} | {:.4} | {p:.3} | {:.3} | {:.0} |",
            sparsity(&ctx, state),
            p / dense,
            t.elapsed().as_secs_f64()
        );
        Ok(())
    };
    match method.as_str() {
        "dense" => {}
        "oneshot" => oneshot(&ctx, &levels, &report)?,
        "gradual" | "alloc-rel" | "alloc-abs" | "alloc-fisher" | "gradual-dense" => {
            gradual(&ctx, &method, &levels, step, &report)?
        }
        other => return Err(format!("unknown method {other}").into()),
    }
    Ok(())
}

fn load(sel: Selection, windows: usize) -> Res<Ctx> {
    let t0 = Instant::now();
    let path = "assets/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    let ckpt = model::load_checkpoint(std::path::Path::new(path))?;
    let tok = ckpt.tokenizer.clone();
    let encode = |text: &str| -> Res<Vec<u32>> {
        Ok(tok
            .encode(text, false)
            .map_err(|e| e.to_string())?
            .get_ids()
            .to_vec())
    };
    let xsum = read_tokens("assets/data/xsum/test.jsonl", "document", 32, 8192, &encode)?;
    let calib = xsum[..16 * 256].chunks(256).map(<[u32]>::to_vec).collect();
    let quac = read_tokens(
        "assets/data/quac/test.jsonl",
        "passage",
        64,
        windows * 512,
        &encode,
    )?;
    let eval = quac[..windows * 512].to_vec();
    let m = Model::new(&ckpt.config, &ckpt.tensors, &Device::Cpu)?;
    let layers = m.prunable_layers();
    let mut dense = HashMap::new();
    for l in &layers {
        dense.insert(
            l.name.clone(),
            m.layer_weight(&l.name)?.flatten_all()?.to_vec1()?,
        );
    }
    eprintln!("loaded in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(Ctx {
        m,
        layers,
        calib,
        eval,
        sel,
        t0,
        dense,
        fisher_rows: false,
    })
}

/// The first texts of `path`'s `field`, joined by "\n\n" and tokenised once; as many
/// texts as it takes (doubling from `limit`) to reach `need` tokens.
fn read_tokens(
    path: &str,
    field: &str,
    mut limit: usize,
    need: usize,
    encode: &dyn Fn(&str) -> Res<Vec<u32>>,
) -> Res<Vec<u32>> {
    let src = TextSource {
        path: path.into(),
        field: Some(field.into()),
    };
    loop {
        let texts = src.read(Some(limit))?;
        let tokens = encode(&texts.join("\n\n"))?;
        if tokens.len() >= need {
            return Ok(tokens);
        }
        if texts.len() < limit {
            return Err(format!("{path}: {} tokens, need {need}", tokens.len()).into());
        }
        limit *= 2;
    }
}

fn ppl(ctx: &Ctx, overlay: Option<&WeightOverlay>) -> Res<f64> {
    let t = Instant::now();
    let p = ctx.m.perplexity_with(&ctx.eval, 512, overlay)?.ppl;
    eprintln!("  ppl {p:.3} in {:.0} s", t.elapsed().as_secs_f64());
    Ok(p)
}

fn overlay(state: &State) -> Res<WeightOverlay> {
    let mut o = WeightOverlay::new();
    for (name, w) in &state.w {
        let m = &state.masks[name];
        o.insert(
            name.clone(),
            Tensor::from_slice(w, (m.rows(), m.cols()), &Device::Cpu)?,
        );
    }
    Ok(o)
}

fn sparsity(ctx: &Ctx, state: &State) -> f64 {
    let (p, n) = ctx.layers.iter().fold((0, 0), |(p, n), l| {
        let m = &state.masks[&l.name];
        (p + m.count_pruned(), n + m.len())
    });
    p as f64 / n as f64
}

fn dense_state(ctx: &Ctx) -> Res<State> {
    let mut w = HashMap::new();
    let mut masks = HashMap::new();
    for l in &ctx.layers {
        w.insert(l.name.clone(), dense_weight(ctx, &l.name)?);
        masks.insert(l.name.clone(), Mask::ones(l.out_features, l.in_features));
    }
    Ok(State { w, masks })
}

fn dense_weight(ctx: &Ctx, name: &str) -> Res<Vec<f32>> {
    Ok(ctx.dense[name].clone())
}

/// One calibration pass with the state's weights (dense when `None`), Grams on every
/// distinct layer input; each Gram is factored right away.
fn collect(ctx: &Ctx, state: Option<&State>) -> Res<HashMap<String, Input>> {
    let t = Instant::now();
    let mut sources: Vec<String> = ctx.layers.iter().map(|l| gram_source(&l.name)).collect();
    sources.dedup();
    for s in &sources {
        ctx.m.set_gram_enabled(s, true)?;
    }
    let o = state.map(overlay).transpose()?;
    for batch in ctx.calib.chunks(4) {
        let ids: Vec<u32> = batch.concat();
        let x = Tensor::from_vec(ids, (batch.len(), 256), &Device::Cpu)?;
        ctx.m.forward_with(&x, o.as_ref())?;
    }
    for s in &sources {
        ctx.m.set_gram_enabled(s, false)?;
    }
    let pass = t.elapsed().as_secs_f64();
    let mut out = HashMap::new();
    for s in sources {
        let g = ctx.m.take_gram(&s)?.ok_or("no Gram")?;
        let gram: Vec<f64> = g.gram.flatten_all()?.to_vec1()?;
        let cols = g.gram.dim(0)?;
        let factor = hessian_factor(&gram, g.tokens, cols, DAMP)?;
        let tokens = g.tokens;
        out.insert(
            s,
            Input {
                factor,
                gram,
                tokens,
            },
        );
    }
    eprintln!(
        "  grams: pass {pass:.0} s, factors {:.0} s",
        t.elapsed().as_secs_f64() - pass
    );
    Ok(out)
}

/// Prune every layer to its target with the OBS update, from the current repaired
/// weights (or from the dense weights when `from_dense`). Returns Σ output error and
/// Σ output energy (current inputs) over the layers, against the weights it started from.
fn prune_all(
    ctx: &Ctx,
    state: &mut State,
    inputs: &HashMap<String, Input>,
    targets: &HashMap<String, f64>,
    from_dense: bool,
    fisher: Option<&HashMap<String, Vec<f64>>>,
) -> Res<(f64, f64)> {
    let mix: f64 = std::env::var("FISHER_MIX").map_or(Ok(1.0), |v| v.parse())?;
    let t = Instant::now();
    let (mut err, mut energy) = (0.0, 0.0);
    for l in &ctx.layers {
        let input = &inputs[&gram_source(&l.name)];
        let before = state.w[&l.name].clone();
        let mut w = if from_dense {
            dense_weight(ctx, &l.name)?
        } else {
            before.clone()
        };
        let mask = match fisher.filter(|_| ctx.fisher_rows) {
            Some(f) => {
                let rows = &f[&l.name];
                let mean = rows.iter().sum::<f64>() / rows.len().max(1) as f64;
                let weights: Vec<f64> = rows
                    .iter()
                    .map(|v| mix * v / mean.max(1e-30) + (1.0 - mix))
                    .collect();
                obs_prune_weighted(
                    &mut w,
                    &input.factor,
                    &state.masks[&l.name],
                    targets[&l.name],
                    DEFAULT_BLOCK,
                    &weights,
                )?
            }
            None => obs_prune(
                &mut w,
                &input.factor,
                &state.masks[&l.name],
                targets[&l.name],
                DEFAULT_BLOCK,
                ctx.sel,
            )?,
        };
        let cols = l.in_features;
        err += output_error(&before, &w, &input.gram, input.tokens, cols)?;
        energy += output_error(
            &before,
            &vec![0.0; before.len()],
            &input.gram,
            input.tokens,
            cols,
        )?;
        state.w.insert(l.name.clone(), w);
        state.masks.insert(l.name.clone(), mask);
    }
    eprintln!(
        "  pruned in {:.0} s, relative output error {:.4e}",
        t.elapsed().as_secs_f64(),
        err / energy
    );
    Ok((err, energy))
}

fn oneshot(
    ctx: &Ctx,
    levels: &[f64],
    report: &dyn Fn(&str, f64, &State, Instant) -> Res<()>,
) -> Res<()> {
    let inputs = collect(ctx, None)?;
    for &s in levels {
        let t = Instant::now();
        let mut state = dense_state(ctx)?;
        let targets = ctx.layers.iter().map(|l| (l.name.clone(), s)).collect();
        prune_all(ctx, &mut state, &inputs, &targets, false, None)?;
        report("oneshot", s, &state, t)?;
    }
    Ok(())
}

fn gradual(
    ctx: &Ctx,
    method: &str,
    levels: &[f64],
    step: f64,
    report: &dyn Fn(&str, f64, &State, Instant) -> Res<()>,
) -> Res<()> {
    let t = Instant::now();
    let mut state = dense_state(ctx)?;
    let last = levels.iter().copied().fold(0.0, f64::max);
    let mut level = 0.0;
    let mut first = true;
    while level < last - 1e-9 {
        // Next stop: one step further, or a requested level if that comes first.
        let next = levels
            .iter()
            .copied()
            .filter(|&s| s > level + 1e-9)
            .fold(level + step, f64::min);
        eprintln!(
            "step {level:.3} -> {next:.3} ({:.0} s)",
            t.elapsed().as_secs_f64()
        );
        let inputs = collect(ctx, (!first).then_some(&state))?;
        let mut fisher = None;
        let targets = match method {
            "alloc-rel" | "alloc-abs" => {
                allocate(ctx, &state, &inputs, next, Weighting::from(method))?
            }
            "alloc-fisher" => {
                // The output Fisher of the current model: its weights go in place first.
                for l in &ctx.layers {
                    let m = &state.masks[&l.name];
                    let w =
                        Tensor::from_slice(&state.w[&l.name], (m.rows(), m.cols()), &Device::Cpu)?;
                    ctx.m.replace_pruned(&l.name, &w, m)?;
                }
                let tf = Instant::now();
                let f = ctx.m.gradient_profile(&ctx.calib[..4], true)?.output_fisher;
                eprintln!("  fisher in {:.0} s", tf.elapsed().as_secs_f64());
                let t = allocate(ctx, &state, &inputs, next, Weighting::Fisher(&f))?;
                fisher = Some(f);
                t
            }
            _ => ctx.layers.iter().map(|l| (l.name.clone(), next)).collect(),
        };
        prune_all(
            ctx,
            &mut state,
            &inputs,
            &targets,
            method == "gradual-dense" || std::env::var_os("FROM_DENSE").is_some(),
            fisher.as_ref(),
        )?;
        level = next;
        first = false;
        if levels.iter().any(|&s| (s - level).abs() < 1e-9) {
            report(method, level, &state, t)?;
            if std::env::var_os("RESOLVE_DENSE").is_some() {
                let resolved = resolve_from_dense(ctx, &state)?;
                report(&format!("{method}+resolve"), level, &resolved, t)?;
            }
        }
    }
    Ok(())
}

/// The gradual state's masks, kept weights re-solved once from the dense weights (the
/// OBS sweep with the whole final mask forced, on the current model's inputs): is what
/// many small steps lose in the weights or in the masks?
fn resolve_from_dense(ctx: &Ctx, state: &State) -> Res<State> {
    let inputs = collect(ctx, Some(state))?;
    let mut resolved = State {
        w: state.w.clone(),
        masks: state.masks.clone(),
    };
    let targets = ctx
        .layers
        .iter()
        .map(|l| (l.name.clone(), state.masks[&l.name].sparsity()))
        .collect();
    prune_all(ctx, &mut resolved, &inputs, &targets, true, None)?;
    let changed = ctx
        .layers
        .iter()
        .filter(|l| resolved.masks[&l.name] != state.masks[&l.name])
        .count();
    eprintln!("  re-solved from dense: {changed} masks changed (expected 0)");
    Ok(resolved)
}

/// Per-layer targets whose pruned total reaches `global` sparsity: greedy chunks of
/// `CHUNK` to the layer with the lowest marginal OBS saliency per pruned weight, the
/// saliency divided by the layer's output energy (`relative`) or raw, each layer capped at
/// `STEP_CAP` more this step and `MAX_SPARSITY` in all.
/// How the allocation weighs a layer's OBS saliency.
enum Weighting<'a> {
    /// Raw: the per-token output error.
    Absolute,
    /// Divided by the layer's output energy.
    Relative,
    /// Row j by ½·F_j, the layer's output Fisher: the expected per-token loss rise.
    Fisher(&'a HashMap<String, Vec<f64>>),
}

impl From<&str> for Weighting<'_> {
    fn from(method: &str) -> Self {
        if method == "alloc-rel" {
            Self::Relative
        } else {
            Self::Absolute
        }
    }
}

fn allocate(
    ctx: &Ctx,
    state: &State,
    inputs: &HashMap<String, Input>,
    global: f64,
    weighting: Weighting<'_>,
) -> Res<HashMap<String, f64>> {
    let total: usize = ctx
        .layers
        .iter()
        .map(|l| l.out_features * l.in_features)
        .sum();
    let pruned: usize = state.masks.values().map(Mask::count_pruned).sum();
    let mut budget = (global * total as f64).round() - pruned as f64;
    // Per layer: current sparsity, costs at δ = CHUNK, 2·CHUNK, …, and chunks given.
    let mut costs: Vec<(f64, Vec<f64>, usize)> = Vec::new();
    for l in &ctx.layers {
        let (w, mask) = (&state.w[&l.name], &state.masks[&l.name]);
        let input = &inputs[&gram_source(&l.name)];
        let s = mask.sparsity();
        let n = ((STEP_CAP.min(MAX_SPARSITY - s)) / CHUNK + 1e-9)
            .floor()
            .max(0.0) as usize;
        let deltas: Vec<f64> = (1..=n).map(|j| j as f64 * CHUNK).collect();
        let mut sal = match &weighting {
            Weighting::Fisher(f) => {
                let half: Vec<f64> = f[&l.name].iter().map(|v| 0.5 * v).collect();
                obs_saliency_weighted(w, input.factor.hinv_diag(), mask, &deltas, &half)?
            }
            _ => obs_saliency(w, input.factor.hinv_diag(), mask, &deltas)?,
        };
        if matches!(weighting, Weighting::Relative) {
            let zeros = vec![0.0; w.len()];
            let e = output_error(w, &zeros, &input.gram, input.tokens, l.in_features)?;
            sal.iter_mut().for_each(|v| *v /= e.max(1e-30));
        }
        costs.push((s, sal, 0));
    }
    while budget > 0.0 {
        let best = ctx
            .layers
            .iter()
            .zip(&costs)
            .enumerate()
            .filter(|(_, (_, (_, sal, k)))| *k < sal.len())
            .map(|(i, (l, (_, sal, k)))| {
                let prev = if *k == 0 { 0.0 } else { sal[k - 1] };
                let params = CHUNK * (l.out_features * l.in_features) as f64;
                (i, (sal[*k] - prev) / params, params)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let Some((i, _, params)) = best else { break };
        costs[i].2 += 1;
        budget -= params;
    }
    Ok(ctx
        .layers
        .iter()
        .zip(&costs)
        .map(|(l, (s, _, k))| (l.name.clone(), (s + *k as f64 * CHUNK).min(1.0)))
        .collect())
}
