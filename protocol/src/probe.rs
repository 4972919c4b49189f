//! Results of the in-loop knowledge probe (`[evaluation.probe]`): a fixed set of
//! factual questions answered by the dense model before iteration 1 and by the
//! committed model every few iterations and at the end. Perplexity hides knowledge
//! loss, so the report shows this series next to it.
//!
//! Plain data: the probe itself runs in the Evaluator (with the `eval` crate's QA
//! machinery); these records are what the Checkpointer stores and the report reads.

use serde::{Deserialize, Serialize};

/// One probe measurement of one model state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbePoint {
    /// 0 for the dense model (before iteration 1); otherwise the iteration after which
    /// the committed model was probed.
    pub iteration: u32,
    /// Global sparsity of the probed (committed) model.
    pub sparsity: f64,
    /// In-loop perplexity of the probed model, so the two can be read side by side.
    pub ppl: f64,
    pub correct: usize,
    pub total: usize,
    /// correct / total, in [0, 1].
    pub accuracy: f64,
    /// Wall time of this probe.
    pub seconds: f64,
}

/// The probe over a whole run, as the summary and the report carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSeries {
    /// The question file.
    pub path: String,
    /// Prompt style actually used (`raw` or `chat`).
    pub style: String,
    /// Questions asked at each point.
    pub questions: usize,
    /// Cadence (`evaluation.probe.every`).
    pub every: u32,
    /// Chance accuracy of the task (0 for open answers).
    pub chance: f64,
    /// Whether the dense model is far enough above chance for the probe to show a
    /// loss (the `eval` crate's verdict); `false` when no dense point exists.
    pub informative: bool,
    /// Every measurement, oldest first: the dense point (iteration 0), every
    /// `every`-th iteration, and the final committed model.
    pub points: Vec<ProbePoint>,
}

impl ProbeSeries {
    /// The dense model's point, when it was measured (runs stored before the probe
    /// was wired have none).
    pub fn dense(&self) -> Option<&ProbePoint> {
        self.points.first().filter(|p| p.iteration == 0)
    }

    /// The latest point: the final model's once the run finished.
    pub fn last(&self) -> Option<&ProbePoint> {
        self.points.last()
    }
}

/// Whether the probe runs after `iteration` with cadence `every` (0 = never).
pub fn probe_due(every: u32, iteration: u32) -> bool {
    every > 0 && iteration > 0 && iteration.is_multiple_of(every)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(iteration: u32, accuracy: f64) -> ProbePoint {
        ProbePoint {
            iteration,
            sparsity: 0.1 * iteration as f64,
            ppl: 10.0,
            correct: (accuracy * 10.0) as usize,
            total: 10,
            accuracy,
            seconds: 0.5,
        }
    }

    #[test]
    fn cadence_and_ends() {
        let due: Vec<u32> = (0..=7).filter(|&t| probe_due(2, t)).collect();
        assert_eq!(due, vec![2, 4, 6]);
        assert!(!(0..100).any(|t| probe_due(0, t)));
        assert!((1..5).all(|t| probe_due(1, t)));
        let mut s = ProbeSeries {
            path: "q.jsonl".into(),
            style: "raw".into(),
            questions: 10,
            every: 2,
            chance: 0.0,
            informative: true,
            points: vec![point(0, 0.5), point(2, 0.4), point(3, 0.3)],
        };
        assert_eq!(s.dense().map(|p| p.accuracy), Some(0.5));
        assert_eq!(s.last().map(|p| p.iteration), Some(3));
        s.points.remove(0);
        assert_eq!(s.dense(), None);
    }

    #[test]
    fn series_round_trips_through_json() {
        let s = ProbeSeries {
            path: "q.jsonl".into(),
            style: "chat".into(),
            questions: 10,
            every: 1,
            chance: 0.0,
            informative: false,
            points: vec![point(0, 0.2), point(1, 0.1)],
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ProbeSeries>(&text).unwrap(), s);
    }
}
