//! The loop's knowledge-probe stages (the probe itself is [`crate::probe_set`]): the
//! dense point before iteration 1, a point every `every`-th iteration (measured in
//! [`super::Iteration`]), and the final model's point at the normal end of a run.

use protocol::{CandidateMasks, IterationRecord, ProbePoint, ProbeSeries};

use super::{Ctx, LoopState};
use crate::checkpointer::CheckpointerMsg;
use crate::crew::{Crew, CHECKPOINTER, EVALUATOR};
use crate::error::ActorError;
use crate::evaluator::EvaluatorMsg;
use crate::probe_set::point;
use crate::repair::RepairedWeights;

/// Ask the Evaluator for a probe of the committed model, plus `candidate`'s delta
/// when given (the candidate about to be committed).
pub async fn measure(
    crew: &mut Crew,
    raw_grad: &Option<Vec<f64>>,
    candidate: Option<(&CandidateMasks, Option<RepairedWeights>)>,
    (iteration, sparsity, ppl): (u32, f64, f64),
) -> Result<ProbePoint, ActorError> {
    let candidate = candidate.map(|(c, w)| Box::new((c.clone(), w)));
    let score = crew
        .ask(&EVALUATOR, raw_grad, |r| EvaluatorMsg::Probe {
            candidate: candidate.clone(),
            reply: r,
        })
        .await??;
    tracing::info!(
        iteration,
        accuracy = score.accuracy,
        correct = score.correct as i64,
        "knowledge probe"
    );
    Ok(point(iteration, sparsity, ppl, &score))
}

/// At the normal end of a run: the final committed model's point, unless the last
/// stored iteration already has one (or the run stored no iteration: the dense point
/// is then the final one). A point stored by an earlier process that finished this
/// run is reused, not measured again.
pub async fn final_point(crew: &mut Crew, state: &mut LoopState) -> Result<(), ActorError> {
    let Some(last) = state.history.last().map(|r| r.outcome.iteration) else {
        return Ok(());
    };
    if state.probe_points.iter().any(|p| p.iteration == last) {
        return Ok(());
    }
    if let Some(p) = state
        .stored_final_probe
        .take()
        .filter(|p| p.iteration == last)
    {
        state.probe_points.push(p);
        return Ok(());
    }
    let sparsity = state
        .history
        .iter()
        .rev()
        .find(|r| !r.outcome.rolled_back)
        .map_or(0.0, |r| r.outcome.sparsity_after);
    let at = (last, sparsity, state.current_ppl);
    let p = measure(crew, &state.raw_grad, None, at).await?;
    crew.ask(&CHECKPOINTER, &state.raw_grad, |r| {
        CheckpointerMsg::SetFinalProbe {
            point: p.clone(),
            reply: r,
        }
    })
    .await??;
    state.probe_points.push(p);
    Ok(())
}

/// The summary's probe series (`None` when the probe is off).
pub fn series(ctx: &Ctx<'_>, state: &LoopState) -> Option<ProbeSeries> {
    ctx.engine
        .probe
        .as_ref()
        .map(|p| p.series(&state.probe_points))
}

/// The knowledge guard's finding on a step: the probe accuracy of the committed model
/// (the last point) and of the candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardTrip {
    pub before: f64,
    pub after: f64,
}

/// `Some` when the candidate's point `p` answers less than `(1 − guard)` × the last
/// stored point's accuracy (`guard` 0 is off; no earlier point, no verdict).
pub fn guard_trip(guard: f64, points: &[ProbePoint], p: &ProbePoint) -> Option<GuardTrip> {
    let last = points.last()?;
    (guard > 0.0 && p.accuracy < (1.0 - guard) * last.accuracy).then_some(GuardTrip {
        before: last.accuracy,
        after: p.accuracy,
    })
}

/// Turn `record` (a step τ accepted) into a rollback by the knowledge guard, and tell
/// the planner why in its feedback.
pub fn roll_back_for_knowledge(record: &mut IterationRecord, trip: &GuardTrip, guard: f64) {
    let o = &mut record.outcome;
    o.rolled_back = true;
    record.feedback.summary.push_str(&format!(
        "\nThe knowledge probe answered {:.1}% of its questions against {:.1}% before this \
step (the guard allows losing {:.0}% of it in one step), so the change was rolled back: \
the model stays at global sparsity {:.4} and PPL {:.3}.",
        100.0 * trip.after,
        100.0 * trip.before,
        100.0 * guard,
        o.sparsity_before,
        o.ppl_before
    ));
    record.feedback.assessment = KNOWLEDGE_ASSESSMENT.into();
}

/// The assessment of a step the knowledge guard rolled back.
pub const KNOWLEDGE_ASSESSMENT: &str =
    "Rolled back - the knowledge probe fell too far, spare the layers that hold what the \
model knows or take smaller deltas";

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Feedback, IterationOutcome, Plan};

    fn point(iteration: u32, accuracy: f64) -> ProbePoint {
        ProbePoint {
            iteration,
            sparsity: 0.0,
            ppl: 10.0,
            correct: (accuracy * 100.0) as usize,
            total: 100,
            accuracy,
            seconds: 1.0,
        }
    }

    #[test]
    fn guard_compares_with_the_last_point() {
        let points = [point(0, 0.5), point(3, 0.4)];
        // 0.4 × (1 − 0.25) = 0.3: 0.31 passes, 0.29 trips.
        assert_eq!(guard_trip(0.25, &points, &point(6, 0.31)), None);
        assert_eq!(
            guard_trip(0.25, &points, &point(6, 0.29)),
            Some(GuardTrip {
                before: 0.4,
                after: 0.29
            })
        );
        assert_eq!(guard_trip(0.0, &points, &point(6, 0.0)), None, "off");
        assert_eq!(guard_trip(0.25, &[], &point(6, 0.0)), None, "no reference");
    }

    #[test]
    fn a_tripped_step_is_a_rollback_with_the_reason() {
        let mut record = IterationRecord {
            plan: Plan {
                reasoning: "r".into(),
                stop_pruning: false,
                layer_decisions: vec![],
            },
            outcome: IterationOutcome {
                iteration: 3,
                sparsity_before: 0.2,
                sparsity_after: 0.3,
                ppl_before: 12.0,
                ppl_after: 13.0,
                rolled_back: false,
            },
            feedback: Feedback {
                iteration: 3,
                summary: "Result: fine.".into(),
                assessment: "Good".into(),
            },
        };
        let trip = GuardTrip {
            before: 0.4,
            after: 0.2,
        };
        roll_back_for_knowledge(&mut record, &trip, 0.25);
        assert!(record.outcome.rolled_back);
        assert_eq!(record.feedback.assessment, KNOWLEDGE_ASSESSMENT);
        let s = &record.feedback.summary;
        assert!(
            s.starts_with(
                "Result: fine.\nThe knowledge probe answered 20.0% of its questions against 40.0%"
            ),
            "{s}"
        );
        assert!(s.contains("losing 25% of it"), "{s}");
        assert!(
            s.ends_with("stays at global sparsity 0.2000 and PPL 12.000."),
            "{s}"
        );
    }
}
