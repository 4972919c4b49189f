//! The local planner's two possible constraint engines side by side on the same model
//! and the same synthetic run: the plan grammar (`PlanGrammar`, what the planner uses)
//! and llguidance compiling the plan's JSON schema (what llama.cpp, vLLM and SGLang
//! use for structured output). Each engine plans its own run of PLANS iterations on
//! the SmolLM2-shaped synthetic model (`llm::sim::SimRun`), from the same seed.
//!
//! ```text
//! cargo run --release -p llm --features llguidance --example grammar_engines -- MODEL.gguf [PLANS=6] [TEMPERATURE=0.5]
//! ```
//!
//! `ENGINE="plan grammar"` or `ENGINE=llguidance` runs one of them.
//!
//! Prints per plan: answer tokens (forced), milliseconds per answer token spent in the
//! engine, seconds per plan, the plan's projected gain, and what the critic would say of
//! it (`Plan::validate`'s errors, such as a duplicate layer, and a gain under the minimum); then medians per engine and where
//! each run ended (global sparsity and the synthetic PPL).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use common::median;
use config::PromptConfig;
use llm::local::choose::{Chooser, GrammarChooser};
use llm::local::llg::{llg_schema, LlgChooser};
use llm::local::{plan_grammar, LocalBackend, LocalStats};
use llm::sim::SimRun;
use protocol::{projected_sparsity, Plan, PlanRequest};

#[derive(Clone, Copy, PartialEq)]
enum Engine {
    Grammar,
    Llguidance,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Grammar => "plan grammar",
            Engine::Llguidance => "llguidance",
        }
    }
}

/// One plan's figures.
struct Row {
    stats: LocalStats,
    engine_ms_per_token: f64,
    gain: f64,
    problems: Vec<String>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(model) = args.first().map(PathBuf::from) else {
        anyhow::bail!("usage: grammar_engines MODEL.gguf [PLANS=6] [TEMPERATURE=0.5]");
    };
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or(default.into());
    let plans: usize = arg(1, "6").parse().context("PLANS")?;
    let temperature: f64 = arg(2, "0.5").parse().context("TEMPERATURE")?;
    let backend = LocalBackend::load(&model, temperature, 4096, PromptConfig::default(), 42)?;
    let t = Instant::now();
    let factory = backend.llg_factory()?;
    println!(
        "{}: llguidance token trie and parser factory built in {:.2} s",
        model.display(),
        t.elapsed().as_secs_f64()
    );
    let only = std::env::var("ENGINE").ok();
    for engine in [Engine::Grammar, Engine::Llguidance] {
        if only.as_deref().is_some_and(|o| o != engine.name()) {
            continue;
        }
        let mut run = SimRun::smollm_like();
        let mut rows = Vec::new();
        println!("\n{}:", engine.name());
        for _ in 0..plans {
            let req = run.request();
            let (prompt, layers) = backend.plan_prompt(&req, 0, 1);
            let (text, stats, engine_seconds) = match engine {
                Engine::Grammar => {
                    let grammar = plan_grammar(&req, &layers);
                    let mut c = GrammarChooser::new(&grammar);
                    let (text, s) = generate(&backend, &prompt, &mut c)?;
                    (text, s, s.pick_seconds)
                }
                Engine::Llguidance => {
                    let t = Instant::now();
                    let mut c = LlgChooser::new(&factory, llg_schema(&req, &layers))?;
                    let compile = t.elapsed().as_secs_f64();
                    let (text, s) = generate(&backend, &prompt, &mut c)?;
                    (text, s, compile + s.pick_seconds)
                }
            };
            let plan = Plan::from_json(&text).ok();
            let row = judge(&req, plan.as_ref(), stats, engine_seconds);
            println!(
                "  it {:>2}: {:>4} tokens ({:>3} forced), engine {:>6.2} ms/token, {:>6.1} s, gain {:.4}{}  {}",
                req.iteration,
                row.stats.generated_tokens,
                row.stats.forced_tokens,
                row.engine_ms_per_token,
                row.stats.seconds,
                row.gain,
                if row.problems.is_empty() { String::new() } else { format!(" [{}]", row.problems.join("; ")) },
                text.chars().take(120).collect::<String>()
            );
            run.advance(plan.unwrap_or(Plan {
                reasoning: String::new(),
                stop_pruning: false,
                layer_decisions: Vec::new(),
            }));
            rows.push(row);
        }
        let med = |f: &dyn Fn(&Row) -> f64| median(rows.iter().map(f).collect());
        println!(
            "  median of {} plans: {:.0} answer tokens, engine {:.2} ms/token, {:.1} s per plan, gain {:.4}; plans with a problem the critic would act on: {}; run ended at global sparsity {:.4}, synthetic PPL {:.3}",
            rows.len(),
            med(&|r| r.stats.generated_tokens as f64),
            med(&|r| r.engine_ms_per_token),
            med(&|r| r.stats.seconds),
            med(&|r| r.gain),
            rows.iter().filter(|r| !r.problems.is_empty()).count(),
            run.sim.global_sparsity(),
            run.sim.ppl()
        );
    }
    Ok(())
}

fn generate(
    backend: &LocalBackend,
    prompt: &llm::Prompt,
    chooser: &mut dyn Chooser,
) -> Result<(String, LocalStats)> {
    Ok(backend.generate_with(&prompt.system, &prompt.user, chooser)?)
}

/// The plan's projected gain and what the critic's default rules would act on.
fn judge(req: &PlanRequest, plan: Option<&Plan>, stats: LocalStats, engine_s: f64) -> Row {
    let mut problems = Vec::new();
    let gain = plan.map_or(0.0, |p| {
        projected_sparsity(&req.profiles, &p.layer_decisions) - req.current_sparsity
    });
    match plan {
        None => problems.push("unparsable".into()),
        Some(p) => {
            problems.extend(
                p.validate(&req.layer_names())
                    .iter()
                    .map(ToString::to_string),
            );
            if gain + protocol::SPARSITY_EPS < req.constraints.min_gain {
                problems.push(format!(
                    "gain under the minimum {}",
                    req.constraints.min_gain
                ));
            }
        }
    }
    Row {
        stats,
        engine_ms_per_token: 1000.0 * engine_s / stats.generated_tokens.max(1) as f64,
        gain,
        problems,
    }
}
