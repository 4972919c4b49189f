//! The immutable setup every tensor-handling actor shares: the model (`Arc<Model>`,
//! `Send + Sync`), its prunable layers, and the tokenised calibration and held-out
//! samples, and the knowledge probe's questions when it is on. Built once per process
//! before the actors start; no actor mutates it except through the model's own pruning
//! API (only the Executor commits, pruning in place).

use std::sync::Arc;

use candle_core::Tensor;
use config::Config;
use model::text::TextSource;
use model::{LayerInfo, Model};

use crate::probe_set::ProbeSet;

/// Errors while preparing the engine, as readable strings (they end the run).
pub type Error = String;

/// Text → token ids with the model's tokenizer (no special tokens).
pub type Encoder = Box<dyn Fn(&str) -> Result<Vec<u32>, Error> + Send + Sync>;

/// Token sequences: calibration pool and held-out slice.
pub type Samples = (Vec<Vec<u32>>, Vec<Vec<u32>>);

/// Shared, read-only run inputs.
pub struct Engine {
    pub model: Arc<Model>,
    pub layers: Vec<LayerInfo>,
    /// Calibration pool: `calibration.samples` sequences of `calibration.seq_len` tokens.
    pub calib: Vec<Vec<u32>>,
    /// Held-out slice for the in-loop PPL: `evaluation.ppl_samples` sequences of
    /// `evaluation.ppl_seq_len` tokens, taken right after the calibration pool.
    pub eval: Vec<Vec<u32>>,
    /// Size in bytes of the model's weights as f32 (for the report's ratios).
    pub f32_bytes: u64,
    /// The model's tokenizer, without special tokens (texts are scored as they are).
    pub encode: Encoder,
    /// The in-loop knowledge probe, when `evaluation.probe.every > 0`.
    pub probe: Option<ProbeSet>,
    /// The dense model's block outputs on the calibration pool, when
    /// `pruning.reconstruct` is on: `[block][batch]`, each `[batch, seq, hidden]`,
    /// batches of [`model::FORWARD_BATCH`] windows. Computed before any pruning (a
    /// resumed run reloads the dense checkpoint first), so the fit can aim at them
    /// after the dense weights are gone.
    pub dense_outputs: Option<Vec<Vec<Tensor>>>,
}

impl Engine {
    /// Load the model of `cfg` and cut the calibration source into samples.
    /// Heavy (reads and dequantises the checkpoint): call from a blocking thread.
    pub fn load(cfg: &Config) -> Result<Self, Error> {
        // The probe's file is read first: a missing or bad one fails before the
        // (slow) checkpoint load.
        let probe_cfg = &cfg.evaluation.probe;
        let questions = if probe_cfg.every > 0 {
            Some(ProbeSet::read_questions(probe_cfg)?)
        } else {
            None
        };
        let ckpt = model::load_checkpoint(&cfg.model.path)
            .map_err(|e| format!("{}: {e}", cfg.model.path.display()))?;
        let f32_bytes = ckpt.parameter_count() as u64 * 4;
        // What the probe and the knowledge calibration need from the checkpoint, taken
        // before the tensors move.
        let knowledge_count = cfg.calibration.knowledge.windows(cfg.calibration.samples);
        let template = if questions.is_some() || knowledge_count > 0 {
            model::ChatTemplate::for_checkpoint(&ckpt)
                .map_err(|e| format!("{}: chat template: {e}", cfg.model.path.display()))?
        } else {
            None
        };
        let stops = eval::stop_tokens(&ckpt);
        let tokenizer = Arc::new(ckpt.tokenizer);
        let knowledge = knowledge_windows(
            cfg,
            questions.as_deref(),
            template.as_ref(),
            tokenizer.as_ref(),
        )?;
        // The model takes the tensors by value: no one else holds the dense weights,
        // so pruning in place (the Executor's commits) really releases them.
        let device = device::resolve(cfg.model.device)?;
        let dtype = device::weight_dtype(&device);
        let model = Model::new_owned_with_dtype(&ckpt.config, ckpt.tensors, &device, dtype)
            .map_err(|e| format!("{}: building the model: {e}", cfg.model.path.display()))?;
        // The weights were uploaded on this thread's stream; the actors read them from
        // their own threads.
        device::settle(&device)?;
        let probe = match questions {
            Some(q) => {
                let codec: Arc<dyn eval::Codec> = tokenizer.clone();
                Some(ProbeSet::new(probe_cfg, q, codec, template, stops)?)
            }
            None => None,
        };
        let encode = move |text: &str| -> Result<Vec<u32>, Error> {
            tokenizer
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| format!("tokenizer: {e}"))
        };
        let (calib, eval) = samples(cfg, &encode, knowledge)?;
        let layers = model.prunable_layers();
        let reconstruct = cfg.pruning.reconstruct.enabled(cfg.pruning.repair);
        let dense_outputs = reconstruct
            .then(|| dense_block_outputs(&model, &calib))
            .transpose()?;
        Ok(Self {
            model: Arc::new(model),
            layers,
            calib,
            eval,
            f32_bytes,
            encode: Box::new(encode),
            probe,
            dense_outputs,
        })
    }

    /// Weights per prunable layer, in model order.
    pub fn params(&self) -> Vec<u64> {
        self.layers
            .iter()
            .map(|l| (l.out_features * l.in_features) as u64)
            .collect()
    }
}

