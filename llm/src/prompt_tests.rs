use super::*;
use crate::sim::SimModel;
use protocol::{Feedback, IterationOutcome, IterationRecord, Plan, PlanConstraints, Rejection};

/// Every layer listed: the tests of the full table and its grouping.
fn options() -> PromptConfig {
    PromptConfig {
        listed_layers: 0,
        ..PromptConfig::default()
    }
}

fn record(it: u32, summary: &str, assessment: &str, rolled_back: bool) -> IterationRecord {
    IterationRecord {
        plan: Plan {
            reasoning: "r".into(),
            stop_pruning: false,
            layer_decisions: vec![LayerDecision {
                layer: "model.layers.3.mlp.up_proj".into(),
                delta: 0.05,
            }],
        },
        outcome: IterationOutcome {
            iteration: it,
            sparsity_before: 0.1,
            sparsity_after: 0.13,
            ppl_before: 10.0,
            ppl_after: 10.4,
            rolled_back,
        },
        feedback: Feedback {
            iteration: it,
            summary: summary.into(),
            assessment: assessment.into(),
        },
    }
}

/// A 30-block request with a full memory, as big as a default run gets.
fn big_request() -> PlanRequest {
    let mut m = SimModel::smollm_like(30, 7, 2.0);
    for i in (0..m.sparsity.len()).step_by(3) {
        m.sparsity[i] = 0.25;
    }
    let mut r = PlanRequest::new(9, 40, m.profiles(), 0.5, 17.3, 21.9, 0.15);
    let long = "You proposed 60 layers (model.layers.4.mlp.down_proj +0.050, \
                model.layers.5.mlp.down_proj +0.050, and 58 more). Global sparsity 0.2100 -> \
                0.2480 (+3.80 pp); PPL 20.10 -> 21.90 (+9.0%).";
    r.history = (1..=8)
        .map(|i| {
            record(
                i,
                long,
                "Good - Solid sparsity gain with acceptable PPL impact",
                false,
            )
        })
        .collect();
    r.constraints = PlanConstraints {
        max_layer_sparsity: 0.9,
        max_z_grad: Some(2.5),
        forbidden_layers: ["model.layers.0.mlp.down_proj".to_string()].into(),
        min_gain: 0.001,
    };
    r.rejections = vec![Rejection {
        plan: r.history[0].plan.clone(),
        reasons: vec!["gain 0.0003 below min_gain 0.001".into()],
    }];
    r
}

#[test]
fn prompt_contains_what_the_paper_lists() {
    let r = big_request();
    let p = build_prompt(&r, &options(), 0, 1);
    let u = &p.user;
    assert!(u.contains("Iteration 9 of at most 40."), "{u}");
    let gap = r.target_sparsity - r.current_sparsity;
    assert!(u.contains(&format!(
        "Global sparsity: {:.4} now, target 0.5000 (gap {gap:.4}).",
        r.current_sparsity
    )));
    assert!(u.contains("Perplexity: baseline 17.300, current 21.900 (+26.6% vs baseline)"));
    assert!(u.contains("more than 15.0% is rolled back"));
    // τ per span of sparsity: the prompt states the rule and what a 0.1 step may cost.
    let spanned = build_prompt(&r.clone().with_tau_span(0.02), &options(), 0, 1).user;
    assert!(
        spanned.contains(
            "more than 15.0% per 0.02 of global sparsity it gains (compounded, never less than \
15.0%: 101.1% for a 0.10 step) is rolled back."
        ),
        "{spanned}"
    );
    // Only the last `feedback_window` (3) reflections, oldest first.
    assert!(u.contains("- Iteration 6: You proposed 60 layers"));
    assert!(u.contains("- Iteration 8:"));
    assert!(!u.contains("- Iteration 5:"));
    assert!(u.contains("Assessment: Good - Solid sparsity gain with acceptable PPL impact"));
    assert!(u.contains("do not choose these layers (they were in a plan that was rolled back recently): model.layers.0.mlp.down_proj"));
    assert!(u.contains("layers with z_grad above 2.50 are off limits"));
    assert!(u.contains("plans must gain at least 0.0010 of global sparsity"));
    assert!(u.contains("Reasons: gain 0.0003 below min_gain 0.001"));
    // Every layer's statistics are present, by group row.
    assert!(u.contains("[model.layers.{N}.mlp.down_proj] 30 layers x 884736 params"));
    assert!(u.contains("[model.layers.{N}.self_attn.k_proj] 30 layers x 110592 params"));
    let rows = u
        .lines()
        .filter(|l| l.split(' ').nth(1).is_some_and(|c| c.starts_with('#')))
        .count();
    assert_eq!(rows, 210);
    // System prompt: analyse past decisions, JSON per schema.
    assert!(p.system.contains("analyse your previous decisions"));
    assert!(p.system.contains("\"layer_decisions\""));
    assert!(p.system.contains("\"stop_pruning\""));
    assert!(p
        .system
        .contains("Answer with one JSON object and nothing else"));
}

