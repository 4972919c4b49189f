use super::*;
use proptest::prelude::*;
use protocol::Plan;

const LAYERS: [&str; 3] = [
    "model.layers.0.mlp.down_proj",
    "model.layers.0.mlp.up_proj",
    "model.layers.1.mlp.down_proj",
];

fn grammar() -> PlanGrammar {
    PlanGrammar::new(LAYERS.iter().map(|s| s.to_string()).collect(), 40, 2)
}

fn ascii_vocab() -> Vocab {
    let mut pieces: Vec<Option<String>> =
        (32u8..127).map(|b| Some((b as char).to_string())).collect();
    for p in [
        "{\"reasoning\":\"",
        "model",
        ".layers.",
        "mlp",
        "_proj",
        "\":",
        ",\"",
        "0.",
        "05",
        "true",
        " the",
        "\u{FFFD}",
    ] {
        pieces.push(Some(p.to_string()));
    }
    pieces.push(None);
    Vocab::new(pieces)
}

/// The ASCII characters plus every 2–7 character slice of two valid plans (so many
/// tokens span grammar phases), some junk, duplicates, an empty piece and a special
/// token: about 900 tokens, enough that the first stage often fails and the trie
/// walk decides.
fn rich_vocab() -> Vocab {
    let mut pieces: Vec<Option<String>> =
        (32u8..127).map(|b| Some((b as char).to_string())).collect();
    let plans = [
        r#"{"reasoning":"prune the safest layers","stop_pruning":false,"layer_decisions":[{"layer":"model.layers.0.mlp.down_proj","delta":0.05},{"layer":"model.layers.1.mlp.down_proj","delta":0.1234}]}"#,
        r#"{"reasoning":"","stop_pruning":true,"layer_decisions":[{"layer":"model.layers.0.mlp.up_proj","delta":0.15}]}"#,
    ];
    for plan in plans {
        let chars: Vec<char> = plan.chars().collect();
        for len in 2..=7 {
            for s in (0..chars.len().saturating_sub(len)).step_by(len - 1) {
                pieces.push(Some(chars[s..s + len].iter().collect()));
            }
        }
    }
    for junk in ["\n", " {", "é", "\"\\", "0.2", "\u{FFFD}x", "", "model"] {
        pieces.push(Some(junk.to_string()));
    }
    pieces.push(None);
    Vocab::new(pieces)
}

/// The reference: feed every token's text to the grammar, keep the best allowed one.
fn brute_force(
    v: &Vocab,
    g: &PlanGrammar,
    s: &GrammarState,
    scores: &[f64],
) -> Option<(u32, GrammarState)> {
    let mut best: Option<(u32, GrammarState)> = None;
    for (i, &score) in scores.iter().enumerate() {
        if score == f64::NEG_INFINITY {
            continue;
        }
        let Some(next) = v.piece(i as u32).and_then(|p| g.feed(s, p)) else {
            continue;
        };
        if best
            .as_ref()
            .is_none_or(|(b, _)| score > scores[*b as usize])
        {
            best = Some((i as u32, next));
        }
    }
    best
}

fn random_logits(n: usize, noise: &mut u64, ties: bool) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let x = unit(noise) * 20.0;
            // Coarse values make many exact ties, which the order must break by id.
            (if ties { x.round() } else { x }) as f32
        })
        .collect()
}

