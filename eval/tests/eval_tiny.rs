//! MMLU, factual QA, the probe and perplexity on tiny models with a character codec.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use eval::data::{McqItem, QaItem};
use eval::mmlu::{self, MmluOptions};
use eval::qa::{self, PromptStyle, QaOptions};
use eval::{probe, CharCodec, Codec, Target};
use model::testing::{random_weights, tiny_config};
use model::{Architecture, ChatTemplate, Model};

fn tiny(seed: u64) -> Model {
    let cfg = tiny_config(Architecture::Llama);
    Model::new(
        &cfg,
        &random_weights(&cfg, seed, &Device::Cpu).unwrap(),
        &Device::Cpu,
    )
    .unwrap()
}

fn item(q: &str, answer: usize, subject: Option<&str>) -> McqItem {
    McqItem {
        question: q.into(),
        choices: vec!["red".into(), "blue".into(), "green".into(), "pink".into()],
        answer,
        subject: subject.map(str::to_string),
    }
}

/// With every weight zero the logits are all zero, so each next token has
/// probability 1/vocab and the perplexity is exactly the vocabulary size (64).
#[test]
fn perplexity_of_a_hand_computable_model() {
    let cfg = tiny_config(Architecture::Llama);
    let w: HashMap<String, Tensor> = random_weights(&cfg, 1, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.zeros_like().unwrap()))
        .collect();
    let m = Model::new(&cfg, &w, &Device::Cpu).unwrap();
    let codec = CharCodec::tiny();
    let target = Target {
        model: &m,
        overlay: None,
        codec: &codec,
        template: None,
        stop_tokens: &[],
    };
    let texts = vec!["a short text".to_string(), "another one".to_string()];
    let p = eval::perplexity_of_texts(&target, &texts, 8).unwrap();
    assert!((p.ppl - 64.0).abs() < 1e-3, "{}", p.ppl);
    // "a short text\n\nanother one" = 25 chars: three windows of 8 score 7 each;
    // the last window holds one token and scores nothing.
    assert_eq!((p.tokens_scored, p.windows), (21, 3));
}

#[test]
fn hendrycks_prompt_format() {
    let shot = item("Sky?", 1, Some("colors"));
    let q = item("Grass?", 2, Some("colors"));
    let text = mmlu::format_prompt(&q, &[&shot]);
    assert_eq!(
        text,
        "The following are multiple choice questions (with answers) about colors.\n\n\
         Sky?\nA. red\nB. blue\nC. green\nD. pink\nAnswer: B\n\n\
         Grass?\nA. red\nB. blue\nC. green\nD. pink\nAnswer:"
    );
    assert!(mmlu::header(None)
        .starts_with("The following are multiple choice questions (with answers).\n\n"));
}

#[test]
fn shots_never_come_from_scored_questions_and_prefer_the_subject() {
    let scored = vec![item("Q1", 0, Some("a")), item("Q2", 0, Some("b"))];
    let pool = vec![
        item("q1 ", 0, Some("a")),
        item("S1", 0, Some("b")),
        item("S2", 0, Some("a")),
    ];
    let pool = mmlu::shot_pool(pool, &scored);
    assert_eq!(
        pool.iter().map(|i| i.question.as_str()).collect::<Vec<_>>(),
        ["S1", "S2"]
    );
    let shots = mmlu::pick_shots(&scored[0], &pool, 2);
    assert_eq!(shots[0].question, "S2");
    assert_eq!(shots[1].question, "S1");
}

#[test]
fn letter_choice_by_largest_logit_over_spellings() {
    let mut logits = vec![0.0f32; 10];
    logits[3] = 1.0; // "A"
    logits[4] = 2.5; // " B"
    logits[5] = 2.0; // "C"
    logits[7] = 3.0; // " D"
    logits[8] = f32::NAN; // "D" spelled without space: NaN never wins
    let letters = vec![vec![3], vec![4], vec![5, 6], vec![7, 8]];
    assert_eq!(mmlu::pick_letter(&logits, &letters), 3);
    logits[7] = 2.5;
    assert_eq!(
        mmlu::pick_letter(&logits, &letters),
        1,
        "ties go to the earlier letter"
    );
}

