//! The suite's shot splits, limits, errors, progress steps and report lines.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use candle_core::Device;
use model::testing::{random_weights, tiny_config};
use model::{Architecture, Model};

use super::*;
use crate::progress::{NoProgress, Task};
use crate::qa::QaOutcome;
use crate::CharCodec;

/// The command's defaults with the given question files.
fn spec(mmlu: Option<&Path>, qa: Option<&Path>) -> SuiteSpec {
    SuiteSpec {
        mmlu: mmlu.map(Path::to_path_buf),
        mmlu_shots_from: None,
        shots: 5,
        mmlu_limit: 100,
        mmlu_style: PromptStyle::Raw,
        qa: qa.map(Path::to_path_buf),
        qa_shots_from: None,
        qa_shots: 0,
        qa_limit: 100,
        qa_style: None,
        qa_kick_sentence: false,
        max_new_tokens: 24,
        max_prompt_tokens: 1024,
    }
}

fn mcq(q: &str) -> McqItem {
    McqItem {
        question: q.into(),
        choices: vec!["a".into(), "b".into(), "c".into(), "d".into()],
        answer: 0,
        subject: None,
    }
}

/// `n` MMLU jsonl questions `{prefix} 0` … in `dir/name`.
fn write_mmlu(dir: &Path, name: &str, prefix: &str, n: usize) -> PathBuf {
    let p = dir.join(name);
    let lines: String = (0..n)
        .map(|i| {
            format!(
                "{{\"question\": \"{prefix} {i}\", \"choices\": [\"a\", \"b\", \"c\", \"d\"], \"answer\": {}}}\n",
                i % 4
            )
        })
        .collect();
    std::fs::write(&p, lines).unwrap();
    p
}

fn tiny_model() -> Model {
    let cfg = tiny_config(Architecture::Llama);
    Model::new(
        &cfg,
        &random_weights(&cfg, 7, &Device::Cpu).unwrap(),
        &Device::Cpu,
    )
    .unwrap()
}

/// Each task as (name, length, steps done, finished).
type Tasks = Rc<RefCell<Vec<(String, u64, u64, bool)>>>;

/// Every task and step, for asserting what a run reported.
#[derive(Default, Clone)]
struct Recorder(Tasks);

struct RecordedTask(Tasks, usize);

impl Progress for Recorder {
    fn task(&self, len: u64, what: &str) -> Box<dyn Task> {
        let mut tasks = self.0.borrow_mut();
        tasks.push((what.to_string(), len, 0, false));
        Box::new(RecordedTask(self.0.clone(), tasks.len() - 1))
    }
}

impl Task for RecordedTask {
    fn advance(&self, steps: u64) {
        self.0.borrow_mut()[self.1].2 += steps;
    }
    fn finish(&self) {
        self.0.borrow_mut()[self.1].3 = true;
    }
}

#[test]
fn limit_keeps_the_first_items_and_zero_keeps_all() {
    assert_eq!(limit(vec![1, 2, 3, 4], 2), vec![1, 2]);
    assert_eq!(limit(vec![1, 2, 3, 4], 0), vec![1, 2, 3, 4]);
    assert_eq!(limit(vec![1, 2], 5), vec![1, 2]);
}

#[test]
fn shots_come_from_the_tail_of_the_scored_file() {
    let never = |_: Vec<i32>, _: &[i32]| -> Vec<i32> { unreachable!() };
    assert_eq!(
        split(vec![1, 2, 3, 4, 5], None, 2, never),
        (vec![1, 2, 3], vec![4, 5])
    );
    // More shots than questions: everything is a shot, nothing is scored.
    assert_eq!(split(vec![1, 2], None, 3, never), (vec![], vec![1, 2]));
    assert_eq!(split(vec![1, 2], None, 0, never), (vec![1, 2], vec![]));
}

#[test]
fn a_shot_file_loses_every_question_that_is_scored() {
    let scored = vec![mcq("What is 2+2?"), mcq("Capital of France?")];
    // The same question with other spacing and case is the same question.
    let pool = vec![mcq("what is  2+2?"), mcq("Largest planet?"), mcq("Q3")];
    let (s, p) = split(scored.clone(), Some(pool), 5, mmlu::shot_pool);
    assert_eq!(s, scored);
    assert_eq!(p, vec![mcq("Largest planet?"), mcq("Q3")]);
}

#[test]
fn load_limits_the_scored_questions_after_taking_the_shots() {
    let d = tempfile::tempdir().unwrap();
    let m = write_mmlu(d.path(), "m.jsonl", "q", 10);
    let mut s = spec(Some(&m), None);
    s.shots = 2;
    s.mmlu_limit = 3;
    let sets = s.load().unwrap();
    let (scored, pool) = sets.mmlu.unwrap();
    let qs = |v: &[McqItem]| v.iter().map(|i| i.question.clone()).collect::<Vec<_>>();
    assert_eq!(qs(&scored), ["q 0", "q 1", "q 2"]);
    assert_eq!(qs(&pool), ["q 8", "q 9"]);
    assert!(sets.qa.is_none());
}