/// `samples` (windows of one length) in batches of [`model::FORWARD_BATCH`], embedded:
/// the first block's inputs `[n, seq, hidden]`, on the model's device.
pub(crate) fn embedded_batches(model: &Model, samples: &[Vec<u32>]) -> model::Result<Vec<Tensor>> {
    samples
        .chunks(model::FORWARD_BATCH)
        .map(|batch| {
            let len = batch.first().map_or(0, Vec::len);
            let ids = Tensor::from_vec(batch.concat(), (batch.len(), len), model.device())?;
            model.embed_tokens(&ids)
        })
        .collect()
}

/// Every block's output of the (still dense) `model` on `calib`, in batches of
/// [`model::FORWARD_BATCH`] windows: `[block][batch]`.
fn dense_block_outputs(model: &Model, calib: &[Vec<u32>]) -> Result<Vec<Vec<Tensor>>, Error> {
    let err = |e: &dyn std::fmt::Display| format!("dense block outputs for the block fit: {e}");
    let mut hidden = embedded_batches(model, calib).map_err(|e| err(&e))?;
    let mut outputs = Vec::with_capacity(model.num_blocks());
    for b in 0..model.num_blocks() {
        hidden = hidden
            .iter()
            .map(|h| model.forward_block(b, h, None))
            .collect::<Result<_, _>>()
            .map_err(|e| err(&e))?;
        outputs.push(hidden.clone());
    }
    let bytes: usize = outputs
        .iter()
        .flatten()
        .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        .sum();
    tracing::info!(bytes, "dense block outputs for the block fit");
    Ok(outputs)
}

/// The `[calibration.knowledge]` windows of `cfg` for a model with `template` and
/// `codec`, for callers that have not read the probe's questions (`secateur compare`
/// gives its baselines the same windows as the loop).
pub fn knowledge_calibration(
    cfg: &Config,
    template: Option<&model::ChatTemplate>,
    codec: &dyn eval::Codec,
) -> Result<Vec<Vec<u32>>, Error> {
    let c = &cfg.calibration;
    if c.knowledge.windows(c.samples) == 0 {
        return Ok(Vec::new());
    }
    let asked = (cfg.evaluation.probe.every > 0)
        .then(|| ProbeSet::read_questions(&cfg.evaluation.probe))
        .transpose()?;
    knowledge_windows(cfg, asked.as_deref(), template, codec)
}