#[test]
fn thirty_blocks_fit_a_small_context() {
    let p = build_prompt(&big_request(), &options(), 1, 3);
    // < 6k tokens at ≈ 4 characters per token.
    assert!(p.chars() < 24_000, "prompt is {} chars", p.chars());
    // And it really is compact: a full-name listing would be about twice as long.
    let full = layer_table(&big_request().profiles, usize::MAX);
    let compact = layer_table(&big_request().profiles, 48);
    assert!(
        compact.len() * 2 < full.len(),
        "{} vs {}",
        compact.len(),
        full.len()
    );
}

#[test]
fn rows_are_sorted_by_z_sens_and_ranks_are_global() {
    let r = big_request();
    let table = layer_table(&r.profiles, 48);
    let mut sorted: Vec<&LayerProfile> = r.profiles.iter().collect();
    sorted.sort_by(|a, b| a.z_sens.total_cmp(&b.z_sens));
    let safest = sorted[0];
    let (pat, n) = split_pattern(&safest.name).unwrap();
    // The group holding rank #1 comes first and its first row is rank #1.
    let first_group = table.lines().find(|l| l.starts_with('[')).unwrap();
    assert!(
        first_group.starts_with(&format!("[{pat}]")),
        "{first_group}"
    );
    let first_row = table.lines().find(|l| l.contains(" #")).unwrap();
    assert!(
        first_row.starts_with(&format!("{n} #1 {:+.2}", safest.z_sens)),
        "{first_row}"
    );
    // Within each group, z_sens never decreases.
    let mut last = f64::NEG_INFINITY;
    for line in table.lines() {
        if line.starts_with('[') {
            last = f64::NEG_INFINITY;
        } else if let Some(z) = line.split(' ').nth(2).and_then(|v| v.parse::<f64>().ok()) {
            assert!(z >= last, "{line}");
            last = z;
        }
    }
}

#[test]
fn short_lists_use_full_names_sorted() {
    let mk = |name: &str, z: f64| LayerProfile {
        name: name.into(),
        z_sens: z,
        z_grad: -0.5,
        sparsity: 0.1,
        params: 100,
        cost: Vec::new(),
    };
    let t = layer_table(&[mk("b", 0.5), mk("a.0.x", -1.0), mk("c", 0.0)], 48);
    let rows: Vec<&str> = t.lines().skip(1).collect();
    assert_eq!(
        rows,
        vec![
            "#1 a.0.x -1.00 -0.50 0.100 100",
            "#2 c +0.00 -0.50 0.100 100",
            "#3 b +0.50 -0.50 0.100 100"
        ]
    );
}

#[test]
fn odd_names_fall_back_to_full_names_in_compact_mode() {
    let mk = |name: &str, z: f64, params: u64| LayerProfile {
        name: name.into(),
        z_sens: z,
        z_grad: 0.0,
        sparsity: 0.0,
        params,
        cost: Vec::new(),
    };
    let profiles = vec![
        mk("blk.0.ffn", 0.1, 10),
        mk("blk.1.ffn", -0.3, 20),
        mk("lonely.7.x", 0.2, 5),
        mk("head", -1.0, 7),
    ];
    let t = layer_table(&profiles, 2);
    assert!(
        t.contains("(e.g. head)") || t.contains("(e.g. blk.1.ffn)"),
        "{t}"
    );
    assert!(t.contains("[blk.{N}.ffn] 2 layers, params in last column\n1 #2 -0.30 +0.00 0.000 20\n0 #3 +0.10 +0.00 0.000 10\n"), "{t}");
    assert!(t.contains("[other layers] full name, rank, z_sens, z_grad, sparsity, params\nhead #1 -1.00 +0.00 0.000 7\nlonely.7.x #4 +0.20 +0.00 0.000 5\n"), "{t}");
}

