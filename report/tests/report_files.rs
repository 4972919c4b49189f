//! The report files from a small synthetic run with a rollback: Table 4 numbers, the
//! Markdown, and PNGs that contain drawn text (the embedded font works).

use protocol::{
    ActorTimings, Feedback, IterationOutcome, IterationRecord, LayerDecision, Plan, ProbePoint,
    ProbeSeries, Rejection, RunState, RunSummary, StopReason, StoppingPlan, Verdict,
};
use report::{report_json, report_md, write_all, Extras, Table4};

fn rec(it: u32, before: f64, after: f64, p0: f64, p1: f64, rolled_back: bool) -> IterationRecord {
    IterationRecord {
        plan: Plan {
            reasoning: String::new(),
            stop_pruning: false,
            layer_decisions: vec![],
        },
        outcome: IterationOutcome {
            iteration: it,
            sparsity_before: before,
            sparsity_after: after,
            ppl_before: p0,
            ppl_after: p1,
            rolled_back,
        },
        feedback: Feedback {
            iteration: it,
            summary: String::new(),
            assessment: if rolled_back {
                "Poor".into()
            } else {
                "Good".into()
            },
        },
    }
}

fn summary() -> RunSummary {
    RunSummary {
        run_id: "r".into(),
        state: RunState::Finished,
        stop_reason: StopReason::TargetReached,
        failure: None,
        target_sparsity: 0.5,
        final_sparsity: 0.5,
        baseline_ppl: 10.0,
        final_ppl: 12.5,
        records: vec![
            rec(1, 0.0, 0.2, 10.0, 10.5, false),
            rec(2, 0.2, 0.45, 10.5, 13.0, true),
            rec(3, 0.2, 0.35, 10.5, 11.5, false),
            rec(4, 0.35, 0.5, 11.5, 12.5, false),
        ],
        timings: ActorTimings::default(),
        layer_sparsity: (0..14)
            .map(|i| {
                let kinds = [
                    "q_proj",
                    "k_proj",
                    "v_proj",
                    "o_proj",
                    "gate_proj",
                    "up_proj",
                    "down_proj",
                ];
                (
                    format!("model.layers.{}.x.{}", i / 7, kinds[i % 7]),
                    0.3 + 0.03 * i as f64,
                    100,
                )
            })
            .collect(),
        delta_bytes: vec![1000, 800, 700],
        started_at_iteration: 1,
        probe: None,
        rejected: vec![],
        stopped_by: vec![],
    }
}

fn point(iteration: u32, sparsity: f64, ppl: f64, correct: usize, total: usize) -> ProbePoint {
    ProbePoint {
        iteration,
        sparsity,
        ppl,
        correct,
        total,
        accuracy: correct as f64 / total as f64,
        seconds: 1.5,
    }
}

/// The synthetic run with probe points at the dense step, iteration 2 (rolled back:
/// the committed model of iteration 1) and 4 (the end), `total` questions each.
fn probed(total: usize, correct: [usize; 3]) -> RunSummary {
    RunSummary {
        probe: Some(ProbeSeries {
            path: "q.jsonl".into(),
            style: "chat".into(),
            questions: total,
            every: 2,
            chance: 0.0,
            informative: total >= 20 && correct[0] as f64 / total as f64 > 0.05,
            points: vec![
                point(0, 0.0, 10.0, correct[0], total),
                point(2, 0.2, 10.5, correct[1], total),
                point(4, 0.5, 12.5, correct[2], total),
            ],
        }),
        ..summary()
    }
}

#[test]
fn table4_counts_and_rates() {
    let t = Table4::of(&summary());
    assert_eq!((t.iterations, t.successful, t.rollbacks), (4, 3, 1));
    assert_eq!(t.rollback_rate, 0.25);
    assert!((t.ppl_degradation - 0.25).abs() < 1e-12);
    let mut x = Extras {
        model_f32_bytes: 100_000,
        ..Default::default()
    };
    assert!(!report_md(&summary(), &x).contains("CPU time"));
    x.wall_seconds = 12.5;
    x.cpu_seconds = Some(20.0);
    let md = report_md(&summary(), &x);
    assert!(md.contains("Wall time 12.5 s, CPU time 20.0 s."), "{md}");
    assert!(md.contains("| Rollback rate | 25.00 % |"), "{md}");
    assert!(md.contains("| Final PPL (in-loop) | 12.500 |"));
    assert!(
        md.contains("833 bytes on average (0.833 % of the f32 model)"),
        "{md}"
    );
    let j = report_json(&summary(), &x);
    assert_eq!(j["table4"]["rollbacks"], 1);
    assert_eq!(j["cpu_seconds"], 20.0);
    assert_eq!(j["iterations"].as_array().unwrap().len(), 4);
}

/// Count pixels that are neither white nor one of the plot colours' pure fills: text
/// anti-aliasing produces grey levels, so a PNG with text has many of them.
fn png_dims(path: &std::path::Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[1..4], b"PNG");
    let w = u32::from_be_bytes([b[16], b[17], b[18], b[19]]);
    let h = u32::from_be_bytes([b[20], b[21], b[22], b[23]]);
    (w, h)
}

