//! Compare's relative changes, best baseline, markdown and plot on a hand-built table.

use std::collections::BTreeMap;

use eval::mmlu::MmluResult;
use eval::qa::{PromptStyle, QaOutcome, QaResult};

use super::*;

fn row(method: &str, sparsity: f64, ppl: f64, mmlu: f64, qa: f64) -> Row {
    Row {
        method: method.into(),
        status: "ok".into(),
        sparsity: Some(sparsity),
        ppl: Some(ppl),
        mmlu: Some(mmlu),
        qa: Some(qa),
        prune_seconds: 1.5,
        eval_seconds: 2.0,
        prune_cpu_seconds: Some(2.75),
        eval_cpu_seconds: Some(3.5),
        vs_dense: Rel::default(),
        vs_best_baseline: Rel::default(),
        detail: None,
    }
}

/// Dense with suite details, two baselines, an agent better than both, a baseline
/// that did not run.
fn rows() -> Vec<Row> {
    let mut dense = row("dense", 0.0, 10.0, 0.5, 0.2);
    dense.detail = Some(SuiteResult {
        mmlu: Some(MmluResult {
            questions: 100,
            correct: 50,
            accuracy: 0.5,
            chance: 0.25,
            per_subject: BTreeMap::new(),
            shots: 5,
            style: PromptStyle::Raw,
            mean_prompt_tokens: 300.0,
            seconds: 20.0,
            predictions: vec![],
        }),
        qa: Some(QaResult {
            questions: 100,
            correct: 20,
            accuracy: 0.2,
            style: PromptStyle::Chat,
            shots: 0,
            max_new_tokens: 24,
            seconds: 30.0,
            seconds_per_question: 0.3,
            samples: vec![QaOutcome {
                question: "Who?".into(),
                answers: vec!["me".into()],
                continuation: "me".into(),
                correct: true,
            }],
        }),
    });
    vec![
        dense,
        row("magnitude", 0.5, 20.0, 0.3, 0.05),
        row("wanda", 0.5, 12.34, 0.45, 0.1),
        Row::not_run("sparsegpt", "out of memory".into()),
        row("agent", 0.5, 11.0, 0.48, 0.15),
    ]
}

fn table(rows: Vec<Row>, best: Option<String>) -> Table {
    Table {
        model: "m.gguf".into(),
        target_sparsity: 0.5,
        calibration: "c.jsonl:text".into(),
        calibration_windows: 16,
        calibration_len: 256,
        calibration_offset: 0,
        calibration_knowledge: 0,
        ppl_text: "wiki.test.raw".into(),
        ppl_tokens: 4096,
        window: 512,
        suite: SuiteSpec {
            mmlu: Some("mmlu.csv".into()),
            mmlu_shots_from: None,
            shots: 5,
            mmlu_limit: 100,
            mmlu_style: PromptStyle::Raw,
            qa: Some("nq.jsonl".into()),
            qa_shots_from: None,
            qa_shots: 0,
            qa_limit: 100,
            qa_style: None,
            qa_kick_sentence: false,
            max_new_tokens: 24,
            max_prompt_tokens: 1024,
        },
        mmlu_questions: Some(100),
        qa_questions: Some(100),
        dense_mmlu: None,
        dense_qa: None,
        best_baseline: best,
        rows,
    }
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-12)
}

#[test]
fn rel_needs_both_values_and_a_nonzero_reference() {
    assert!(close(rel(Some(12.0), Some(10.0)), 0.2));
    assert!(close(rel(Some(0.4), Some(0.5)), -0.2));
    assert_eq!(rel(None, Some(1.0)), None);
    assert_eq!(rel(Some(1.0), None), None);
    assert_eq!(rel(Some(1.0), Some(0.0)), None);
}

#[test]
fn best_baseline_is_the_lowest_ppl_without_dense_or_agent() {
    // Dense (10) and the agent (11) are lower than wanda (12.34) but are no baselines;
    // sparsegpt did not run.
    assert_eq!(
        best_baseline(&rows()).map(|r| r.method.as_str()),
        Some("wanda")
    );
    let only_agent = vec![rows()[0].clone(), rows()[4].clone()];
    assert!(best_baseline(&only_agent).is_none());
}

#[test]
fn fill_relative_measures_against_dense_and_the_best_baseline() {
    let mut rows = rows();
    assert_eq!(fill_relative(&mut rows).as_deref(), Some("wanda"));
    let [dense, magnitude, wanda, sparsegpt, agent] = &rows[..] else {
        panic!("five rows")
    };
    assert_eq!(
        dense.vs_dense,
        Rel {
            ppl: Some(0.0),
            mmlu: Some(0.0),
            qa: Some(0.0)
        }
    );
    assert!(close(wanda.vs_dense.ppl, 0.234));
    assert!(close(wanda.vs_dense.mmlu, -0.1));
    assert!(close(wanda.vs_dense.qa, -0.5));
    assert!(close(wanda.vs_best_baseline.ppl, 0.0));
    assert!(close(
        magnitude.vs_best_baseline.ppl,
        (20.0 - 12.34) / 12.34
    ));
    assert!(close(agent.vs_best_baseline.ppl, (11.0 - 12.34) / 12.34));
    assert!(close(agent.vs_best_baseline.qa, 0.5));
    assert!(close(dense.vs_best_baseline.mmlu, (0.5 - 0.45) / 0.45));
    assert_eq!(sparsegpt.vs_dense, Rel::default());
    assert_eq!(sparsegpt.vs_best_baseline, Rel::default());
}

