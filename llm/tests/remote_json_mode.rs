//! The OpenAI-compatible backend's structured-output request against a loopback
//! server: the schema's key order and portable subset as they go over the wire, and the
//! fallback to `json_object` mode when a server refuses the schema. The refusals are
//! error bodies recorded from llama.cpp server, vLLM and OpenAI
//! (`tests/fixtures/schema_refusals/*.json`, each with the place it was quoted from).

mod loopback;

use std::sync::Arc;
use std::time::Duration;

use config::{BackendConfig, BackendKind, PromptConfig};
use llm::remote::{JsonMode, OpenAi, RemoteBackend, RetryPolicy, Secret, Wire};
use llm::{LlmError, PlannerBackend};
use loopback::{json, Reply, Server};
use protocol::{LayerProfile, PlanRequest};
use serde_json::{json as j, Value};

const LAYERS: [&str; 3] = [
    "model.layers.0.mlp.down_proj",
    "model.layers.0.self_attn.q_proj",
    "model.layers.1.mlp.up_proj",
];

/// Three layers; the third is forbidden by the constraints (a recent rollback).
fn request() -> PlanRequest {
    let profiles = LAYERS
        .iter()
        .map(|n| LayerProfile {
            name: n.to_string(),
            z_sens: 0.0,
            z_grad: 0.0,
            sparsity: 0.0,
            params: 1000,
            cost: Vec::new(),
        })
        .collect();
    let mut r = PlanRequest::new(1, 10, profiles, 0.5, 10.0, 10.0, 0.15);
    r.constraints.forbidden_layers.insert(LAYERS[2].to_string());
    r
}

fn ok(text: &str) -> Reply {
    json(
        200,
        j!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
            "finish_reason": "stop"}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}}),
    )
}

fn good() -> String {
    r#"{"reasoning":"safe first","stop_pruning":false,"layer_decisions":[{"layer":"model.layers.0.mlp.down_proj","delta":0.05}]}"#.into()
}

fn backend(server: &Server) -> RemoteBackend<OpenAi> {
    let cfg = BackendConfig {
        backend: BackendKind::Openai,
        model: Some("test-model".into()),
        base_url: Some(format!("{}/v1", server.base_url)),
        ..BackendConfig::default()
    };
    let policy = RetryPolicy {
        retries: 2,
        base: Duration::from_millis(1),
        cap: Duration::from_millis(1),
        sleep: Arc::new(|_| {}),
    };
    RemoteBackend::with_timeout(
        OpenAi,
        &cfg,
        PromptConfig::default(),
        Secret::default(),
        policy,
        Duration::from_secs(5),
        7,
    )
}

/// A recorded refusal: status, body text, whether it refuses the schema.
struct Fixture {
    name: String,
    status: u16,
    body: String,
    refuses_schema: bool,
}

