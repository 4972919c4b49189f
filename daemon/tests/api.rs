//! Every endpoint of the daemon, in process on 127.0.0.1:0 with the tiny fixture:
//! success paths with their values, and the 400 / 401 / 404 / 405 / 409 / 413 / 415
//! answers, including configs that name files outside the allowed roots.

mod common;

use std::time::Duration;

use common::{read_events, wait_ended, wait_for, Env, Running};
use daemon::types::{ApiError, Health, JobState, RunList, RunView};
use daemon::Hooks;
use protocol::StopReason;
use reqwest::{Method, StatusCode};

async fn err_of(resp: reqwest::Response) -> (StatusCode, ApiError) {
    let status = resp.status();
    let body: ApiError = resp.json().await.expect("errors are JSON");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_with_values_and_errors_are_json() {
    let env = Env::new();
    let mut cfg = env.daemon_config();
    cfg.daemon.max_body_bytes = 8 * 1024;
    let d = Running::start(cfg, None, Hooks::default()).await;
    let c = &d.client;

    let h: Health = c.health().await.unwrap();
    assert_eq!(
        (h.status.as_str(), h.queued, h.running, h.concurrency),
        ("ok", 0, 0, 1)
    );
    assert!(c.list().await.unwrap().is_empty());

    // Unknown runs and routes: 404; wrong method: 405.
    for (m, path) in [
        (Method::GET, "/runs/nope"),
        (Method::GET, "/runs/nope/events"),
        (Method::POST, "/runs/nope/cancel"),
        (Method::GET, "/nothing/here"),
        (Method::GET, "/runs/..%2f..%2fetc/events"),
    ] {
        let (s, e) = err_of(c.request(m, path).send().await.unwrap()).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {e:?}");
    }
    let (s, _) = err_of(c.request(Method::DELETE, "/runs").send().await.unwrap()).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);

    // Malformed submissions: 400 with the reason.
    let post = |body: &'static str, ct: &'static str| {
        c.request(Method::POST, "/runs")
            .header("content-type", ct)
            .body(body)
            .send()
    };
    for (body, needle) in [
        ("{not json", "invalid request JSON"),
        (r#"{"config_toml": "", "preset": "default"}"#, "not both"),
        (r#"{}"#, "give `config_toml` or `preset`"),
        (r#"{"preset": "nope"}"#, "unknown preset"),
        (r#"{"config": "x"}"#, "unknown field"),
        (
            r#"{"config_toml": "[pruning]\ntau = 1.7\n"}"#,
            "invalid configuration",
        ),
    ] {
        let (s, e) = err_of(post(body, "application/json").await.unwrap()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {e:?}");
        assert!(e.error.contains(needle), "{body}: {e:?}");
    }
    let (_, e) = err_of(
        post(
            r#"{"config_toml": "[pruning]\ntau = 1.7\n"}"#,
            "application/json",
        )
        .await
        .unwrap(),
    )
    .await;
    assert!(
        e.details.iter().any(|l| l.starts_with("pruning.tau = 1.7")),
        "{e:?}"
    );
    let (s, _) = err_of(post("x", "text/html").await.unwrap()).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Bodies over daemon.max_body_bytes: 413, with a length and chunked.
    let big = format!("{{\"config_toml\": \"{}\"}}", "#".repeat(9000));
    let r = c
        .request(Method::POST, "/runs")
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(err_of(r).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .as_bytes()
        .chunks(1000)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let r = c
        .request(Method::POST, "/runs")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(err_of(r).await.0, StatusCode::PAYLOAD_TOO_LARGE);

    // Files outside the roots: `..`, a symlink out, an absolute path out, a missing file.
    let outside = env.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.jsonl"), "{\"text\": \"w1 w2\"}\n").unwrap();
    std::os::unix::fs::symlink(
        outside.join("secret.jsonl"),
        env.assets().join("link.jsonl"),
    )
    .unwrap();
    let dotdot = env.assets().join("../outside/secret.jsonl");
    type Edit = Box<dyn Fn(&mut config::Config)>;
    let cases: Vec<(Edit, &str, &str)> = vec![
        (
            Box::new(move |c| c.calibration.path = dotdot.clone()),
            "calibration.path",
            "`..` is not allowed",
        ),
        (
            Box::new({
                let p = env.assets().join("link.jsonl");
                move |c| c.evaluation.final_ppl.path = p.clone()
            }),
            "evaluation.final.path",
            "outside the allowed roots",
        ),
        (
            Box::new({
                let p = outside.clone();
                move |c| c.model.path = p.clone()
            }),
            "model.path",
            "outside the allowed roots",
        ),
        (
            Box::new({
                let p = env.assets().join("missing-model");
                move |c| c.model.path = p.clone()
            }),
            "model.path",
            "cannot be resolved",
        ),
    ];
    for (edit, field, why) in cases {
        let r = c
            .request(Method::POST, "/runs")
            .json(&env.submit_request(edit))
            .send()
            .await
            .unwrap();
        let (s, e) = err_of(r).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e:?}");
        assert!(
            e.details
                .iter()
                .any(|l| l.starts_with(field) && l.contains(why)),
            "{field}: {e:?}"
        );
    }
    assert!(c.list().await.unwrap().is_empty(), "nothing was queued");

    // A valid run: 201 + Location, listed, streamed to its end, history equal to the stream.
    let r = c
        .request(Method::POST, "/runs")
        .json(&env.submit_request(|_| {}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let v: RunView = r.json().await.unwrap();
    assert_eq!(loc, format!("/runs/{}", v.id));
    assert_eq!(v.state, JobState::Queued);
    let events = c
        .request(Method::GET, &format!("/runs/{}/events", v.id))
        .send()
        .await
        .unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let evs = tokio::time::timeout(Duration::from_secs(300), read_events(events))
        .await
        .expect("the run ends");
    let detail = wait_ended(c, &v.id, Duration::from_secs(10)).await;
    assert_eq!(
        detail.run.state,
        JobState::Finished,
        "{:?}",
        detail.run.reason
    );
    assert_eq!(detail.run.stop_reason, Some(StopReason::TargetReached));
    assert!(
        (detail.run.sparsity - 0.5).abs() <= 0.01,
        "{}",
        detail.run.sparsity
    );
    let fp = detail.run.final_ppl.clone().expect("final PPL measured");
    assert!(fp.pruned > fp.dense && fp.tokens_scored > 0, "{fp:?}");
    let streamed: Vec<u32> = evs
        .iter()
        .filter(|e| e.event == "iteration")
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(streamed, common::iterations(&detail));
    assert_eq!(
        streamed,
        (1..=detail.history.len() as u32).collect::<Vec<_>>()
    );
    assert_eq!(evs.first().unwrap().event, "status");
    assert_eq!(evs.last().unwrap().event, "end");
    assert_eq!(evs.last().unwrap().data["state"], "finished");
    for h in &detail.history {
        assert_eq!(h.planner.first().unwrap().backend, "heuristic");
        assert!(!h.planner[0].fallback);
        assert_eq!(h.trace_id, None, "no trace export configured");
    }
    let run_dir = env.data_dir().join("runs").join(&v.id);
    assert!(run_dir.join("masks.bin").is_file());
    assert!(detail
        .config_toml
        .contains(&run_dir.parent().unwrap().display().to_string()));
    // Replaying a finished run's stream with Last-Event-ID skips what was seen.
    let r = c
        .request(Method::GET, &format!("/runs/{}/events", v.id))
        .header("last-event-id", "2")
        .send()
        .await
        .unwrap();
    let replay = read_events(r).await;
    let ids: Vec<u32> = replay
        .iter()
        .filter_map(|e| e.id.as_deref().map(|i| i.parse().unwrap()))
        .collect();
    assert_eq!(ids, (3..=detail.history.len() as u32).collect::<Vec<_>>());
    // Cancelling an ended run: 409.
    let (s, e) = err_of(
        c.request(Method::POST, &format!("/runs/{}/cancel", v.id))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e:?}");

    // Two more (one as a raw TOML body): cancel the running one after an iteration
    // (202, ends `cancelled`) and the queued one at once (200).
    let a: RunView = c.submit(&env.submit_request(|_| {})).await.unwrap();
    let r = c
        .request(Method::POST, "/runs")
        .header("content-type", "application/toml")
        .body(env.run_toml(|_| {}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let b: RunView = r.json().await.unwrap();
    wait_for(c, &a.id, Duration::from_secs(120), |v| v.iterations >= 1).await;
    let r = c
        .request(Method::POST, &format!("/runs/{}/cancel", b.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<RunView>().await.unwrap().state,
        JobState::Cancelled
    );
    let r = c
        .request(Method::POST, &format!("/runs/{}/cancel", a.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(r.json::<RunView>().await.unwrap().cancel_requested);
    let da = wait_ended(c, &a.id, Duration::from_secs(120)).await;
    assert_eq!(da.run.state, JobState::Cancelled);
    assert_eq!(da.run.stop_reason, Some(StopReason::Cancelled));
    assert!(da.history.len() < detail.history.len(), "stopped early");
    let db = actors::folder::db_dir(&env.data_dir().join("runs").join(&a.id));
    let stored = actors::checkpointer::load_run(&db, &a.id).unwrap();
    assert_eq!(stored.status.unwrap().state, protocol::RunState::Cancelled);
    assert_eq!(stored.iterations.len(), da.history.len());
    let evs = read_events(
        c.request(Method::GET, &format!("/runs/{}/events", b.id))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let kinds: Vec<&str> = evs.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["status", "end"]);

    let list: RunList = c
        .request(Method::GET, "/runs")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let states: Vec<(String, JobState)> =
        list.runs.iter().map(|r| (r.id.clone(), r.state)).collect();
    assert_eq!(
        states,
        [
            (v.id.clone(), JobState::Finished),
            (a.id.clone(), JobState::Cancelled),
            (b.id.clone(), JobState::Cancelled)
        ]
    );
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_endpoint_and_non_loopback_needs_one() {
    let env = Env::new();
    let d = Running::start(
        env.daemon_config(),
        Some("s3cret-token".into()),
        Hooks::default(),
    )
    .await;
    let anon = daemon::client::Client::new(&d.url, None).unwrap();
    let wrong = daemon::client::Client::new(&d.url, Some("s3cret-tokeX".into())).unwrap();
    for (m, path) in [
        (Method::GET, "/health"),
        (Method::GET, "/runs"),
        (Method::POST, "/runs"),
        (Method::GET, "/runs/x"),
        (Method::GET, "/runs/x/events"),
        (Method::POST, "/runs/x/cancel"),
        (Method::GET, "/no/such/route"),
    ] {
        for c in [&anon, &wrong] {
            let r = c.request(m.clone(), path).send().await.unwrap();
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let (s, e) = err_of(r).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {path}");
            assert!(!e.error.contains("s3cret"), "{e:?}");
        }
    }
    assert_eq!(d.client.health().await.unwrap().status, "ok");
    assert!(d.client.list().await.unwrap().is_empty());
    d.stop().await.unwrap();

    // Not loopback and no token: refused before serving.
    let mut cfg = env.daemon_config();
    cfg.daemon.token_env = "SECATEUR_TEST_TOKEN_THAT_IS_NEVER_SET".into();
    let e = daemon::token_for(&cfg, "0.0.0.0:7878".parse().unwrap()).unwrap_err();
    assert!(e.to_string().contains("without a bearer token"), "{e}");
    assert_eq!(
        daemon::token_for(&cfg, "127.0.0.1:7878".parse().unwrap()).unwrap(),
        None
    );
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let e = daemon::run_with(listener, cfg, None, Hooks::default(), async {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("without a bearer token"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_two_runs_two_at_a_time_and_queues_the_rest() {
    let env = Env::new();
    let mut cfg = env.daemon_config();
    cfg.daemon.concurrency = 2;
    let slow = Hooks {
        faults: actors::Faults {
            pause_before_eval_ms: 300,
            ..Default::default()
        },
    };
    let d = Running::start(cfg, None, slow).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            d.client
                .submit(&env.submit_request(|_| {}))
                .await
                .unwrap()
                .id,
        );
    }
    // Two run while the third waits, and never more than two at once.
    let mut peak = 0;
    let mut saw_two_and_one_queued = false;
    loop {
        let h = d.client.health().await.unwrap();
        peak = peak.max(h.running);
        saw_two_and_one_queued |= h.running == 2 && h.queued == 1;
        if h.running == 0 && h.queued == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(peak, 2);
    assert!(saw_two_and_one_queued);
    for id in &ids {
        let det = wait_ended(&d.client, id, Duration::from_secs(10)).await;
        assert_eq!(det.run.state, JobState::Finished, "{:?}", det.run.reason);
    }
    // FIFO: the third started after the first two.
    let runs = d.client.list().await.unwrap();
    assert!(runs[2].started_unix >= runs[0].started_unix);
    d.stop().await.unwrap();
}
