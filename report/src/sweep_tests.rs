//! The sweep's gathering, table and plot on hand-built comparison tables.

use std::path::PathBuf;

use eval::qa::PromptStyle;
use eval::suite::SuiteSpec;

use super::*;
use crate::compare::Rel;

fn row(method: &str, sparsity: f64, ppl: f64, qa: f64) -> Row {
    Row {
        method: method.into(),
        status: "ok".into(),
        sparsity: Some(sparsity),
        ppl: Some(ppl),
        mmlu: None,
        qa: Some(qa),
        prune_seconds: 1.0,
        eval_seconds: 1.0,
        prune_cpu_seconds: None,
        eval_cpu_seconds: None,
        vs_dense: Rel::default(),
        vs_best_baseline: Rel::default(),
        detail: None,
    }
}

fn table(target: f64, rows: Vec<Row>) -> Table {
    Table {
        model: PathBuf::from("m.gguf"),
        target_sparsity: target,
        calibration: "c".into(),
        calibration_windows: 16,
        calibration_len: 256,
        calibration_offset: 0,
        calibration_knowledge: 0,
        ppl_text: "p".into(),
        ppl_tokens: 1000,
        window: 512,
        suite: SuiteSpec {
            mmlu: None,
            mmlu_shots_from: None,
            shots: 5,
            mmlu_limit: 100,
            mmlu_style: PromptStyle::Raw,
            qa: Some("facts.jsonl".into()),
            qa_shots_from: None,
            qa_shots: 0,
            qa_limit: 100,
            qa_style: None,
            qa_kick_sentence: false,
            max_new_tokens: 24,
            max_prompt_tokens: 1024,
        },
        mmlu_questions: None,
        qa_questions: Some(100),
        dense_mmlu: None,
        dense_qa: None,
        best_baseline: None,
        rows,
    }
}

fn tables() -> Vec<Table> {
    vec![
        table(
            0.3,
            vec![
                row("dense", 0.0, 30.0, 0.4),
                row("wanda", 0.3, 33.0, 0.2),
                row("agent", 0.31, 32.0, 0.36),
            ],
        ),
        table(
            0.5,
            vec![
                row("dense", 0.0, 30.0, 0.4),
                row("wanda", 0.5, 60.0, 0.0),
                Row::not_run("agent", "failed".into()),
            ],
        ),
    ]
}

#[test]
fn series_follow_methods_and_targets() {
    let s = Sweep::from_tables(&tables());
    assert_eq!(s.targets, vec![0.3, 0.5]);
    assert_eq!((s.dense_ppl, s.dense_qa), (Some(30.0), Some(0.4)));
    let names: Vec<&str> = s.series.iter().map(|x| x.method.as_str()).collect();
    assert_eq!(names, ["wanda", "agent"]);
    let agent = &s.series[1].points;
    assert_eq!(agent[0].sparsity, Some(0.31));
    assert_eq!(agent[0].qa, Some(0.36));
    // Not run at 50 %: an empty point, still at its target.
    assert_eq!(agent[1].target, 0.5);
    assert_eq!((agent[1].ppl, agent[1].qa), (None, None));
}

#[test]
fn markdown_gives_ppl_qa_and_retention() {
    let md = sweep_markdown(&Sweep::from_tables(&tables()));
    assert!(md.contains("Dense: PPL 30.00, QA 40.0 %."), "{md}");
    assert!(
        md.contains("| method | PPL @ 30 % | QA @ 30 % (kept) | PPL @ 50 % | QA @ 50 % (kept) |")
    );
    assert!(
        md.contains("| wanda | 33.00 | 20.0 % (50 %) | 60.00 | 0.0 % (0 %) |"),
        "{md}"
    );
    assert!(
        md.contains("| agent | 32.00 | 36.0 % (90 %) | – | – |"),
        "{md}"
    );
}

#[test]
fn plot_writes_a_png() {
    let dir = std::env::temp_dir().join(format!("secateur-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sweep.png");
    sweep_plot(&path, &Sweep::from_tables(&tables())).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], b"\x89PNG");
    // Without QA: one panel, still a PNG.
    let mut s = Sweep::from_tables(&tables());
    s.dense_qa = None;
    sweep_plot(&path, &s).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