#[test]
fn without_a_baseline_only_the_dense_change_is_filled() {
    let mut rows = vec![rows()[0].clone(), rows()[4].clone()];
    assert_eq!(fill_relative(&mut rows), None);
    assert!(close(rows[1].vs_dense.ppl, 0.1));
    assert_eq!(rows[1].vs_best_baseline, Rel::default());
    assert_eq!(fill_relative(&mut []), None);
}

#[test]
fn markdown_lists_the_settings_and_one_line_per_row() {
    let mut rows = rows();
    let best = fill_relative(&mut rows);
    let md = markdown(&table(rows, best));
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines[0], "# secateur compare — target sparsity 50 %");
    assert!(lines.contains(&"- model: `m.gguf`"));
    assert!(lines.contains(&"- calibration: 16 windows × 256 tokens of `c.jsonl:text`"));
    assert!(lines.contains(&"- perplexity: first 4096 tokens of `wiki.test.raw`, windows of 512"));
    assert!(lines.contains(&"- MMLU: 100 questions, 5-shot, raw prompt"));
    assert!(lines.contains(&"- factual QA: 100 questions, 0-shot, ≤24 new tokens"));
    assert!(lines.contains(&"- best baseline (lowest PPL): wanda"));
    // The dense suite lines, without the QA sample answers.
    assert!(lines
        .iter()
        .any(|l| l.starts_with("- dense MMLU 5-shot (raw): 50.0 %")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("- dense factual QA 0-shot (chat, ≤24 new tokens): 20.0 %")));
    assert!(!md.contains("e.g."));
    assert!(lines.contains(
        &"| wanda | 50.0 % | 12.34 | 45.0 % | 10.0 % | +23.4 % | -10.0 % | -50.0 % | +0.0 % | +0.0 % | +0.0 % | 1.5 | 2.8 | 2.0 | 3.5 | ok |"
    ));
    assert!(lines.contains(
        &"| sparsegpt | – | – | – | – | – | – | – | – | – | – | 0.0 | – | 0.0 | – | not run: out of memory |"
    ));
    assert_eq!(lines.iter().filter(|l| l.starts_with("| ")).count(), 6);
}

#[test]
fn compare_json_keeps_its_field_order() {
    let mut rows = rows();
    let best = fill_relative(&mut rows);
    let json = serde_json::to_string(&table(rows, best)).unwrap();
    let keys = [
        "\"model\"",
        "\"target_sparsity\"",
        "\"calibration\"",
        "\"calibration_windows\"",
        "\"calibration_len\"",
        "\"calibration_offset\"",
        "\"ppl_text\"",
        "\"ppl_tokens\"",
        "\"window\"",
        "\"suite\"",
        "\"mmlu_questions\"",
        "\"qa_questions\"",
        "\"dense_mmlu\"",
        "\"dense_qa\"",
        "\"best_baseline\":\"wanda\"",
        "\"rows\"",
    ];
    let at: Vec<usize> = keys.iter().map(|k| json.find(k).unwrap()).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{json}");
    // A row that did not run has no `detail`; a row read back keeps its numbers.
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["rows"][3].get("detail").is_none());
    let back: Row = serde_json::from_value(v["rows"][2].clone()).unwrap();
    assert_eq!((back.method.as_str(), back.ppl), ("wanda", Some(12.34)));
    assert_eq!(back.prune_cpu_seconds, Some(2.75));
    // A dense row cached before CPU times were recorded still reads.
    let mut old = v["rows"][0].clone();
    let fields = old.as_object_mut().unwrap();
    fields.remove("prune_cpu_seconds").unwrap();
    fields.remove("eval_cpu_seconds").unwrap();
    let back: Row = serde_json::from_value(old).unwrap();
    assert_eq!((back.ppl, back.eval_cpu_seconds), (Some(10.0), None));
}

#[test]
fn plot_writes_a_png_with_three_panels() {
    let mut rows = rows();
    let best = fill_relative(&mut rows);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("compare.png");
    plot(&path, &table(rows, best)).unwrap();
    let b = std::fs::read(&path).unwrap();
    assert_eq!(&b[1..4], b"PNG");
    let dims = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    assert_eq!((dims(16), dims(20)), (1500, 560));
    // Bars and text (the embedded font) make it far larger than a blank image.
    assert!(b.len() > 20_000, "{} bytes", b.len());
}

#[test]
fn plot_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("compare.png");
    let e = plot(&path, &table(rows(), None)).err().unwrap();
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}
