//! The hosted backends against a loopback server speaking each API's wire format:
//! request shapes asserted, responses scripted. Every case runs for openai, gemini and
//! anthropic. Sleeps between retries are recorded, not spent, so no test waits on a
//! backoff; only the timeout case takes real time (a 300 ms client timeout).

mod loopback;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use config::{BackendConfig, BackendKind, HeuristicConfig, PromptConfig};
use llm::remote::{Anthropic, Gemini, OpenAi, RemoteBackend, RetryPolicy, Secret};
use llm::{HeuristicPlanner, LlmError, PlannerBackend, WithFallback};
use loopback::{json, Reply, Seen, Server};
use protocol::{LayerProfile, PlanRequest, PlanResponse};
use serde_json::{json as j, Value};

const KEY: &str = "sk-loopback-secret-0123456789";
const LAYERS: [&str; 2] = [
    "model.layers.0.mlp.down_proj",
    "model.layers.0.self_attn.q_proj",
];

fn request() -> PlanRequest {
    let profiles = LAYERS
        .iter()
        .enumerate()
        .map(|(i, n)| LayerProfile {
            name: n.to_string(),
            z_sens: i as f64 - 0.5,
            z_grad: 0.0,
            sparsity: 0.0,
            params: 1000,
            cost: Vec::new(),
        })
        .collect();
    PlanRequest::new(1, 10, profiles, 0.5, 10.0, 10.0, 0.15)
}

fn plan_text(layer: &str, delta: f64) -> String {
    j!({"reasoning": "safe layer first", "stop_pruning": false,
        "layer_decisions": [{"layer": layer, "delta": delta}]})
    .to_string()
}

fn good() -> String {
    plan_text(LAYERS[0], 0.05)
}

/// One API: how it is configured, what a success body looks like, where the last user
/// turn sits in a request, and the request shape it must send.
struct Api {
    kind: BackendKind,
    ok: fn(&str) -> Value,
    last_user: fn(&Value) -> String,
    check: fn(&Seen),
}

fn schema_enum(schema: &Value) -> &Value {
    &schema["properties"]["layer_decisions"]["items"]["properties"]["layer"]["enum"]
}

