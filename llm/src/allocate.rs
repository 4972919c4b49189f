//! A step spread over the layers by equal marginal measured cost
//! (`heuristic.allocation = "cost"`): the layers' [`protocol::LayerProfile::cost`]
//! curves give the expected loss rise of each next 0.01 of a layer's sparsity, and the
//! step goes, chunk by chunk, to the layer whose next chunk costs least per pruned
//! weight. With convex curves (each row's cheapest weights go first) this is the
//! knapsack optimum for the given step: every layer ends where its marginal cost per
//! weight reaches the common threshold. Measured on SmolLM2-135M with the OBS repair,
//! this allocation of 0.1 steps ended at 1.98× the dense QuAC PPL at 50 % and 3.56× at
//! 60 %, against 2.09× and ~4.5× for uniform steps (`model/examples/obs_gradual/main.rs`).

use protocol::{COST_STEP, DELTA_MIN};

/// One layer the allocation may raise.
pub(crate) struct CostLayer<'a> {
    /// Expected loss rise for δ = COST_STEP, 2·COST_STEP, … (non-decreasing).
    pub curve: &'a [f64],
    /// Number of weights.
    pub weight: f64,
    /// Largest δ this iteration allows.
    pub room: f64,
    /// Multiplies the layer's marginal costs (1 = as measured); seeded candidates
    /// jitter it.
    pub factor: f64,
}

/// What the allocation did.
pub(crate) struct Allocated {
    /// δ per layer, in the order given.
    pub deltas: Vec<f64>,
    /// Expected loss rise per pruned weight of the last chunk given: the threshold.
    pub threshold: f64,
    /// Σ of the curves at the δs given: the step's expected loss rise.
    pub expected: f64,
}

