//! Knowledge calibration text: answered factual questions written the way the QA
//! evaluation asks them (the model's chat template, or the LLM-KICK lines for a model
//! without one), to be cut into calibration windows next to ordinary text. Pruning
//! that preserves each layer's outputs (OBS repair) or measures its cost on the
//! calibration windows then also sees the activations of recalling a fact, which news
//! text alone does not exercise.

use model::{ChatMessage, ChatTemplate};

use crate::data::QaItem;
use crate::qa::{KICK_LEAD, KICK_PREFIX};
use crate::{Codec, EvalError, Result};

/// Question–answer pairs per conversation: a few turns, like a short chat session.
pub const TURNS_PER_TEXT: usize = 6;

/// `items` as calibration texts of up to [`TURNS_PER_TEXT`] answered questions each (the
/// first alias is the answer): one rendered conversation per text with `template`,
/// else the QA evaluation's raw lines.
pub fn answered_texts(items: &[QaItem], template: Option<&ChatTemplate>) -> Result<Vec<String>> {
    items
        .chunks(TURNS_PER_TEXT)
        .map(|chunk| match template {
            Some(t) => {
                let messages: Vec<ChatMessage> = chunk
                    .iter()
                    .flat_map(|q| {
                        [
                            ChatMessage::user(q.question.clone()),
                            ChatMessage::assistant(first_answer(q).to_string()),
                        ]
                    })
                    .collect();
                Ok(t.render_conversation(&messages)?)
            }
            None => Ok(chunk
                .iter()
                .map(|q| format!("{KICK_PREFIX}{}{KICK_LEAD}{}", q.question, first_answer(q)))
                .collect::<Vec<_>>()
                .join("\n\n")),
        })
        .collect()
}

/// `count` windows of `len` tokens of [`answered_texts`] of `items` (joined by blank
/// lines, as calibration text is), spread evenly over all of them so the windows cover
/// the file's topics rather than its first one. An error when the items hold fewer
/// than `count` whole windows.
pub fn calibration_windows(
    items: &[QaItem],
    template: Option<&ChatTemplate>,
    codec: &dyn Codec,
    len: usize,
    count: usize,
) -> Result<Vec<Vec<u32>>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let tokens = codec.encode(&answered_texts(items, template)?.join("\n\n"))?;
    let whole: Vec<&[u32]> = tokens.chunks_exact(len.max(1)).collect();
    if whole.len() < count {
        return Err(EvalError::InvalidArgument(format!(
            "{} answered questions make {} tokens, {} windows of {len}; {count} wanted",
            items.len(),
            tokens.len(),
            whole.len()
        )));
    }
    Ok((0..count)
        .map(|j| whole[j * whole.len() / count].to_vec())
        .collect())
}

fn first_answer(q: &QaItem) -> &str {
    q.answers.first().map_or("", String::as_str)
}

/// `extra` spread evenly through `base`: with n windows in all and k extra ones, the
/// extra ones sit at positions `⌊j·n/k⌋`, so any prefix of the result (e.g. the first
/// few windows a gradient pass takes) holds about its share of them.
pub fn interleave<T>(base: Vec<T>, extra: Vec<T>) -> Vec<T> {
    let n = base.len() + extra.len();
    let k = extra.len();
    let mut base = base.into_iter();
    let mut extra = extra.into_iter().enumerate().peekable();
    let mut out = Vec::with_capacity(n);
    for pos in 0..n {
        let due = extra.peek().is_some_and(|(j, _)| j * n / k == pos);
        let next = if due {
            extra.next().map(|(_, x)| x)
        } else {
            base.next()
        };
        out.extend(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(q: &str, a: &str) -> QaItem {
        QaItem {
            question: q.into(),
            answers: vec![a.into(), format!("{a} alias")],
        }
    }

    #[test]
    fn extra_windows_are_spread_evenly() {
        let out = interleave(vec!["b0", "b1", "b2", "b3", "b4", "b5"], vec!["x0", "x1"]);
        assert_eq!(out, ["x0", "b0", "b1", "b2", "x1", "b3", "b4", "b5"]);
        let out = interleave((0..12).collect(), vec![100, 101, 102, 103]);
        assert_eq!(out[0], 100);
        assert_eq!(out[4], 101);
        assert_eq!(out[8], 102);
        assert_eq!(out[12], 103);
        assert_eq!(out.len(), 16);
        assert_eq!(interleave(vec![1, 2], Vec::new()), [1, 2]);
        assert_eq!(interleave(Vec::new(), vec![7]), [7]);
    }

    #[test]
    fn raw_texts_use_the_qa_lines_and_the_first_answer() {
        let items: Vec<QaItem> = (0..8)
            .map(|i| item(&format!("Q{i}?"), &format!("A{i}")))
            .collect();
        let texts = answered_texts(&items, None).unwrap();
        assert_eq!(texts.len(), 2, "six pairs, then two");
        assert_eq!(
            texts[1],
            format!("{KICK_PREFIX}Q6?{KICK_LEAD}A6\n\n{KICK_PREFIX}Q7?{KICK_LEAD}A7")
        );
    }

    #[test]
    fn windows_are_spread_over_all_the_questions() {
        let codec = crate::CharCodec::tiny();
        let items: Vec<QaItem> = (0..30)
            .map(|i| item("q?", &format!("{}", i % 10)))
            .collect();
        let raw = answered_texts(&items, None).unwrap().join("\n\n");
        let all = codec.encode(&raw).unwrap();
        let len = 16;
        let w = calibration_windows(&items, None, &codec, len, 3).unwrap();
        let whole = all.len() / len;
        assert_eq!(w.len(), 3);
        for (j, win) in w.iter().enumerate() {
            let at = j * whole / 3 * len;
            assert_eq!(win.as_slice(), &all[at..at + len], "window {j}");
        }
        let err = calibration_windows(&items, None, &codec, len, whole + 1).unwrap_err();
        assert!(err.to_string().contains("30 answered questions"), "{err}");
        assert!(calibration_windows(&items, None, &codec, len, 0)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn chat_texts_are_finished_conversations() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}</>{% endfor %}\
{% if add_generation_prompt %}<assistant>{% endif %}",
            "",
            "",
        )
        .unwrap();
        let texts = answered_texts(&[item("Q?", "A"), item("R?", "B")], Some(&t)).unwrap();
        assert_eq!(
            texts,
            ["<user>Q?</><assistant>A</><user>R?</><assistant>B</>"]
        );
    }
}