#[test]
fn writes_all_files() {
    let keep = std::env::var_os("REPORT_OUT").map(std::path::PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let dir = keep.unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    let files = write_all(&dir, &summary(), &Extras::default()).unwrap();
    assert_eq!(files.len(), 4);
    assert_eq!(png_dims(&dir.join("iterations.png")), (1200, 1100));
    assert_eq!(png_dims(&dir.join("layers.png")).1, 600);
    // PNGs of plots with text are well above a blank image's size.
    assert!(std::fs::metadata(dir.join("iterations.png")).unwrap().len() > 20_000);
}

#[test]
fn probe_section_only_with_probe_data() {
    let x = Extras::default();
    // Without probe data: no section, no JSON key.
    let plain = summary();
    assert!(!report_md(&plain, &x).contains("Knowledge probe"));
    assert!(report_json(&plain, &x).get("probe").is_none());
    let empty = RunSummary {
        probe: Some(ProbeSeries {
            points: vec![],
            ..probed(40, [20, 10, 5]).probe.unwrap()
        }),
        ..summary()
    };
    assert!(!report_md(&empty, &x).contains("Knowledge probe"));

    // Informative: 40 questions, dense 50 %.
    let s = probed(40, [20, 14, 9]);
    let md = report_md(&s, &x);
    assert!(md.contains("## Knowledge probe"), "{md}");
    assert!(
        md.contains("Accuracy: dense 50.0 % (20/40) → iteration 4 22.5 % (9/40) (-27.5 points)."),
        "{md}"
    );
    assert!(
        md.contains("Verdict: dense 50.0 % vs chance 0.0 %\n"),
        "{md}"
    );
    assert!(!md.contains("UNINFORMATIVE"));
    assert!(
        md.contains("| 2 | 0.2000 | 10.500 | 14/40 | 35.0 % | 1.5 |"),
        "{md}"
    );
    let j = report_json(&s, &x);
    assert_eq!(j["probe"]["dense_accuracy"], 0.5);
    assert_eq!(j["probe"]["final_accuracy"], 0.225);
    assert_eq!(j["probe"]["final_iteration"], 4);
    assert_eq!(j["probe"]["informative"], true);
    assert_eq!(j["probe"]["points"].as_array().unwrap().len(), 3);
    assert_eq!(j["probe"]["points"][1]["correct"], 14);

    // Near zero on the dense model (as SmolLM2-135M on NQ-open): flagged.
    let md = report_md(&probed(200, [6, 5, 3]), &x);
    assert!(
        md.contains("dense 3.0 % vs chance 0.0 %  **[UNINFORMATIVE"),
        "{md}"
    );
}

#[test]
fn iterations_png_gets_a_probe_panel_only_with_probe_data() {
    let dir = tempfile::tempdir().unwrap();
    write_all(dir.path(), &probed(40, [20, 14, 9]), &Extras::default()).unwrap();
    let with = dir.path().join("iterations.png");
    assert_eq!(png_dims(&with), (1200, 1450));
    assert!(std::fs::metadata(&with).unwrap().len() > 25_000);
    write_all(dir.path(), &summary(), &Extras::default()).unwrap();
    assert_eq!(png_dims(&with), (1200, 1100));
}

#[test]
fn vetoed_plans_of_a_run_without_an_acceptable_plan_are_reported() {
    let x = Extras::default();
    let plain = summary();
    assert!(!report_md(&plain, &x).contains("Vetoed plans"));
    assert!(report_json(&plain, &x).get("rejected").is_none());
    let stuck = RunSummary {
        stop_reason: StopReason::NoAcceptablePlan,
        rejected: vec![
            Rejection {
                plan: Plan {
                    reasoning: "nothing".into(),
                    stop_pruning: false,
                    layer_decisions: vec![],
                },
                reasons: vec!["empty plan: no layer decisions and stop_pruning is false".into()],
            },
            Rejection {
                plan: Plan {
                    reasoning: "tiny".into(),
                    stop_pruning: false,
                    layer_decisions: vec![LayerDecision {
                        layer: "model.layers.0.mlp.up_proj".into(),
                        delta: 0.0125,
                    }],
                },
                reasons: vec![
                    "global sparsity gain 0.0004 is below the minimum 0.0010".into(),
                    "second".into(),
                ],
            },
        ],
        ..summary()
    };
    let md = report_md(&stuck, &x);
    assert!(
        md.contains(
            "## Vetoed plans\n\nThe last iteration found no acceptable plan: the critic vetoed \
             all 2 candidate(s).\n\n1. no layer decisions: empty plan: no layer decisions and \
             stop_pruning is false\n2. `model.layers.0.mlp.up_proj` 0.0125: global sparsity \
             gain 0.0004 is below the minimum 0.0010; second\n"
        ),
        "{md}"
    );
    let j = report_json(&stuck, &x);
    assert_eq!(j["rejected"].as_array().unwrap().len(), 2);
    assert_eq!(j["rejected"][1]["reasons"][1], "second");
    assert_eq!(j["rejected"][1]["plan"]["reasoning"], "tiny");
}

#[test]
fn the_plan_that_stopped_the_run_is_kept_with_its_verdict() {
    let x = Extras::default();
    let plain = summary();
    assert!(!report_md(&plain, &x).contains("Stopped by the planner"));
    assert!(report_json(&plain, &x).get("stopped_by").is_none());
    // A run that stopped at its first plan: no iterations, but the plan is there.
    let stopped = RunSummary {
        stop_reason: StopReason::PlannerStopped,
        records: vec![],
        stopped_by: vec![StoppingPlan {
            backend: "openai".into(),
            plan: Plan {
                reasoning: "the model\nis fine".into(),
                stop_pruning: true,
                layer_decisions: vec![],
            },
            verdict: Verdict::Approve,
        }],
        ..summary()
    };
    let md = report_md(&stopped, &x);
    assert!(md.contains("## Stopped by the planner\n"), "{md}");
    assert!(
        md.contains("1. openai stop, no layer decisions: approved. Reasoning: the model is fine\n"),
        "{md}"
    );
    let j = report_json(&stopped, &x);
    assert_eq!(j["iterations"], serde_json::json!([]));
    assert_eq!(j["stopped_by"][0]["verdict"]["verdict"], "approve");
    assert_eq!(j["stopped_by"][0]["plan"]["stop_pruning"], true);
}