/// Each prediction is the argmax over the letter tokens of a separate forward, and
/// the accuracy counts predictions equal to the gold answer.
#[test]
fn mmlu_scores_by_last_position_logits() {
    let m = tiny(3);
    let codec = CharCodec::tiny();
    let target = Target {
        model: &m,
        overlay: None,
        codec: &codec,
        template: None,
        stop_tokens: &[],
    };
    let items: Vec<McqItem> = (0..6)
        .map(|i| item(&format!("q{i}?"), i % 4, None))
        .collect();
    let pool = vec![item("shot?", 1, None)];
    let opts = MmluOptions {
        shots: 0,
        style: PromptStyle::Raw,
        max_prompt_tokens: 120,
    };
    let r = mmlu::evaluate(&target, &items, &pool, &opts, &|| {}).unwrap();
    let letters = mmlu::letter_tokens(&codec, 4).unwrap();
    let mut correct = 0;
    for (it, pred) in items.iter().zip(&r.predictions) {
        let ids = codec.encode(&mmlu::format_prompt(it, &[])).unwrap();
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits: Vec<Vec<f32>> = m
            .forward(&input)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        let last = logits.last().unwrap();
        let score = |ids: &Vec<u32>| {
            ids.iter()
                .map(|&i| last[i as usize])
                .fold(f32::MIN, f32::max)
        };
        let best = (0..4).fold(0, |b, i| {
            if score(&letters[i]) > score(&letters[b]) {
                i
            } else {
                b
            }
        });
        assert_eq!(*pred, best);
        correct += usize::from(best == it.answer);
    }
    assert_eq!(r.correct, correct);
    assert_eq!((r.questions, r.chance), (6, 0.25));
    // Prompts that do not fit lose their shots, then their start.
    let short = MmluOptions {
        max_prompt_tokens: 30,
        ..opts
    };
    let ids = mmlu::encode_prompt(&target, &items[0], &[&pool[0]], &short).unwrap();
    assert_eq!(ids.len(), 30);
    let err = mmlu::evaluate(&target, &items, &[], &MmluOptions::default(), &|| {}).unwrap_err();
    assert!(
        err.to_string()
            .contains("5 shots requested, the shot split has 0"),
        "{err}"
    );
}

#[test]
fn qa_matcher_normalises_case_and_spaces_and_takes_any_alias() {
    let aliases = vec!["New York City".to_string(), "NYC".to_string()];
    assert!(qa::matches("it is newyork city, of course", &aliases));
    assert!(qa::matches("N Y C", &aliases));
    assert!(!qa::matches("new york", &aliases));
    assert!(!qa::matches("anything", &["  ".to_string()]));
}

/// The prompt contains the alias, but only generated tokens are decoded and matched:
/// with no new tokens the answer is wrong, and otherwise the verdict is exactly the
/// match on the model's own continuation.
#[test]
fn qa_never_matches_the_echoed_prompt() {
    let m = tiny(4);
    let codec = CharCodec::tiny();
    let target = Target {
        model: &m,
        overlay: None,
        codec: &codec,
        template: None,
        stop_tokens: &[],
    };
    let q = QaItem {
        question: "is paris the capital".into(),
        answers: vec!["paris".into()],
    };
    let none = QaOptions {
        style: PromptStyle::Raw,
        max_new_tokens: 0,
        ..QaOptions::default()
    };
    let o = qa::answer(&target, &q, &[], &none).unwrap();
    assert_eq!(o.continuation, "");
    assert!(!o.correct);

    let opts = QaOptions {
        style: PromptStyle::Raw,
        max_new_tokens: 6,
        ..QaOptions::default()
    };
    let o = qa::answer(&target, &q, &[], &opts).unwrap();
    let prompt = "Please give answer to this question: is paris the capital\nThe answer is ";
    assert_eq!(qa::prompt_text(&target, &q, &[], &opts).unwrap(), prompt);
    let ids = codec.encode(prompt).unwrap();
    let expected = codec.decode(&m.generate(&ids, 6, &[]).unwrap()).unwrap();
    assert_eq!(o.continuation, expected);
    assert_eq!(o.correct, qa::matches(&expected, &q.answers));
}

