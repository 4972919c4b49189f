use super::*;
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

#[test]
fn forced_text_is_what_every_accepted_document_continues_with() {
    let g = grammar();
    let forced = |prefix: &str| {
        let s = g.feed(&g.start(), prefix).unwrap();
        let (text, after) = g.forced(&s);
        assert_eq!(Some(&after), g.feed(&s, &text).as_ref(), "{prefix}");
        text
    };
    assert_eq!(forced(""), "{\"reasoning\":\"");
    assert_eq!(forced("{\"reasoning\":\"x"), "");
    assert_eq!(forced("{\"reasoning\":\"x\""), ",\"stop_pruning\":");
    assert_eq!(
        forced("{\"reasoning\":\"x\",\"stop_pruning\":f"),
        "alse,\"layer_decisions\":[{\"layer\":\"model.layers."
    );
    let list = "{\"reasoning\":\"\",\"stop_pruning\":false,\"layer_decisions\":[";
    assert_eq!(
        forced(list),
        "{\"layer\":\"model.layers.",
        "`]` needs a decision first"
    );
    // All three layers share `model.layers.`; after `1` only one layer is left.
    assert_eq!(forced(&format!("{list}{{")), "\"layer\":\"model.layers.");
    assert_eq!(
        forced(&format!("{list}{{\"layer\":\"model.layers.1")),
        ".mlp.down_proj\",\"delta\":0."
    );
    assert_eq!(
        forced(&format!("{list}{{\"layer\":\"model.layers.0.mlp.")),
        ""
    );
    let one = format!("{list}{{\"layer\":\"model.layers.1.mlp.down_proj\",\"delta\":0.");
    assert_eq!(forced(&format!("{one}1")), "");
    assert_eq!(forced(&format!("{one}1234")), "}");
    // max_decisions = 2: after the second item only `]` and the closing `}` remain.
    let two = format!("{one}05}},{{\"layer\":\"model.layers.0.mlp.up_proj\",\"delta\":0.05}}");
    assert_eq!(forced(&two), "]}");
    let done = g.feed(&g.start(), &format!("{two}]}}")).unwrap();
    assert!(done.is_done());
    assert_eq!(g.forced(&done).0, "");
}

#[test]
fn a_plan_that_does_not_stop_decides_something_and_stop_can_be_ruled_out() {
    let g = grammar();
    let empty_go = r#"{"reasoning":"","stop_pruning":false,"layer_decisions":[]}"#;
    assert!(!accepts(empty_go), "an empty plan that does not stop");
    let open = r#"{"reasoning":"","stop_pruning":false,"layer_decisions":["#;
    let s = g.feed(&g.start(), open).unwrap();
    assert_eq!(g.forced(&s).0, "{\"layer\":\"model.layers.");

    let no_stop = grammar().without_stop();
    let s = no_stop
        .feed(&no_stop.start(), "{\"reasoning\":\"x\"")
        .unwrap();
    assert_eq!(
        no_stop.forced(&s).0,
        ",\"stop_pruning\":false,\"layer_decisions\":[{\"layer\":\"model.layers."
    );
    assert!(no_stop
        .feed(&no_stop.start(), r#"{"reasoning":"","stop_pruning":t"#)
        .is_none());

    // With no layer to decide on, stopping is the only document, even without_stop.
    let none = PlanGrammar::new(Vec::new(), 10, 4).without_stop();
    let s = none.feed(&none.start(), "{\"reasoning\":\"\"").unwrap();
    let (text, end) = none.forced(&s);
    assert_eq!(text, ",\"stop_pruning\":true,\"layer_decisions\":[]}");
    assert!(end.is_done());
}

#[test]
fn a_gain_floor_keeps_the_list_open_until_the_plan_reaches_it() {
    // Layer 0: 100 params with room 0.05 below the cap; layers 1, 2: 100 params, room 1.
    // Total 1000 params; floor 0.02 of global sparsity = 20 params pruned.
    let g = PlanGrammar::new(vec!["a".into(), "b".into(), "c".into()], 10, 3)
        .with_min_gain(&[(100, 0.05), (100, 1.0), (100, 1.0)], 1000, 0.02)
        .without_stop();
    let head = r#"{"reasoning":"","stop_pruning":false,"layer_decisions":["#;
    let ok = |body: &str| {
        g.feed(&g.start(), &format!("{head}{body}"))
            .is_some_and(|s| s.is_done())
    };
    // 0.15 on `b` is 15 params: below the floor, the list cannot close yet …
    assert!(!ok(r#"{"layer":"b","delta":0.15}]}"#));
    let s = g
        .feed(
            &g.start(),
            &format!("{head}{{\"layer\":\"b\",\"delta\":0.15}}"),
        )
        .unwrap();
    assert_eq!(
        g.forced(&s).0,
        ",{\"layer\":\"",
        "the only way on is another item"
    );
    // … and `a` adds its room (5 params), not 0.15 of it: 20 reaches the floor.
    assert!(ok(
        r#"{"layer":"b","delta":0.15},{"layer":"a","delta":0.15}]}"#
    ));
    assert!(!ok(
        r#"{"layer":"b","delta":0.14},{"layer":"a","delta":0.15}]}"#
    ));
    assert!(ok(
        r#"{"layer":"b","delta":0.1},{"layer":"c","delta":0.1}]}"#
    ));
    // A floor no plan can reach still ends: when every layer is used.
    let hard = PlanGrammar::new(vec!["a".into(), "b".into()], 10, 2)
        .with_min_gain(&[(1, 1.0), (1, 1.0)], 1000, 0.5)
        .without_stop();
    let all = format!(r#"{head}{{"layer":"a","delta":0.01}},{{"layer":"b","delta":0.01}}]}}"#);
    assert!(hard.feed(&hard.start(), &all).is_some_and(|s| s.is_done()));
}