#[test]
fn candidates_get_distinct_styles_and_first_iteration_says_so() {
    let m = SimModel::smollm_like(2, 1, 2.0);
    let r = PlanRequest::new(1, 40, m.profiles(), 0.5, 10.0, 10.0, 0.15);
    let one = build_prompt(&r, &options(), 0, 1);
    assert!(one.user.contains("(none yet: this is the first iteration)"));
    assert!(!one.user.contains("candidate 1 of"));
    let second = build_prompt(&r, &options(), 1, 3);
    assert!(second
        .user
        .contains("candidate 2 of 3; the candidates are evaluated side by side"));
    assert!(second.user.contains("Make this one conservative"));
    assert_ne!(candidate_style(0), candidate_style(1));
    assert_eq!(candidate_style(99), candidate_style(5));
}

#[test]
fn decisions_text_truncates() {
    let d: Vec<LayerDecision> = (0..5)
        .map(|i| LayerDecision {
            layer: format!("l{i}"),
            delta: 0.01 * (i + 1) as f64,
        })
        .collect();
    assert_eq!(decisions_text(&d, 2), "l0 +0.010, l1 +0.020, and 3 more");
    assert_eq!(decisions_text(&[], 2), "no layers");
}

#[test]
fn shortlist_takes_the_safest_allowed_layers_in_model_order() {
    let mut r = big_request();
    let safest = r
        .profiles
        .iter()
        .min_by(|a, b| a.z_sens.total_cmp(&b.z_sens))
        .unwrap()
        .name
        .clone();
    r.constraints.forbidden_layers.insert(safest.clone());
    let list = shortlist(&r, 24);
    assert_eq!(list.len(), 24);
    assert!(
        list.iter().all(|p| p.name != safest),
        "forbidden layers are left out"
    );
    let worst_listed = list.iter().map(|p| p.z_sens).fold(f64::MIN, f64::max);
    let unlisted_allowed = r
        .profiles
        .iter()
        .filter(|p| r.constraints.allows(p) && !list.iter().any(|l| l.name == p.name));
    assert!(unlisted_allowed
        .into_iter()
        .all(|p| p.z_sens >= worst_listed));
    let pos = |n: &str| r.profiles.iter().position(|p| p.name == n).unwrap();
    assert!(list.windows(2).all(|w| pos(&w[0].name) < pos(&w[1].name)));
    // Fewer allowed layers than asked for: all of them.
    r.constraints.max_layer_sparsity = 0.2; // every third layer sits at 0.25
    let allowed = r
        .profiles
        .iter()
        .filter(|p| r.constraints.allows(p))
        .count();
    assert_eq!(shortlist(&r, 1000).len(), allowed);
}

/// The gain of `delta` on every layer of `list`, as the prompt computes it.
fn gain_of(r: &PlanRequest, list: &[LayerProfile], delta: f64) -> f64 {
    let all: Vec<LayerDecision> = list
        .iter()
        .map(|l| LayerDecision {
            layer: l.name.clone(),
            delta,
        })
        .collect();
    projected_sparsity(&r.profiles, &all) - r.current_sparsity
}

