//! The loop's knowledge-probe stages (the probe itself is [`crate::probe_set`]): the
//! dense point before iteration 1, a point every `every`-th iteration (measured in
//! [`super::Iteration`]), and the final model's point at the normal end of a run.

use protocol::{CandidateMasks, ProbePoint, ProbeSeries};

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