fn fixtures() -> Vec<Fixture> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema_refusals");
    let mut out: Vec<Fixture> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            Fixture {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                status: v["status"].as_u64().unwrap() as u16,
                body: v["body"].as_str().unwrap().to_string(),
                refuses_schema: v["refuses_schema"].as_bool().unwrap(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Position of `key` (as a quoted JSON key) in `text`.
fn at(text: &str, key: &str) -> usize {
    text.find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no key {key} in {text}"))
}

#[test]
fn the_request_body_keeps_the_papers_key_order_and_no_bounds() {
    let server = Server::start(vec![ok(&good())]);
    let out = backend(&server).propose(&request(), 1).unwrap();
    let seen = server.finish();
    let raw = &seen[0].raw;
    let schema_at = at(raw, "schema");
    let schema = &raw[schema_at..];
    // Plan keys: reasoning, stop_pruning, layer_decisions; a decision: layer, delta.
    assert!(
        at(schema, "reasoning") < at(schema, "stop_pruning"),
        "{schema}"
    );
    assert!(
        at(schema, "stop_pruning") < at(schema, "layer_decisions"),
        "{schema}"
    );
    assert!(at(schema, "layer") < at(schema, "delta"), "{schema}");
    let required = r#""required":["reasoning","stop_pruning","layer_decisions"]"#;
    assert!(schema.contains(required), "{schema}");
    // No numeric bounds anywhere in the request.
    for kw in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
        assert!(!raw.contains(&format!("\"{kw}\"")), "{kw} in {raw}");
    }
    // The enum offers the layers the constraints allow, not the forbidden one.
    let body = &seen[0].body;
    let s = &body["response_format"]["json_schema"]["schema"];
    assert_eq!(
        s["properties"]["layer_decisions"]["items"]["properties"]["layer"]["enum"],
        j!([LAYERS[0], LAYERS[1]])
    );
    // The schema copy in the system prompt has the same order.
    let system = body["messages"][0]["content"].as_str().unwrap();
    let copy = &system[system.find("JSON schema:").unwrap()..];
    assert!(at(copy, "reasoning") < at(copy, "stop_pruning"), "{copy}");
    assert!(
        at(copy, "stop_pruning") < at(copy, "layer_decisions"),
        "{copy}"
    );
    assert!(at(copy, "layer") < at(copy, "delta"), "{copy}");
    assert_eq!(out[0].backend, "openai");
}

#[test]
fn the_recorded_refusals_are_recognised() {
    let all = fixtures();
    assert!(all.len() >= 4);
    for f in &all {
        assert_eq!(
            OpenAi.refuses_schema(f.status, &f.body),
            f.refuses_schema,
            "{}",
            f.name
        );
    }
    // A 401 or a 404 is never about the schema, whatever the body says; a 500 only
    // when it names the response format (else it is retried as a server failure).
    assert!(!OpenAi.refuses_schema(404, "no route for response_format"));
    assert!(!OpenAi.refuses_schema(500, r#"{"error":{"message":"grammar worker crashed"}}"#));
    assert!(all.iter().any(|f| f.status == 500 && f.refuses_schema));
}

#[test]
fn a_refused_schema_is_retried_in_json_object_mode_with_the_schema_and_remembered() {
    for f in fixtures().into_iter().filter(|f| f.refuses_schema) {
        let refusal = Reply::Http(f.status, vec![], f.body.clone());
        // Plan 1: refused, then json_object. Plan 2: json_object straight away, with a
        // repair round that stays in json_object mode.
        let server = Server::start(vec![
            refusal,
            ok(&good()),
            ok("Sure! Here is the plan"),
            ok(&good()),
        ]);
        let b = backend(&server);
        let first = b.propose(&request(), 1).unwrap();
        let second = b.propose(&request(), 1).unwrap();
        let seen = server.finish();
        assert_eq!(seen.len(), 4, "{}", f.name);
        assert_eq!(seen[0].body["response_format"]["type"], "json_schema");
        // json_object with the schema (llama.cpp-based servers enforce it there), which
        // below the target also rules out a stop and an empty decision list.
        let mut object_schema = seen[0].body["response_format"]["json_schema"]["schema"].clone();
        object_schema["properties"]["stop_pruning"]["enum"] = j!([false]);
        object_schema["properties"]["layer_decisions"]["minItems"] = j!(1);
        for s in &seen[1..] {
            let format = &s.body["response_format"];
            assert_eq!(format["type"], "json_object", "{}", f.name);
            assert_eq!(format["schema"], object_schema, "{}", f.name);
            let system = s.body["messages"][0]["content"].as_str().unwrap();
            assert!(
                system.contains("does not enforce the answer format"),
                "{system}"
            );
            let note = &system[system.rfind("JSON schema:").unwrap()..];
            assert!(
                at(note, "reasoning") < at(note, "layer_decisions"),
                "{note}"
            );
        }
        // The repair round of plan 2 carried the bad answer.
        assert_eq!(
            seen[3].body["messages"][2]["content"],
            "Sure! Here is the plan"
        );
        for out in [&first, &second] {
            assert_eq!(
                out[0].backend,
                format!("openai ({})", JsonMode::ObjectSchema.label())
            );
            assert_eq!(out[0].plan.layer_decisions[0].layer, LAYERS[0]);
            assert!(out[0]
                .system_prompt
                .contains("does not enforce the answer format"));
        }
    }
}

#[test]
fn at_the_target_the_json_object_schema_allows_a_stop() {
    let mut at_target = request();
    for p in &mut at_target.profiles {
        p.sparsity = 0.5;
    }
    at_target.current_sparsity = 0.5;
    let server = Server::start(vec![vllm_refusal(), ok(&good())]);
    backend(&server).propose(&at_target, 1).unwrap();
    let seen = server.finish();
    assert_eq!(
        seen[1].body["response_format"]["schema"],
        seen[0].body["response_format"]["json_schema"]["schema"]
    );
}

#[test]
fn other_client_errors_are_not_retried() {
    let f = fixtures().into_iter().find(|f| !f.refuses_schema).unwrap();
    let server = Server::start(vec![Reply::Http(f.status, vec![], f.body.clone())]);
    let out = backend(&server).propose(&request(), 1);
    assert_eq!(server.finish().len(), 1);
    match out {
        Err(LlmError::Backend { message, .. }) => {
            assert!(message.starts_with("HTTP 400 Bad Request: "), "{message}");
            assert!(message.contains("context_length_exceeded"), "{message}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
}

/// vLLM's recorded refusal of the schema, as a scripted reply.
fn vllm_refusal() -> Reply {
    let f = fixtures()
        .into_iter()
        .find(|f| f.name.starts_with("vllm"))
        .unwrap();
    Reply::Http(f.status, vec![], f.body)
}

#[test]
fn a_refused_schema_in_json_object_goes_on_without_it() {
    let refusal = vllm_refusal;
    let server = Server::start(vec![refusal(), refusal(), ok(&good()), ok(&good())]);
    let b = backend(&server);
    let first = b.propose(&request(), 1).unwrap();
    let second = b.propose(&request(), 1).unwrap();
    let seen = server.finish();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[1].body["response_format"]["type"], "json_object");
    assert!(seen[1].body["response_format"]["schema"].is_object());
    // Then, and for every later plan, json_object alone.
    for s in &seen[2..] {
        assert_eq!(s.body["response_format"], j!({"type": "json_object"}));
    }
    for out in [&first, &second] {
        assert_eq!(
            out[0].backend,
            format!("openai ({})", JsonMode::Object.label())
        );
    }
}

#[test]
fn a_refusal_in_every_mode_fails_with_each_stated() {
    let refusal = vllm_refusal;
    let server = Server::start(vec![refusal(), refusal(), refusal()]);
    let out = backend(&server).propose(&request(), 1);
    assert_eq!(server.finish().len(), 3);
    let message = out.unwrap_err().to_string();
    assert!(message.contains("(json_object mode, after: "), "{message}");
    assert!(
        message.contains("json_schema mode refused with HTTP 400"),
        "{message}"
    );
    assert!(
        message.contains("json_object mode with the schema refused with HTTP 400"),
        "{message}"
    );
    assert!(message.contains("xgrammar"), "{message}");
}

/// 30 blocks of 4 projections with measured cost curves; the cheapest per parameter are
/// the MLP projections of the first blocks.
fn wide_request() -> PlanRequest {
    let kinds = [
        ("mlp.down_proj", 9000),
        ("mlp.up_proj", 9000),
        ("self_attn.q_proj", 1000),
        ("self_attn.k_proj", 300),
    ];
    let mut profiles = Vec::new();
    for block in 0..30 {
        for (i, (kind, params)) in kinds.iter().enumerate() {
            let per_param = 1e-9 * (1.0 + f64::from(block) + 30.0 * (i / 2) as f64);
            profiles.push(LayerProfile {
                name: format!("model.layers.{block}.{kind}"),
                z_sens: 0.0,
                z_grad: 0.0,
                sparsity: 0.0,
                params: *params,
                cost: (1..=15)
                    .map(|k| f64::from(k) * 0.01 * per_param * *params as f64)
                    .collect(),
            });
        }
    }
    PlanRequest::new(1, 10, profiles, 0.5, 10.0, 10.0, 0.15)
}

#[test]
fn a_remote_prompt_lists_the_shortlist_and_its_schema_only_those_layers() {
    let server = Server::start(vec![ok(&good())]);
    let out = backend(&server).propose(&wide_request(), 1).unwrap();
    let body = &server.finish()[0].body;
    let user = body["messages"][1]["content"].as_str().unwrap();
    assert!(
        user.contains("Only the 40 layers with the lowest cost per parameter"),
        "{user}"
    );
    assert!(user.contains("Scale: the same delta on every listed layer"));
    let names = body["response_format"]["json_schema"]["schema"]["properties"]["layer_decisions"]
        ["items"]["properties"]["layer"]["enum"]
        .as_array()
        .unwrap()
        .clone();
    // The MLP projections of blocks 0–19 (cost per parameter rank 1–40).
    assert_eq!(names.len(), 40);
    for block in 0..20 {
        for kind in ["mlp.down_proj", "mlp.up_proj"] {
            let n = format!("model.layers.{block}.{kind}");
            assert!(names.contains(&j!(n)), "{n} in the enum");
            assert!(user.contains(&format!(" {n} ")), "{n} listed");
        }
    }
    assert!(!user.contains("self_attn"), "{user}");
    assert_eq!(out[0].plan.layer_decisions.len(), 1);
}