#[test]
fn a_listing_prompt_says_it_is_partial_and_gives_the_scale() {
    let r = big_request();
    let list = shortlist(&r, 5);
    let p = build_prompt_listing(&r, &options(), 0, 1, &list);
    assert!(p.user.contains("Only the 5 layers with the lowest z_sens"));
    assert!(p.user.contains("(of 210 prunable layers)"));
    // One table entry per δ of the range, each the projected gain of that δ everywhere.
    let entries: Vec<String> = [0.03, 0.06, 0.09, 0.12, 0.15]
        .iter()
        .map(|&d| format!("{d:.2} -> +{:.2} %", gain_of(&r, &list, d) * 100.0))
        .collect();
    assert!(gain_of(&r, &list, 0.03) > 0.0);
    assert!(
        p.user.contains(&format!(
            "Scale: the same delta on every listed layer raises global sparsity by: {}.",
            entries.join(", ")
        )),
        "{}",
        p.user
    );
    for l in &list {
        assert!(p.user.contains(&l.name), "{} listed", l.name);
    }
    let table = &p.user[p.user.find("Layer profiles (5 layers)").unwrap()..];
    assert_eq!(table.matches("model.layers.").count(), 5, "only those");
    // The full listing is the ordinary prompt.
    assert_eq!(
        build_prompt_listing(&r, &options(), 0, 1, &r.profiles),
        build_prompt(&r, &options(), 0, 1)
    );
    assert!(!build_prompt(&r, &options(), 0, 1).user.contains("Only the"));
    assert!(!build_prompt(&r, &options(), 0, 1).user.contains("Scale:"));
}

#[test]
fn pace_divides_the_gap_by_the_iterations_left_and_by_the_planned_horizon() {
    let mut r = big_request(); // iteration 9 of 40
    let gap = r.target_sparsity - r.current_sparsity;
    let p = pace(&r);
    assert_eq!(p.iterations_left, 32);
    assert!((p.least - gap / 32.0).abs() < 1e-12);
    // Half of 40 iterations: finish by iteration 20, 12 iterations from 9 on.
    assert_eq!(p.planned_within, 12);
    assert!((p.planned - gap / 12.0).abs() < 1e-12);
    let u = build_prompt(&r, &options(), 0, 1).user;
    assert!(
        u.contains(&format!(
            "Pace: 32 iteration(s) left, this one included: a gain of at least {:.2} % of global \
sparsity per iteration reaches the target in time. Plan to finish within 12 (+{:.2} % per \
iteration)",
            gap / 32.0 * 100.0,
            gap / 12.0 * 100.0
        )),
        "{u}"
    );
    // Past the horizon the plan is the budget itself, and the prompt says it once.
    r.iteration = 25;
    let p = pace(&r);
    assert_eq!((p.iterations_left, p.planned_within), (16, 16));
    assert_eq!(p.planned, p.least);
    assert!(!build_prompt(&r, &options(), 0, 1)
        .user
        .contains("Plan to finish"));
    // The last iteration (and beyond, on a resumed run) must close the whole gap.
    for it in [40, 41] {
        r.iteration = it;
        let p = pace(&r);
        assert_eq!((p.iterations_left, p.planned_within), (1, 1));
        assert!((p.planned - gap).abs() < 1e-12);
    }
    // Target reached: nothing to gain.
    r.iteration = 9;
    r.current_sparsity = r.target_sparsity;
    assert_eq!(pace(&r).planned, 0.0);
}

#[test]
fn the_scale_names_the_delta_that_keeps_the_planned_pace() {
    let mut r = big_request();
    // The synthetic model's safest layers are its small k/q projections: a pace they
    // can keep needs a longer run (finish within 92 iterations from iteration 9).
    r.max_iterations = 200;
    let list = shortlist(&r, 40);
    let planned = pace(&r).planned;
    let d = uniform_delta_for(&r, &list, planned).expect("40 layers can keep the pace");
    assert!(d > 0.02 && d < 0.15, "{d}");
    // Rounded up to 3 decimals: enough, and 0.001 less is not.
    assert!(gain_of(&r, &list, d) >= planned - 1e-12);
    assert!(gain_of(&r, &list, d - 0.001) < planned);
    assert!((d * 1e3 - (d * 1e3).round()).abs() < 1e-9);
    let u = build_prompt_listing(&r, &options(), 0, 1, &list).user;
    assert!(
        u.contains(&format!(
            "The planned pace (+{:.2} %) is delta {d:.3} on every listed layer.",
            planned * 100.0
        )),
        "{u}"
    );
    // Too few (small) layers for the pace: the prompt says even the maximum falls short.
    let one = shortlist(&r, 1);
    assert_eq!(uniform_delta_for(&r, &one, planned), None);
    let u = build_prompt_listing(&r, &options(), 0, 1, &one).user;
    assert!(
        u.contains(&format!(
            "Even delta 0.15 on every listed layer gains less than the planned pace (+{:.2} %).",
            planned * 100.0
        )),
        "{u}"
    );
    // A tiny remaining gap: the smallest δ already covers it.
    let mut near = r.clone();
    near.target_sparsity = near.current_sparsity + 1e-4;
    assert_eq!(
        uniform_delta_for(&near, &list, pace(&near).planned),
        Some(0.01)
    );
}