const APIS: [Api; 3] = [
    Api {
        kind: BackendKind::Openai,
        ok: |t| {
            j!({"id": "c1", "object": "chat.completion", "choices": [{"index": 0,
                "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 900, "completion_tokens": 40, "total_tokens": 940}})
        },
        last_user: |b| {
            b["messages"].as_array().unwrap().last().unwrap()["content"]
                .as_str()
                .unwrap()
                .to_string()
        },
        check: |s| {
            assert_eq!(
                (s.method.as_str(), s.path.as_str()),
                ("POST", "/v1/chat/completions")
            );
            assert_eq!(
                s.header("authorization"),
                Some(format!("Bearer {KEY}").as_str())
            );
            let b = &s.body;
            assert_eq!(b["model"], "test-model");
            assert_eq!(b["temperature"], 0.5);
            assert_eq!(b["max_tokens"], 777);
            assert_eq!(b["messages"][0]["role"], "system");
            assert_eq!(b["messages"][1]["role"], "user");
            assert_eq!(b["response_format"]["type"], "json_schema");
            assert_eq!(b["response_format"]["json_schema"]["strict"], true);
            assert_eq!(
                *schema_enum(&b["response_format"]["json_schema"]["schema"]),
                j!(LAYERS)
            );
        },
    },
    Api {
        kind: BackendKind::Gemini,
        ok: |t| {
            j!({"candidates": [{"content": {"role": "model", "parts": [{"text": t}]},
                "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 900, "candidatesTokenCount": 40}})
        },
        last_user: |b| {
            b["contents"].as_array().unwrap().last().unwrap()["parts"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        },
        check: |s| {
            assert_eq!(s.path, "/v1beta/models/test-model:generateContent");
            assert_eq!(s.header("x-goog-api-key"), Some(KEY));
            let b = &s.body;
            assert!(b["systemInstruction"]["parts"][0]["text"]
                .as_str()
                .unwrap()
                .contains("pruning agent"));
            assert_eq!(b["contents"][0]["role"], "user");
            let g = &b["generationConfig"];
            assert_eq!(
                (g["temperature"].clone(), g["maxOutputTokens"].clone()),
                (j!(0.5), j!(777))
            );
            assert_eq!(g["responseMimeType"], "application/json");
            assert_eq!(g["responseSchema"]["type"], "OBJECT");
            assert_eq!(*schema_enum(&g["responseSchema"]), j!(LAYERS));
        },
    },
    Api {
        kind: BackendKind::Anthropic,
        ok: |t| {
            let input: Value = serde_json::from_str(t).unwrap_or(Value::String(t.into()));
            j!({"id": "msg_1", "type": "message", "role": "assistant", "stop_reason": "tool_use",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "submit_plan", "input": input}],
                "usage": {"input_tokens": 900, "output_tokens": 40}})
        },
        last_user: |b| {
            b["messages"].as_array().unwrap().last().unwrap()["content"]
                .as_str()
                .unwrap()
                .to_string()
        },
        check: |s| {
            assert_eq!(s.path, "/v1/messages");
            assert_eq!(s.header("x-api-key"), Some(KEY));
            assert_eq!(s.header("anthropic-version"), Some("2023-06-01"));
            let b = &s.body;
            assert_eq!(
                (b["model"].clone(), b["max_tokens"].clone()),
                (j!("test-model"), j!(777))
            );
            assert!(b["system"].as_str().unwrap().contains("pruning agent"));
            assert_eq!(b["messages"][0]["role"], "user");
            assert_eq!(
                b["tool_choice"],
                j!({"type": "tool", "name": "submit_plan"})
            );
            assert_eq!(*schema_enum(&b["tools"][0]["input_schema"]), j!(LAYERS));
        },
    },
];

/// A backend for `api` pointed at `server`, plus the delays it asked to sleep.
fn backend(
    api: &Api,
    server: &Server,
    retries: u32,
) -> (Box<dyn PlannerBackend>, Arc<Mutex<Vec<Duration>>>) {
    let slept = Arc::new(Mutex::new(Vec::new()));
    let rec = slept.clone();
    let policy = RetryPolicy {
        retries,
        base: Duration::from_millis(1000),
        cap: Duration::from_secs(60),
        sleep: Arc::new(move |d| rec.lock().unwrap().push(d)),
    };
    let root = match api.kind {
        BackendKind::Gemini => "/v1beta",
        _ => "/v1",
    };
    let cfg = BackendConfig {
        backend: api.kind,
        model: Some("test-model".into()),
        base_url: Some(format!("{}{root}", server.base_url)),
        max_tokens: 777,
        ..BackendConfig::default()
    };
    let (p, k, t) = (
        PromptConfig::default(),
        Secret::new(Some(KEY.into())),
        Duration::from_millis(300),
    );
    let b: Box<dyn PlannerBackend> = match api.kind {
        BackendKind::Openai => Box::new(RemoteBackend::with_timeout(
            OpenAi, &cfg, p, k, policy, t, 3,
        )),
        BackendKind::Gemini => Box::new(RemoteBackend::with_timeout(
            Gemini, &cfg, p, k, policy, t, 3,
        )),
        _ => Box::new(RemoteBackend::with_timeout(
            Anthropic, &cfg, p, k, policy, t, 3,
        )),
    };
    (b, slept)
}

/// What `propose` returned.
type Outcome = Result<Vec<PlanResponse>, LlmError>;

/// The key must never surface in anything a run records or prints.
fn assert_no_key(out: &Outcome) {
    let text = match out {
        Ok(r) => serde_json::to_string(r).unwrap(),
        Err(e) => format!("{e} {e:?}"),
    };
    assert!(!text.contains(KEY), "key leaked: {text}");
}

#[test]
fn success_sends_the_api_shape_and_records_the_exchange() {
    for api in &APIS {
        let server = Server::start(vec![
            json(200, (api.ok)(&good())),
            json(200, (api.ok)(&plan_text(LAYERS[1], 0.02))),
        ]);
        let (b, slept) = backend(api, &server, 2);
        let out = b.propose(&request(), 2);
        assert_no_key(&out);
        let out = out.unwrap();
        let seen = server.finish();
        assert_eq!(seen.len(), 2, "{:?}", api.kind);
        seen.iter().for_each(api.check);
        // The second candidate's prompt asks for a different style.
        assert!((api.last_user)(&seen[1].body).contains("candidate 2 of 2"));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].backend, api.kind.name());
        assert_eq!(out[0].model.as_deref(), Some("test-model"));
        assert_eq!(out[0].plan.layer_decisions[0].layer, LAYERS[0]);
        assert_eq!(out[1].plan.layer_decisions[0].delta, 0.02);
        // The API's usage figures are recorded with the exchange.
        assert_eq!(
            (out[0].input_tokens, out[0].output_tokens),
            (Some(900), Some(40))
        );
        assert!(out[0].system_prompt.contains("pruning agent"));
        assert!(out[0].user_prompt.contains(LAYERS[1]));
        assert_eq!(
            serde_json::from_str::<Value>(&out[0].raw_response).unwrap(),
            serde_json::from_str::<Value>(&good()).unwrap()
        );
        assert!(slept.lock().unwrap().is_empty());
    }
}

#[test]
fn rate_limit_then_success_honours_retry_after() {
    for api in &APIS {
        let server = Server::start(vec![
            Reply::Http(
                429,
                vec![("retry-after", "7".into())],
                j!({"error": "slow down"}).to_string(),
            ),
            json(200, (api.ok)(&good())),
        ]);
        let (b, slept) = backend(api, &server, 2);
        let out = b.propose(&request(), 1);
        assert_no_key(&out);
        assert_eq!(out.unwrap()[0].plan.layer_decisions[0].layer, LAYERS[0]);
        assert_eq!(
            *slept.lock().unwrap(),
            vec![Duration::from_secs(7)],
            "{:?}",
            api.kind
        );
        let seen = server.finish();
        assert_eq!(seen.len(), 2);
        seen.iter().for_each(api.check);
    }
}

#[test]
fn server_errors_exhaust_retries_with_backoff_then_the_fallback_answers() {
    for api in &APIS {
        let err = || json(500, j!({"error": {"message": "internal"}}));
        let server = Server::start(vec![err(), err(), err()]);
        let (primary, slept) = backend(api, &server, 2);
        let fb = WithFallback {
            primary,
            fallback: Box::new(HeuristicPlanner::new(HeuristicConfig::default(), 1)),
        };
        let out = fb.propose(&request(), 1);
        assert_no_key(&out);
        let out = out.unwrap();
        assert_eq!(server.finish().len(), 3, "{:?}", api.kind);
        let name = api.kind.name();
        assert!(
            out[0].backend.starts_with(&format!(
                "heuristic (fallback; {name} failed: {name}: gave up after 3 attempt(s): HTTP 500"
            )),
            "{}",
            out[0].backend
        );
        assert!(out[0].plan.validate(&LAYERS).is_empty());
        // Exponential backoff with jitter in [0.5, 1): ~1 s, then ~2 s.
        let s = slept.lock().unwrap().clone();
        assert_eq!(s.len(), 2);
        assert!(
            s[0] >= Duration::from_millis(500) && s[0] < Duration::from_secs(1),
            "{s:?}"
        );
        assert!(
            s[1] >= Duration::from_secs(1) && s[1] < Duration::from_secs(2),
            "{s:?}"
        );
    }
}

#[test]
fn a_silent_server_times_out_without_a_second_request() {
    for api in &APIS {
        // Retries allowed, and a good answer scripted after the silence: a client that
        // re-sent the timed-out request would get it and succeed. (The server then waits
        // for that second request forever: read what it saw, do not join it.)
        let mut server = Server::start(vec![Reply::Hang, json(200, (api.ok)(&good()))]);
        let (b, slept) = backend(api, &server, 2);
        let out = b.propose(&request(), 1);
        assert_no_key(&out);
        match out {
            Err(LlmError::Backend { backend, message }) => {
                assert_eq!(backend, api.kind.name());
                assert!(message.starts_with("timed out"), "{message}");
                assert!(
                    message.contains("no answer within 0.3 s; not sent again"),
                    "{message}"
                );
                assert!(message.contains("`[planner] timeout_secs`"), "{message}");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert_eq!(server.seen().len(), 1, "{}: one request", api.kind.name());
        assert!(slept.lock().unwrap().is_empty(), "no backoff either");
    }
}

#[test]
fn a_body_that_is_not_json_fails_without_retrying() {
    for api in &APIS {
        let server = Server::start(vec![Reply::Http(
            200,
            vec![],
            "<html>proxy error</html>".into(),
        )]);
        let (b, slept) = backend(api, &server, 2);
        match b.propose(&request(), 1) {
            Err(LlmError::Backend { message, .. }) => {
                assert!(message.contains("body that is not JSON"), "{message}");
                assert!(message.ends_with("<html>proxy error</html>"), "{message}");
            }
            other => panic!("expected a backend error, got {other:?}"),
        }
        assert_eq!(server.finish().len(), 1);
        assert!(slept.lock().unwrap().is_empty());
    }
}

/// A first answer that fails validation, then `second`: the repair turn must carry
/// the bad answer and every error.
fn repair_case(first: &str, second: &str, expect_in_repair: &str) -> Vec<Outcome> {
    APIS.iter()
        .map(|api| {
            let server = Server::start(vec![
                json(200, (api.ok)(first)),
                json(200, (api.ok)(second)),
            ]);
            let (b, _) = backend(api, &server, 0);
            let out = b.propose(&request(), 1);
            assert_no_key(&out);
            let seen = server.finish();
            assert_eq!(seen.len(), 2, "{:?}", api.kind);
            seen.iter().for_each(api.check);
            let repair = (api.last_user)(&seen[1].body);
            assert!(
                repair.starts_with("Your answer is not a valid plan:\n- "),
                "{repair}"
            );
            assert!(
                repair.contains(expect_in_repair),
                "{:?}: {repair}",
                api.kind
            );
            out
        })
        .collect()
}

#[test]
fn schema_violations_get_one_repair_round() {
    for out in repair_case(
        r#"{"reasoning": 3, "stop_pruning": false}"#,
        &good(),
        "not a valid plan document",
    ) {
        let r = out.unwrap();
        assert_eq!(r[0].plan.layer_decisions[0].layer, LAYERS[0]);
        assert!(r[0].user_prompt.contains("[repair round]"));
        // Both calls count.
        assert_eq!(
            (r[0].input_tokens, r[0].output_tokens),
            (Some(1800), Some(80))
        );
    }
}

#[test]
fn openai_content_that_is_not_json_is_repaired() {
    let server = Server::start(vec![
        json(200, (APIS[0].ok)("Sure, here is my plan!")),
        json(200, (APIS[0].ok)(&good())),
    ]);
    let (b, _) = backend(&APIS[0], &server, 0);
    assert!(b.propose(&request(), 1).is_ok());
    let seen = server.finish();
    assert_eq!(
        seen[1].body["messages"][2],
        j!({"role": "assistant", "content": "Sure, here is my plan!"})
    );
}

#[test]
fn unknown_layers_twice_fail_after_the_repair_round() {
    let bad = plan_text("model.layers.9.mlp.up_proj", 0.05);
    for out in repair_case(&bad, &bad, "unknown layer `model.layers.9.mlp.up_proj`") {
        match out {
            Err(LlmError::InvalidAnswer { reason, .. }) => {
                assert!(
                    reason.starts_with("after one repair round: layer_decisions[0]: unknown layer"),
                    "{reason}"
                )
            }
            other => panic!("expected an invalid answer, got {other:?}"),
        }
    }
}

#[test]
fn delta_out_of_range_goes_to_the_critic_without_a_repair_round() {
    for api in &APIS {
        let server = Server::start(vec![json(200, (api.ok)(&plan_text(LAYERS[1], 0.5)))]);
        let (b, _) = backend(api, &server, 0);
        let out = b.propose(&request(), 1).unwrap();
        assert_eq!(server.finish().len(), 1, "{:?}: one request", api.kind);
        // As the model wrote it: the critic's delta_bounds rule clamps it, with a reason.
        assert_eq!(out[0].plan.layer_decisions[0].delta, 0.5);
    }
}

#[test]
fn auth_failures_do_not_echo_the_body() {
    for api in &APIS {
        let body = format!("{{\"error\": \"Incorrect API key provided: {KEY}\"}}");
        let server = Server::start(vec![Reply::Http(401, vec![], body)]);
        let (b, _) = backend(api, &server, 2);
        let out = b.propose(&request(), 1);
        assert_no_key(&out);
        assert!(out
            .unwrap_err()
            .to_string()
            .contains("401 Unauthorized: authentication failed"));
        assert_eq!(server.finish().len(), 1);
    }
}