/// Decode with arbitrary logits until the grammar says done.
fn decode(v: &Vocab, logits_seed: u64, temperature: f64) -> String {
    let g = grammar();
    let mut state = g.start();
    let mut rng = logits_seed;
    let mut noise = logits_seed ^ 0xABCD;
    let mut out = String::new();
    for _ in 0..2000 {
        if state.is_done() {
            return out;
        }
        let logits = random_logits(v.len(), &mut noise, false);
        let (id, next) = v
            .pick(&g, &state, &logits, temperature, &mut rng)
            .expect("a token is always allowed");
        out.push_str(v.piece(id).unwrap());
        state = next;
    }
    panic!("did not terminate: {out}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn any_logits_decode_to_a_valid_plan(seed in any::<u64>(), hot in any::<bool>(), rich in any::<bool>()) {
        let v = if rich { rich_vocab() } else { ascii_vocab() };
        let text = decode(&v, seed, if hot { 1.0 } else { 0.0 });
        let plan = Plan::from_json(&text).unwrap();
        prop_assert!(plan.validate(&LAYERS).is_empty(), "{}", text);
    }

    /// At every step of random decodings, the two-stage pick equals a scan of the whole
    /// vocabulary, for greedy and sampled scores, with and without tied logits; and the
    /// trie walk enumerates exactly the tokens the scan allows, with the same states.
    #[test]
    fn fast_pick_equals_brute_force(seed in any::<u64>(), temperature in prop_oneof![Just(0.0), 0.1f64..2.0], ties in any::<bool>()) {
        let (g, v) = (grammar(), rich_vocab());
        let mut state = g.start();
        let (mut rng, mut noise) = (seed, seed ^ 0x5EED);
        while !state.is_done() {
            let logits = random_logits(v.len(), &mut noise, ties);
            let scores = v.scores(&logits, temperature, &mut rng);
            let fast = v.best_allowed(&g, &state, &scores);
            let slow = brute_force(&v, &g, &state, &scores);
            prop_assert_eq!(&fast, &slow);
            let mut allowed = v.allowed(&g, &state);
            allowed.sort_by_key(|(id, _)| *id);
            let scan: Vec<(u32, GrammarState)> = (0..v.len() as u32)
                .filter_map(|i| v.piece(i).and_then(|p| g.feed(&state, p)).map(|s| (i, s)))
                .collect();
            prop_assert_eq!(&allowed, &scan);
            state = fast.unwrap().1;
        }
    }
}

#[test]
fn pick_takes_the_best_allowed_token() {
    let (g, v) = (grammar(), ascii_vocab());
    let mut logits = vec![0.0f32; v.len()];
    let open = v.len() - 13; // the `{"reasoning":"` piece
    let x = (b'x' - 32) as usize;
    logits[x] = 9.0; // most likely but not allowed first
    logits[open] = 5.0;
    logits[(b'{' - 32) as usize] = 4.0;
    let mut rng = 1;
    let (id, s) = v.pick(&g, &g.start(), &logits, 0.0, &mut rng).unwrap();
    assert_eq!(id as usize, open);
    assert_eq!(Some(&s), g.feed(&g.start(), "{\"reasoning\":\"").as_ref());
    // Inside the reasoning `x` is allowed and wins.
    assert_eq!(
        v.pick(&g, &s, &logits, 0.0, &mut rng).unwrap().0 as usize,
        x
    );
    // Special tokens and broken UTF-8 pieces are never chosen.
    assert!(v.piece(v.len() as u32 - 1).is_none() && v.piece(v.len() as u32 - 2).is_none());
}

#[test]
fn trie_walk_finds_an_allowed_token_far_down_the_ranking() {
    let (g, v) = (grammar(), ascii_vocab());
    // Every token outranks `{` except the two that are allowed first; the first stage
    // sees only disallowed ones, so the answer must come from the trie.
    let open = v.len() - 13;
    let brace = (b'{' - 32) as usize;
    let mut logits: Vec<f32> = (0..v.len()).map(|i| 100.0 - i as f32 * 0.01).collect();
    logits[open] = -5.0;
    logits[brace] = -4.0;
    let mut rng = 0;
    let (id, s) = v.pick(&g, &g.start(), &logits, 0.0, &mut rng).unwrap();
    assert_eq!(id as usize, brace);
    assert_eq!(Some(&s), g.feed(&g.start(), "{").as_ref());
    let mut allowed: Vec<u32> = v
        .allowed(&g, &g.start())
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    allowed.sort();
    assert_eq!(allowed, vec![brace as u32, open as u32]);
    // Non-finite logits are never taken, even when nothing else is allowed.
    logits[open] = f32::NAN;
    logits[brace] = f32::NEG_INFINITY;
    assert!(v.pick(&g, &g.start(), &logits, 0.0, &mut rng).is_none());
}

#[test]
fn trie_keeps_duplicate_pieces_and_empty_vocab_picks_nothing() {
    let v = Vocab::new(vec![
        Some("{".into()),
        Some("{".into()),
        Some("".into()),
        None,
    ]);
    let g = grammar();
    let mut ids: Vec<u32> = v
        .allowed(&g, &g.start())
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1]);
    let mut rng = 3;
    // Equal logits: the lower id wins.
    assert_eq!(
        v.pick(&g, &g.start(), &[1.0, 1.0, 9.0, 9.0], 0.0, &mut rng)
            .unwrap()
            .0,
        0
    );
    let empty = Vocab::new(Vec::new());
    assert!(empty.is_empty());
    assert!(empty.pick(&g, &g.start(), &[], 0.0, &mut rng).is_none());
}
