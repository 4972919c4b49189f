//! Forward-time cost of lazily masked overlays (`WeightOverlay::insert_mask`: the keep
//! bits are applied to the stored weight per call) against the same candidate held as
//! full weight copies (`WeightOverlay::insert`), and against the committed model with
//! no overlay. Every prunable layer is in the overlay, as with the heuristic planner,
//! whose plans touch (nearly) every layer. The modes are interleaved within each
//! repetition and medians are quoted, because the machine may be shared and noisy.
//!
//! `cargo run --example overlay_overhead -p model -- [MODEL] [SEQ] [REPS]` (the dev
//! profile builds `model` and `kernels` at opt-level 3)
//! (MODEL: GGUF file or HF directory; default the fetched SmolLM2-135M-Instruct).

use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use kernels::Mask;
use model::bench::median;
use model::{Model, WeightOverlay};

/// Every `period`-th weight (offset `salt`) pruned, the rest kept.
fn every_nth(rows: usize, cols: usize, period: usize, salt: usize) -> Mask {
    let kept: Vec<bool> = (0..rows * cols)
        .map(|i| !(i + salt).is_multiple_of(period))
        .collect();
    Mask::from_bools(rows, cols, &kept).expect("rows x cols booleans")
}

fn and(a: &Mask, b: &Mask) -> Mask {
    let words = a
        .words()
        .iter()
        .zip(b.words())
        .map(|(x, y)| x & y)
        .collect();
    Mask::from_words(a.rows(), a.cols(), words).expect("same shape")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "assets/models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let seq: usize = args.next().map_or(Ok(256), |v| v.parse())?;
    let reps: usize = args.next().map_or(Ok(7), |v| v.parse())?;
    let ckpt = model::load_checkpoint(std::path::Path::new(&path))?;
    let vocab = ckpt.config.vocab_size as u32;
    let m = Model::new_owned(&ckpt.config, ckpt.tensors, &Device::Cpu)?;
    let layers = m.prunable_layers();
    // Committed state: 30 % pruned in place; candidate: 10 % more of what is left.
    let mut lazy = WeightOverlay::new();
    let mut full = WeightOverlay::new();
    let mut candidates = Vec::new();
    for l in &layers {
        let committed = every_nth(l.out_features, l.in_features, 3, 0);
        m.prune_in_place(&l.name, &committed)?;
        let keep = Arc::new(and(
            &committed,
            &every_nth(l.out_features, l.in_features, 10, 1),
        ));
        full.insert(l.name.clone(), keep.apply(&m.layer_weight(&l.name)?)?);
        lazy.insert_mask(l.name.clone(), keep.clone());
        candidates.push((l.name.clone(), keep));
    }
    let ids: Vec<u32> = (0..seq as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let tokens = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let time = |f: &dyn Fn() -> Result<(), Box<dyn std::error::Error>>| {
        let start = Instant::now();
        f().map(|()| start.elapsed().as_secs_f64())
    };
    let plain = || -> Result<(), Box<dyn std::error::Error>> {
        m.forward(&tokens)?;
        Ok(())
    };
    let with_full = || -> Result<(), Box<dyn std::error::Error>> {
        m.forward_with(&tokens, Some(&full))?;
        Ok(())
    };
    let with_lazy = || -> Result<(), Box<dyn std::error::Error>> {
        m.forward_with(&tokens, Some(&lazy))?;
        Ok(())
    };
    // The per-call work a lazy overlay adds: building every layer's masked weight.
    let apply_fast = || -> Result<(), Box<dyn std::error::Error>> {
        for (name, keep) in &candidates {
            keep.apply_fast(&m.layer_weight(name)?)?;
        }
        Ok(())
    };
    let apply_slow = || -> Result<(), Box<dyn std::error::Error>> {
        for (name, keep) in &candidates {
            keep.apply(&m.layer_weight(name)?)?;
        }
        Ok(())
    };
    let same = (m.forward_with(&tokens, Some(&full))? - m.forward_with(&tokens, Some(&lazy))?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    plain()?;
    with_full()?;
    with_lazy()?;
    let mut t: [Vec<f64>; 5] = Default::default();
    for _ in 0..reps {
        t[0].push(time(&plain)?);
        t[1].push(time(&with_full)?);
        t[2].push(time(&with_lazy)?);
        t[3].push(time(&apply_fast)?);
        t[4].push(time(&apply_slow)?);
    }
    let [p, f, l, af, asl] = t.map(|mut v| median(&mut v));
    println!(
        "{} layers in the overlay, {seq} tokens, median of {reps} interleaved repetitions",
        layers.len()
    );
    println!("committed model, no overlay   {:>8.1} ms", p * 1e3);
    println!("full-weight overlay           {:>8.1} ms", f * 1e3);
    println!(
        "lazy mask overlay             {:>8.1} ms  ({:.3}x full-weight, {:.3}x no overlay)",
        l * 1e3,
        l / f,
        l / p
    );
    println!(
        "masking every layer once: apply_fast {:.1} ms, apply {:.1} ms",
        af * 1e3,
        asl * 1e3
    );
    println!("max |logit difference| lazy vs full: {same:e}");
    Ok(())
}
