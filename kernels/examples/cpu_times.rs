//! `cargo run --release -p kernels --example cpu_times`: CPU time (all threads, from the
//! scheduler's per-thread run time in /proc/self/task/*/schedstat, in ns) per call of each
//! benchmarked kernel on the 4096 x 11008 `down_proj` shape. Unlike criterion's wall-clock
//! medians it is not inflated when other processes share the cores; "cpu/2" is the wall time
//! to expect with both cores to ourselves. Each call is timed on its own: "cpu" is the mean,
//! "median" the median call, which a burst of load on the shared cores moves less.
//!
//! Arguments (optional): names to time, matched as substrings (`-- wanda_prune memory_pass_sum`)
//! or, with a leading `=`, exactly (`-- =wanda_prune_rows_50`);
//! all kernels when none are given. `CPU_TIMES_N=1` times one call of each (for runs under
//! `valgrind --tool=callgrind`, whose instruction counts do not depend on the load).

use candle_core::{Device, Tensor};
use kernels::{reference, Mask};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::cell::LazyCell;
use std::time::Instant;

/// CPU seconds run so far by the threads alive now (rayon's workers live as long as the
/// process, so none of a call's time is lost with an exited thread).
fn cpu_secs() -> f64 {
    let ns: u64 = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .map(|s| s.split_whitespace().next().unwrap().parse::<u64>().unwrap())
        .sum();
    ns as f64 * 1e-9
}

fn time<R>(name: &str, n: usize, mut f: impl FnMut() -> R) {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let matches = |w: &String| match w.strip_prefix('=') {
        Some(exact) => name == exact,
        None => name.contains(w.as_str()),
    };
    if !wanted.is_empty() && !wanted.iter().any(matches) {
        return;
    }
    let t0 = Instant::now();
    let mut calls: Vec<f64> = (0..n)
        .map(|_| {
            let c0 = cpu_secs();
            std::hint::black_box(f());
            cpu_secs() - c0
        })
        .collect();
    let t = t0.elapsed().as_secs_f64() / n as f64;
    let c = calls.iter().sum::<f64>() / n as f64;
    calls.sort_by(f64::total_cmp);
    println!(
        "{name:28} cpu {:6.1} ms/iter  median {:6.1}  (cpu/2 {:5.1} ms)  wall {:6.1} ms",
        c * 1e3,
        calls[n / 2] * 1e3,
        c * 500.0,
        t * 1e3
    );
}

fn main() {
    let (rows, cols) = (4096, 11008);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-0.1..0.1))
        .collect();
    let w = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
    let sq: Vec<f32> = (0..cols).map(|_| rng.random_range(0.0..100.0)).collect();
    let sq = Tensor::new(sq, &Device::Cpu).unwrap();
    // Made on first use, so that a run of one kernel (under callgrind) counts only its calls.
    let scores = LazyCell::new(|| kernels::wanda_scores(&w, &sq).unwrap());
    let ones = Mask::ones(rows, cols);
    let half = LazyCell::new(|| kernels::prune_rows_incremental(&scores, &ones, 0.5).unwrap());
    let calls = |default: usize| {
        std::env::var("CPU_TIMES_N")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let n = calls(20);
    time("memory_pass_sum", calls(200), || w.sum_all().unwrap());
    let host = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    time("memory_pass_sum_parallel", calls(200), || {
        host.par_chunks(cols).map(sum_lanes).sum::<f32>()
    });
    time("wanda_scores", n, || {
        kernels::wanda_scores(&w, &sq).unwrap()
    });
    time("wanda_prune_rows_50", n, || {
        kernels::wanda_prune_rows(&w, &sq, &ones, 0.5).unwrap()
    });
    time("wanda_prune_rows_50_to_55", n, || {
        kernels::wanda_prune_rows(&w, &sq, &half, 0.55).unwrap()
    });
    time("select_50", n, || {
        kernels::prune_rows_incremental(&scores, &ones, 0.5).unwrap()
    });
    time("select_50_select_nth", n, || {
        reference::prune_rows_select_nth(&scores, &ones, 0.5).unwrap()
    });
    time("select_50_full_sort", calls(5), || {
        reference::prune_rows_full_sort(&scores, &ones, 0.5).unwrap()
    });
    time("incremental_50_to_55", n, || {
        kernels::prune_rows_incremental(&scores, &half, 0.55).unwrap()
    });
    time("nm_2_4", n, || kernels::nm_mask(&scores, 2, 4).unwrap());
}

/// The benchmark's vectorisable sum (16 accumulators), so the pass is bound by memory.
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