#[test]
fn qa_chat_style_uses_the_template_and_shot_turns() {
    let m = tiny(5);
    let codec = CharCodec::tiny();
    let template = ChatTemplate::new(
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:",
        "",
        "",
    )
    .unwrap();
    let target = Target {
        model: &m,
        overlay: None,
        codec: &codec,
        template: Some(&template),
        stop_tokens: &[],
    };
    let shot = QaItem {
        question: "capital of italy".into(),
        answers: vec!["rome".into(), "roma".into()],
    };
    let q = QaItem {
        question: "capital of france".into(),
        answers: vec!["paris".into()],
    };
    let opts = QaOptions {
        style: PromptStyle::Chat,
        shots: 1,
        ..QaOptions::default()
    };
    assert_eq!(
        qa::prompt_text(&target, &q, &[&shot], &opts).unwrap(),
        "user: capital of italy\nassistant: rome\nuser: capital of france\nassistant:"
    );
    let kick = QaOptions {
        chat_kick_sentence: true,
        ..opts.clone()
    };
    assert!(qa::prompt_text(&target, &q, &[], &kick)
        .unwrap()
        .starts_with("user: Please give answer to this question: capital of france"));
    let r = qa::evaluate(&target, &[q.clone(), q.clone()], &[shot], &opts, &|| {}).unwrap();
    assert_eq!(r.questions, 2);
    assert_eq!(r.samples.len(), 2);
    let bare = Target {
        template: None,
        ..target
    };
    let err = qa::prompt_text(&bare, &q, &[], &opts).unwrap_err();
    assert!(err
        .to_string()
        .contains("needs a model with a chat template"));
    assert_eq!(PromptStyle::default_for(true), PromptStyle::Chat);
    assert_eq!(PromptStyle::default_for(false), PromptStyle::Raw);
}

#[test]
fn probe_counts_like_qa_and_selects_a_fixed_spread() {
    let items: Vec<QaItem> = (0..10)
        .map(|i| QaItem {
            question: format!("question {i}"),
            answers: vec![format!("{i}")],
        })
        .collect();
    let sel = probe::select(&items, 3);
    assert_eq!(
        sel.iter().map(|q| q.question.as_str()).collect::<Vec<_>>(),
        ["question 0", "question 3", "question 6"]
    );
    // More than half the file: still spread over all of it, not its first part.
    let most = probe::select(&items, 6);
    assert_eq!(
        most.iter().map(|q| q.question.as_str()).collect::<Vec<_>>(),
        [
            "question 0",
            "question 1",
            "question 3",
            "question 5",
            "question 6",
            "question 8"
        ]
    );
    assert_eq!(
        probe::select(&items, 20).len(),
        10,
        "at most the whole file"
    );
    assert!(probe::select(&items, 0).is_empty());
    let m = tiny(6);
    let codec = CharCodec::tiny();
    let target = Target {
        model: &m,
        overlay: None,
        codec: &codec,
        template: None,
        stop_tokens: &[],
    };
    let opts = QaOptions {
        style: PromptStyle::Raw,
        max_new_tokens: 4,
        ..QaOptions::default()
    };
    let p = probe::knowledge_probe(&target, &sel, &opts).unwrap();
    let expected = sel
        .iter()
        .filter(|q| qa::answer(&target, q, &[], &opts).unwrap().correct)
        .count();
    assert_eq!((p.correct, p.total), (expected, 3));
    assert!(probe::knowledge_probe(&target, &[], &opts).is_err());
}

/// `evaluate` generates questions of one prompt length together: the outcomes are
/// those of answering each question alone, in the items' order.
#[test]
fn qa_batches_equal_one_question_at_a_time() {
    let m = tiny(7);
    let codec = CharCodec::tiny();
    let target = Target {
        model: &m,
        overlay: None,
        codec: &codec,
        template: None,
        stop_tokens: &[],
    };
    let items: Vec<QaItem> = ["ab", "capital of x", "cd", "a much longer question", "ef"]
        .iter()
        .map(|q| QaItem {
            question: (*q).into(),
            answers: vec!["e".into()],
        })
        .collect();
    let opts = QaOptions {
        style: PromptStyle::Raw,
        max_new_tokens: 5,
        keep_samples: 5,
        ..QaOptions::default()
    };
    let done = std::cell::Cell::new(0);
    let r = qa::evaluate(&target, &items, &[], &opts, &|| done.set(done.get() + 1)).unwrap();
    assert_eq!(done.get(), 5);
    let alone: Vec<_> = items
        .iter()
        .map(|q| qa::answer(&target, q, &[], &opts).unwrap())
        .collect();
    let said: Vec<(&str, &str, bool)> = r
        .samples
        .iter()
        .map(|o| (o.question.as_str(), o.continuation.as_str(), o.correct))
        .collect();
    let want: Vec<(&str, &str, bool)> = alone
        .iter()
        .map(|o| (o.question.as_str(), o.continuation.as_str(), o.correct))
        .collect();
    assert_eq!(said, want);
    assert_eq!(r.correct, alone.iter().filter(|o| o.correct).count());
}