#[test]
fn load_names_the_file_and_flag_of_a_small_shot_split() {
    let d = tempfile::tempdir().unwrap();
    let m = write_mmlu(d.path(), "m.jsonl", "q", 4);
    // Three shot questions, one of which is also scored: two remain for three shots.
    let from = d.path().join("shots.jsonl");
    let mut text = std::fs::read_to_string(write_mmlu(d.path(), "s.jsonl", "s", 2)).unwrap();
    let scored = std::fs::read_to_string(&m).unwrap();
    text.push_str(scored.lines().next().unwrap());
    std::fs::write(&from, text).unwrap();
    let mut s = spec(Some(&m), None);
    s.mmlu_shots_from = Some(from);
    s.shots = 3;
    let e = s.load().err().unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: the MMLU shot split has 2 questions, --shots is 3",
            m.display()
        )
    );
    s.shots = 2;
    assert_eq!(s.load().unwrap().mmlu.unwrap().0.len(), 4);

    let q = d.path().join("qa.jsonl");
    std::fs::write(&q, "{\"question\": \"who?\", \"answer\": [\"me\"]}\n").unwrap();
    let mut s = spec(None, Some(&q));
    s.qa_shots = 2;
    let e = s.load().err().unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: the QA shot split has 1 questions, --qa-shots is 2",
            q.display()
        )
    );
    // One question that is the one shot: nothing is left to score.
    s.qa_shots = 1;
    let e = s.load().err().unwrap();
    assert_eq!(
        e.to_string(),
        "QA: no questions left to score after taking the shots"
    );
}

/// The spec's JSON is part of compare.json and of the dense cache's key.
#[test]
fn spec_json_keeps_its_field_names_and_order() {
    let json = serde_json::to_string(&spec(Some(Path::new("m.csv")), None)).unwrap();
    assert_eq!(
        json,
        "{\"mmlu\":\"m.csv\",\"mmlu_shots_from\":null,\"shots\":5,\"mmlu_limit\":100,\
         \"mmlu_style\":\"raw\",\"qa\":null,\"qa_shots_from\":null,\"qa_shots\":0,\
         \"qa_limit\":100,\"qa_style\":null,\"qa_kick_sentence\":false,\
         \"max_new_tokens\":24,\"max_prompt_tokens\":1024}"
    );
    let back: SuiteSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec(Some(Path::new("m.csv")), None));
}

#[test]
fn perplexity_rejects_a_window_under_two_tokens() {
    let m = tiny_model();
    let e = perplexity(&m, None, &[1, 2, 3], 1, "dense", &NoProgress)
        .err()
        .unwrap();
    assert_eq!(e.to_string(), "--window 1: must be at least 2 tokens");
}

#[test]
fn perplexity_steps_once_per_window_and_matches_the_model() {
    let m = tiny_model();
    let tokens: Vec<u32> = (0..25).map(|i| (i * 7 % 60) as u32 + 3).collect();
    let rec = Recorder::default();
    let p = perplexity(&m, None, &tokens, 8, "dense", &rec).unwrap();
    let want = m.perplexity_with(&tokens, 8, None).unwrap();
    // 25 tokens: three windows of 8; the last window of one token scores nothing.
    assert_eq!((p.tokens_scored, p.windows), (21, 3));
    assert!(
        (p.ppl - want.ppl).abs() < 1e-9 * want.ppl,
        "{} {}",
        p.ppl,
        want.ppl
    );
    assert_eq!(
        *rec.0.borrow(),
        vec![("dense perplexity".to_string(), 3, 3, true)]
    );
}

#[test]
fn a_failing_set_is_named_and_its_task_left_unfinished() {
    let m = tiny_model();
    let codec = CharCodec::tiny();
    let target = Target {
        model: &m,
        overlay: None,
        codec: &codec,
        template: None,
        stop_tokens: &[],
    };
    let sets = Sets {
        mmlu: Some((vec![], vec![])),
        qa: None,
    };
    let rec = Recorder::default();
    let e = run_suite(&target, &sets, &spec(None, None), "wanda", &rec)
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "MMLU: invalid argument: MMLU: no questions to score"
    );
    assert_eq!(
        *rec.0.borrow(),
        vec![("wanda MMLU".to_string(), 0, 0, false)]
    );
}

#[test]
fn describe_states_accuracy_chance_and_samples() {
    let r = SuiteResult {
        mmlu: Some(MmluResult {
            questions: 100,
            correct: 40,
            accuracy: 0.4,
            chance: 0.25,
            per_subject: BTreeMap::new(),
            shots: 5,
            style: PromptStyle::Raw,
            mean_prompt_tokens: 312.4,
            seconds: 50.0,
            predictions: vec![],
        }),
        qa: Some(QaResult {
            questions: 10,
            correct: 1,
            accuracy: 0.1,
            style: PromptStyle::Chat,
            shots: 0,
            max_new_tokens: 24,
            seconds: 5.0,
            seconds_per_question: 0.5,
            samples: vec![QaOutcome {
                question: "Who?".into(),
                answers: vec!["me".into()],
                continuation: " me \n".into(),
                correct: true,
            }],
        }),
    };
    assert_eq!(
        describe_suite(&r),
        vec![
            "MMLU 5-shot (raw): 40.0 % (40/100 questions, 312 prompt tokens on average, 0.50 s/question) — dense 40.0 % vs chance 25.0 %",
            "factual QA 0-shot (chat, ≤24 new tokens): 10.0 % (1/10 questions, 0.50 s/question) — dense 10.0 % vs chance 0.0 %  [UNINFORMATIVE: dense model within 5 points of chance/zero or too few questions]",
            "  e.g. \"Who?\" → \"me\" (correct)",
        ]
    );
    assert_eq!(r.mmlu_verdict().map(|v| v.informative), Some(true));
    assert_eq!(
        r.qa_verdict().map(|v| (v.chance, v.informative)),
        Some((0.0, false))
    );
}
