//! The in-loop knowledge probe on the tiny fixture model (`[evaluation.probe]`):
//! points at the dense step, every `every`-th iteration and the end; values equal to
//! what the `eval` crate computes directly on the same masks and questions; points
//! stored with the run and kept by a resume; nothing at all when it is off; a missing
//! question file fails at set-up naming the file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use actors::folder::db_dir;
use actors::testing::{fixture_config, write_fixture, write_qa_fixture, Fixture};
use actors::{run_pruning, ProgressEvent, RunControl, RunError, RunOptions, RunOutput};
use candle_core::Device;
use kernels::{Mask, MaskDelta};
use model::Model;
use protocol::{LayerDelta, ProbePoint, RunState, StopReason};

const QUESTIONS: usize = 12;
const MAX_NEW_TOKENS: usize = 8;

fn probe_config(fx: &Fixture, runs: &Path, qa: &Path, every: u32) -> config::Config {
    let mut cfg = fixture_config(fx, runs);
    cfg.pruning.max_iterations = 5;
    cfg.evaluation.probe.every = every;
    cfg.evaluation.probe.path = qa.to_path_buf();
    cfg.evaluation.probe.questions = QUESTIONS;
    cfg.evaluation.probe.max_new_tokens = MAX_NEW_TOKENS;
    cfg
}

/// The fixture model pruned in place by the committed deltas of iterations ≤ `upto`.
fn model_at(fx: &Fixture, deltas: &[(u32, Vec<LayerDelta>)], upto: u32) -> Model {
    let ck = model::load_checkpoint(&fx.model_dir).unwrap();
    let m = Model::new(&ck.config, &ck.tensors, &Device::Cpu).unwrap();
    let mut masks: HashMap<String, Mask> = HashMap::new();
    for (_, ds) in deltas.iter().filter(|(it, _)| *it <= upto) {
        for d in ds {
            let info = m
                .prunable_layers()
                .into_iter()
                .find(|l| l.name == d.layer)
                .unwrap();
            let keep = masks
                .entry(d.layer.clone())
                .or_insert_with(|| Mask::ones(info.out_features, info.in_features));
            MaskDelta::from_bytes(&d.bytes)
                .unwrap()
                .apply_to(keep)
                .unwrap();
        }
    }
    for (layer, keep) in &masks {
        m.prune_in_place(layer, keep).unwrap();
    }
    m
}

/// The probe computed here with the `eval` crate alone: the same file, the same
/// every-(n/size)-th selection, raw style (the fixture has no chat template).
fn eval_probe(fx: &Fixture, qa: &Path, m: &Model) -> eval::probe::ProbeScore {
    let ck = model::load_checkpoint(&fx.model_dir).unwrap();
    let questions = eval::probe::select(&eval::data::read_qa(qa).unwrap(), QUESTIONS);
    let stops = eval::stop_tokens(&ck);
    let target = eval::Target {
        model: m,
        overlay: None,
        codec: &ck.tokenizer,
        template: None,
        stop_tokens: &stops,
    };
    let opts = eval::qa::QaOptions {
        style: eval::qa::PromptStyle::Raw,
        max_new_tokens: MAX_NEW_TOKENS,
        ..Default::default()
    };
    eval::probe::knowledge_probe(&target, &questions, &opts).unwrap()
}

fn iterations(points: &[ProbePoint]) -> Vec<u32> {
    points.iter().map(|p| p.iteration).collect()
}

/// Floats equal up to JSON's last-digit rounding (serde_json parses f64 to within one
/// ULP, so a point read back from the store may differ in the last bit).
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(1.0)
}

/// The same measurement; with `wall`, also the same wall time (so not measured again).
fn same(a: &ProbePoint, b: &ProbePoint, wall: bool) -> bool {
    (a.iteration, a.correct, a.total) == (b.iteration, b.correct, b.total)
        && a.accuracy == b.accuracy
        && close(a.sparsity, b.sparsity)
        && close(a.ppl, b.ppl)
        && (!wall || close(a.seconds, b.seconds))
}

fn all_same(a: &[ProbePoint], b: &[ProbePoint], wall: bool) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y, wall))
}