/// δs adding `step` of global sparsity (weights over `total`): chunks of COST_STEP to
/// the cheapest next chunk per weight until the step is covered; the chunk that crosses
/// it is cut to land on the step when its layer keeps at least DELTA_MIN. When every
/// layer is at its room or the end of its curve first, less than `step` is allocated.
pub(crate) fn by_cost(layers: &[CostLayer<'_>], total: f64, step: f64) -> Allocated {
    let budget = step * total;
    let limit: Vec<usize> = layers
        .iter()
        .map(|l| (((l.room + 1e-9) / COST_STEP).floor().max(0.0) as usize).min(l.curve.len()))
        .collect();
    let mut chunks = vec![0usize; layers.len()];
    let mut added = 0.0;
    let mut threshold = 0.0;
    let mut last = None;
    while added < budget - 1e-9 {
        let next = layers
            .iter()
            .enumerate()
            .filter(|(i, _)| chunks[*i] < limit[*i])
            .map(|(i, l)| {
                let k = chunks[i];
                let before = if k == 0 { 0.0 } else { l.curve[k - 1] };
                let marginal = (l.curve[k] - before).max(0.0) / (COST_STEP * l.weight);
                (i, marginal * l.factor, marginal)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let Some((i, _, marginal)) = next else { break };
        chunks[i] += 1;
        added += COST_STEP * layers[i].weight;
        threshold = marginal;
        last = Some(i);
    }
    let mut deltas: Vec<f64> = chunks.iter().map(|&k| k as f64 * COST_STEP).collect();
    if let Some(i) = last {
        let over = (added - budget).max(0.0) / layers[i].weight;
        if deltas[i] - over >= DELTA_MIN {
            deltas[i] -= over;
        }
    }
    let expected = layers
        .iter()
        .zip(&deltas)
        .map(|(l, &d)| curve_at(l.curve, d))
        .sum();
    Allocated {
        deltas,
        threshold,
        expected,
    }
}

/// The curve at δ, linear between its points (0 at δ = 0).
pub(crate) fn curve_at(curve: &[f64], delta: f64) -> f64 {
    let x = delta / COST_STEP;
    let k = x.floor() as usize;
    let at = |k: usize| {
        if k == 0 {
            0.0
        } else {
            curve.get(k - 1).or(curve.last()).copied().unwrap_or(0.0)
        }
    };
    let frac = x - k as f64;
    at(k) + frac * (at(k + 1) - at(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(curve: &[f64], weight: f64) -> CostLayer<'_> {
        CostLayer {
            curve,
            weight,
            room: 0.15,
            factor: 1.0,
        }
    }

    #[test]
    fn cheapest_marginal_cost_per_weight_wins() {
        // a: flat cost 1 per chunk of 100 weights; b: 0.5, 0.5, then 10 per chunk.
        let a: Vec<f64> = (1..=15).map(f64::from).collect();
        let b: Vec<f64> = [0.5, 1.0]
            .into_iter()
            .chain((1..=13).map(|k| 1.0 + 10.0 * f64::from(k)))
            .collect();
        let layers = [layer(&a, 10_000.0), layer(&b, 10_000.0)];
        // 0.05 of 20,000 weights = 1,000 = 10 chunks of 100.
        let got = by_cost(&layers, 20_000.0, 0.05);
        assert!((got.deltas[0] - 0.08).abs() < 1e-12, "{:?}", got.deltas);
        assert!((got.deltas[1] - 0.02).abs() < 1e-12, "{:?}", got.deltas);
        assert!((got.expected - (8.0 + 1.0)).abs() < 1e-9);
        assert!((got.threshold - 1.0 / 100.0).abs() < 1e-12);
    }

    #[test]
    fn cost_is_per_weight_not_per_layer() {
        // Same cost per chunk, but b's chunks are 4x bigger: b is 4x cheaper per weight.
        let c: Vec<f64> = (1..=15).map(f64::from).collect();
        let layers = [layer(&c, 1_000.0), layer(&c, 4_000.0)];
        let got = by_cost(&layers, 5_000.0, 0.02);
        assert_eq!(got.deltas[0], 0.0);
        assert!((got.deltas[1] - 0.025).abs() < 1e-12, "{:?}", got.deltas);
    }

    #[test]
    fn the_crossing_chunk_is_cut_to_land_on_the_step() {
        let c: Vec<f64> = (1..=15).map(|k| f64::from(k * k)).collect();
        let layers = [layer(&c, 1_000.0), layer(&c, 1_000.0)];
        let got = by_cost(&layers, 2_000.0, 0.035);
        let added: f64 = got.deltas.iter().map(|d| d * 1_000.0).sum::<f64>() / 2_000.0;
        assert!((added - 0.035).abs() < 1e-12, "{:?}", got.deltas);
        assert!(got.deltas.iter().all(|&d| d == 0.0 || d >= DELTA_MIN));
    }

    #[test]
    fn rooms_and_curve_ends_bound_the_step() {
        let c = [1.0, 2.0, 3.0];
        let mut l = layer(&c, 1_000.0);
        l.room = 0.02;
        let got = by_cost(&[l, layer(&c, 1_000.0)], 2_000.0, 0.5);
        assert_eq!(got.deltas, vec![0.02, 0.03]);
        assert!(by_cost(&[], 1.0, 0.1).deltas.is_empty());
    }

    #[test]
    fn factors_reorder_layers() {
        let c: Vec<f64> = (1..=15).map(f64::from).collect();
        let mut a = layer(&c, 1_000.0);
        a.factor = 0.5;
        let got = by_cost(&[a, layer(&c, 1_000.0)], 2_000.0, 0.02);
        assert!((got.deltas[0] - 0.04).abs() < 1e-12, "{:?}", got.deltas);
        assert_eq!(got.deltas[1], 0.0);
    }

    #[test]
    fn curve_interpolates() {
        let c = [1.0, 3.0];
        assert_eq!(curve_at(&c, 0.0), 0.0);
        assert!((curve_at(&c, 0.005) - 0.5).abs() < 1e-12);
        assert!((curve_at(&c, 0.015) - 2.0).abs() < 1e-12);
        assert!((curve_at(&c, 0.03) - 3.0).abs() < 1e-12);
    }
}
