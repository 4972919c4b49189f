//! Greedy generation with a KV cache equals greedy decoding that recomputes the
//! whole sequence each step; stop tokens, the context limit and overlays behave as
//! documented; concurrent generation on one model matches sequential.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use model::testing::{random_weights, tiny_config};
use model::{Architecture, Model, ModelError};

fn model(arch: Architecture, seed: u64) -> Model {
    let cfg = tiny_config(arch);
    Model::new(
        &cfg,
        &random_weights(&cfg, seed, &Device::Cpu).unwrap(),
        &Device::Cpu,
    )
    .unwrap()
}

/// Greedy decoding without a cache: full forward each step, argmax (lowest id on
/// ties) of the last position.
fn recompute(m: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let logits = m
            .forward(
                &Tensor::new(seq.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
            )
            .unwrap();
        let last = logits
            .get(0)
            .unwrap()
            .get(seq.len() - 1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut best = 0;
        for (i, v) in last.iter().enumerate() {
            if *v > last[best] {
                best = i;
            }
        }
        seq.push(best as u32);
    }
    seq[prompt.len()..].to_vec()
}

const PROMPT: [u32; 5] = [1, 20, 31, 7, 50];

#[test]
fn kv_cache_equals_recomputation_for_every_family() {
    for (i, arch) in [
        Architecture::Llama,
        Architecture::Mistral,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ]
    .into_iter()
    .enumerate()
    {
        let m = model(arch, 30 + i as u64);
        let cached = m.generate(&PROMPT, 24, &[]).unwrap();
        assert_eq!(cached.len(), 24);
        assert_eq!(cached, recompute(&m, &PROMPT, 24), "{arch:?}");
    }
}

#[test]
fn stop_token_ends_generation_and_is_not_returned() {
    let m = model(Architecture::Qwen3, 40);
    let full = m.generate(&PROMPT, 16, &[]).unwrap();
    let stop = full[3];
    let first = full.iter().position(|t| *t == stop).unwrap();
    let stopped = m.generate(&PROMPT, 16, &[stop]).unwrap();
    assert_eq!(stopped, full[..first].to_vec());
    assert!(m.generate(&PROMPT, 0, &[]).unwrap().is_empty());
}

#[test]
fn generation_stops_at_the_context_length() {
    let m = model(Architecture::Llama, 41);
    let context = m.config().max_position_embeddings;
    let prompt: Vec<u32> = (0..context as u32 - 3).map(|i| i % 64).collect();
    // 3 free positions: the token predicted from the last one is still returned.
    assert_eq!(m.generate(&prompt, 10, &[]).unwrap().len(), 4);
    let too_long: Vec<u32> = vec![1; context + 1];
    assert!(matches!(
        m.generate(&too_long, 1, &[]).unwrap_err(),
        ModelError::InvalidArgument(_)
    ));
    assert!(matches!(
        m.generate(&[], 1, &[]).unwrap_err(),
        ModelError::InvalidArgument(_)
    ));
    assert!(m.generate(&[64], 1, &[]).is_err());
}

#[test]
fn overlay_generation_equals_committed_and_threads_agree() {
    let m = Arc::new(model(Architecture::Qwen2, 42));
    let name = "model.layers.0.self_attn.o_proj";
    let mask = m.layer_weight(name).unwrap().ge(0.0).unwrap();
    let overlay = m.overlay_from_masks([(name, &mask)]).unwrap();
    let dense = m.generate(&PROMPT, 12, &[]).unwrap();
    let pruned = m.generate_with(&PROMPT, 12, &[], Some(&overlay)).unwrap();
    assert_ne!(dense, pruned, "the overlay should change the continuation");
    let concurrent: Vec<Vec<u32>> = std::thread::scope(|s| {
        let a = s.spawn(|| m.generate(&PROMPT, 12, &[]).unwrap());
        let b = s.spawn(|| m.generate_with(&PROMPT, 12, &[], Some(&overlay)).unwrap());
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    assert_eq!(concurrent, vec![dense.clone(), pruned.clone()]);
    m.set_mask(name, Some(&mask)).unwrap();
    assert_eq!(m.generate(&PROMPT, 12, &[]).unwrap(), pruned);
}

#[test]
fn batched_generation_equals_one_prompt_at_a_time() {
    for (i, arch) in [Architecture::Llama, Architecture::Qwen2]
        .into_iter()
        .enumerate()
    {
        let m = model(arch, 50 + i as u64);
        let prompts: Vec<Vec<u32>> = vec![
            PROMPT.to_vec(),
            vec![3, 9, 27, 17, 51],
            vec![60, 2, 2, 44, 8],
        ];
        let single: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| m.generate(p, 10, &[]).unwrap())
            .collect();
        assert_eq!(
            m.generate_batch_with(&prompts, 10, &[], None).unwrap(),
            single,
            "{arch:?}"
        );
        // Each row stops at its own stop token; the others go on.
        let stop = single[1][2];
        let want: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| m.generate(p, 10, &[stop]).unwrap())
            .collect();
        assert!(want.iter().any(|w| w.len() == 10), "{want:?}");
        assert_eq!(
            m.generate_batch_with(&prompts, 10, &[stop], None).unwrap(),
            want
        );
    }
    let m = model(Architecture::Llama, 52);
    assert!(m.generate_batch_with(&[], 4, &[], None).unwrap().is_empty());
    let zero = m
        .generate_batch_with(&[PROMPT.to_vec()], 0, &[], None)
        .unwrap();
    assert_eq!(zero, vec![Vec::<u32>::new()]);
    assert!(matches!(
        m.generate_batch_with(&[PROMPT.to_vec(), vec![1, 2]], 4, &[], None)
            .unwrap_err(),
        ModelError::InvalidArgument(_)
    ));
    assert!(m.generate_batch_with(&[vec![64; 5]], 1, &[], None).is_err());
}
