use super::*;
use proptest::prelude::*;
use protocol::{LayerDecision, Plan};

fn grammar() -> PlanGrammar {
    PlanGrammar::new(
        vec![
            "model.layers.0.mlp.down_proj".into(),
            "model.layers.0.mlp.up_proj".into(),
            "model.layers.1.mlp.down_proj".into(),
        ],
        40,
        2,
    )
}

fn accepts(text: &str) -> bool {
    let g = grammar();
    g.feed(&g.start(), text).is_some_and(|s| s.is_done())
}

fn is_prefix(text: &str) -> bool {
    let g = grammar();
    g.feed(&g.start(), text).is_some()
}

#[test]
fn accepts_serde_plans_and_nothing_else() {
    let plan = Plan {
        reasoning: "down_proj is safest".into(),
        stop_pruning: false,
        layer_decisions: vec![
            LayerDecision {
                layer: "model.layers.1.mlp.down_proj".into(),
                delta: 0.05,
            },
            LayerDecision {
                layer: "model.layers.0.mlp.up_proj".into(),
                delta: 0.15,
            },
        ],
    };
    let text = serde_json::to_string(&plan).unwrap();
    assert!(accepts(&text), "{text}");
    assert!(accepts(
        r#"{"reasoning":"","stop_pruning":true,"layer_decisions":[]}"#
    ));
    for bad in [
        // unknown layer, duplicate layer, δ too large / too small, three decisions
        r#"{"reasoning":"","stop_pruning":true,"layer_decisions":[{"layer":"model.layers.2.mlp.down_proj","delta":0.05}]}"#,
        r#"{"reasoning":"","stop_pruning":true,"layer_decisions":[{"layer":"model.layers.0.mlp.up_proj","delta":0.05},{"layer":"model.layers.0.mlp.up_proj","delta":0.05}]}"#,
        r#"{"reasoning":"","stop_pruning":true,"layer_decisions":[{"layer":"model.layers.0.mlp.up_proj","delta":0.16}]}"#,
        r#"{"reasoning":"","stop_pruning":true,"layer_decisions":[{"layer":"model.layers.0.mlp.up_proj","delta":0.009}]}"#,
        r#"{"reasoning":"a\"b","stop_pruning":true,"layer_decisions":[]}"#,
        r#"{ "reasoning":"","stop_pruning":true,"layer_decisions":[]}"#,
        r#"{"reasoning":"","stop_pruning":yes,"layer_decisions":[]}"#,
        r#"{"reasoning":"","stop_pruning":true,"layer_decisions":[]}}"#,
    ] {
        assert!(!accepts(bad), "{bad}");
    }
    let three = r#"{"reasoning":"","stop_pruning":false,"layer_decisions":[{"layer":"model.layers.0.mlp.up_proj","delta":0.05},{"layer":"model.layers.0.mlp.down_proj","delta":0.05},"#;
    assert!(!is_prefix(three), "max_decisions = 2");
}

#[test]
fn delta_prefixes_are_cut_as_soon_as_no_completion_fits() {
    let p = |d: &str| {
        format!(
            r#"{{"reasoning":"","stop_pruning":false,"layer_decisions":[{{"layer":"model.layers.0.mlp.up_proj","delta":0.{d}"#
        )
    };
    assert!(is_prefix(&p("1")));
    assert!(is_prefix(&p("15")));
    assert!(!is_prefix(&p("16")));
    assert!(!is_prefix(&p("2")));
    assert!(is_prefix(&p("0")));
    assert!(is_prefix(&p("01")));
    assert!(!is_prefix(&p("00")), "0.00dd < 0.01");
    assert!(is_prefix(&p("1499")));
    assert!(!is_prefix(&p("15001")), "at most four decimals");
    assert!(!is_prefix(&format!("{}}}", p("0"))), "0.0 < 0.01");
    assert!(is_prefix(&format!("{}}}", p("0100"))));
}

#[test]
fn reasoning_is_capped_so_decoding_terminates() {
    let at_cap = format!("{{\"reasoning\":\"{}", "x".repeat(40));
    assert!(is_prefix(&at_cap));
    assert!(!is_prefix(&format!("{at_cap}x")));
    assert!(is_prefix(&format!("{at_cap}\"")));
    assert!(!is_prefix("{\"reasoning\":\"line\nbreak"));
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

/// Decode with arbitrary logits until the grammar says done.
fn decode(logits_seed: u64, temperature: f64) -> String {
    let (g, v) = (grammar(), ascii_vocab());
    let mut state = g.start();
    let mut rng = logits_seed;
    let mut noise = logits_seed ^ 0xABCD;
    let mut out = String::new();
    for _ in 0..2000 {
        if state.is_done() {
            return out;
        }
        let logits: Vec<f32> = (0..v.len())
            .map(|_| (unit(&mut noise) * 20.0) as f32)
            .collect();
        let (id, next) = v
            .pick(&g, &state, &logits, temperature, &mut rng)
            .expect("a token is always allowed");
        out.push_str(v.pieces[id as usize].as_deref().unwrap());
        state = next;
    }
    panic!("did not terminate: {out}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn any_logits_decode_to_a_valid_plan(seed in any::<u64>(), hot in any::<bool>()) {
        let text = decode(seed, if hot { 1.0 } else { 0.0 });
        let plan = Plan::from_json(&text).unwrap();
        let layers = ["model.layers.0.mlp.down_proj", "model.layers.0.mlp.up_proj", "model.layers.1.mlp.down_proj"];
        prop_assert!(plan.validate(&layers).is_empty(), "{}", text);
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
    assert_eq!(s.phase, Phase::Reasoning(0));
    // Inside the reasoning `x` is allowed and wins.
    assert_eq!(
        v.pick(&g, &s, &logits, 0.0, &mut rng).unwrap().0 as usize,
        x
    );
    // Special tokens and broken UTF-8 pieces are never chosen.
    assert!(v.pieces[v.len() - 1].is_none() && v.pieces[v.len() - 2].is_none());
}