#[test]
fn measured_costs_appear_as_a_column_only_when_every_layer_has_them() {
    let mut profiles = big_request().profiles;
    let plain = layer_table(&profiles, 48);
    assert!(!plain.contains("cost"), "{plain}");
    for (i, p) in profiles.iter_mut().enumerate() {
        p.cost = (1..=15)
            .map(|k| f64::from(k) * 1e-4 * (i + 1) as f64)
            .collect();
    }
    for compact in [48, usize::MAX] {
        let t = layer_table(&profiles, compact);
        assert!(t.contains("sparsity, cost"), "{t}");
        assert!(t.contains("expected rise of the calibration loss"), "{t}");
        // The first layer's cost at δ = 0.05 is 5e-4.
        assert!(t.contains(" 5.00e-4"), "{t}");
    }
    profiles[3].cost.clear();
    assert_eq!(layer_table(&profiles, 48), {
        let mut p = big_request().profiles;
        for (i, q) in p.iter_mut().enumerate() {
            if i != 3 {
                q.cost = vec![1.0; 15];
            }
        }
        layer_table(&p, 48)
    });
}

#[test]
fn the_default_prompt_lists_the_cheapest_allowed_layers_per_parameter() {
    let mut r = big_request();
    // Costs that do not follow z_sens: the cheapest per parameter are the MLP
    // projections of the last blocks (bigger layers, lower cost).
    for (i, p) in r.profiles.iter_mut().enumerate() {
        let per_param = 1e-9 * (1.0 + ((i * 37) % 210) as f64);
        p.cost = (1..=15)
            .map(|k| f64::from(k) * 0.2 * per_param * p.params as f64)
            .collect();
    }
    let defaults = PromptConfig::default();
    assert_eq!(defaults.listed_layers, 40);
    let p = build_prompt(&r, &defaults, 0, 1);
    let u = &p.user;
    assert!(
        u.contains(
            "Only the 40 layers with the lowest cost per parameter that the constraints \
allow are listed (of 210 prunable layers)"
        ),
        "{u}"
    );
    assert!(
        u.contains("Scale: the same delta on every listed layer"),
        "{u}"
    );
    // About 2k tokens instead of 5k, at ≈ 4 characters per token.
    assert!(p.chars() < 10_000, "prompt is {} chars", p.chars());
    // The listed layers are the 40 allowed ones with the lowest cost per parameter.
    let per_param = |q: &LayerProfile| q.cost[4] / q.params as f64;
    let mut allowed: Vec<&LayerProfile> = r
        .profiles
        .iter()
        .filter(|q| r.constraints.allows(q))
        .collect();
    assert!(allowed.len() > 40);
    allowed.sort_by(|a, b| per_param(a).total_cmp(&per_param(b)));
    let listed = listing(&r, &defaults);
    assert_eq!(listed.len(), 40);
    for q in &allowed[..40] {
        assert!(listed.iter().any(|l| l.name == q.name), "{} listed", q.name);
    }
    assert!(!listed
        .iter()
        .any(|l| l.name == "model.layers.0.mlp.down_proj"));
    // Without cost curves the shortlist falls back to z_sens and says so.
    let plain = build_prompt(&big_request(), &defaults, 0, 1).user;
    assert!(
        plain.contains("Only the 40 layers with the lowest z_sens"),
        "{plain}"
    );
    // listed_layers = 0 lists every layer.
    assert_eq!(listing(&r, &options()).len(), 210);
}