async fn run(cfg: &config::Config, id: &str, suspend_after: Option<u32>) -> RunOutput {
    let control = RunControl::default();
    let suspend = control.clone();
    let progress: actors::ProgressFn = Arc::new(move |e: &ProgressEvent| {
        if let ProgressEvent::Iteration { record, .. } = e {
            if Some(record.outcome.iteration) == suspend_after {
                suspend.suspend();
            }
        }
    });
    run_pruning(
        cfg.clone(),
        RunOptions {
            run_id: Some(id.into()),
            control,
            progress: Some(progress),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_every_2_runs_at_dense_even_iterations_and_end_and_survives_resume() {
    let dir = tempfile::tempdir().unwrap();
    // Seed 3: a fixture model whose greedy answers vary with the question (most random
    // tiny models just repeat `w0`, the id of the prompt's out-of-vocabulary words)
    // and change as it is pruned, so the points below differ and the comparison with
    // the eval crate checks that the probe sees each point's masks.
    let fx = write_fixture(dir.path(), 3, 24, 48).unwrap();
    let qa = write_qa_fixture(&fx, 3, 24, MAX_NEW_TOKENS).unwrap();
    let cfg = probe_config(&fx, &dir.path().join("runs"), &qa, 2);

    // Uninterrupted: points at 0 (dense), every even iteration and the last one.
    let out = run(&cfg, "full", None).await;
    let s = &out.summary;
    assert_eq!(s.state, RunState::Finished, "{:?}", s.failure);
    let last = s.records.last().unwrap().outcome.iteration;
    assert!(
        last >= 4,
        "{} iterations: too few to test the cadence",
        last
    );
    let mut expected: Vec<u32> = (0..=last).filter(|t| t % 2 == 0).collect();
    if last % 2 == 1 {
        expected.push(last);
    }
    let series = s.probe.as_ref().expect("probe series");
    assert_eq!((series.questions, series.every), (QUESTIONS, 2));
    assert_eq!(series.style, "raw");
    let points = &series.points;
    assert_eq!(iterations(points), expected);
    for p in points {
        assert_eq!(p.total, QUESTIONS);
        assert!(p.correct <= p.total);
        assert_eq!(p.accuracy, p.correct as f64 / p.total as f64);
        assert!((0.0..=1.0).contains(&p.accuracy));
        assert!(p.seconds > 0.0);
        // Each point is of the committed state after its iteration.
        let (sp, ppl) = match p.iteration {
            0 => (0.0, s.baseline_ppl),
            t => {
                let committed = s.records[..t as usize]
                    .iter()
                    .rev()
                    .find(|r| !r.outcome.rolled_back)
                    .map(|r| &r.outcome);
                committed.map_or((0.0, s.baseline_ppl), |o| (o.sparsity_after, o.ppl_after))
            }
        };
        assert_eq!((p.sparsity, p.ppl), (sp, ppl), "point {p:?}");
    }
    assert!(
        points.last().unwrap().sparsity > 0.0,
        "the model was pruned by then"
    );
    // The fixture's answers are the dense model's own: it answers most of them, and
    // pruning costs some.
    assert!(points[0].correct * 2 > QUESTIONS, "{points:?}");
    assert!(
        points.iter().any(|p| p.correct < points[0].correct),
        "{points:?}"
    );
    // Fewer than 20 questions: the eval crate's verdict flags the probe.
    assert!(!series.informative);

    // The values are the eval crate's, computed here on the same masks and questions.
    let stored = out.folder.load().unwrap();
    for p in points {
        let direct = eval_probe(&fx, &qa, &model_at(&fx, &stored.deltas, p.iteration));
        assert_eq!(
            (direct.correct, direct.total, direct.accuracy),
            (p.correct, p.total, p.accuracy),
            "iteration {}",
            p.iteration
        );
    }

    // Stored where a resume finds them: dense in the meta, due iterations in their
    // records, the final point in its own tree.
    let reread: Vec<ProbePoint> = stored
        .meta
        .baseline_probe
        .iter()
        .chain(stored.iterations.iter().filter_map(|i| i.probe.as_ref()))
        .chain(&stored.final_probe)
        .cloned()
        .collect();
    assert!(all_same(&reread, points, true), "{reread:?}");
    let with_probe: Vec<u32> = stored
        .iterations
        .iter()
        .filter(|i| i.probe.is_some())
        .map(|i| i.record.outcome.iteration)
        .collect();
    let even: Vec<u32> = expected[1..]
        .iter()
        .copied()
        .filter(|t| t % 2 == 0)
        .collect();
    assert_eq!(with_probe, even);
    let final_probe = stored.final_probe.as_ref().map(|p| p.iteration);
    assert_eq!(final_probe, (last % 2 == 1).then_some(last));

    // The report carries the series: JSON values, Markdown section, a 4-panel plot.
    let rdir = dir.path().join("report");
    std::fs::create_dir_all(&rdir).unwrap();
    report::write_all(&rdir, s, &report::Extras::default()).unwrap();
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rdir.join("report.json")).unwrap()).unwrap();
    assert_eq!(j["probe"]["dense_accuracy"], points[0].accuracy);
    assert_eq!(
        j["probe"]["final_accuracy"],
        points.last().unwrap().accuracy
    );
    assert_eq!(j["probe"]["points"].as_array().unwrap().len(), points.len());
    let md = std::fs::read_to_string(rdir.join("report.md")).unwrap();
    assert!(md.contains("## Knowledge probe"), "{md}");
    assert!(md.contains("UNINFORMATIVE"), "{md}");
    let png = std::fs::read(rdir.join("iterations.png")).unwrap();
    assert_eq!(
        u32::from_be_bytes([png[20], png[21], png[22], png[23]]),
        1450
    );

    // Interrupted after iteration 3, then resumed: the first process's points (0, 2)
    // come back from the store unchanged (wall times included: not measured again),
    // and the resumed run ends with the same measurements as the uninterrupted one.
    let first = run(&cfg, "resumed", Some(3)).await;
    assert_eq!(first.summary.stop_reason, StopReason::Interrupted);
    let early = first.summary.probe.clone().unwrap().points;
    assert_eq!(
        iterations(&early),
        vec![0, 2],
        "no final point when interrupted"
    );
    let second = run_pruning(
        cfg.clone(),
        RunOptions {
            resume: Some("resumed".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(second.summary.started_at_iteration, 4);
    let late = second.summary.probe.unwrap().points;
    assert_eq!(iterations(&late), expected);
    assert!(all_same(&late[..2], &early, true), "{late:?} vs {early:?}");
    assert!(all_same(&late, points, false), "{late:?} vs {points:?}");

    // Resuming the finished run finishes it again without a new measurement.
    let again = run_pruning(
        cfg.clone(),
        RunOptions {
            resume: Some("resumed".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let again = again.summary.probe.unwrap().points;
    assert!(all_same(&again, &late, true), "{again:?} vs {late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_off_runs_nothing_and_reports_no_probe() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), 7, 24, 48).unwrap();
    // every = 0: the (absent) question file is never read.
    let mut cfg = probe_config(
        &fx,
        &dir.path().join("runs"),
        &dir.path().join("none.jsonl"),
        0,
    );
    cfg.pruning.max_iterations = 2;
    let out = run(&cfg, "off", None).await;
    let s = &out.summary;
    assert_eq!(s.state, RunState::Finished, "{:?}", s.failure);
    assert_eq!(s.probe, None);
    let stored = out.folder.load().unwrap();
    assert_eq!(stored.meta.baseline_probe, None);
    assert!(stored.iterations.iter().all(|i| i.probe.is_none()));
    assert_eq!(stored.final_probe, None);
    let md = report::report_md(s, &report::Extras::default());
    assert!(!md.contains("Knowledge probe"), "{md}");
    assert!(report::report_json(s, &report::Extras::default())
        .get("probe")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_probe_settings_fail_at_set_up_naming_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), 7, 24, 48).unwrap();
    let runs = dir.path().join("runs");
    let missing = dir.path().join("missing-questions.jsonl");
    let cfg = probe_config(&fx, &runs, &missing, 2);
    let setup_error = |r: Result<RunOutput, RunError>| match r {
        Err(RunError::Setup(m)) => m,
        Err(e) => panic!("not a set-up error: {e}"),
        Ok(o) => panic!("ran: {:?}", o.summary.state),
    };
    let e = setup_error(
        run_pruning(
            cfg.clone(),
            RunOptions {
                run_id: Some("missing".into()),
                ..Default::default()
            },
        )
        .await,
    );
    assert!(e.contains("evaluation.probe.path"), "{e}");
    assert!(e.contains("missing-questions.jsonl"), "{e}");
    assert!(!db_dir(&runs.join("missing")).exists(), "nothing stored");

    // An explicit chat style on a model without a chat template.
    let qa = write_qa_fixture(&fx, 7, 6, MAX_NEW_TOKENS).unwrap();
    let mut cfg = probe_config(&fx, &runs, &qa, 2);
    cfg.evaluation.probe.style = config::ProbeStyle::Chat;
    let e = setup_error(
        run_pruning(
            cfg,
            RunOptions {
                run_id: Some("chat".into()),
                ..Default::default()
            },
        )
        .await,
    );
    assert!(e.contains("chat template"), "{e}");
}
