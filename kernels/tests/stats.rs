//! Percentile, layer sensitivity, gradient importance and z-scores against hand-computed values.

mod common;

use common::*;
use kernels::{reference, KernelError, Mask};
use rand::Rng;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + b.abs())
}

#[test]
fn percentile_hand_computed() {
    // numpy: np.percentile([4, 1, 3, 2], k) for k = 0, 10, 50, 75, 100.
    for (k, want) in [
        (0.0, 1.0),
        (10.0, 1.3),
        (50.0, 2.5),
        (75.0, 3.25),
        (100.0, 4.0),
    ] {
        assert!(
            close(kernels::percentile(vec![4., 1., 3., 2.], k).unwrap(), want),
            "k {k}"
        );
    }
    // np.percentile([10, 7, 4, 3, 2, 1], 10) = 1.5 (pos 0.5 between 1 and 2).
    assert!(close(
        kernels::percentile(vec![10., 7., 4., 3., 2., 1.], 10.0).unwrap(),
        1.5
    ));
    assert_eq!(kernels::percentile(vec![7.5], 10.0).unwrap(), 7.5);
    assert_eq!(kernels::percentile(vec![2.0; 9], 10.0).unwrap(), 2.0);
}

#[test]
fn percentile_matches_reference() {
    let mut rng = rng(11);
    for n in [1, 2, 3, 10, 101, 5000] {
        let v: Vec<f32> = (0..n)
            .map(|_| rng.random_range(0..20) as f32 * 0.5)
            .collect();
        for k in [0.0, 10.0, 33.3, 50.0, 99.9, 100.0] {
            let got = kernels::percentile(v.clone(), k).unwrap();
            assert!(
                close(got, reference::percentile(v.clone(), k)),
                "n {n} k {k}"
            );
        }
    }
}

#[test]
fn sensitivity_is_percentile_over_active_weights() {
    let s = tensor(2, 3, vec![1., 2., 3., 4., 5., 6.]);
    let mask = Mask::from_bools(2, 3, &[false, true, true, true, true, false]).unwrap();
    // Active scores [2, 3, 4, 5]: pos = 3 · 0.1 = 0.3 → 2.3.
    assert!(close(
        kernels::layer_sensitivity(&s, &mask, 10.0).unwrap(),
        2.3
    ));
    assert!(close(
        kernels::layer_sensitivity(&s, &Mask::ones(2, 3), 50.0).unwrap(),
        3.5
    ));
    let none = Mask::zeros(2, 3);
    assert!(matches!(
        kernels::layer_sensitivity(&s, &none, 10.0),
        Err(KernelError::Argument(_))
    ));
    assert!(matches!(
        kernels::layer_sensitivity(&s, &Mask::ones(3, 2), 10.0),
        Err(KernelError::Shape(_))
    ));
}

#[test]
fn gradient_importance_is_mean_over_active_weights() {
    let g = tensor(2, 3, vec![1., -2., 3., 4., 5., 600.]);
    let mask = Mask::from_bools(2, 3, &[true, true, true, true, true, false]).unwrap();
    assert!(close(kernels::gradient_importance(&g, &mask).unwrap(), 3.0));
    let mut rng = rng(12);
    let g = scores(Scores::Random, 13, 77, &mut rng);
    let mask = random_mask(13, 77, 0.4, &mut rng);
    let got = kernels::gradient_importance(&g, &mask).unwrap();
    assert!(close(
        got,
        reference::gradient_importance(&g, &mask).unwrap()
    ));
    assert!(kernels::gradient_importance(&g, &Mask::zeros(13, 77)).is_err());
}

#[test]
fn z_scores_use_population_std() {
    // mean 2, population std sqrt(2/3).
    let z = kernels::z_scores(&[1., 2., 3.]).unwrap();
    let s = (2.0f64 / 3.0).sqrt() + kernels::Z_EPSILON;
    assert!(close(z[0], -1.0 / s) && z[1] == 0.0 && close(z[2], 1.0 / s));
    assert!(close(z[2], 1.224_744_871), "{z:?}");
    // Equal values: std 0, ε keeps it finite.
    assert_eq!(kernels::z_scores(&[5.; 4]).unwrap(), vec![0.; 4]);
    assert!(kernels::z_scores(&[]).unwrap().is_empty());
    assert!(kernels::z_scores(&[1., f64::NAN]).is_err());
    assert!(kernels::z_scores(&[1., f64::INFINITY]).is_err());
}

#[test]
fn percentile_bad_arguments() {
    assert!(kernels::percentile(vec![], 10.0).is_err());
    assert!(kernels::percentile(vec![1.], 100.5).is_err());
    assert!(kernels::percentile(vec![1.], -1.0).is_err());
    assert!(kernels::percentile(vec![1.], f64::NAN).is_err());
    assert!(matches!(
        kernels::percentile(vec![1., f32::NAN], 10.0),
        Err(KernelError::NaN(_))
    ));
}
