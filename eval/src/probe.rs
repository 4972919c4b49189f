//! The in-loop knowledge probe: a few hundred factual questions answered with the
//! same machinery as the final QA evaluation ([`crate::qa`]), cheap enough to run
//! every iteration or every few. Perplexity hides knowledge loss (the paper's own
//! motivation), so the loop plots this next to it.

use serde::{Deserialize, Serialize};

use crate::data::QaItem;
use crate::qa::{self, QaOptions};
use crate::{EvalError, Result, Target};

/// Probe result: the number answered correctly out of the number asked.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProbeScore {
    pub correct: usize,
    pub total: usize,
    pub accuracy: f64,
    pub seconds: f64,
}

/// A fixed probe set: `size` questions spread evenly over `items` (the `⌊i·n/size⌋`-th),
/// so the probe spans the file rather than its first topic, and is the same set on
/// every call. All of them when `size ≥ n`.
pub fn select(items: &[QaItem], size: usize) -> Vec<QaItem> {
    selected_indices(items.len(), size)
        .map(|i| items[i].clone())
        .collect()
}

fn selected_indices(n: usize, size: usize) -> impl Iterator<Item = usize> {
    let size = size.min(n);
    (0..size).map(move |i| i * n / size)
}

/// Answer `questions` on `target` (its overlay is the candidate's masks) and count
/// the correct ones. No shots; the prompt style and length come from `opts`.
pub fn knowledge_probe(
    target: &Target<'_>,
    questions: &[QaItem],
    opts: &QaOptions,
) -> Result<ProbeScore> {
    if questions.is_empty() {
        return Err(EvalError::InvalidArgument(
            "knowledge probe: no questions".into(),
        ));
    }
    let opts = QaOptions {
        shots: 0,
        keep_samples: 0,
        ..opts.clone()
    };
    let r = qa::evaluate(target, questions, &[], &opts, &|| {})?;
    Ok(ProbeScore {
        correct: r.correct,
        total: r.questions,
        accuracy: r.accuracy,
        seconds: r.seconds,
    })
}
