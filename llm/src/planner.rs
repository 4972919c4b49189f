//! The planner interface every backend implements.
//!
//! Synchronous by design: the HTTP backends will use blocking clients with their own
//! timeouts, the local backend runs a model on the CPU/GPU, and the heuristic is pure
//! arithmetic — all of which belong on a blocking thread, not on the async executor
//! (ARCHITECTURE.md invariant). The Planner actor calls `propose` from
//! `tokio::task::spawn_blocking`; a sync trait is also object-safe without boxing
//! futures, so backends can be chosen per actor at run time as `Box<dyn PlannerBackend>`.

pub use protocol::{PlanRequest, PlanResponse};

use crate::error::{LlmError, Result};

/// A source of candidate plans.
pub trait PlannerBackend: Send + Sync {
    /// Short name recorded with every response (`heuristic`, `gemini`, …).
    fn name(&self) -> &str;

    /// Propose up to `k` (≥ 1) distinct candidate plans for this iteration, best guess
    /// first. A backend may return fewer than `k` when further candidates would repeat
    /// earlier ones (e.g. only one layer is left to prune); it never returns none
    /// without an error.
    fn propose(&self, request: &PlanRequest, k: usize) -> Result<Vec<PlanResponse>>;
}

/// Reject requests no backend can plan for, with a reason naming the culprit, so a
/// malformed request becomes an error reply instead of a panic or a NaN plan.
pub fn check_request(request: &PlanRequest, k: usize) -> Result<()> {
    let bad = |m: String| Err(LlmError::InvalidRequest(m));
    if k == 0 {
        return bad("k = 0: at least one candidate must be asked for".into());
    }
    if request.profiles.is_empty() {
        return bad("no layer profiles".into());
    }
    let t = request.target_sparsity;
    if !(t > 0.0 && t < 1.0) {
        return bad(format!("target_sparsity = {t}: must be in (0, 1)"));
    }
    if !(request.tau.is_finite() && request.tau > 0.0) {
        return bad(format!("tau = {}: must be > 0", request.tau));
    }
    for (what, v) in [
        ("baseline_ppl", request.baseline_ppl),
        ("current_ppl", request.current_ppl),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return bad(format!("{what} = {v}: must be a finite number > 0"));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for p in &request.profiles {
        if !seen.insert(p.name.as_str()) {
            return bad(format!("layer `{}` is listed twice", p.name));
        }
        if !(p.z_sens.is_finite() && p.z_grad.is_finite()) {
            return bad(format!(
                "layer `{}`: z_sens = {}, z_grad = {}: must be finite",
                p.name, p.z_sens, p.z_grad
            ));
        }
        if !(0.0..=1.0).contains(&p.sparsity) {
            return bad(format!(
                "layer `{}`: sparsity = {}: must be in [0, 1]",
                p.name, p.sparsity
            ));
        }
    }
    if request.profiles.iter().all(|p| p.params == 0) {
        return bad("every layer has 0 parameters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::LayerProfile;

    fn request() -> PlanRequest {
        let p = LayerProfile {
            name: "a".into(),
            z_sens: 0.0,
            z_grad: 0.0,
            sparsity: 0.0,
            params: 10,
            cost: Vec::new(),
        };
        PlanRequest::new(1, 10, vec![p], 0.5, 10.0, 10.0, 0.15)
    }

    #[test]
    fn accepts_a_sane_request() {
        assert_eq!(check_request(&request(), 1), Ok(()));
    }

    #[test]
    fn rejects_bad_requests_with_reasons() {
        let msg = |r: &PlanRequest, k| match check_request(r, k) {
            Err(LlmError::InvalidRequest(m)) => m,
            other => panic!("expected InvalidRequest, got {other:?}"),
        };
        assert!(msg(&request(), 0).starts_with("k = 0"));
        let mut r = request();
        r.profiles[0].z_sens = f64::NAN;
        assert_eq!(
            msg(&r, 1),
            "layer `a`: z_sens = NaN, z_grad = 0: must be finite"
        );
        let mut r = request();
        r.profiles.push(r.profiles[0].clone());
        assert_eq!(msg(&r, 1), "layer `a` is listed twice");
        let mut r = request();
        r.current_ppl = f64::INFINITY;
        assert_eq!(msg(&r, 1), "current_ppl = inf: must be a finite number > 0");
        let mut r = request();
        r.target_sparsity = 1.0;
        assert_eq!(msg(&r, 1), "target_sparsity = 1: must be in (0, 1)");
        let mut r = request();
        r.profiles.clear();
        assert_eq!(msg(&r, 1), "no layer profiles");
        let mut r = request();
        r.profiles[0].params = 0;
        assert_eq!(msg(&r, 1), "every layer has 0 parameters");
    }
}
