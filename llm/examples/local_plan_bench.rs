//! Throughput of the `local` planner on realistic prompts: a run on the synthetic
//! 30-block SmolLM2-shaped model (210 layers) driven by the local planner itself, each
//! plan's prompt built by the real prompt builder from the profile and the feedback of
//! the planner's earlier plans (shaped like the critic's reflections). Plan 1 is cold;
//! later ones resume the cached prefix (the system prompt) as they would in a run, and
//! from iteration 4 on the feedback window (3) is full: the steady state.
//!
//! ```text
//! cargo run --release -p llm --example local_plan_bench -- MODEL.gguf [PLANS=6] [K=1] [TEMPERATURE=0.5]
//! ```
//!
//! Prints one row per plan and the steady-state medians: prompt tokens, prefill
//! tokens/s, answer tokens (and how many the grammar forced), decode tokens/s,
//! milliseconds per token spent choosing tokens, seconds per plan, and each plan's
//! projected global gain and answer (`SHOW_PROMPT=1`: also plan 1's prompt; `FULL=1`:
//! whole answers instead of their first 160 characters).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use common::median;
use config::PromptConfig;
use llm::build_prompt;
use llm::local::{LocalBackend, LocalStats};
use llm::sim::SimRun;
use protocol::Plan;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(model) = args.first().map(PathBuf::from) else {
        anyhow::bail!("usage: local_plan_bench MODEL.gguf [PLANS=6] [K=1] [TEMPERATURE=0.5]");
    };
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or(default.into());
    let plans: usize = arg(1, "6").parse().context("PLANS")?;
    let k: usize = arg(2, "1").parse().context("K")?;
    let temperature: f64 = arg(3, "0.5").parse().context("TEMPERATURE")?;

    let t = Instant::now();
    let backend = LocalBackend::load(&model, temperature, 4096, PromptConfig::default(), 42)?;
    println!(
        "{}: loaded in {:.1} s ({} tensors re-encoded as Q8_0, context {}), {} thread(s)",
        model.display(),
        t.elapsed().as_secs_f64(),
        backend.requantized(),
        backend.context(),
        candle_core::utils::get_num_threads()
    );

    let mut run = SimRun::smollm_like();
    {
        let req = run.request();
        let (prompt, listed) = backend.plan_prompt(&req, 0, k);
        let every_layer = PromptConfig {
            listed_layers: 0,
            ..PromptConfig::default()
        };
        let full = build_prompt(&req, &every_layer, 0, k);
        println!(
            "prompt of plan 1: {} tokens with the chat template (system alone {}), listing {} of {} layers; with all layers listed it would be {} tokens",
            backend.prompt_tokens(&prompt.system, &prompt.user)?,
            backend.prompt_tokens(&prompt.system, "")?,
            listed.len(),
            req.profiles.len(),
            backend.prompt_tokens(&full.system, &full.user)?,
        );
        if std::env::var("SHOW_PROMPT").is_ok() {
            println!("{}", prompt.user);
        }
    }
    println!(
        "{:>4} {:>3} {:>7} {:>7} {:>9} {:>5} {:>6} {:>6} {:>9} {:>8} {:>8} {:>5}  plan",
        "iter",
        "k",
        "prompt",
        "cached",
        "prefill/s",
        "gen",
        "forced",
        "passes",
        "decode/s",
        "pick ms",
        "seconds",
        "valid"
    );
    let full = std::env::var("FULL").is_ok();
    let mut rows: Vec<(u32, LocalStats)> = Vec::new();
    for _ in 0..plans {
        let req = run.request();
        let names = req.layer_names();
        let mut first: Option<Plan> = None;
        for c in 0..k {
            let (prompt, layers) = backend.plan_prompt(&req, c, k);
            let grammar = llm::local::plan_grammar(&req, &layers);
            let (text, s) = backend.generate(&prompt.system, &prompt.user, &grammar)?;
            let plan = Plan::from_json(&text).ok();
            let valid = plan.as_ref().is_some_and(|p| p.validate(&names).is_empty());
            let gain = plan.as_ref().map_or(0.0, |p| {
                protocol::projected_sparsity(&req.profiles, &p.layer_decisions)
                    - req.current_sparsity
            });
            println!(
                "{:>4} {:>3} {:>7} {:>7} {:>9.1} {:>5} {:>6} {:>6} {:>9.2} {:>8.2} {:>8.2} {:>5} {:>7.4}  {}",
                req.iteration,
                c + 1,
                s.prompt_tokens,
                s.cached_tokens,
                s.prefill_tokens_per_s(),
                s.generated_tokens,
                s.forced_tokens,
                s.decode_passes,
                s.decode_tokens_per_s(),
                1000.0 * s.pick_seconds / s.generated_tokens.max(1) as f64,
                s.seconds,
                valid,
                gain,
                short(&text, if full { usize::MAX } else { 160 })
            );
            rows.push((req.iteration, s));
            if first.is_none() {
                first = plan;
            }
        }
        run.advance(first.unwrap_or(Plan {
            reasoning: String::new(),
            stop_pruning: false,
            layer_decisions: Vec::new(),
        }));
    }
    let cold = rows
        .first()
        .map(|(_, s)| s.prefill_tokens_per_s())
        .unwrap_or(0.0);
    let steady: Vec<LocalStats> = rows
        .iter()
        .filter(|(i, _)| *i > 3)
        .map(|(_, s)| *s)
        .collect();
    let (label, set) = if steady.is_empty() {
        ("all", rows.iter().map(|(_, s)| *s).collect())
    } else {
        ("steady-state (iteration >= 4)", steady)
    };
    let med = |f: &dyn Fn(&LocalStats) -> f64| median(set.iter().map(f).collect());
    println!(
        "median of {} {label} plans: {:.0} prompt tokens ({:.0} cached), prefill {:.1} tok/s (cold plan 1: {:.1} tok/s), {:.0} answer tokens ({:.0} forced, {:.0} passes), decode {:.2} tok/s, pick {:.2} ms/token, {:.2} s per plan",
        set.len(),
        med(&|s| s.prompt_tokens as f64),
        med(&|s| s.cached_tokens as f64),
        med(&|s| s.prefill_tokens_per_s()),
        cold,
        med(&|s| s.generated_tokens as f64),
        med(&|s| s.forced_tokens as f64),
        med(&|s| s.decode_passes as f64),
        med(&|s| s.decode_tokens_per_s()),
        med(&|s| 1000.0 * s.pick_seconds / s.generated_tokens.max(1) as f64),
        med(&|s| s.seconds),
    );
    Ok(())
}

fn short(s: &str, n: usize) -> String {
    let mut t: String = s.chars().take(n).collect();
    if s.chars().count() > n {
        t.push('…');
    }
    t
}