/// The knowledge windows: answered questions of `calibration.knowledge.path`, less
/// those the in-loop probe asks (`asked`), as the chat template writes them.
fn knowledge_windows(
    cfg: &Config,
    asked: Option<&[eval::data::QaItem]>,
    template: Option<&model::ChatTemplate>,
    codec: &dyn eval::Codec,
) -> Result<Vec<Vec<u32>>, Error> {
    let c = &cfg.calibration;
    let count = c.knowledge.windows(c.samples);
    if count == 0 {
        return Ok(Vec::new());
    }
    let path = &c.knowledge.path;
    let named = |e: &dyn std::fmt::Display| format!("calibration.knowledge.path: {e}");
    let mut items = eval::data::read_qa(path).map_err(|e| named(&e))?;
    if let Some(asked) = asked {
        let asked: std::collections::HashSet<&str> =
            asked.iter().map(|q| q.question.as_str()).collect();
        items.retain(|q| !asked.contains(q.question.as_str()));
    }
    eval::knowledge::calibration_windows(&items, template, codec, c.seq_len, count).map_err(|e| {
        named(&format!(
            "{}: {e} (after leaving out the probe's questions)",
            path.display()
        ))
    })
}

/// Deterministic sample selection: the source's texts in file order, joined by blank
/// lines and tokenised, cut into consecutive windows — `calibration.offset` windows
/// skipped, then the calibration pool, then the held-out slice. With `knowledge`
/// windows the pool takes that many fewer windows of the source and the knowledge ones
/// are spread through it; the held-out slice stays where it was. Reads more texts
/// (doubling) until there are enough tokens.
pub fn samples(
    cfg: &Config,
    encode: &dyn Fn(&str) -> Result<Vec<u32>, Error>,
    knowledge: Vec<Vec<u32>>,
) -> Result<Samples, Error> {
    let c = &cfg.calibration;
    let e = &cfg.evaluation;
    let skip = c.offset * c.seq_len;
    let need = skip + c.samples * c.seq_len + e.ppl_samples * e.ppl_seq_len;
    let source = TextSource {
        path: c.path.clone(),
        field: c.field.clone(),
    };
    let mut limit = (c.offset + c.samples + e.ppl_samples).max(1);
    loop {
        let texts = source
            .read(Some(limit))
            .map_err(|err| format!("calibration source: {err}"))?;
        let tokens = encode(&texts.join("\n\n"))?;
        if tokens.len() >= need {
            let (cal, rest) = tokens[skip..].split_at(c.samples * c.seq_len);
            let text_windows = c.samples.saturating_sub(knowledge.len());
            let calib = eval::knowledge::interleave(
                cal.chunks(c.seq_len)
                    .take(text_windows)
                    .map(<[u32]>::to_vec)
                    .collect(),
                knowledge,
            );
            let eval = rest[..e.ppl_samples * e.ppl_seq_len]
                .chunks(e.ppl_seq_len)
                .map(<[u32]>::to_vec)
                .collect();
            return Ok((calib, eval));
        }
        if texts.len() < limit {
            return Err(format!(
                "calibration source {}: {} tokens in all its texts, need {need} \
((calibration.offset + samples) x seq_len + evaluation.ppl_samples x ppl_seq_len)",
                c.path.display(),
                tokens.len()
            ));
        }
        limit *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts `t0 … t99`, each one word, encoded as their number: the token stream is
    /// the text order, so windows can be checked by value.
    fn setup(dir: &std::path::Path) -> Config {
        let path = dir.join("texts.jsonl");
        let lines: Vec<String> = (0..100).map(|i| format!("{{\"text\": \"{i}\"}}")).collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        let mut cfg = Config::default();
        cfg.calibration.path = path;
        cfg.calibration.field = Some("text".into());
        cfg.calibration.samples = 3;
        cfg.calibration.seq_len = 2;
        cfg.evaluation.ppl_samples = 2;
        cfg.evaluation.ppl_seq_len = 2;
        cfg
    }

    fn encode(text: &str) -> Result<Vec<u32>, Error> {
        Ok(text
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect())
    }

    #[test]
    fn calibration_offset_skips_whole_windows_and_the_held_out_slice_follows() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = setup(dir.path());
        let (calib, eval) = samples(&cfg, &encode, Vec::new()).unwrap();
        assert_eq!(calib, vec![vec![0, 1], vec![2, 3], vec![4, 5]]);
        assert_eq!(eval, vec![vec![6, 7], vec![8, 9]]);
        cfg.calibration.offset = 3;
        let (calib, eval) = samples(&cfg, &encode, Vec::new()).unwrap();
        assert_eq!(calib, vec![vec![6, 7], vec![8, 9], vec![10, 11]]);
        assert_eq!(eval, vec![vec![12, 13], vec![14, 15]]);
        // A knowledge window replaces the pool's last text window; the held-out slice
        // does not move.
        let (calib, eval) = samples(&cfg, &encode, vec![vec![99, 99]]).unwrap();
        assert_eq!(calib, vec![vec![99, 99], vec![6, 7], vec![8, 9]]);
        assert_eq!(eval, vec![vec![12, 13], vec![14, 15]]);
        // More than the source holds: an error that names the offset.
        cfg.calibration.offset = 60;
        let err = samples(&cfg, &encode, Vec::new()).unwrap_err();
        assert!(err.contains("calibration.offset"), "{err}");
    }

    /// Numbers of the questions (`q<n>?`) in a decoded window.
    fn question_numbers(text: &str) -> Vec<usize> {
        text.split('q')
            .skip(1)
            .filter_map(|part| part.split_once('?'))
            .filter_map(|(n, _)| n.parse().ok())
            .collect()
    }

    #[test]
    fn knowledge_windows_leave_out_what_the_probe_asks() {
        use eval::Codec;
        let dir = tempfile::tempdir().unwrap();
        let facts = dir.path().join("facts.jsonl");
        let lines: Vec<String> = (0..40)
            .map(|i| format!("{{\"question\": \"q{i}?\", \"answer\": [\"a{i}\"]}}"))
            .collect();
        std::fs::write(&facts, lines.join("\n")).unwrap();
        let mut cfg = Config::default();
        cfg.calibration.samples = 4;
        cfg.calibration.seq_len = 64;
        cfg.calibration.knowledge.share = 0.5;
        cfg.calibration.knowledge.path = facts.clone();
        cfg.evaluation.probe.path = facts.clone();
        // The probe asks every other question (0, 2, 4, …).
        cfg.evaluation.probe.questions = 20;
        let codec = eval::CharCodec::tiny();
        let windows = knowledge_calibration(&cfg, None, &codec).unwrap();
        assert_eq!(windows.len(), 2);
        let mut seen = Vec::new();
        for w in &windows {
            assert_eq!(w.len(), 64);
            seen.extend(question_numbers(&codec.decode(w).unwrap()));
        }
        assert!(!seen.is_empty());
        assert!(
            seen.iter().all(|n| n % 2 == 1),
            "probe questions leaked: {seen:?}"
        );
        // Probe off: every question may be used.
        cfg.evaluation.probe.every = 0;
        let windows = knowledge_calibration(&cfg, None, &codec).unwrap();
        let first = question_numbers(&codec.decode(&windows[0]).unwrap());
        assert_eq!(first.first(), Some(&0));
        // Off: no windows, the file is not read.
        cfg.calibration.knowledge.share = 0.0;
        cfg.calibration.knowledge.path = dir.path().join("missing.jsonl");
        assert!(knowledge_calibration(&cfg, None, &codec)
            .unwrap()
            .is_empty());
        // Too few questions for the windows: an error naming the field and the file.
        cfg.calibration.knowledge.share = 0.5;
        cfg.calibration.knowledge.path = facts;
        cfg.calibration.seq_len = 4096;
        let err = knowledge_calibration(&cfg, None, &codec).unwrap_err();
        assert!(err.starts_with("calibration.knowledge.path: "), "{err}");
        assert!(err.contains("facts.jsonl"), "{err}");
    }
}
