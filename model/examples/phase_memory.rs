//! Peak resident memory of each phase of a pruning iteration on a real checkpoint, in
//! one process: load, activation statistics, gradient means, in-place pruning, lazy
//! mask overlays (K concurrent), final-text perplexity. The peak (VmHWM) is reset
//! between phases through `/proc/self/clear_refs` (Linux), so each line is that
//! phase's own peak.
//!
//! `cargo run --example phase_memory -p model -- MODEL [K]` (MODEL: GGUF file or HF
//! directory; default the fetched SmolLM2-135M-Instruct).

use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use kernels::Mask;
use model::{Model, WeightOverlay};

fn status(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Print the phase's peak and current RSS, then reset the peak for the next phase.
fn phase(name: &str, start: Instant) {
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "{name:<28} peak {:>7.1} MiB  now {:>7.1} MiB  {:>6.1} s",
        mib(status("VmHWM:")),
        mib(status("VmRSS:")),
        start.elapsed().as_secs_f64()
    );
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "assets/models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let k: usize = args.next().map_or(Ok(3), |v| v.parse())?;
    let t = Instant::now();
    let ckpt = model::load_checkpoint(std::path::Path::new(&path))?;
    let f32_bytes = ckpt.parameter_count() as u64 * 4;
    let vocab = ckpt.config.vocab_size as u32;
    let m = Arc::new(Model::new_owned(&ckpt.config, ckpt.tensors, &Device::Cpu)?);
    println!(
        "f32 model {:.1} MiB; goal: peak ≤ {:.1} MiB",
        f32_bytes as f64 / 1048576.0,
        2.0 * f32_bytes as f64 / 1048576.0
    );
    phase("load", t);

    let sample = |seed: u32, len: u32| -> Vec<u32> {
        (0..len)
            .map(|i| (i * 7919 + seed * 131 + 13) % vocab)
            .collect()
    };
    let t = Instant::now();
    m.set_stats_enabled(true);
    for s in 0..4 {
        m.forward(&Tensor::new(sample(s, 256).as_slice(), &Device::Cpu)?.unsqueeze(0)?)?;
    }
    m.set_stats_enabled(false);
    let stats = m.take_stats();
    phase("activation stats (4 x 256)", t);

    let t = Instant::now();
    let means = m.gradient_importance_means(&[sample(1, 256), sample(2, 256)])?;
    phase("gradient means (2 x 256)", t);

    let t = Instant::now();
    let layers = m.prunable_layers();
    for l in &layers {
        let w = m.layer_weight(&l.name)?;
        let sq = stats[&l.name].sum_sq.to_dtype(candle_core::DType::F32)?;
        let scores = kernels::wanda_scores(&w, &sq)?;
        let keep = kernels::prune_rows_incremental(
            &scores,
            &Mask::ones(l.out_features, l.in_features),
            0.3,
        )?;
        m.prune_in_place(&l.name, &keep)?;
    }
    phase("wanda 30 % in place", t);

    let t = Instant::now();
    let overlays: Vec<WeightOverlay> = (0..k)
        .map(|c| {
            let mut o = WeightOverlay::new();
            for l in &layers {
                let mut keep = (*m.pruned_mask(&l.name).unwrap().unwrap()).clone();
                let extra = Mask::from_bools(
                    l.out_features,
                    l.in_features,
                    &(0..l.out_features * l.in_features)
                        .map(|i| (i + c) % 10 != 0)
                        .collect::<Vec<_>>(),
                )
                .unwrap();
                let words = keep.words().iter().zip(extra.words()).map(|(a, b)| a & b);
                keep = Mask::from_words(l.out_features, l.in_features, words.collect()).unwrap();
                o.insert_mask(l.name.clone(), Arc::new(keep));
            }
            o
        })
        .collect();
    let ppl: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = overlays
            .iter()
            .map(|o| {
                let m = m.clone();
                s.spawn(move || {
                    m.perplexity_with(&sample(9, 512), 256, Some(o))
                        .map(|p| p.ppl)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("evaluation thread"))
            .collect::<Result<_, _>>()
    })?;
    phase(&format!("{k} mask overlays, PPL 2 x 256"), t);

    let t = Instant::now();
    let p = m.perplexity(&sample(5, 2048), 512)?;
    phase("final PPL, windows of 512", t);
    println!(
        "({} layers with gradient means; candidate PPL {ppl:.1?}; final PPL {:.1})",
        means.len(),
        p.ppl
    );
    Ok(())
}
