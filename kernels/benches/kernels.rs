//! `cargo bench -p kernels`: the pruning kernels on a LLaMA-7B `down_proj` (4096 x 11008 f32),
//! side by side with one memory pass over the matrix and with baselines of the per-row
//! selection.
//!
//! Memory passes: `memory_pass_sum` is candle's `sum_all` (the `sum()` the goal names; one
//! thread, AVX2 when the CPU has it); `memory_pass_sum_parallel` reads the matrix on every
//! rayon thread, as the kernels do, with enough accumulators to be bound by memory rather than
//! by the latency of float adds. Quote score + select against both.
//!
//! Selection baselines: `*_full_sort` sorts each row's packed (score, column) u64 keys,
//! `select_50_select_nth` is the former kernel (`select_nth_unstable` on the same keys); the
//! kernels themselves use radix selection on u32 keys (`src/select.rs`).

use std::hint::black_box;
use std::time::Duration;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use kernels::{reference, Mask};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

const ROWS: usize = 4096;
const COLS: usize = 11008;

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0);
    let w: Vec<f32> = (0..ROWS * COLS)
        .map(|_| rng.random_range(-0.1..0.1))
        .collect();
    let w_host = w.clone();
    let w = Tensor::from_vec(w, (ROWS, COLS), &Device::Cpu).unwrap();
    let sq: Vec<f32> = (0..COLS).map(|_| rng.random_range(0.0..100.0)).collect();
    let sq = Tensor::new(sq, &Device::Cpu).unwrap();
    let scores = kernels::wanda_scores(&w, &sq).unwrap();
    let ones = Mask::ones(ROWS, COLS);
    let half = kernels::prune_rows_incremental(&scores, &ones, 0.5).unwrap();

    let mut g = c.benchmark_group("down_proj_4096x11008");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g.bench_function("memory_pass_sum", |b| {
        b.iter(|| w.sum_all().unwrap().to_scalar::<f32>().unwrap())
    });
    g.bench_function("memory_pass_sum_parallel", |b| {
        b.iter(|| {
            w_host
                .par_chunks(COLS)
                .map(|row| sum_lanes(black_box(row)))
                .sum::<f32>()
        })
    });
    g.bench_function("wanda_scores", |b| {
        b.iter(|| kernels::wanda_scores(&w, &sq).unwrap())
    });
    g.bench_function("score_select_50", |b| {
        b.iter(|| {
            let s = kernels::wanda_scores(&w, &sq).unwrap();
            kernels::prune_rows_incremental(&s, &ones, 0.5).unwrap()
        })
    });
    g.bench_function("wanda_prune_rows_50", |b| {
        b.iter(|| kernels::wanda_prune_rows(&w, &sq, &ones, 0.5).unwrap())
    });
    g.bench_function("wanda_prune_rows_50_to_55", |b| {
        b.iter(|| kernels::wanda_prune_rows(&w, &sq, black_box(&half), 0.55).unwrap())
    });
    g.bench_function("select_50", |b| {
        b.iter(|| kernels::prune_rows_incremental(&scores, &ones, 0.5).unwrap())
    });
    g.bench_function("select_50_select_nth", |b| {
        b.iter(|| reference::prune_rows_select_nth(&scores, &ones, 0.5).unwrap())
    });
    g.bench_function("select_50_full_sort", |b| {
        b.iter(|| reference::prune_rows_full_sort(&scores, &ones, 0.5).unwrap())
    });
    g.bench_function("incremental_50_to_55", |b| {
        b.iter(|| kernels::prune_rows_incremental(&scores, black_box(&half), 0.55).unwrap())
    });
    g.bench_function("incremental_50_to_55_full_sort", |b| {
        b.iter(|| reference::prune_rows_full_sort(&scores, black_box(&half), 0.55).unwrap())
    });
    g.bench_function("nm_2_4", |b| {
        b.iter(|| kernels::nm_mask(&scores, 2, 4).unwrap())
    });
    g.finish();
}

/// Sum with 16 independent accumulators, so that the compiler vectorises it and the pass is
/// limited by memory, not by the latency of a chain of float adds.
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

criterion_group!(benches, bench);
criterion_main!(benches);
