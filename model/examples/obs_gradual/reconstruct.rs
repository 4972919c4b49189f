//! Block reconstruction after the OBS steps (env `FT_EPOCHS` > 0): each block's kept
//! weights fitted by Adam (`FT_LR`, default 1e-4) so that its output on the pruned
//! model's input approaches the dense block's output on the dense input (env
//! `FT_LOCAL`: on the pruned input instead), blocks in order, calibration windows in
//! batches of 4.

use candle_core::{Device, Tensor};
use model::{BlockWeight, ReconstructOptions, WeightOverlay};

use crate::{Ctx, Res, State};

pub fn options() -> Res<Option<ReconstructOptions>> {
    let epochs: usize = std::env::var("FT_EPOCHS").map_or(Ok(0), |v| v.parse())?;
    let lr: f64 = std::env::var("FT_LR").map_or(Ok(1e-4), |v| v.parse())?;
    Ok((epochs > 0).then_some(ReconstructOptions { epochs, lr }))
}

pub fn reconstruct(ctx: &Ctx, state: &mut State, opts: ReconstructOptions) -> Res<()> {
    let t = std::time::Instant::now();
    let local = std::env::var_os("FT_LOCAL").is_some();
    let mut dense = WeightOverlay::new();
    for l in &ctx.layers {
        let w = Tensor::from_slice(
            &ctx.dense[&l.name],
            (l.out_features, l.in_features),
            &Device::Cpu,
        )?;
        dense.insert(l.name.clone(), w);
    }
    let mut xd = Vec::new();
    for batch in ctx.calib.chunks(4) {
        let x = Tensor::from_vec(batch.concat(), (batch.len(), 256), &Device::Cpu)?;
        xd.push(ctx.m.embed_tokens(&x)?);
    }
    let mut xc = xd.clone();
    let (mut before, mut after) = (0.0, 0.0);
    for b in 0..ctx.m.num_blocks() {
        let source = if local { &xc } else { &xd };
        let yd = source
            .iter()
            .map(|x| ctx.m.forward_block(b, x, Some(&dense)))
            .collect::<Result<Vec<_>, _>>()?;
        let layers = ctx.m.block_layers(b)?;
        let weights = layers
            .iter()
            .map(|l| {
                let m = &state.masks[&l.name];
                Ok(BlockWeight {
                    name: l.name.clone(),
                    weight: Tensor::from_slice(
                        &state.w[&l.name],
                        (m.rows(), m.cols()),
                        &Device::Cpu,
                    )?,
                    keep: m.to_tensor(candle_core::DType::F32, &Device::Cpu)?,
                })
            })
            .collect::<Res<Vec<_>>>()?;
        let (fitted, stats) = ctx.m.reconstruct_block(b, &xc, &yd, &weights, opts)?;
        before += stats.loss_before;
        after += stats.loss_after;
        eprintln!(
            "  block {b}: error/token {:.4e} -> {:.4e} ({:.0} s)",
            stats.loss_before,
            stats.loss_after,
            t.elapsed().as_secs_f64()
        );
        let mut o = WeightOverlay::new();
        for (l, w) in layers.iter().zip(fitted) {
            state.w.insert(l.name.clone(), w.flatten_all()?.to_vec1()?);
            o.insert(l.name.clone(), w);
        }
        xc = xc
            .iter()
            .map(|x| ctx.m.forward_block(b, x, Some(&o)))
            .collect::<Result<Vec<_>, _>>()?;
        xd = if local { xd } else { yd };
    }
    eprintln!(
        "  reconstructed in {:.0} s, Σ mse {before:.4e} -> {after:.4e}",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
