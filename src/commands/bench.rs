//! `secateur bench`: forward throughput with statistics off and on, forward+backward
//! (gradient importance) throughput, and peak resident memory relative to the f32
//! model size. Modes are interleaved within each repetition and medians are quoted,
//! because this machine is shared and noisy.

use model::bench::median;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;
use serde::Serialize;

use super::common;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// GGUF file or HF directory (default: the fetched SmolLM2-135M-Instruct).
    model: Option<PathBuf>,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Sequences per forward (`[batch, seq_len]` tokens): larger matmuls use more
    /// cores; the profiler batches its calibration samples the same way.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Run the `--batch` sequences as concurrent single-sequence forwards on the rayon
    /// pool instead of one batched forward (the evaluator's strategy).
    #[arg(long)]
    concurrent: bool,
    /// Timed repetitions per mode (after one warm-up).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Skip the forward+backward measurement.
    #[arg(long)]
    no_backward: bool,
    #[command(flatten)]
    device: common::DeviceArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    model: PathBuf,
    seq_len: usize,
    batch: usize,
    concurrent: bool,
    reps: usize,
    forward_tokens_per_s: f64,
    forward_stats_tokens_per_s: f64,
    stats_overhead_percent: f64,
    forward_backward_tokens_per_s: Option<f64>,
    f32_model_bytes: u64,
    peak_rss_bytes: Option<u64>,
    peak_rss_over_f32_model: Option<f64>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.seq_len < 2 || args.reps == 0 || args.batch == 0 {
        anyhow::bail!("--seq-len must be ≥ 2, --batch and --reps ≥ 1");
    }
    let device = args.device.resolve()?;
    let path = common::model_path(args.model)?;
    let ckpt = common::load(&path)?;
    let model = common::build(&ckpt, &device)?;
    let f32_model_bytes = 4 * ckpt.parameter_count() as u64;
    let ids = sample_tokens(&ckpt, args.seq_len * args.batch)?;
    let tokens =
        Tensor::new(ids.as_slice(), model.device())?.reshape((args.batch, args.seq_len))?;
    let samples: Vec<Vec<u32>> = ids.chunks(args.seq_len).map(<[u32]>::to_vec).collect();

    let time = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
        let start = Instant::now();
        f()?;
        // A GPU runs the forward asynchronously: time the work, not its launch.
        device::settle(&device).map_err(anyhow::Error::msg)?;
        Ok(start.elapsed().as_secs_f64())
    };
    let forward = || -> Result<()> {
        if args.concurrent {
            use rayon::prelude::*;
            (0..args.batch).into_par_iter().try_for_each(|b| {
                model.forward(&tokens.narrow(0, b, 1)?)?;
                Ok::<_, anyhow::Error>(())
            })
        } else {
            model.forward(&tokens)?;
            Ok(())
        }
    };
    let plain = || -> Result<()> {
        model.set_stats_enabled(false);
        forward()
    };
    let with_stats = || -> Result<()> {
        model.set_stats_enabled(true);
        forward()?;
        model.set_stats_enabled(false);
        model.reset_stats();
        Ok(())
    };
    let backward = || -> Result<()> {
        model.gradient_importance(&samples)?;
        Ok(())
    };
    // Warm-up, then interleave the modes so drift on a shared machine hits all alike.
    plain()?;
    with_stats()?;
    let (mut t_plain, mut t_stats, mut t_back) = (vec![], vec![], vec![]);
    let bar = common::progress(args.reps as u64, "bench", args.json);
    for _ in 0..args.reps {
        t_plain.push(time(&plain)?);
        t_stats.push(time(&with_stats)?);
        if !args.no_backward {
            t_back.push(time(&backward)?);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = (args.seq_len * args.batch) as f64;
    let (m_plain, m_stats) = (median(&mut t_plain), median(&mut t_stats));
    let peak = common::peak_rss_bytes();
    let report = Report {
        model: path,
        seq_len: args.seq_len,
        batch: args.batch,
        concurrent: args.concurrent,
        reps: args.reps,
        forward_tokens_per_s: n / m_plain,
        forward_stats_tokens_per_s: n / m_stats,
        stats_overhead_percent: 100.0 * (m_stats / m_plain - 1.0),
        forward_backward_tokens_per_s: (!t_back.is_empty()).then(|| n / median(&mut t_back)),
        f32_model_bytes,
        peak_rss_bytes: peak,
        peak_rss_over_f32_model: peak.map(|p| p as f64 / f32_model_bytes as f64),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} sequence(s) of {} tokens per forward{}, median of {} repetitions",
        report.batch,
        report.seq_len,
        if report.concurrent {
            " (concurrent)"
        } else {
            ""
        },
        report.reps
    );
    println!(
        "forward, stats off   {:>9.1} tokens/s",
        report.forward_tokens_per_s
    );
    println!(
        "forward, stats on    {:>9.1} tokens/s  (overhead {:+.1} %)",
        report.forward_stats_tokens_per_s, report.stats_overhead_percent
    );
    if let Some(fb) = report.forward_backward_tokens_per_s {
        println!("forward+backward     {fb:>9.1} tokens/s");
    }
    match (report.peak_rss_bytes, report.peak_rss_over_f32_model) {
        (Some(p), Some(r)) => println!(
            "peak RSS             {:>9.1} MiB  ({r:.2}× the f32 model, {:.1} MiB)",
            p as f64 / 1048576.0,
            report.f32_model_bytes as f64 / 1048576.0
        ),
        _ => println!("peak RSS             unavailable on this platform"),
    }
    Ok(())
}

/// Real text when the default data is present (so the cost matches real use),
/// otherwise deterministic synthetic ids.
fn sample_tokens(ckpt: &model::Checkpoint, len: usize) -> Result<Vec<u32>> {
    let source = model::text::TextSource::parse(config::assets::PPL_TEXT_SPEC);
    if let Ok(texts) = source.read(Some(50)) {
        let ids = common::encode(ckpt, &texts.join("\n\n"))?;
        if ids.len() >= len {
            return Ok(ids[..len].to_vec());
        }
    }
    let vocab = ckpt.config.vocab_size as u64;
    Ok((0..len as u64)
        .map(|i| ((i * 7919 + 13) % vocab) as u32)
        .collect())
}
