//! The final dense PPL is measured before anything is pruned (the model is pruned in
//! place, so the dense weights are gone by the end) and stored with the run: a resumed
//! run reads it back, and a run stored without it measures it on the freshly loaded,
//! still-dense model — never on the pruned one.

use std::sync::Arc;

use actors::store::{record_dense_final, TextPpl};
use actors::testing::{fixture_config, write_fixture, Fixture};
use actors::{run_pruning, ProgressEvent, RunControl, RunOptions, RunOutput};
use candle_core::Device;
use kernels::{Mask, MaskDelta};
use model::text::TextSource;
use model::{Model, Perplexity};
use protocol::{RunState, StopReason};

/// A model of the fixture, dense, or pruned in place to `masks` (deltas from all-kept).
fn fixture_model(fx: &Fixture, masks: &[protocol::LayerDelta]) -> Model {
    let ck = model::load_checkpoint(&fx.model_dir).unwrap();
    let m = Model::new(&ck.config, &ck.tensors, &Device::Cpu).unwrap();
    for d in masks {
        let info = m
            .prunable_layers()
            .into_iter()
            .find(|l| l.name == d.layer)
            .unwrap();
        let mut keep = Mask::ones(info.out_features, info.in_features);
        MaskDelta::from_bytes(&d.bytes)
            .unwrap()
            .apply_to(&mut keep)
            .unwrap();
        m.prune_in_place(&d.layer, &keep).unwrap();
    }
    m
}

/// PPL of `m` on the config's final text, computed here independently of the run.
fn final_text_ppl(fx: &Fixture, cfg: &config::Config, m: &Model) -> Perplexity {
    let f = &cfg.evaluation.final_ppl;
    let texts = TextSource {
        path: f.path.clone(),
        field: f.field.clone(),
    }
    .read((f.max_texts > 0).then_some(f.max_texts))
    .unwrap();
    let ck = model::load_checkpoint(&fx.model_dir).unwrap();
    let ids = ck
        .tokenizer
        .encode(texts.join("\n\n"), false)
        .unwrap()
        .get_ids()
        .to_vec();
    let parts: Vec<Perplexity> = ids
        .chunks(f.window)
        .filter(|c| c.len() >= 2)
        .map(|c| m.perplexity_with(c, f.window, None).unwrap())
        .collect();
    Perplexity::combine(&parts).unwrap()
}

/// Run `id` and suspend it (as a shutdown does) once iteration 1 is stored.
async fn run_one_iteration(cfg: &config::Config, id: &str, final_eval: bool) -> RunOutput {
    let control = RunControl::default();
    let suspend = control.clone();
    let out = run_pruning(
        cfg.clone(),
        RunOptions {
            run_id: Some(id.into()),
            final_eval,
            control,
            progress: Some(Arc::new(move |e: &ProgressEvent| {
                if matches!(e, ProgressEvent::Iteration { .. }) {
                    suspend.suspend();
                }
            })),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(out.summary.stop_reason, StopReason::Interrupted);
    assert_eq!(out.summary.records.len(), 1);
    assert!(out.final_eval.is_none(), "not finished: no final PPL");
    out
}

async fn resume(cfg: &config::Config, id: &str) -> RunOutput {
    let out = run_pruning(
        cfg.clone(),
        RunOptions {
            resume: Some(id.into()),
            final_eval: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(out.summary.state, RunState::Finished, "{:?}", out.summary);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dense_final_ppl_is_measured_before_pruning_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), 7, 24, 48).unwrap();
    let cfg = fixture_config(&fx, &dir.path().join("runs"));
    let dense = final_text_ppl(&fx, &cfg, &fixture_model(&fx, &[]));

    // A run stored without the value (as older versions did, or without a final
    // evaluation), interrupted after iteration 1 and resumed with a final evaluation:
    // the value is measured on the still-dense model before the stored masks apply.
    let first = run_one_iteration(&cfg, "old", false).await;
    assert!(first.summary.final_sparsity > 0.0);
    let db = first.folder.db_dir();
    assert_eq!(
        actors::checkpointer::load_run(&db, "old")
            .unwrap()
            .dense_final,
        None
    );
    let out = resume(&cfg, "old").await;
    let fe = out.final_eval.clone().unwrap();
    assert!(
        (fe.dense_ppl - dense.ppl).abs() <= 1e-9 * dense.ppl,
        "{} vs {}",
        fe.dense_ppl,
        dense.ppl
    );
    assert_eq!(fe.tokens_scored, dense.tokens_scored);
    let pruned = final_text_ppl(&fx, &cfg, &fixture_model(&fx, &out.masks));
    assert!((fe.pruned_ppl - pruned.ppl).abs() <= 1e-9 * pruned.ppl);
    assert!(fe.pruned_ppl > fe.dense_ppl, "{fe:?}");
    let stored = actors::checkpointer::load_run(&db, "old")
        .unwrap()
        .dense_final
        .unwrap();
    assert_eq!(stored.ppl, fe.dense_ppl);
    assert_eq!(stored.tokens_scored, dense.tokens_scored);

    // A new run with a final evaluation stores the value before iteration 1, and a
    // resume reads it back instead of measuring again: replace it and see it come out.
    let first = run_one_iteration(&cfg, "new", true).await;
    let db = first.folder.db_dir();
    let stored = actors::checkpointer::load_run(&db, "new")
        .unwrap()
        .dense_final
        .unwrap();
    assert!((stored.ppl - dense.ppl).abs() <= 1e-9 * dense.ppl);
    let marker = TextPpl {
        ppl: 1234.5,
        ..stored
    };
    record_dense_final(&db, "new", &marker).unwrap();
    let fe = resume(&cfg, "new").await.final_eval.unwrap();
    assert_eq!(fe.dense_ppl, 1234.5);
}
